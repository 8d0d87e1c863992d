import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch

from deepstart.errors import ConfigError
from deepstart.models.registry import create_model
from deepstart.train.callbacks import Callback, Checkpoint, Progress
from deepstart.train.learner import Learner as _Learner
from deepstart.train.lr_finder import (
    LRFindResult,
    lr_find,
    minimum,
    slide,
    smooth_losses,
    steep,
    valley,
)


def Learner(*args, **kwargs):
    """These tests study the guard / the sweep on their own: no default guard unless given."""
    kwargs.setdefault("guard", False)
    return _Learner(*args, **kwargs)


LRS = [10.0 ** (k / 2 - 6) for k in range(11)]  # 1e-6 .. 1e-1, evenly spaced in log(lr)
# A U: flat, a fall whose steepest step is 3 -> 1 (index 4 -> 5), a minimum at 7, a rise.
U = [5.0, 5.0, 4.9, 4.5, 3.0, 1.0, 0.5, 0.4, 0.6, 2.0, 6.0]


def _model(data, name="logreg"):
    torch.manual_seed(0)
    return create_model(
        name, in_channels=data.channels, num_classes=data.num_classes, input_size=data.size
    )


def _counters(learn):
    return (learn.epoch, learn.iter, learn.train_iter, learn.total_iters, learn.n_epochs)


def _fastai_valley(lrs, losses):
    # fastai's valley search (fastai/callback/schedule.py) kept as written there, as a
    # reference; the index is its documented "2/3 of the way down" (its code takes 1/2).
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    return lrs[max_start + int(2 * (max_end - max_start) / 3)]


def _fastai_slide(lrs, losses, lr_diff=15, thresh=0.005, adjust_value=1.0):
    # fastai's slide, the same way (negative indices from the end).
    loss_grad = np.gradient(np.asarray(losses))
    r_idx = -1
    l_idx = r_idx - lr_diff
    local_min_lr = lrs[l_idx]
    while (l_idx >= -len(losses)) and (abs(loss_grad[r_idx] - loss_grad[l_idx]) > thresh):
        local_min_lr = lrs[l_idx]
        r_idx -= 1
        l_idx -= 1
    return local_min_lr * adjust_value


# -- the pure rules ------------------------------------------------------------------------
def test_smooth_losses_is_a_bias_corrected_ema():
    assert smooth_losses([1.0, 2.0], beta=0.5) == [1.0, (0.25 + 1.0) / 0.75]
    assert smooth_losses([3.0] * 5) == pytest.approx([3.0] * 5)  # no pull towards 0
    assert smooth_losses([1.0, 2.0, 3.0], beta=0.0) == [1.0, 2.0, 3.0]
    assert math.isnan(smooth_losses([1.0, math.nan, 1.0])[-1])


def test_rules_on_a_u_shaped_curve():
    assert steep(LRS, U) == (LRS[4], 4)
    assert minimum(LRS, U) == (LRS[7] / 10, 7)
    # Longest strictly decreasing run: 5 (index 0), 4.9, 4.5, 3, 1, 0.5, 0.4 -> 7 points
    # ending at 7; two thirds of the way down: 7 - 7 + (2 * 7) // 3 = 4.
    assert valley(LRS, U) == (LRS[4], 4)
    assert valley(LRS, U)[0] == _fastai_valley(LRS, U)


def test_steep_uses_log_lr_not_lr():
    lrs = [1e-3, 1e-2, 2e-2, 1e-1]
    # Drops of 1.0 over a decade vs 0.5 over log10(2)=0.3 of one: the second is steeper.
    assert steep(lrs, [3.0, 2.0, 1.5, 1.4]) == (1e-2, 1)


