import copy
import math
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepstart.errors import ConfigError
from deepstart.models.registry import create_model
from deepstart.train.callbacks import Callback, CancelFit, RestartEpoch
from deepstart.train.extras import EMA, EarlyStopping, GradientClip, Lookahead, MaxTime
from deepstart.train.learner import Learner
from deepstart.train.losses import balanced_class_weights, make_loss


def _model(data, name="logreg"):
    torch.manual_seed(0)
    return create_model(
        name, in_channels=data.channels, num_classes=data.num_classes, input_size=data.size
    )


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- early stopping ------------------------------------------------------------------------
def _drive(cb, values, monitor="valid_loss"):
    """Run ``cb`` over a scripted metric sequence; the model's weight is the epoch number."""
    model = nn.Linear(1, 1, bias=False)
    learn = SimpleNamespace(model=model, metrics={}, epoch=0, get_callback=lambda kind: None)
    cb.learn = learn
    cb.before_fit()
    for epoch, value in enumerate(values):
        learn.epoch, learn.metrics = epoch, {monitor: value}
        with torch.no_grad():
            model.weight.fill_(epoch + 1)
        try:
            cb.after_epoch()
        except CancelFit:
            break
    cb.after_fit()
    return model


def test_early_stopping_stops_after_patience_and_restores_best():
    lines = []
    cb = EarlyStopping(patience=3, log=lines.append)
    model = _drive(cb, [1.0, 0.8, 0.9, 0.85, 0.81, 0.7, 0.6])
    assert (cb.stopped_epoch, cb.best_epoch, cb.best) == (5, 2, 0.8)
    assert model.weight.item() == 2.0  # epoch 2's weights are back
    assert lines == [
        "early stopping: valid_loss has not improved on 0.8 (epoch 2) for 3 epochs; "
        "restored epoch 2's weights"
    ]


def test_early_stopping_keeps_last_weights_without_restore_best():
    cb = EarlyStopping(patience=2, restore_best=False, log=lambda s: None)
    model = _drive(cb, [1.0, 0.8, 0.9, 0.85, 0.7])
    assert cb.stopped_epoch == 4
    assert model.weight.item() == 4.0


def test_early_stopping_min_delta():
    values = [1.0, 0.95, 0.92, 0.91, 0.905]
    strict = EarlyStopping(patience=3, min_delta=0.1, log=lambda s: None)
    _drive(strict, values)
    assert (strict.stopped_epoch, strict.best_epoch, strict.best) == (4, 1, 1.0)
    loose = EarlyStopping(patience=3, log=lambda s: None)
    _drive(loose, values)
    assert (loose.stopped_epoch, loose.best_epoch) == (None, 5)


def test_early_stopping_mode_max_for_accuracy():
    values = [0.5, 0.7, 0.6, 0.65, 0.69, 0.9]
    auto = EarlyStopping("accuracy", patience=3, log=lambda s: None)
    assert auto.mode == "max"
    model = _drive(auto, values, monitor="accuracy")
    assert (auto.stopped_epoch, auto.best_epoch, auto.best) == (5, 2, 0.7)
    assert model.weight.item() == 2.0
    as_min = EarlyStopping("accuracy", mode="min", patience=3, log=lambda s: None)
    _drive(as_min, values, monitor="accuracy")
    assert (as_min.stopped_epoch, as_min.best_epoch) == (4, 1)


def test_early_stopping_nan_is_no_improvement_and_bad_monitor_errors():
    cb = EarlyStopping(patience=2, log=lambda s: None)
    _drive(cb, [1.0, math.nan, math.nan, 0.1])
    assert (cb.stopped_epoch, cb.best_epoch) == (3, 1)
    with pytest.raises(ConfigError, match="not a metric"):
        _drive(EarlyStopping("val_acc"), [0.5])
    with pytest.raises(ConfigError):
        EarlyStopping(mode="lowest")


class ScriptMetric(Callback):
    """Between the Recorder (10) and EarlyStopping (90): replaces valid_loss by a script and
    remembers the weights of every epoch."""

    order = 50

    def __init__(self, values):
        self.values, self.weights = values, []

    def after_epoch(self):
        self.learn.metrics["valid_loss"] = self.values[self.learn.epoch]
        self.weights.append(_weights(self.learn.model))


