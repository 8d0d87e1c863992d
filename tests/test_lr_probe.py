"""The divergence guard's LR sweep (deepstart.train.lr_probe): the curve it measures from a
good state, the LR it reads off it, and what it leaves alone (the global RNG, autograd
outside it)."""

import itertools
import math

import pytest
import torch

from deepstart.models.registry import create_model
from deepstart.train.learner import Learner
from deepstart.train.lr_probe import safe_lr, sweep


def _learner(data, opt="adam"):
    torch.manual_seed(0)
    model = create_model(
        "mlp", in_channels=data.channels, num_classes=data.num_classes, input_size=data.size
    )
    learn = Learner(data, model, opt=opt, batch_size=32, guard=False, sanity=False, quiet=True)
    learn.create_opt()
    return learn


def _batches(learn, n=4):
    out = []
    for xb, yb in learn.batches(learn.data.train, train=True):
        out.append((xb, yb))
        if len(out) == n:
            return out
    return out


def test_safe_lr_is_a_tenth_of_the_lowest_smoothed_loss():
    assert safe_lr([1e-4, 1e-3, 1e-2, 1e-1], [2.0, 1.5, 1.0, math.inf]) == pytest.approx(1e-3)
    # the blown-up tail (inf) is not part of the curve
    lrs = [10.0 ** (k - 6) for k in range(8)]
    got = safe_lr(lrs, [2.3, 2.2, 1.9, 1.2, 0.6, 0.5, math.inf, math.inf])
    assert got == pytest.approx(lrs[5] / 10)


@pytest.mark.parametrize(
    "losses",
    [
        [math.inf] * 5,  # nothing finite: even the smallest LR blew up
        [1.0, math.inf, math.inf],  # one point is not a curve
        [1.0, 1.1, 1.3, 2.0],  # the loss never fell below its start
    ],
)
def test_safe_lr_says_nothing_when_the_curve_says_nothing(losses):
    assert safe_lr([10.0**-k for k in range(len(losses))], losses) is None


def test_safe_lr_with_a_fall_needs_the_curve_to_fall_that_far():
    lrs = [10.0**-k for k in range(8, 0, -1)]
    flat = [1.10, 1.08, 1.12, 1.05, 1.09, 1.11, 1.07, 1.10]  # within noise: lowest anywhere
    assert safe_lr(lrs, flat) is not None
    assert safe_lr(lrs, flat, fall=0.1) is None
    fell = [1.10, 1.05, 0.9, 0.7, 0.6, 0.65, 0.9, math.inf]
    assert safe_lr(lrs, fell, fall=0.1) == safe_lr(lrs, fell)


def test_the_sweep_trains_without_dropout(toy_data):
    """At an LR too small to change anything, the same batch met again gives the same loss:
    with dropout on, a batch of 16 moved by 26% at an Adam LR of 1e-5 (mnist_cnn), which
    reads as a blow-up. Dropout is on again for the fit afterwards."""
    torch.manual_seed(0)
    model = create_model("mnist_cnn", in_channels=1, num_classes=3, input_size=toy_data.size)
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    learn = Learner(toy_data, model, batch_size=16, guard=False, sanity=False, quiet=True)
    learn.create_opt()
    _, losses = sweep(learn, _batches(learn), 1e-9, steps=12)
    for i in range(4, 12):
        assert losses[i] == pytest.approx(losses[i - 4], rel=1e-4)
    assert all(m.training for m in model.modules())


def test_sweep_measures_a_curve_and_leaves_the_rng_alone(toy_data):
    learn = _learner(toy_data)
    batches = _batches(learn)
    rng = torch.get_rng_state()
    with torch.no_grad():  # as from the guard's after_validate: the sweep still trains
        lrs, losses = sweep(learn, batches, 10.0, steps=16)
    assert torch.equal(torch.get_rng_state(), rng)
    assert len(lrs) == len(losses) == 16
    assert lrs[0] == pytest.approx(10.0 / 1e5) and lrs[-1] == pytest.approx(10.0)
    assert all(b / a == pytest.approx(lrs[1] / lrs[0]) for a, b in itertools.pairwise(lrs))
    # Adam at LR 10 blows up: the tail is cut (inf), and the LR read off lies far below
    assert losses[-1] == math.inf and math.isfinite(losses[0])
    found = safe_lr(lrs, losses)
    assert found is not None and 1e-5 < found < 0.1


def test_sweep_keeps_the_ratio_of_discriminative_lrs(toy_data):
    learn = _learner(toy_data, opt="sgd")
    groups = learn.opt.param_groups
    if len(groups) < 2:  # one group: split it to see the ratio kept
        params = groups[0]["params"]
        groups[0]["params"] = params[:1]
        learn.opt.add_param_group({"params": params[1:], "lr": groups[0]["lr"]})
    groups = learn.opt.param_groups
    groups[0]["lr"], groups[-1]["lr"] = 0.01, 0.1  # the first group at a tenth of the last
    sweep(learn, _batches(learn, 1), 1.0, steps=3, span=100.0)
    assert groups[-1]["lr"] == pytest.approx(1.0) and groups[0]["lr"] == pytest.approx(0.1)


def test_no_sweep_for_lbfgs_or_without_batches(toy_data):
    learn = _learner(toy_data)
    learn.opt = torch.optim.LBFGS(learn.model.parameters())  # it re-evaluates: no sweep
    assert sweep(learn, _batches(learn, 1), 1.0) == ([], [])
    assert sweep(_learner(toy_data), [], 1.0) == ([], [])
