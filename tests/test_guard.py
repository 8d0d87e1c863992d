import dataclasses
import json
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepstart.models.registry import create_model
from deepstart.train.callbacks import Callback
from deepstart.train.guard import DivergenceGuard
from deepstart.train.learner import Learner as _Learner
from deepstart.train.lr_probe import adaptive_cap, blowup_lr, next_lr
from deepstart.train.watch import DEAD, LossWatch, output_spread

from .conftest import SHARED_DATA


def Learner(*args, **kwargs):
    """These tests study the guard / the sweep on their own: no default guard unless given."""
    kwargs.setdefault("guard", False)
    return _Learner(*args, **kwargs)


def _model(data, name="logreg"):
    torch.manual_seed(0)
    return create_model(
        name, in_channels=data.channels, num_classes=data.num_classes, input_size=data.size
    )


def _finite(model):
    return all(
        torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()
    )


class FaultyLoss(nn.Module):
    """Cross-entropy whose value is NaN, or ``extra`` (10) nats too big (same gradient), on chosen
    calls.

    Counts training calls only (validation does not use the learner's loss_func), so a fault
    hits one batch once: the replay after a restore runs clean.
    """

    def __init__(self, nan_at=(), inflate_at=()):
        super().__init__()
        self.nan_at, self.inflate_at, self.calls = set(nan_at), set(inflate_at), 0
        self.extra = 10.0

    def forward(self, pred, target):
        loss = F.cross_entropy(pred, target)
        self.calls += 1
        if self.calls in self.nan_at:
            return loss * math.nan
        if self.calls in self.inflate_at:
            return loss + self.extra  # the value looks diverged, the step does not
        return loss


def _lrs_since_last_restore(learn, guard):
    """The LRs of every batch trained from the last restore's resumption point on."""
    last = guard.events[-1]
    start = (last["restored_epoch"] - 1) * learn.n_iter + last["restored_batch"]
    return learn.recorder.batch_lrs[start:]


# -- the rule ------------------------------------------------------------------------------
def test_loss_watch_nan_and_three_spikes_in_a_row():
    watch = LossWatch()
    assert [watch.update(v) for v in [1.0] * 5] == [None] * 5
    assert watch.update(math.inf) == "nan"
    assert watch.update(math.nan) == "nan"
    assert [watch.update(v) for v in [9.0, 9.0, 9.0]] == [None, None, "spike"]
    # The bad losses were not folded into the average it measures against.
    assert watch.smooth == pytest.approx(1.0)


def test_loss_watch_ignores_noise_outliers_and_slow_rises():
    g = torch.Generator().manual_seed(0)
    watch = LossWatch()
    # A falling loss with 30% multiplicative noise, down to ~0.002 nats.
    curve = torch.logspace(0.3, -2.7, 400) * torch.exp(0.3 * torch.randn(400, generator=g))
    values = curve.tolist()
    for i in range(50, 400, 37):
        values[i] *= 20  # single outlier batches, however large
    for i in range(60, 400, 53):
        values[i] *= 10  # and pairs of them
        values[i + 1] *= 10
    values += [0.01 * 1.02**i for i in range(200)]  # a slow honest rise (an LR warm-up)
    assert [v for v in (watch.update(x) for x in values) if v is not None] == []
    assert [watch.update(x) for x in [5.0, 5.0, 5.0]] == [None, None, "spike"]


def test_blowup_lr_reads_where_the_sweep_made_things_worse():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert blowup_lr(lrs, [2.0, 1.5, 9.0, math.inf, math.inf]) == 1e-3
    assert blowup_lr(lrs, [2.0, 1.5, math.inf, math.inf, math.inf]) == 1e-3  # a NaN
    assert blowup_lr(lrs, [2.0, 1.5, 1.2, 1.0, 0.9]) is None  # never blew up
    # mnist_cnn, AdamW, MNIST: it fell to 0.845, then rose past 4x that and past the start
    assert blowup_lr(lrs, [2.37, 0.845, 0.969, 4.14, math.inf]) == 1e-2
    # 4 batches overfitted to 0.01 nats, then 0.05: past 4x the lowest, not past the start
    assert blowup_lr(lrs, [0.3, 0.05, 0.01, 0.05, math.inf]) is None
    # the net dies at chance (label smoothing: ln 10 = 2.303), below the first loss
    dead = [2.37, 2.2, 1.7, 1.7] + [2.303] * 8
    lrs12 = [10.0**k for k in range(-11, 1)]
    # it died after step 3's LR; the smoothed curve (beta 0.5) sees it two steps later
    assert blowup_lr(lrs12, dead, guessing=math.log(10)) == 1e-6
    assert blowup_lr(lrs12, dead) == 1e-5  # without knowing guessing: later, at 95% of 2.37
    noise = [2.37, 2.2, 1.7, 1.7, 1.6, 1.9, 1.7, 1.8, 2.2, 1.6, 1.7, 1.8]
    assert blowup_lr(lrs12, noise, guessing=math.log(10)) is None


