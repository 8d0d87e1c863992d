"""Start-of-training sanity checks (deepstart.train.sanity): each fires on a crafted case, in
one line, and a healthy run says nothing."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepstart.data.dataset import ImageSet, make_dataset
from deepstart.data.shapes import load_shapes
from deepstart.models.registry import create_model
from deepstart.train.events import Callback, CancelFit
from deepstart.train.guard import DivergenceGuard
from deepstart.train.learner import Learner
from deepstart.train.sanity import SanityCheck, label_findings, loss_findings, rising_findings

from .conftest import bars


@pytest.fixture(scope="module")
def shapes():
    train, test = load_shapes(n_train=400, n_test=60, size=16, seed=0)
    return make_dataset("shapes", train, test, valid_pct=0.15, seed=0)


class StopAfter(Callback):
    """Ends the fit after ``n`` training batches (the checks look at the first ones only)."""

    order = 90

    def __init__(self, n):
        self.n = n

    def after_batch(self):
        if self.learn.training and self.learn.iter + 1 >= self.n:
            raise CancelFit


def _model(data, name="logreg"):
    torch.manual_seed(0)
    return create_model(
        name, in_channels=data.channels, num_classes=data.num_classes, input_size=data.size
    )


def _fit(data, model=None, *, batches=1, lr=3e-3, epochs=1, **kw):
    """Lines logged by a short fit, and the learner."""
    lines = []
    kw.setdefault("precision", "fp32")  # bf16 autocast on a busy 2-core CPU is 3x slower here
    kw.setdefault("batch_size", 16)
    learn = Learner(data, model or _model(data), log=lines.append, **kw)
    stop = [StopAfter(batches)] if batches else []
    learn.fit_one_cycle(epochs, lr, callbacks=stop)
    return [line for line in lines if line.startswith("sanity:")], learn


def _one_line(lines, *words):
    assert len(lines) == 1, lines
    assert "\n" not in lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])


def _with_train(data, images=None, labels=None):
    tr = data.train
    new = ImageSet(
        tr.images if images is None else images, tr.labels if labels is None else labels, tr.classes
    )
    return dataclasses.replace(data, train=new)


# -- silent when all is well -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["logreg", "mnist_cnn"])
def test_a_healthy_shapes_run_says_nothing(shapes, name):
    # 21 batches: the first, and the 20 whose losses are watched
    lines, learn = _fit(shapes, _model(shapes, name), batches=21, batch_size=8)
    assert lines == []
    assert learn.get_callback(SanityCheck).findings == []


def test_on_by_default_and_can_be_turned_off(shapes):
    assert Learner(shapes, _model(shapes)).get_callback(SanityCheck) is not None
    assert Learner(shapes, _model(shapes), sanity=False).get_callback(SanityCheck) is None
    zeros = _with_train(shapes, images=torch.zeros_like(shapes.train.images))
    assert _fit(zeros, sanity=False)[0] == []
    # removing the callback works as well
    lines = []
    learn = Learner(zeros, _model(zeros), log=lines.append)
    learn.remove_callback(learn.get_callback(SanityCheck))
    learn.fit(1, 1e-3, callbacks=[StopAfter(1)])
    assert not any(line.startswith("sanity:") for line in lines)


# -- the initial loss against ln K -------------------------------------------------------------
def test_a_last_layer_scaled_x100_is_bad_init(shapes):
    model = _model(shapes, "mnist_cnn")
    with torch.no_grad():
        [m for m in model.modules() if isinstance(m, nn.Linear)][-1].weight.mul_(100)
    lines, learn = _fit(shapes, model)
    _one_line(lines, "far above ln 3 = 1.10", "bad init")
    assert [n for n, _ in learn.get_callback(SanityCheck).findings] == ["initial_loss"]


def test_loss_far_below_ln_k_before_training_is_said():
    assert loss_findings(1.2, 3) == [] and loss_findings(2.5, 10) == []
    assert loss_findings(0.1, 3)[0][0] == "initial_loss"
    assert loss_findings(4.2, 3)[0][0] == "initial_loss"  # ln 3 + 3.1
    assert loss_findings(math.nan, 3) == []  # NaN is the guard's


def test_a_model_with_more_outputs_than_classes(shapes):
    torch.manual_seed(0)
    model = create_model("logreg", in_channels=1, num_classes=10, input_size=shapes.size)
    lines, _ = _fit(shapes, model)
    _one_line(lines, "10 outputs", "3 classes", "num_classes=3")


# -- the inputs --------------------------------------------------------------------------------
def test_an_all_zero_training_split_is_a_constant_batch(shapes):
    lines, _ = _fit(_with_train(shapes, images=torch.zeros_like(shapes.train.images)))
    _one_line(lines, "first batch of inputs is constant")


def test_many_blank_images_in_the_first_batch(shapes):
    images = shapes.train.images.clone()
    images[::2] = 0  # every other image blank
    lines, _ = _fit(_with_train(shapes, images=images))
    _one_line(lines, "of the 16 images of the first batch are one flat value")


# -- the labels --------------------------------------------------------------------------------
def test_constant_labels(shapes):
    labels = torch.zeros_like(shapes.train.labels)
    lines, learn = _fit(_with_train(shapes, labels=labels), guard=False)
    names = [n for n, _ in learn.get_callback(SanityCheck).findings]
    # every label one class; and the validation split has the two others
    assert names == ["imbalance", "valid_class"], lines
    assert "every training label is 'circle'" in lines[0]


def test_heavily_imbalanced_labels_say_the_counts(shapes):
    tr = shapes.train
    keep = (tr.labels != 2) | (torch.arange(len(tr)) % 20 == 0)
    data = dataclasses.replace(shapes, train=tr.subset(torch.nonzero(keep).flatten()))
    lines, _ = _fit(data)
    counts = data.train.class_counts()
    _one_line(lines, "heavily imbalanced", f"triangle {counts[2]}", "--class-weights balanced")


def test_imbalance_by_share_and_healthy_counts():
    assert label_findings(["a", "b", "c"], [100, 90, 110], [10, 10, 10]) == []
    found = label_findings(["a", "b", "c"], [950, 30, 20], None)  # 95% one class, 47x
    assert [n for n, _ in found] == ["imbalance"]
    found = label_findings(["a", "b"], [91, 9], None)  # 10.1x
    assert [n for n, _ in found] == ["imbalance"]


def test_a_validation_class_the_training_split_lacks(shapes):
    tr = shapes.train
    data = dataclasses.replace(shapes, train=tr.subset(torch.nonzero(tr.labels != 2).flatten()))
    lines, learn = _fit(data)
    names = [n for n, _ in learn.get_callback(SanityCheck).findings]
    assert names == ["missing_class", "valid_class"]
    assert all("\n" not in line for line in lines)
    assert "'triangle'" in lines[1] and "training split has none" in lines[1]


# -- the first 20 batches ----------------------------------------------------------------------
class RisingLoss(nn.Module):
    """Cross-entropy times a factor that grows with every training call: 1x to 2.9x over 20."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, pred, target):
        self.calls += 1
        return F.cross_entropy(pred, target) * (1 + 0.1 * self.calls)