def test_slide_on_a_line_that_turns_up():
    lrs = [10.0 ** (k / 10 - 6) for k in range(40)]
    # Falls with slope -0.05 per point to index 25, then rises as 0.1 * (k - 25)**2.
    losses = [3 - 0.05 * k if k <= 25 else 3 - 1.25 + 0.1 * (k - 25) ** 2 for k in range(40)]
    # Windows (right, right - 15) slide from right = 39 while the right end sits on the
    # upturn (np.gradient there >= 0.025, vs -0.05 at the left); at right = 24 both ends
    # are on the line and it stops. The last window that still differed had left = 10.
    assert slide(lrs, losses) == (lrs[10], 10)
    assert slide(lrs, losses, adjust_value=0.5) == (lrs[10] * 0.5, 10)
    assert slide(lrs, losses)[0] == _fastai_slide(lrs, losses)
    straight = [3 - 0.05 * k for k in range(40)]
    assert slide(lrs, straight) == (lrs[24], 24)  # nothing to slide past: first window


def test_rules_match_fastai_on_random_curves():
    g = np.random.default_rng(0)
    for _ in range(200):
        n = int(g.integers(20, 80))
        lrs = list(np.geomspace(1e-6, 1.0, n))
        losses = list(np.cumsum(g.normal(-0.01, 0.05, n)) + 2.0)
        assert valley(lrs, losses)[0] == _fastai_valley(lrs, losses)
        assert slide(lrs, losses)[0] == _fastai_slide(lrs, losses)


def test_rules_edge_cases():
    rising = [1.0, 2.0, 3.0]
    assert valley(LRS[:3], rising) == (LRS[0], 0)  # fastai would wrap round to LRS[2]
    for rule in (valley, steep, minimum, slide):
        assert rule([1e-3], [1.0])[1] == 0
        with pytest.raises(ValueError):
            rule([], [])
        with pytest.raises(ValueError):
            rule([1e-3, 1e-2], [1.0])


# -- the sweep -----------------------------------------------------------------------------
class SeenLR(Callback):
    """Reads the LR the optimizer actually stepped with."""

    order = 200

    def __init__(self):
        self.lrs, self.epochs = [], set()

    def after_step(self):
        self.lrs.append(self.learn.opt.param_groups[0]["lr"])
        self.epochs.add(self.learn.epoch)


def test_sweep_is_exponential_from_start_to_end(toy_data):
    seen = SeenLR()
    learn = Learner(toy_data, _model(toy_data), batch_size=32, callbacks=[seen])
    before = [type(cb) for cb in learn.callbacks]  # the defaults (Recorder, Progress...), seen
    n_batches = len(toy_data.train) // 32
    r = lr_find(learn, start_lr=1e-5, end_lr=1e-2, num_it=20, stop_div=False)
    assert r.stop_reason == "completed" and len(r.lrs) == len(r.losses) == 20
    assert len(seen.epochs) == math.ceil(20 / n_batches) > 1  # ran over several epochs
    assert seen.lrs == r.lrs  # user callbacks take part, and saw the sweep's LR
    assert r.lrs[0] == pytest.approx(1e-5) and r.lrs[-1] == pytest.approx(1e-2)
    ratios = np.array(r.lrs[1:]) / np.array(r.lrs[:-1])
    np.testing.assert_allclose(ratios, (1e-2 / 1e-5) ** (1 / 19), rtol=1e-9)
    assert r.smoothed == smooth_losses(r.losses, 0.98)
    assert set(r.suggestions) == {"valley", "steep", "minimum", "slide"}
    assert all(1e-5 <= r.lrs[i] <= 1e-2 for i in r.indices.values())
    assert [type(cb) for cb in learn.callbacks] == before  # nothing left behind


def test_callbacks_can_sit_the_sweep_out(toy_data):
    class Watcher(SeenLR):
        skip_lr_find = True  # e.g. a divergence guard or weight EMA: not for a sweep

    seen, watcher = SeenLR(), Watcher()
    learn = Learner(toy_data, _model(toy_data), batch_size=32, callbacks=[watcher, seen])
    before = list(learn.callbacks)  # the defaults (Recorder, SanityCheck, Progress), then ours
    lr_find(learn, num_it=10)
    assert watcher.lrs == [] and len(seen.lrs) == 10
    assert learn.callbacks == before and learn.callbacks[-2:] == [watcher, seen]