def test_a_sweep_stopped_by_a_loss_of_0_bounds_at_the_last_lr_it_measured():
    """A loss of 0 (4 batches learnt by heart) stops the sweep; that 0 was measured after the
    steps before it, so the LRs from the step after it on are untried: the bound is the LR of
    the last step the 0 shows."""
    lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert blowup_lr(lrs, [2.0, 1.0, 0.0, math.inf, math.inf]) == 1e-3
    assert blowup_lr(lrs, [0.5, 0.0, math.inf, math.inf, math.inf]) == 1e-4
    assert blowup_lr(lrs, [0.0, math.inf, math.inf, math.inf, math.inf]) is None  # no LR tried
    assert blowup_lr(lrs, [2.0, 1.0, math.inf, math.inf, math.inf]) == 1e-3  # a NaN: measured


def test_blowup_lr_compares_each_batch_with_itself():
    """The sweep cycles through 4 batches whose losses differ by 10-20% on a flat curve; a
    rise under 4x the lowest shows only as one batch against its own earlier losses."""
    lrs = [10.0**k for k in range(-11, 1)]
    flat = [1.13, 0.95, 1.24, 1.17] * 3  # four batches, the LR too small to change them
    assert blowup_lr(lrs, flat, period=4, guessing=math.log(3)) is None
    # logreg, Adam, shapes: batch 2 more than doubles at step 10, under 4x the lowest
    worse = [*flat[:10], 3.28, 2.6]
    assert blowup_lr(lrs, worse, period=4, guessing=math.log(3)) == lrs[9]
    assert blowup_lr(lrs, worse, guessing=math.log(3)) is None  # as one curve: not seen
    assert blowup_lr(lrs, [*worse[:11], math.inf], period=4, guessing=math.log(3)) == lrs[9]
    noisy = [*flat[:10], 1.73, 1.17]  # 40% worse, then back: a sweep that still trains
    assert blowup_lr(lrs, noisy, period=4, guessing=math.log(3)) is None
    spike = [*flat[:10], 2.6, 1.17]  # one spike the next step undoes
    assert blowup_lr(lrs, spike, period=4, guessing=math.log(3)) is None
    small = [0.04, 0.05, 0.06, 0.05] * 2 + [0.09, 0.05, 0.06, 0.05]  # 2.25x, but 0.05 nats
    assert blowup_lr(lrs, small, period=4) is None


def test_batches_that_differ_in_the_sweeps_first_pass_are_not_a_blow_up():
    """fast_mnist, Adam, trained for 5 epochs: the sweep's first 3 steps (LRs ~1e-7, each a
    different batch) gave 0.119, 0.037, 0.208 nats; past 4x the lowest, so it stopped there,
    the guard set 4.7e-9 and gave up. In the first pass only 4x the highest is a blow-up."""
    lrs = [2.84e-3 * 1e-5 * 1e5 ** (k / 11) for k in range(12)]
    trained = [0.119, 0.037, 0.208, 0.051] * 3
    assert blowup_lr(lrs, trained, period=4, guessing=math.log(3)) is None
    assert next_lr(2.84e-3, lrs, trained, period=4, guessing=math.log(3), first=False)[0] > 1e-4
    # a real blow-up in the first pass still is one: NaN, or 4x every loss before it
    rest = [math.inf] * 9
    ln3 = math.log(3)
    assert blowup_lr(lrs, [0.119, 0.037, 0.9, *rest], period=4, guessing=ln3) == lrs[1]
    assert blowup_lr(lrs, [0.119, 0.037, math.nan, *rest], period=4, guessing=ln3) == lrs[1]
    # and after it, a batch against itself
    up = [*trained[:5], 0.9, *[math.inf] * 6]
    assert blowup_lr(lrs, up, period=4, guessing=ln3) == lrs[4]


# -- recovering ----------------------------------------------------------------------------
def test_absurd_lr_diverges_without_the_guard_and_recovers_with_it(toy_data):
    def run(callbacks):
        learn = Learner(toy_data, _model(toy_data, "mlp"), opt="sgd", batch_size=32)
        learn.fit(3, 10.0, schedule="cosine", callbacks=callbacks)
        return learn

    plain = run([])
    assert not _finite(plain.model) or plain.evaluate()["accuracy"] < 0.5

    lines = []
    guard = DivergenceGuard(log=lines.append)
    learn = run([guard])
    assert guard.events and not guard.gave_up
    steps = [e["new_lr"] / e["old_lr"] for e in guard.events]
    # Each restore replays from an epoch start, where the cosine was higher than at the
    # batch that diverged: lr_mult falls further than new/old so the replay stays below.
    assert learn.lr_mult <= math.prod(steps) * (1 + 1e-9)
    assert all(step <= 0.5 + 1e-9 for step in steps)  # never lowered by less than half
    assert max(_lrs_since_last_restore(learn, guard)) <= guard.events[-1]["new_lr"] * 1.0001
    assert _finite(learn.model)
    assert learn.evaluate()["accuracy"] >= 0.9
    assert len(lines) == len(guard.events) and all("\n" not in s for s in lines)
    first = guard.events[0]
    # The sweep blew up far below half of LR 10: halving would not do, so it jumped at once.
    assert first["how"] == "swept" and first["new_lr"] < first["old_lr"] / 100
    assert f"swept the LR from there and set it to {first['new_lr']:.1e}" in lines[0]
    assert "(try 1 of 8)" in lines[0]
    # it went back to the epoch's start, where the cosine was higher: that part is capped too
    assert ", the most it reaches from there on (it was to climb to 1.0e+01)" in lines[0]
    assert (first["epoch"], first["tries"]) == (1, 1) and first["old_lr"] > 5.0
    assert first["kind"] in ("nan", "spike") and first["action"] == "restored"