def test_early_stopping_in_a_real_fit(toy_data):
    script = ScriptMetric([0.9, 0.5, 0.6, 0.7, 0.4, 0.3])
    stop = EarlyStopping(patience=2, log=lambda s: None)
    learn = Learner(toy_data, _model(toy_data), batch_size=64, callbacks=[script, stop])
    learn.fit(6, 1e-2)
    assert len(learn.recorder.history) == 4  # epochs 3 and 4 did not beat epoch 2
    assert (stop.stopped_epoch, stop.best_epoch) == (4, 2)
    best, last = script.weights[1], script.weights[3]
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, best[k])
        assert not torch.equal(v, last[k])


# -- gradient clipping ---------------------------------------------------------------------
class GradNorm(Callback):
    """Records the total gradient norm at after_backward, at its order."""

    def __init__(self, order):
        self.order, self.norms, self.max_abs = order, [], []

    def after_backward(self):
        grads = [p.grad for p in self.learn.model.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))
        self.max_abs.append(max(float(g.abs().max()) for g in grads))


def _huge_loss(pred, y):
    return F.cross_entropy(pred, y) * 1e4  # gradients in the thousands


def test_gradient_clip_by_norm(toy_data):
    before, after = GradNorm(-5), GradNorm(5)
    clip = GradientClip(max_norm=1.0)
    learn = Learner(
        toy_data,
        _model(toy_data),
        loss_func=_huge_loss,
        opt="sgd",
        lr=0.1,
        batch_size=64,
        callbacks=[before, clip, after],
    )
    learn.fit(2)
    assert before.norms[0] > 1000  # clipping had work to do
    for pre, post in zip(before.norms, after.norms):
        assert post <= 1.0 + 1e-4
        if pre <= 1.0:
            assert post == pytest.approx(pre, rel=1e-5)  # small gradients are left alone
    assert clip.last_norm == pytest.approx(before.norms[-1], rel=1e-4)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())


def test_gradient_clip_by_value(toy_data):
    before, after = GradNorm(-5), GradNorm(5)
    clip = GradientClip(value=0.01)
    learn = Learner(
        toy_data,
        _model(toy_data),
        loss_func=_huge_loss,
        batch_size=64,
        callbacks=[before, clip, after],
    )
    learn.fit(1, 1e-3)
    assert min(before.max_abs) > 0.01
    assert max(after.max_abs) <= 0.01
    assert clip.last_norm == pytest.approx(before.norms[-1], rel=1e-4)
    with pytest.raises(ConfigError):
        GradientClip(max_norm=0.0)


# -- EMA -----------------------------------------------------------------------------------
class StepLog(Callback):
    """Weights after every optimizer step, and the weights the model holds at after_epoch."""

    order = 50

    def __init__(self):
        self.steps, self.at_epoch_end = [], []

    def before_fit(self):
        self.start = _weights(self.learn.model)

    def after_step(self):
        self.steps.append(_weights(self.learn.model))

    def after_epoch(self):
        self.at_epoch_end.append(_weights(self.learn.model))


def _hand_ema(start, steps, decay):
    ema = {k: v.clone() for k, v in start.items()}
    for w in steps:
        ema = {k: decay * ema[k] + (1 - decay) * w[k] for k in ema}
    return ema


def test_ema_matches_hand_computation_and_validates_with_it(toy_data):
    log, ema = StepLog(), EMA(decay=0.7, warmup=False)
    learn = Learner(toy_data, _model(toy_data), batch_size=64, callbacks=[log, ema])
    learn.fit(2, 1e-3)
    per_epoch = len(log.steps) // 2
    assert per_epoch == len(toy_data.train) // 64 and ema.steps == 2 * per_epoch
    expected = _hand_ema(log.start, log.steps, 0.7)
    for k, v in learn.model.state_dict().items():  # use_ema=True left the average in
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6)
    # Training continued from the live weights: they were swapped back after validation.
    for epoch in range(2):
        live = log.steps[(epoch + 1) * per_epoch - 1]
        for k, v in log.at_epoch_end[epoch].items():
            assert torch.equal(v, live[k])
    # Epoch 1's valid_loss is the loss of epoch 1's average, not of the live weights.
    probe = copy.deepcopy(learn.model)
    ema_1 = _hand_ema(log.start, log.steps[:per_epoch], 0.7)
    probe.load_state_dict(ema_1)
    scored = Learner(toy_data, probe, batch_size=64).evaluate("valid")["loss"]
    probe.load_state_dict(log.steps[per_epoch - 1])
    live_loss = Learner(toy_data, probe, batch_size=64).evaluate("valid")["loss"]
    recorded = learn.recorder.history[0]["valid_loss"]
    assert recorded == pytest.approx(scored, abs=1e-5)
    assert abs(recorded - live_loss) > 1e-3