def test_a_loss_that_rises_over_the_first_20_batches(shapes):
    lines, _ = _fit(shapes, batches=21, loss_func=RisingLoss())
    _one_line(lines, "the loss rose from", "over the first 20 batches", "lr-find")


class NanAt(nn.Module):
    """Cross-entropy that is NaN on the ``at``-th training call."""

    def __init__(self, at, loss=F.cross_entropy):
        super().__init__()
        self.at, self.calls, self.base = at, 0, loss

    def forward(self, pred, target):
        self.calls += 1
        loss = self.base(pred, target)
        return loss * math.nan if self.calls == self.at else loss


def test_nan_in_the_first_batches_without_a_guard(shapes):
    lines, _ = _fit(shapes, batches=21, guard=False, loss_func=NanAt(5))
    _one_line(lines, "the loss became nan", "LR is far too high")


def test_with_the_guard_a_blow_up_is_left_to_the_guard(shapes):
    lines = []
    learn = Learner(shapes, _model(shapes), batch_size=16, opt="sgd", log=lines.append)
    learn.fit_one_cycle(1, 1e4, callbacks=[StopAfter(21)])
    assert learn.get_callback(DivergenceGuard).events  # the guard acted and said so
    assert any(line.startswith("divergence guard:") for line in lines)
    assert not any(line.startswith("sanity:") for line in lines)