def test_a_nan_at_a_sane_lr_halves_it_as_the_notes_do(toy_data):
    """One bad batch at an LR the sweep does not blow up at: the notes' rule, halve it."""
    lines = []
    guard = DivergenceGuard(log=lines.append)
    loss = FaultyLoss(nan_at={30})
    learn = Learner(toy_data, _model(toy_data), loss_func=loss, batch_size=16, callbacks=[guard])
    learn.fit(3, 1e-2)
    [event] = guard.events
    assert (event["kind"], event["how"], event["new_lr"]) == ("nan", "halved", 5e-3)
    assert "halved the LR to 5.0e-03 (try 1 of 8)" in lines[0]
    assert learn.lr_mult == 0.5 and learn.evaluate()["accuracy"] >= 0.9


@pytest.mark.parametrize(
    ("name", "opt", "sane"),
    [
        ("mnist_cnn", "sgd", 0.1),
        ("mnist_cnn", "adam", 1e-3),
        ("mnist_cnn", "adamw", 1e-3),
    ],
)
def test_an_lr_10000_times_too_high_is_brought_down_by_a_sweep(toy_data, name, opt, sane):
    """Halving alone would need ~14 restores: the guard sweeps the LR from the restored state
    and jumps to a safe one (Adam and AdamW: straight to the cap, a tenth of the weights)."""
    lines = []
    guard = DivergenceGuard(log=lines.append)
    model = _model(toy_data, name)
    learn = Learner(toy_data, model, opt=opt, batch_size=32, callbacks=[guard])
    learn.fit_one_cycle(4, sane * 1e4)
    assert not guard.gave_up and 1 <= len(guard.events) <= 3, lines
    # halving would leave it ~5,000x too high
    if opt == "sgd":
        assert guard.events[0]["how"] == "swept", lines
        assert "swept the LR from there and set it to" in lines[0]
    else:
        assert guard.events[0]["how"] == "capped", lines
        assert "a tenth of the weights' median size" in lines[0]
    assert learn.lr_mult < 1e-2  # it came down by orders of magnitude, not a few halvings
    assert learn.evaluate()["accuracy"] >= 0.9, lines