def test_ema_use_ema_false_keeps_live_weights_and_copies_buffers(toy_data):
    log, ema = StepLog(), EMA(decay=0.9, use_ema=False)
    learn = Learner(toy_data, _model(toy_data, "vgg_small"), batch_size=64, callbacks=[log, ema])
    learn.fit(1, 1e-3)
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, log.steps[-1][k])
    buffers = {k for k, _ in learn.model.named_buffers()}
    assert any("running_mean" in k for k in buffers)
    with ema.applied():
        held = _weights(learn.model)
    for k in buffers:  # buffers are copied, not averaged
        assert torch.equal(held[k], log.steps[-1][k])
    name = next(k for k, _ in learn.model.named_parameters())
    assert not torch.equal(held[name], log.steps[-1][name])  # parameters are averaged


class PreLog(StepLog):
    """The weights right after each optimizer step, before Lookahead (order 5) pulls them."""

    order = 1


def test_lookahead_matches_hand_computation_and_ends_epochs_on_the_slow_weights(toy_data):
    torch.manual_seed(0)
    model = create_model(
        "fast_mnist", in_channels=1, num_classes=3, input_size=(16, 16), widths=[8, 8, 8, 8]
    )
    pre, post, la = PreLog(), StepLog(), Lookahead(every=2, base=0.9, start=0.25)
    learn = Learner(toy_data, model, batch_size=32, opt="sgd", lr=0.05, callbacks=[pre, post, la])
    learn.fit(2, 0.05)
    total = len(pre.steps)
    per_epoch = total // 2
    assert total == 2 * (len(toy_data.train) // 32)
    floats = [k for k, v in pre.start.items() if v.is_floating_point()]
    assert any("running_mean" in k for k in floats)  # BatchNorm statistics are averaged too
    slow, pulls = None, 0
    for t, (w, after) in enumerate(zip(pre.steps, post.steps, strict=True), start=1):
        expect = w
        if t / total >= 0.25 and t % 2 == 0:
            if slow is None:
                slow = {k: w[k].clone() for k in floats}
            else:
                rho = 0.9**2 * (t / total) ** 3
                assert la.rho(t / total) == pytest.approx(rho)
                slow = {k: rho * slow[k] + (1 - rho) * w[k] for k in floats}
                expect, pulls = {**w, **slow}, pulls + 1
        if t % per_epoch == 0 and slow is not None:
            # the end of an epoch: training (and validation) goes on from the slow weights
            for k in floats:
                torch.testing.assert_close(post.at_epoch_end[t // per_epoch - 1][k], slow[k])
        for k in floats:
            torch.testing.assert_close(after[k], expect[k], rtol=1e-5, atol=1e-6)
    assert pulls >= 2
    for k in floats:  # the model ends on the slow weights
        torch.testing.assert_close(learn.model.state_dict()[k], slow[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError):
        Lookahead(every=0)


def test_ema_warmup_decay():
    ema = EMA(decay=0.999)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(10) == pytest.approx(11 / 20)
    assert ema.decay_at(10**6) == 0.999
    assert EMA(0.5, warmup=False).decay_at(0) == 0.5
    with pytest.raises(ConfigError):
        EMA(decay=1.0)


def test_early_stopping_under_ema_keeps_the_averaged_weights(toy_data):
    script = ScriptMetric([0.9, 0.5, 0.6, 0.7])
    log, ema = StepLog(), EMA(decay=0.8, warmup=False)
    stop = EarlyStopping(patience=2, log=lambda s: None)
    learn = Learner(toy_data, _model(toy_data), batch_size=64, callbacks=[script, log, ema, stop])
    learn.fit(4, 1e-2)
    per_epoch = len(log.steps) // 4
    expected = _hand_ema(log.start, log.steps[: 2 * per_epoch], 0.8)
    for k, v in learn.model.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6)


class PoisonThenRestore(Callback):
    """Like the divergence guard: weights blow up at step 2, the epoch-start state comes back
    at batch 3 and the epoch is redone (once)."""

    order = 50

    def __init__(self):
        self.done = False

    def before_epoch(self):
        self.snap = self.learn.snapshot()

    def after_step(self):
        if not self.done and self.learn.train_iter == 2:
            for p in self.learn.model.parameters():
                p.data.fill_(math.nan)

    def after_batch(self):
        if not self.done and self.learn.train_iter == 3:
            self.done = True
            self.learn.restore(self.snap)
            self.learn.restart_at = 0
            raise RestartEpoch


def test_ema_restarts_its_average_when_an_epoch_is_redone(toy_data):
    poison, ema = PoisonThenRestore(), EMA(decay=0.9)
    learn = Learner(toy_data, _model(toy_data), batch_size=64, callbacks=[poison, ema], guard=False)
    learn.fit(2, 1e-3)
    assert poison.done and len(learn.recorder.history) == 2
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
    assert all(math.isfinite(row["valid_loss"]) for row in learn.recorder.history)


# -- time budget ---------------------------------------------------------------------------
class Slow(Callback):
    def after_batch(self):
        time.sleep(0.03)  # makes 100 epochs take ~9 s


def test_max_time_stops_a_long_fit(toy_data):
    lines = []
    budget = MaxTime(0.5, log=lines.append)
    learn = Learner(toy_data, _model(toy_data), batch_size=64, callbacks=[Slow(), budget])
    learn.fit(100, 1e-2)
    assert budget.stopped_epoch is not None and budget.stopped_epoch < 100
    assert len(learn.recorder.history) < 100
    assert budget.elapsed > 0.5
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
    assert len(lines) == 1 and lines[0].startswith("max time: stopped after")
    with pytest.raises(ConfigError):
        MaxTime(0)


# -- losses --------------------------------------------------------------------------------
def test_label_smoothing_matches_hand_computation():
    logits, target = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    s = 0.2
    p0 = math.exp(2) / (math.exp(2) + 1)
    q0, q1 = 1 - s + s / 2, s / 2  # (0.9, 0.1)
    hand = -(q0 * math.log(p0) + q1 * math.log(1 - p0))
    assert make_loss(label_smoothing=s)(logits, target).item() == pytest.approx(hand, rel=1e-6)
    assert make_loss()(logits, target).item() == pytest.approx(-math.log(p0), rel=1e-6)


def test_balanced_weights_exact():
    labels = [0] * 6 + [1] * 3 + [2]
    w = balanced_class_weights(torch.tensor(labels))
    assert w.tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3], rel=1e-6)
    loss = make_loss(class_weights="balanced", train_labels=labels, num_classes=3)
    assert loss.weight.tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3], rel=1e-6)
    assert "weight" in dict(loss.named_buffers())
    assert loss.to("meta").weight.device.type == "meta"  # .to(device) carries the weights