def test_rising_rule():
    assert rising_findings([1.1] * 20, 1.1, 1e-3) == []
    assert rising_findings([1.1] * 5 + [0.5] * 15, 1.1, 1e-3) == []  # falling
    assert rising_findings([0.1] * 5 + [0.3] * 15, 1.1, 1e-3) == []  # below ln K: noise
    assert rising_findings([1.1] * 10 + [2.0] * 10, 1.1, 1e-2)[0][0] == "diverging"


# -- when -----------------------------------------------------------------------------------------
def test_only_the_first_fit_of_a_learner_is_checked(shapes):
    lines = []
    zeros = _with_train(shapes, images=torch.zeros_like(shapes.train.images))
    learn = Learner(zeros, _model(zeros), batch_size=16, log=lines.append)
    learn.fit(1, 1e-3, callbacks=[StopAfter(1)])
    learn.fit(1, 1e-3, callbacks=[StopAfter(1)])  # e.g. fine_tune's second phase
    assert len([line for line in lines if line.startswith("sanity:")]) == 1


def test_the_lr_finder_does_not_trip_it(shapes):
    lines = []
    learn = Learner(shapes, _model(shapes), batch_size=16, log=lines.append)
    learn.lr_find(num_it=30, plot=None)
    assert not any(line.startswith("sanity:") for line in lines)
    assert learn.get_callback(SanityCheck).findings == []


def test_a_learnable_toy_set_says_nothing():
    data = make_dataset("bars", bars(240, seed=0), bars(60, seed=1), valid_pct=0.2, seed=0)
    lines, _ = _fit(data, batches=0)
    assert lines == []


def test_deepstart_train_no_sanity_reaches_the_learner():
    from deepstart.cli import build_parser
    from deepstart.cli.options import given_options
    from deepstart.config import TrainConfig
    from deepstart.run.options import learner_kwargs

    args = build_parser().parse_args(["train", "--no-sanity"])
    assert given_options(args, TrainConfig) == {"sanity": False}
    assert learner_kwargs(TrainConfig(sanity=False))["sanity"] is False
    assert learner_kwargs(TrainConfig())["sanity"] is True


def test_regression_gets_no_label_or_rising_findings_but_a_nan_is_said():
    from deepstart.fitting.data import function_data

    data = function_data("sin")
    torch.manual_seed(0)
    model = create_model("fit_mlp", x_range=(-6.3, 6.3))
    lines = []
    kw = {"batch_size": 32, "log": lines.append}  # 31 batches an epoch
    learn = Learner(data, model, guard=False, loss_func=RisingMSE(), **kw)
    learn.fit(1, 1e-3, callbacks=[StopAfter(21)])
    assert [line for line in lines if line.startswith("sanity:")] == []  # rising: not judged
    lines.clear()
    learn = Learner(data, create_model("fit_mlp", x_range=(-6.3, 6.3)), **kw)
    learn.remove_callback(learn.get_callback(DivergenceGuard))
    learn.loss_func = NanAt(3, F.mse_loss)
    learn.fit(1, 1e-3, callbacks=[StopAfter(21)])
    _one_line([line for line in lines if line.startswith("sanity:")], "the loss became nan")


class RisingMSE(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, pred, target):
        self.calls += 1
        return F.mse_loss(pred, target) + 0.5 * self.calls  # 0.5 more each batch