def test_a_divergence_in_the_warm_up_caps_the_rest_of_the_schedule(toy_data):
    """At batch 3 of one-cycle the LR is ~peak/16: lowering the whole schedule by new/old
    would climb ~16x past the LR found safe. The rest of the fit peaks at the new LR."""
    loss = FaultyLoss(nan_at={4})  # batch 3 of epoch 1, deep in the warm-up
    guard = DivergenceGuard(snapshot_every=2, log=lambda s: None)
    learn = Learner(toy_data, _model(toy_data), loss_func=loss, batch_size=16, callbacks=[guard])
    learn.fit_one_cycle(4, 1e-2)
    [event] = guard.events
    assert (event["batch"], event["restored_batch"], event["how"]) == (3, 2, "halved")
    assert event["old_lr"] < 1e-2 / 5  # still low in the warm-up
    lrs = _lrs_since_last_restore(learn, guard)
    assert max(lrs) == pytest.approx(event["new_lr"], rel=1e-3)  # it climbs to there, no further
    assert lrs[0] < lrs[len(lrs) // 4]  # and still warms up and anneals, only lower
    assert learn.evaluate()["accuracy"] >= 0.9


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_a_huge_lr_swept_in_the_warm_up_still_learns(toy_data, opt):
    """mnist_cnn at 10,000x a sane peak LR, brought down in one-cycle's warm-up (SGD by a
    sweep, Adam to its cap): the rest of the fit stays at or below the new LR, and it learns.
    (On shapes, scaling the schedule by the sweep instead climbed past the safe LR to a net
    dead at chance; these easy bars survive that, so here it is the LR bound that fails
    without the cap on the schedule.)"""
    sane = {"adam": 2.5e-3, "sgd": 3.4e-2}[opt]
    guard = DivergenceGuard(log=lambda s: None)
    model = _model(toy_data, "mnist_cnn")
    learn = Learner(toy_data, model, opt=opt, batch_size=16, callbacks=[guard])
    learn.fit_one_cycle(4, sane * 1e4)
    how = {"sgd": "swept", "adam": "capped"}[opt]
    assert not guard.gave_up and any(e["how"] == how for e in guard.events)
    assert max(_lrs_since_last_restore(learn, guard)) <= guard.events[-1]["new_lr"] * 1.0001
    assert learn.evaluate()["accuracy"] >= 0.9


class DiesFor(nn.Module):
    """Answers every input alike (the batch mean, so gradients still flow) on training calls
    ``start`` .. ``start + n - 1``: a dead network, whose loss stays near guessing."""

    def __init__(self, inner, start, n, also=()):
        super().__init__()
        self.inner, self.calls = inner, 0
        self.dead = {c for s in (start, *also) for c in range(s, s + n)}  # and ``also`` ones

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls in self.dead:
                return out.mean(0, keepdim=True).expand_as(out)
        return out


def test_output_spread_is_zero_only_when_every_input_gets_the_same_answer():
    cpu = torch.device("cpu")
    alike = torch.tensor([[0.5, -2.0, 7.0]]).expand(8, 3)
    assert output_spread(alike, cpu).item() == 0.0
    varied = alike.clone()
    varied[3, 1] += 1e-3
    assert output_spread(varied, cpu).item() > DEAD
    assert math.isnan(output_spread(alike[:1], cpu).item())  # a batch of one says nothing
    assert output_spread(torch.zeros(4, 2, 5, 5), cpu).item() == 0.0  # any output shape


def test_a_network_that_went_dead_is_redone_from_the_epoch_start(toy_data):
    lines = []
    guard = DivergenceGuard(log=lines.append, probe_steps=0)
    model = DiesFor(_model(toy_data), start=9, n=3)  # batches 2-4 of epoch 2 (6 a epoch)
    learn = Learner(toy_data, model, batch_size=32, callbacks=[guard])
    learn.fit(3, 1e-2)
    [event] = guard.events
    assert (event["kind"], event["epoch"], event["batch"]) == ("dead", 2, 4)
    assert event["restored_batch"] == 0 and event["how"] == "halved"
    assert "network went dead (the same output for every input for 3 batches" in lines[0]
    assert learn.evaluate()["accuracy"] >= 0.9


def test_a_network_dead_after_a_restore_goes_back_to_where_that_lr_began(toy_data):
    """A net that dies under the LR a restore set was dying since that restore, maybe an
    epoch or more before: redoing only its epoch would start from a dying state (fast_mnist,
    AdamW, halved to 6.7 on shapes: every redo of epoch 2 died again, and the guard gave up)."""
    lines = []
    guard = DivergenceGuard(log=lines.append, probe_steps=0)
    # 6 batches an epoch; a NaN at batch 2 of epoch 1 (call 3), restored to the epoch's start
    # and replayed (calls 4-9); then dead at batches 1-3 of epoch 2 (calls 11-13)
    model = DiesFor(_model(toy_data), start=11, n=3)
    loss = FaultyLoss(nan_at={3})
    learn = Learner(toy_data, model, loss_func=loss, batch_size=32, callbacks=[guard])
    learn.fit(3, 1e-2)
    got = [(e["kind"], e["epoch"], e["restored_epoch"], e["restored_batch"]) for e in guard.events]
    assert got == [("nan", 1, 1, 0), ("dead", 2, 1, 0)]  # back to where the halved LR began
    nan, dead = guard.events
    assert dead["batch"] == 3
    assert "at epoch 2 batch 3" in lines[1] and "the state before batch 0 of epoch 1" in lines[1]
    assert dead["new_lr"] == pytest.approx(nan["new_lr"] / 2)
    assert [row["epoch"] for row in learn.recorder.history] == [1, 2, 3]
    assert learn.evaluate()["accuracy"] >= 0.9


def test_a_network_dead_twice_from_one_state_goes_back_to_the_fit_start(toy_data):
    """A net that dies again from the state the last restore went back to, at a lower LR,
    was dying there already (fast_mnist and vgg_small, AdamW on shapes: the first blow-up
    came at batch 38, after 20 batches at Adam LRs of 1-10, and every redo from batch 20
    died): back to the fit's first state."""
    lines = []
    guard = DivergenceGuard(log=lines.append, probe_steps=0, snapshot_every=2)
    # 6 batches an epoch, snapshots before batches 0, 2, 4. A NaN at batch 4 of epoch 1
    # (call 5): back to batch 2, replayed (calls 6-9). Dead at batches 1-3 of epoch 2 (calls
    # 11-13): back to batch 2 of epoch 1 (calls 14-17), dead again in epoch 2 (calls 19-21).
    model = DiesFor(_model(toy_data), start=11, n=3, also=(19,))
    loss = FaultyLoss(nan_at={5})
    learn = Learner(toy_data, model, loss_func=loss, batch_size=32, callbacks=[guard])
    learn.fit(3, 1e-2)
    got = [(e["kind"], e["epoch"], e["restored_epoch"], e["restored_batch"]) for e in guard.events]
    assert got == [("nan", 1, 1, 2), ("dead", 2, 1, 2), ("dead", 2, 1, 0)]
    assert "the state before batch 0 of epoch 1" in lines[2]
    assert [row["epoch"] for row in learn.recorder.history] == [1, 2, 3]
    assert learn.evaluate()["accuracy"] >= 0.9


def test_two_alike_batches_or_a_batch_of_one_are_not_dead(toy_data):
    guard = DivergenceGuard(log=pytest.fail)
    model = DiesFor(_model(toy_data), start=3, n=2)
    learn = Learner(toy_data, model, batch_size=32, callbacks=[guard])
    learn.fit(2, 1e-2)
    one = Learner(toy_data, _model(toy_data), batch_size=1, callbacks=[guard])
    one.fit(1, 1e-3)
    assert guard.events == []


def test_a_sweep_flat_until_it_blows_up_does_not_set_a_tiny_lr():
    """logreg on shapes: 24 steps from a fresh net stay flat near ln 3 until the loss blows
    up at ~0.17, so the sweep's lowest loss is noise anywhere on the flat part; a tenth of it
    was 2.1e-6 and the run ended at 35% (the sane LR: 44%). Two decades below the blow-up
    is the floor."""
    from deepstart.data.catalog import load_dataset

    data = load_dataset("shapes", n_train=3000, n_test=300, seed=0)

    def run(lr):
        torch.manual_seed(0)
        model = create_model("logreg", in_channels=1, num_classes=3, input_size=data.size)
        guard = DivergenceGuard(log=lambda s: None)
        learn = Learner(data, model, opt="adam", batch_size=64, seed=0, callbacks=[guard])
        learn.fit_one_cycle(8, lr)
        return guard, learn.evaluate()["accuracy"]

    _, sane = run(3e-3)
    guard, acc = run(30.0)
    # One restore; the sweep's LR (3.2e-3) is above logreg's Adam cap (a tenth of its weights'
    # RMS, ~1.8e-3), which then sets it: neither is tiny.
    assert [e["how"] for e in guard.events] in (["swept"], ["capped"])
    assert guard.events[0]["new_lr"] > 1e-3
    assert acc >= sane - 0.02


def test_adaptive_cap_is_a_tenth_of_the_weights_median_rms_for_adam_kin_only():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 2))
    with torch.no_grad():
        for layer, size in zip(model, (0.02, 0.05, 0.3)):
            layer.weight.fill_(size)  # RMS = size; the biases (1-d) do not count
            layer.bias.fill_(100.0)
    for opt in (torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop):
        assert adaptive_cap(model, opt(model.parameters())) == pytest.approx(5e-3)
    assert adaptive_cap(model, torch.optim.SGD(model.parameters(), lr=0.1)) is None
    assert adaptive_cap(model, None) is None
    model[2].weight.requires_grad_(False)  # frozen weights do not count: median of 0.02, 0.05
    assert adaptive_cap(model, torch.optim.Adam(model.parameters())) == pytest.approx(3.5e-3)
    with torch.no_grad():
        model[0].weight.zero_()  # zero-initialised: says nothing of the scale
    assert adaptive_cap(model, torch.optim.Adam(model.parameters())) == pytest.approx(5e-3)