def test_stops_when_the_smoothed_loss_passes_4x_its_best(toy_data):
    learn = Learner(toy_data, _model(toy_data), opt="sgd", batch_size=32)
    r = lr_find(learn, start_lr=1e-4, end_lr=1e6, num_it=60)
    assert r.stop_reason == "diverged" and len(r.lrs) < 60
    s = r.smoothed
    assert s[-1] > 4 * min(s[:-1])  # the rule fired on the last step...
    assert all(s[i] <= 4 * min(s[: i + 1]) for i in range(len(s) - 1))  # ...and not before
    assert all(math.isfinite(v) for v in r.suggestions.values())
    assert max(r.indices.values()) < len(s) - 5  # the diverging tail is not suggested
    # the LR of the lowest smoothed loss, of the points the rules read (not the first tenth)
    i = min(range(60 // 10, len(s) - 5), key=lambda k: s[k])
    assert r.lowest == r.lrs[i] == pytest.approx(10 * r.suggestions["minimum"])


def test_stops_on_a_nan_loss(toy_data):
    calls = []

    def nan_after_10(pred, target):
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(pred, target)
        return loss * math.nan if len(calls) > 10 else loss

    learn = Learner(toy_data, _model(toy_data), batch_size=32, loss_func=nan_after_10)
    r = lr_find(learn, num_it=50, stop_div=False)
    assert r.stop_reason == "non-finite" and len(r.lrs) == 11
    assert all(math.isfinite(v) for v in r.suggestions.values())
    assert all(p.isfinite().all() for p in learn.model.parameters())  # weights restored


def test_restores_weights_optimizer_and_learner_state(toy_data, tmp_path):
    stream = io.StringIO()
    progress, ckpt = Progress(mode="plain", stream=stream), Checkpoint(tmp_path / "ckpt")
    model = _model(toy_data, "vgg_small")
    learn = Learner(toy_data, model, opt="adam", batch_size=32, callbacks=[progress, ckpt])
    learn.fit_one_cycle(1, 3e-3)
    learn.lr_mult = 0.5
    model_before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    opt_before = learn.snapshot()["opt"]
    assert opt_before["state"] and "exp_avg" in opt_before["state"][0]
    history = [dict(row) for row in learn.recorder.history]
    batch_losses = list(learn.recorder.batch_losses)
    cbs = list(learn.callbacks)
    printed, ckpt_bytes = stream.getvalue(), (tmp_path / "ckpt" / "last.pt").read_bytes()
    counters = _counters(learn)
    rng = torch.get_rng_state()
    learn.model.eval()

    r = learn.lr_find(num_it=30)
    assert len(r.lrs) > 5
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, model_before[k]), k  # includes BatchNorm running stats
    opt_after = learn.opt.state_dict()
    assert opt_after["param_groups"] == opt_before["param_groups"]  # lr and betas too
    assert opt_after["state"].keys() == opt_before["state"].keys()
    for i, state in opt_before["state"].items():
        for name, value in state.items():
            assert torch.equal(opt_after["state"][i][name].cpu(), value), (i, name)
    assert learn.recorder.history == history and learn.recorder.batch_losses == batch_losses
    assert learn.callbacks == cbs  # Progress and Checkpoint back, in order
    said = stream.getvalue()[len(printed) :].splitlines()  # the sweep's one line, no rows
    assert stream.getvalue().startswith(printed) and len(said) == 1
    assert said[0].startswith(f"LR finder: {len(r.lrs)} steps")
    assert (tmp_path / "ckpt" / "last.pt").read_bytes() == ckpt_bytes
    assert counters == _counters(learn)
    assert learn.lr_mult == 0.5 and learn.lr == 3e-3
    assert torch.equal(torch.get_rng_state(), rng)
    assert not learn.model.training  # the mode it was left in


def test_leaves_no_optimizer_and_does_not_change_later_training(toy_data):
    def trained(with_lr_find):
        learn = Learner(toy_data, _model(toy_data, "mlp"), batch_size=32, seed=3)
        if with_lr_find:
            learn.lr_find(num_it=20)
            assert learn.opt is None and not hasattr(learn, "train_dl")
        learn.fit(1, 1e-3)
        return learn.model.state_dict(), learn.recorder.history

    (w1, h1), (w2, h2) = trained(True), trained(False)
    assert all(torch.equal(w1[k], w2[k]) for k in w2)
    assert [r["train_loss"] for r in h1] == [r["train_loss"] for r in h2]


def test_suggest_chooses_what_is_marked_and_takes_custom_rules(toy_data):
    def tenth_of_last(lrs, losses):
        return lrs[-1] / 10, len(lrs) - 1

    learn = Learner(toy_data, _model(toy_data), batch_size=32)
    r = learn.lr_find(num_it=20, suggest=("steep", tenth_of_last))
    assert r.marked == ["steep", "tenth_of_last"]
    assert set(r.suggestions) == {"valley", "steep", "minimum", "slide", "tenth_of_last"}
    with pytest.raises(ConfigError, match="unknown suggestion rule"):
        learn.lr_find(suggest=("valey",))
    with pytest.raises(ConfigError):
        learn.lr_find(start_lr=1.0, end_lr=1e-3)


# -- the result ----------------------------------------------------------------------------
def test_plot_writes_a_png_of_what_the_result_holds(toy_data, tmp_path):
    learn = Learner(toy_data, _model(toy_data), batch_size=32)
    r = learn.lr_find(num_it=30, plot=tmp_path / "lr_find.png")
    png = (tmp_path / "lr_find.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(png) < 2_000_000

    ax = r.figure().axes[0]
    raw, smoothed, *marks = ax.get_lines()
    assert ax.get_xscale() == "log"
    assert list(raw.get_xdata()) == r.lrs and list(raw.get_ydata()) == r.losses
    assert list(smoothed.get_ydata()) == r.smoothed
    assert [m.get_xdata()[0] for m in marks] == [r.suggestions[k] for k in r.marked]
    assert len({m.get_marker() for m in marks}) == 4  # a distinct marker per rule
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"valley {r.valley:.1e}" in legend and "LR finder" in ax.get_title()
    assert r.plot(tmp_path / "again.png").stat().st_size > 10_000


def test_to_dict_is_strict_json_and_round_trips():
    r = LRFindResult(
        lrs=[1e-3, 1e-2, 1e-1],
        losses=[2.0, 1.0, math.nan],
        smoothed=[2.0, 1.5, math.inf],
        suggestions={"valley": 1e-3, "steep": 1e-3, "minimum": 1e-3, "slide": math.nan},
        indices={"valley": 0, "steep": 0, "minimum": 1, "slide": -1},
        stop_reason="non-finite",
        seconds=1.25,
    )
    text = json.dumps(r.to_dict(), allow_nan=False)
    back = LRFindResult.from_dict(json.loads(text))
    assert back.lrs == r.lrs and back.losses[:2] == r.losses[:2] and math.isnan(back.losses[2])
    assert math.isnan(back.smoothed[2])  # inf and NaN both come back as NaN
    assert back.indices == r.indices and back.stop_reason == "non-finite"
    assert back.to_dict() == r.to_dict()
    assert back.valley == 1e-3 and back.lowest == 1e-2
    assert math.isnan(dataclasses.replace(back, indices={"valley": 0}).lowest)  # no minimum


def test_valley_on_toy_data_trains_well(toy_data):
    learn = Learner(toy_data, _model(toy_data, "vgg_small"), batch_size=32, seed=1)
    r = learn.lr_find()
    assert 1e-4 <= r.valley <= 1.0
    learn.fit_one_cycle(2, r.valley)
    assert learn.evaluate()["accuracy"] >= 0.9