def test_class_weights_change_the_loss():
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    target = torch.tensor([0, 1])
    l0, l1 = -math.log(math.exp(2) / (math.exp(2) + 1)), -math.log(1 / (math.exp(2) + 1))
    plain = make_loss()(logits, target).item()
    weighted = make_loss(class_weights=[1.0, 3.0], num_classes=2)(logits, target).item()
    assert plain == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert weighted == pytest.approx((1 * l0 + 3 * l1) / 4, rel=1e-6)
    assert weighted > plain  # the misclassified class 1 counts three times as much


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"class_weights": "balanced", "train_labels": [0, 0, 1], "num_classes": 3}, "class"),
        ({"class_weights": [1.0, 2.0], "num_classes": 3}, "2 values but there are 3"),
        ({"class_weights": [1.0, -2.0]}, "non-negative"),
        ({"class_weights": "inverse"}, "unknown class_weights"),
        ({"class_weights": "balanced"}, "needs train_labels"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_loss_config_errors_are_one_line(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        make_loss(**kwargs)
    assert "\n" not in str(info.value)


def test_weighted_loss_trains_in_a_learner(toy_data):
    loss = make_loss(0.1, "balanced", toy_data.num_classes, toy_data.train.labels)
    learn = Learner(toy_data, _model(toy_data), loss_func=loss, batch_size=64)
    learn.fit(2, 1e-2)
    assert math.isfinite(learn.recorder.history[-1]["train_loss"])