def test_adaptive_cap_shrinks_with_depth_past_twenty_weight_tensors():
    """Layers in series compound a step's change: past 20 weight tensors the share is
    scaled by sqrt(20 / n) (ResNet-50's cap went from 5.9e-3, where it ended at 47.5%, to
    3.6e-3)."""
    for n, want in ((20, 1e-3), (80, 5e-4)):
        model = nn.Sequential(*[nn.Linear(2, 2, bias=False) for _ in range(n)])
        with torch.no_grad():
            for layer in model:
                layer.weight.fill_(0.01)
        assert adaptive_cap(model, torch.optim.Adam(model.parameters())) == pytest.approx(want)
    torch.manual_seed(0)
    deep = create_model("resnet50", in_channels=1, num_classes=3, input_size=(32, 32))
    assert adaptive_cap(deep, torch.optim.Adam(deep.parameters())) < 4.5e-3  # 5.9e-3 unscaled


def test_a_deep_net_is_capped_lower_and_told_so(toy_data):
    """25 weight matrices in series: the cap is a tenth of their median size times
    sqrt(20 / 25), and the line says so."""
    lines = []
    guard = DivergenceGuard(log=lines.append)
    model = _model(toy_data, "flat-" + "-".join(["dense16"] * 24))
    learn = Learner(toy_data, model, opt="adam", batch_size=32, callbacks=[guard])
    learn.fit_one_cycle(1, 30.0)
    assert guard.events[0]["how"] == "capped", lines
    assert "a tenth of the weights' median size, times 0.89 for a net this deep" in lines[0]


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_adam_kin_restart_no_higher_than_the_cap(toy_data, opt):
    """Without a sweep the guard halves; for Adam a halved 30 is still far above a tenth of
    the weights' size per step, so the cap sets the LR instead (SGD: halved, no cap)."""
    lines = []
    guard = DivergenceGuard(probe_steps=0, log=lines.append)
    model = _model(toy_data, "mnist_cnn")
    learn = Learner(toy_data, model, opt=opt, batch_size=16, callbacks=[guard])
    start = adaptive_cap(model, torch.optim.Adam(model.parameters()))
    learn.fit_one_cycle(2, 30.0 if opt == "adam" else 3e4)
    first = guard.events[0]
    if opt == "sgd":
        assert first["how"] == "halved"
        return
    assert first["how"] == "capped" and first["restored_batch"] == 0 and first["epoch"] == 1
    assert first["new_lr"] == pytest.approx(start)  # restored to the initial weights
    assert "a tenth of the weights' median size" in lines[0]
    assert not guard.gave_up and learn.evaluate()["accuracy"] >= 0.9


def test_adam_far_too_high_goes_to_the_cap_without_a_sweep(toy_data):
    """With a sweep allowed, an Adam LR 10x the cap or more still goes to the cap, and no
    sweep runs (a sweep from a wrecked net can land far below it: ResNet-50, a fortieth): the
    same number of forward passes, the same events and weights as with no sweep at all."""

    def run(probe_steps):
        guard = DivergenceGuard(probe_steps=probe_steps, log=lambda s: None)
        torch.manual_seed(0)
        model = _model(toy_data, "mnist_cnn")
        calls = []
        model.register_forward_hook(lambda *_: calls.append(1))
        learn = Learner(toy_data, model, opt="adam", batch_size=16, seed=0, callbacks=[guard])
        learn.fit_one_cycle(2, 30.0)
        return guard.events, len(calls), learn.model.state_dict()

    swept_events, swept_calls, swept_weights = run(24)
    events, calls, weights = run(0)
    assert swept_events[0]["how"] == "capped"
    assert swept_events == events and swept_calls == calls
    assert all(torch.equal(swept_weights[k], weights[k]) for k in weights)


