"""The Task seam (issue 19): what differs between classification and regression lives in a
Task, and a new kind of task plugs into the Learner without a change to it."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepstart.data.dataset import Batches
from deepstart.data.tensors import TensorBatches, TensorData, TensorSet
from deepstart.device import resolve_precision
from deepstart.errors import ConfigError
from deepstart.models.registry import create_model
from deepstart.train.learner import Learner
from deepstart.train.progress import Progress, format_header, format_row
from deepstart.train.task import Classification, Regression, Task, task_for

CPU = torch.device("cpu")


def _classifier(data) -> Learner:
    torch.manual_seed(0)
    model = create_model(
        "logreg", in_channels=data.channels, num_classes=data.num_classes, input_size=data.size
    )
    return Learner(data, model, batch_size=32, device="cpu", precision="fp32", log=lambda m: None)


def _line_data() -> TensorData:
    """y = 2x + 1 on a few points: small enough to score by hand."""
    x = torch.linspace(-1, 1, 9)
    valid = torch.tensor([-0.75, 0.0, 0.5])
    return TensorData("2x+1", TensorSet(x, 2 * x + 1), TensorSet(valid, 2 * valid + 1))


def _zero_line() -> nn.Linear:
    """A model that predicts 0 everywhere: its errors are the targets themselves."""
    model = nn.Linear(1, 1)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    return model


# -- choosing the task ------------------------------------------------------------------------


def test_the_data_names_the_task_and_the_learner_can_override_it(toy_data):
    assert isinstance(task_for(toy_data), Classification)  # images name no task
    assert isinstance(task_for(_line_data()), Regression)
    assert isinstance(task_for(toy_data, "regression"), Regression)
    custom = Regression()
    assert task_for(toy_data, custom) is custom
    with pytest.raises(ConfigError, match="unknown task 'ranking'"):
        task_for(toy_data, "ranking")
    learn = _classifier(toy_data)
    assert learn.task.name == "classification" and repr(learn.task) == "Classification()"
    assert isinstance(learn.loss_func, nn.CrossEntropyLoss)
    assert Learner(_line_data(), _zero_line(), device="cpu").task.name == "regression"


def test_precision_auto_is_the_tasks_choice():
    assert Classification().amp_dtype("auto", CPU) == resolve_precision("auto", CPU)
    assert Regression().amp_dtype("auto", CPU) is None  # a fit is judged on errors of 1e-3
    assert Regression().amp_dtype("bf16", CPU) == torch.bfloat16  # a named precision wins
    with pytest.raises(ConfigError, match="precision"):
        Regression().amp_dtype("fp8", CPU)


# -- classification -------------------------------------------------------------------------


def test_classification_batches_scores_evaluates_and_predicts(toy_data):
    learn = _classifier(toy_data)
    task = learn.task
    dl = task.batches(learn, toy_data.valid)
    assert isinstance(dl, Batches) and dl.batch_size == 64  # evaluation: twice the batch
    out = task.score(learn, dl)
    # the same numbers by hand: mean cross-entropy in nats and the fraction right
    with torch.no_grad():
        logits = torch.cat([learn.model.eval()(xb) for xb, _ in dl]).float()
    target = toy_data.valid.labels
    assert out["loss"] == pytest.approx(float(F.cross_entropy(logits, target)), rel=1e-5)
    assert out["accuracy"] == pytest.approx(float((logits.argmax(1) == target).double().mean()))
    assert out["probs"].shape == (len(target), 3) and torch.equal(out["target"], target)
    res = learn.evaluate("valid")
    assert res["loss"] == pytest.approx(out["loss"]) and res["split"] == "valid"
    assert {"per_class", "loss_bits", "chance_bits", "input_warnings"} <= set(res)
    probs, _ = learn.get_preds(toy_data.valid.images[:5])
    torch.testing.assert_close(probs, out["probs"][:5])
    assert learn.baseline_loss == pytest.approx(math.log(3))  # a uniform guess


def test_classification_rows_and_progress_columns():
    task = Classification()
    row = task.row({"valid_loss": math.log(2), "accuracy": 0.123456789}, train_loss=1 / 3)
    assert row == {
        "train_loss": 0.333333,
        "valid_loss": 0.693147,
        "valid_bits": 1.0,
        "accuracy": 0.123457,
    }
    header = format_header(task.columns())
    assert header == "  epoch train_loss valid_loss valid_bits  accuracy        lr     time"
    line = format_row({**row, "lr": 1e-3, "seconds": 2.5}, 1, 3, task.columns())
    assert line == "  1/3       0.3333     0.6931      1.000    0.1235  1.00e-03     2.5s"
    assert len(line) == len(header)


# -- regression -----------------------------------------------------------------------------


def test_regression_scores_a_model_by_hand():
    data = _line_data()
    learn = Learner(data, _zero_line(), device="cpu", log=lambda m: None)
    task = learn.task
    assert isinstance(learn.loss_func, nn.MSELoss) and learn.amp_dtype is None
    dl = task.batches(learn, data.valid)
    assert isinstance(dl, TensorBatches)
    y = data.valid.y  # the zero model's errors are the targets: -0.5, 1, 2
    out = task.score(learn, dl)
    assert out["loss"] == pytest.approx(float(y.square().mean()))
    assert out["max_error"] == pytest.approx(2.0)
    assert out["rms_error"] == pytest.approx(float(y.square().mean().sqrt()))
    res = learn.evaluate("valid")
    assert set(res) == {"split", "n", "loss", "max_error", "rms_error", "mean_error"}
    assert res["mean_error"] == pytest.approx(3.5 / 3)
    assert learn.evaluate()["n"] == 3  # no test split: valid
    torch.testing.assert_close(learn.predict([0.0, 1.0]), torch.zeros(2, 1))
    out, target = learn.get_preds("valid")  # outputs and targets, as for a classifier
    torch.testing.assert_close(out, torch.zeros(3, 1))
    assert torch.equal(target, data.valid.y)
    out, none = learn.get_preds([0.0, 1.0])
    assert none is None and out.shape == (2, 1)
    # knowing nothing: the mean training y (1) for every valid point
    assert learn.baseline_loss == pytest.approx(float((y - 1).square().mean()))
    with pytest.raises(ConfigError, match="image classifiers"):
        task.batches(learn, data.train, shard=True)


def test_regression_rows_keep_significant_digits():
    metrics = {"valid_loss": 1.23456789e-8, "max_error": 2.0e-4, "rms_error": math.nan}
    row = Regression().row(metrics, train_loss=3.14159265)
    assert list(row) == ["train_loss", "valid_loss", "max_error", "rms_error"]
    assert row["train_loss"] == 3.14159 and row["valid_loss"] == 1.23457e-8  # not rounded to 0
    assert row["max_error"] == 2e-4 and math.isnan(row["rms_error"])
    header = format_header(Regression().columns())
    assert header == "  epoch train_loss valid_loss  max_error  rms_error        lr     time"


# -- a third task through the seam ----------------------------------------------------------


class MedianFit(Task):
    """A task the Learner has never heard of: fit numbers under the L1 loss, scored by the
    mean and the worst absolute error."""

    name = "median_fit"
    valid_metrics = ("mae", "worst")
    autocast_by_default = False

    def default_loss(self) -> nn.Module:
        return nn.L1Loss()

    def batches(self, learn, split, *, train=False, shard=False):
        return TensorBatches(split, learn.batch_size, device=learn.device, shuffle=train)

    @torch.no_grad()
    def score(self, learn, dl):
        was = learn.model.training
        learn.model.eval()
        pred = torch.cat([learn.model(xb) for xb, _ in dl])
        target = torch.cat([yb for _, yb in dl])
        learn.model.train(was)
        err = (pred - target).abs()
        mae = float(err.mean())
        return {"loss": mae, "mae": mae, "worst": float(err.max()), "pred": pred, "target": target}

    def predict(self, learn, x):
        points = TensorSet(torch.as_tensor(x, dtype=torch.float32), torch.zeros(len(x), 1))
        return self.score(learn, self.batches(learn, points))["pred"]

    def baseline_loss(self, learn):
        guess = learn.data.train.y.median()
        return float((learn.data.valid.y - guess).abs().mean())


def test_a_new_task_plugs_into_the_learner():
    data = _line_data()
    stream = io.StringIO()
    learn = Learner(
        data,
        _zero_line(),
        task=MedianFit(),
        opt="adam",
        lr=0.05,
        batch_size=9,
        device="cpu",
        callbacks=[Progress("plain", stream=stream)],
        log=lambda m: None,
    )
    assert isinstance(learn.loss_func, nn.L1Loss) and learn.amp_dtype is None
    start = learn.evaluate("valid")
    learn.fit(30)
    end = learn.evaluate("valid")
    assert set(end) == {"split", "n", "loss", "mae", "worst"} and end["n"] == 3
    assert end["mae"] < start["mae"] / 4  # it learned the line
    row = learn.recorder.history[-1]
    assert list(row) == ["epoch", "train_loss", "valid_loss", "mae", "worst", "lr", "seconds"]
    assert learn.metrics["mae"] == row["mae"]
    lines = stream.getvalue().splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "mae", "worst", "lr", "time"]
    assert len(lines) == 31 and lines[-1].startswith(" 30/30")
    assert learn.predict(torch.tensor([0.0])).shape == (1, 1)
    assert learn.baseline_loss > end["loss"]