def test_a_bad_batch_at_a_sane_adam_lr_is_halved_not_capped(toy_data):
    """An LR above the cap but under 10x it (logreg's own Adam LR on MNIST, 1e-2, is ~5x its
    cap) is not what the cap is for: a NaN there is more likely a bad batch; it halves."""
    guard = DivergenceGuard(probe_steps=0, log=lambda s: None)
    model = _model(toy_data)  # logreg
    limit = adaptive_cap(model, torch.optim.Adam(model.parameters()))
    assert limit < 1e-2 < 10 * limit
    learn = Learner(
        toy_data, model, opt="adam", batch_size=16, loss_func=FaultyLoss(nan_at={5}),
        callbacks=[guard],
    )  # fmt: skip
    learn.fit(1, 1e-2)
    assert [(e["how"], e["new_lr"]) for e in guard.events] == [("halved", pytest.approx(5e-3))]


def test_an_epoch_that_climbed_far_above_guessing_is_redone(toy_data):
    """Each loss under 4x the smoothed ones before it, so the batch rule folds the climb in;
    the smoothed loss passing 4x that of guessing (ln 3) says it blew up: back to the last
    state from before the climb (the epoch's start here), mid-epoch."""
    n = len(toy_data.train) // 8  # batches per epoch (24)

    class Climb(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, pred, target):
            self.calls += 1
            # x1.3 a batch: the smoothed loss lags ~3x behind, under the spike rule's 4x
            extra = 0.1 * 1.3**self.calls if not guard.events else 0.0  # until a restore
            return F.cross_entropy(pred, target) + extra

    lines = []
    # (no sweep: this loss climbs with every call, whatever the LR, so a sweep would see it
    # blow up at the smallest LR; the rule is what is tested here)
    guard = DivergenceGuard(log=lines.append, probe_steps=0)
    learn = Learner(toy_data, _model(toy_data), loss_func=Climb(), batch_size=8, callbacks=[guard])
    assert n == 24
    learn.fit(2, 1e-2)
    assert len(guard.events) == 1, lines
    event = guard.events[0]
    assert (event["split"], event["epoch"], event["kind"]) == ("train", 1, "climb")
    assert event["restored_batch"] == 0 and event["loss"] > 4 * math.log(3)
    assert 0 < event["batch"] < n - 1  # caught before the epoch's end
    assert lines[0].startswith("divergence guard: smoothed loss rose to")
    assert "(guessing costs 1.1" in lines[0]
    assert learn.evaluate()["accuracy"] >= 0.9


def test_an_epoch_of_lone_huge_spikes_is_redone(toy_data):
    """A network killed by a huge LR: lone spikes (never 3 in a row, never folded into the
    smoothed loss) between losses at chance; the epoch's mean gives it away."""
    n = len(toy_data.train) // 8  # batches per epoch (24)
    loss = FaultyLoss(inflate_at=range(2, n, 3))  # every third batch of epoch 1
    loss.extra = 1000.0
    lines = []
    guard = DivergenceGuard(log=lines.append)
    learn = Learner(toy_data, _model(toy_data), loss_func=loss, batch_size=8, callbacks=[guard])
    learn.fit(2, 1e-2)
    assert len(guard.events) == 1, lines
    event = guard.events[0]
    assert (event["split"], event["batch"], event["kind"]) == ("train", None, "spike")
    assert event["restored_batch"] == 0 and event["loss"] > 100
    assert lines[0].startswith("divergence guard: mean loss of the epoch rose to")
    assert "(guessing costs 1.1" in lines[0]


def test_gives_up_at_the_lr_floor(toy_data):
    lines = []
    guard = DivergenceGuard(min_lr=0.3, log=lines.append)
    always_nan = FaultyLoss(nan_at=range(1, 1000))  # no LR helps; the sweep finds nothing
    learn = Learner(toy_data, _model(toy_data), loss_func=always_nan, callbacks=[guard])
    learn.fit(2, 1.0)
    assert guard.gave_up and [e["action"] for e in guard.events] == ["restored", "gave_up"]
    assert [e["how"] for e in guard.events] == ["halved", "halved"]
    assert "the LR reached the floor of 3e-01" in lines[-1] and "--lr" in lines[-1]


@pytest.mark.parametrize(
    ("name", "opt", "lr", "bs"),
    [("vgg_small", "adamw", 3e-3, 32), ("mnist_cnn", "sgd", 0.05, 16), ("mlp", "adam", 1e-2, 8)],
)
def test_sane_training_triggers_nothing(toy_data, name, opt, lr, bs):
    """Small batches make the losses noisy; none of that is a divergence."""
    guard = DivergenceGuard(snapshot_every=3, log=pytest.fail)
    learn = Learner(toy_data, _model(toy_data, name), opt=opt, batch_size=bs, callbacks=[guard])
    learn.fit_one_cycle(3, lr)
    assert guard.events == [] and learn.lr_mult == 1.0
    assert learn.evaluate()["accuracy"] >= 0.9


def test_noisy_batches_at_the_end_of_an_epoch_are_judged_by_the_valid_loss(toy_data):
    n = len(toy_data.train) // 32  # batches per epoch
    loss = FaultyLoss(inflate_at={n - 1, n})  # the last two batches of epoch 1 look awful
    guard = DivergenceGuard(log=pytest.fail)
    learn = Learner(toy_data, _model(toy_data), loss_func=loss, batch_size=32, callbacks=[guard])
    learn.fit(3, 1e-2)
    assert guard.events == [] and guard.watch.streak == 0


def test_gives_up_after_max_tries_with_the_last_good_weights(toy_data):
    lines, seen = [], []

    class Seen(Callback):
        def after_cancel_fit(self):
            seen.append("after_cancel_fit")

    model = _model(toy_data)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    always_nan = FaultyLoss(nan_at=range(1, 1000))
    guard = DivergenceGuard(max_tries=3, log=lines.append)
    # SGD: with AdamW an LR of 1.0 is 500x logreg's weights, so the cap would set the LR
    # (test_adam_kin_restart_no_higher_than_the_cap); here every restore halves.
    learn = Learner(toy_data, model, opt="sgd", loss_func=always_nan, callbacks=[guard, Seen()])
    learn.fit(2, 1.0)
    assert guard.gave_up and seen == ["after_cancel_fit"]
    assert learn.recorder.history == []
    assert [e["action"] for e in guard.events] == ["restored"] * 3 + ["gave_up"]
    assert learn.lr_mult == pytest.approx(0.5**3)
    assert "gave up" in lines[-1] and "1.0e+00, 5.0e-01, 2.5e-01, 1.2e-01" in lines[-1]
    assert "lr-find" in lines[-1] and "--lr" in lines[-1]
    for k, v in model.state_dict().items():  # not left with NaN weights
        torch.testing.assert_close(v, start[k], rtol=0, atol=0)


# -- exactness -----------------------------------------------------------------------------
@pytest.mark.parametrize("check_every", [1, 5])  # 5: losses read in groups, as on a GPU
@pytest.mark.parametrize(
    ("faults", "kind"),
    [({"nan_at": {9}}, "nan"), ({"inflate_at": {8, 9, 10}}, "spike")],
)
def test_restore_is_exact_and_replays_the_same_batches(toy_data, faults, kind, check_every):
    """With factor 1 and no sweep the LR does not change, so a guarded run with one fault
    ends with the very weights of a clean run: the restore put back exactly the snapshot."""

    class Probe(Callback):
        order = 30  # after the guard

        def before_batch(self):
            if self.learn.training and self.learn.restart_at and self.after is None:
                self.after = {k: v.clone() for k, v in self.learn.model.state_dict().items()}
                self.train_iter = self.learn.train_iter

        def after_batch(self):
            if self.learn.training and self.learn.epoch == 0 and self.learn.iter == 3:
                self.before = {k: v.clone() for k, v in self.learn.model.state_dict().items()}

    def run(loss_func, callbacks):
        learn = Learner(toy_data, _model(toy_data), loss_func=loss_func, batch_size=16, seed=2)
        learn.fit_one_cycle(3, 1e-2, callbacks=callbacks)
        return learn

    plain = run(None, [])
    probe, probe.after = Probe(), None
    guard = DivergenceGuard(
        factor=1.0, probe_steps=0, snapshot_every=4, check_every=check_every, log=print
    )
    guarded = run(FaultyLoss(**faults), [guard, probe])
    assert [(e["kind"], e["restored_batch"]) for e in guard.events] == [(kind, 4)]
    for k, v in probe.before.items():  # the state after batch 3 is back before batch 4 reruns
        torch.testing.assert_close(probe.after[k], v, rtol=0, atol=0)
    assert probe.train_iter == 4
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(guarded.model.state_dict()[k], v, rtol=0, atol=0)


def test_nan_valid_loss_redoes_the_epoch(toy_data):
    class NanOnceInEval(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.armed = inner, True

        def forward(self, x):
            out = self.inner(x)
            if not self.training and self.armed:
                self.armed = False
                return out * math.nan
            return out

    def run(model, callbacks):
        learn = Learner(toy_data, model, batch_size=16, seed=2)
        learn.fit_one_cycle(2, 1e-2, callbacks=callbacks)
        return learn

    plain = run(_model(toy_data), [])
    guard = DivergenceGuard(factor=1.0, probe_steps=0, log=lambda s: None)
    guarded = run(NanOnceInEval(_model(toy_data)), [guard])
    [event] = guard.events
    assert (event["split"], event["kind"], event["epoch"], event["batch"]) == (
        "valid",
        "nan",
        1,
        None,
    )
    assert event["restored_batch"] == 0
    assert len(guarded.recorder.history) == 2
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(guarded.model.inner.state_dict()[k], v, rtol=0, atol=0)


# -- records -------------------------------------------------------------------------------
def test_events_are_appended_to_metrics_jsonl(toy_data, tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    guard = DivergenceGuard(snapshot_every=2, log=lambda s: None)
    # (the sweep after the NaN calls the loss 24 times: calls 4-27)
    loss = FaultyLoss(nan_at={3}, inflate_at={35, 36, 37})
    learn = Learner(toy_data, _model(toy_data), loss_func=loss, batch_size=32, callbacks=[guard])
    learn.recorder.path = path
    learn.fit(4, 1e-2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    events = [r for r in rows if "event" in r]
    assert [r["event"] for r in events] == ["divergence", "divergence"]
    assert [r["kind"] for r in events] == ["nan", "spike"]
    assert events[0]["loss"] is None  # JSON has no NaN
    # the second restore halves again, or goes lower where the sweep says so
    assert events[1]["loss"] > 1.0 and events[1]["new_lr"] <= 2.5e-3 * (1 + 1e-9)
    assert [r["how"] for r in events] == [
        "halved",
        "swept" if events[1]["new_lr"] < 2.4e-3 else "halved",
    ]
    assert [{k: v for k, v in r.items() if k != "event"} for r in events] == [
        {**e, "loss": e["loss"] if math.isfinite(e["loss"]) else None} for e in guard.events
    ]
    assert [r["epoch"] for r in rows if "event" not in r] == [1, 2, 3, 4]


# -- real data -----------------------------------------------------------------------------
@pytest.mark.slow
def test_mnist_at_lr_10_recovers():
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"no MNIST under {SHARED_DATA}")
    from deepstart import load_dataset

    data = load_dataset("mnist", data_dir=SHARED_DATA)
    # 12,000 training digits, not 54,000: the same recovery in a third of the time (13 s on a
    # 2-core Zen 4); seeds 0-3 end at 98.3-98.7% on 12,000 (99.2% on 20,000)
    data = dataclasses.replace(data, train=data.train.subset(torch.arange(12_000)))
    torch.manual_seed(0)
    model = create_model("vgg_small", in_channels=1, num_classes=10, input_size=(28, 28))
    lines = []
    guard = DivergenceGuard(log=lines.append)
    learn = Learner(data, model, opt="sgd", batch_size=256, callbacks=[guard])
    start = time.perf_counter()
    learn.fit(3, 10.0, schedule="cosine")
    acc = learn.evaluate()["accuracy"]
    seconds = time.perf_counter() - start
    print(f"\nMNIST lr 10: {acc:.4f} in {seconds:.0f}s, lr_mult {learn.lr_mult}", *lines, sep="\n")
    assert guard.events and not guard.gave_up and learn.lr_mult < 1
    assert acc >= 0.98


def test_next_lr_halves_first_unless_the_curve_blew_up_below_half():
    lrs = [10.0 * 10 ** (k - 5) for k in range(6)]  # 1e-4 .. 10
    falls = [2.0, 1.6, 1.2, 0.9, 1.0, math.inf]  # a clear fall; NaN after the step at 1.0
    assert next_lr(10.0, lrs, falls) == (pytest.approx(0.1), "swept")  # blew up below 5
    never = [*falls[:-1], 1.0]  # never blew up: the first time halves
    assert next_lr(10.0, lrs, never) == (5.0, "halved")
    assert next_lr(10.0, lrs, never, first=False) == (pytest.approx(1.0), "swept")
    assert next_lr(10.0, [], [], first=False) == (5.0, "halved")  # no sweep: halve


def test_next_lr_takes_a_flat_curve_down_a_decade_at_most():
    """A sweep that neither blew up nor fell clearly says nothing: its lowest point is noise,
    and a tenth of it landed 47x below the LR that killed the layer-spec net (Adam, shapes:
    60% where 3e-3 reaches 94%)."""
    lrs = [2.3e-2 * 10 ** ((k - 23) * 5 / 23) for k in range(24)]
    flat = [1.1 + 0.03 * math.sin(3 * k) for k in range(24)]
    flat[20] = 1.02  # the noise minimum, at ~5e-3: a tenth of it is ~5e-4
    lr, how = next_lr(2.3e-2, lrs, flat, first=False)
    assert how == "swept" and lr == pytest.approx(2.3e-3)
    assert next_lr(2.3e-2, lrs, flat) == (pytest.approx(1.15e-2), "halved")  # first time


def test_a_layer_spec_net_at_an_adam_lr_10000x_too_high_recovers():
    """On the Intel Xeon: swept to 2.4e-2 at the first blow-up, dead in epoch 3, sent back to
    the fit's start, where a flat sweep took the LR to 5.1e-4 and the run ended at 59.7%; a
    decade at most, 2.3e-3, ends at 91.8%. (Only the outcome is asserted: another CPU's
    rounding may take another path.)"""
    from deepstart.data.catalog import load_dataset

    data = load_dataset("shapes", n_train=3000, n_test=600, seed=0)
    torch.manual_seed(0)
    model = create_model(
        "conv16-pool-conv32-pool-flat-dense64", in_channels=1, num_classes=3, input_size=32
    )
    guard = DivergenceGuard(log=lambda s: None)
    learn = Learner(data, model, opt="adam", batch_size=64, seed=0, callbacks=[guard])
    learn.fit_one_cycle(8, 30.0)
    assert guard.events and not guard.gave_up
    assert learn.evaluate()["accuracy"] >= 0.9
