"""Out-of-memory recovery, --batch-size auto and mixed precision, simulated on the CPU."""

import pytest
import torch
from torch import nn

from deepstart.device import OUT_OF_MEMORY, resolve_precision
from deepstart.models.registry import create_model
from deepstart.train.callbacks import Callback
from deepstart.train.learner import Learner
from deepstart.train.memory import find_batch_size


class FitsUpTo(nn.Module):
    """Wraps a model and raises the device's out-of-memory error above `limit` items."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x):
        if len(x) > self.limit:
            raise OUT_OF_MEMORY[0](f"simulated: {len(x)} > {self.limit}")
        return self.inner(x)


class SeenItems(Callback):
    order = 50

    def before_fit(self):
        self.per_epoch = {}

    def after_step(self):
        self.per_epoch.setdefault(self.learn.epoch, []).append(len(self.learn.yb))


def _model(data, name="vgg_small"):
    torch.manual_seed(0)
    return create_model(name, in_channels=1, num_classes=3, input_size=data.size)


def test_oom_halves_the_batch_scales_lr_and_sees_every_item(toy_data):
    seen, logs = SeenItems(), []
    learn = Learner(
        toy_data,
        FitsUpTo(_model(toy_data), 16),
        batch_size=64,
        lr=3e-3,
        callbacks=[seen],
        log=logs.append,
    )
    learn.fit_one_cycle(2, 3e-3)
    assert learn.batch_size == 16
    assert learn.lr_mult == pytest.approx(0.25)
    logs = [m for m in logs if "evaluating" not in m]
    assert len(logs) == 2 and "out of memory at batch size 64" in logs[0]
    assert "retrying with 32" in logs[0] and "retrying with 16" in logs[1]
    n = len(toy_data.train) // 64 * 64  # the first epoch's drop_last at batch 64
    assert sum(seen.per_epoch[0]) == n  # nothing skipped, nothing twice
    assert set(seen.per_epoch[1]) == {16}
    assert learn.evaluate()["accuracy"] > 0.9
    # the schedule still ends annealed: its last LR is the last of one-cycle, scaled
    assert learn.recorder.batch_lrs[-1] < 1e-5


def test_oom_in_evaluation_halves_the_eval_batch(toy_data):
    logs = []
    learn = Learner(toy_data, FitsUpTo(_model(toy_data), 8), batch_size=8, log=logs.append)
    learn.fit(1, 1e-3)  # evaluation batches are 16: they must shrink to 8
    assert any("while evaluating at batch size 16 (" in m for m in logs)
    assert learn.evaluate()["n"] == len(toy_data.test)


def test_oom_at_batch_size_one_reaches_the_user(toy_data):
    learn = Learner(toy_data, FitsUpTo(_model(toy_data), 0), batch_size=2, log=lambda m: None)
    with pytest.raises(OUT_OF_MEMORY):
        learn.fit(1, 1e-3)


def test_batch_size_auto_finds_the_largest_that_fits_and_leaves_the_model(toy_data):
    model = FitsUpTo(_model(toy_data), 48)
    learn = Learner(toy_data, model, log=lambda m: None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert find_batch_size(learn, start=8, probe_cpu=True) == 24  # 32 fit; x0.9 -> 24
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running stats included
    assert all(p.grad is None for p in model.parameters())
    assert find_batch_size(learn) == 128  # CPU without probing: the default


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_paths_train(toy_data, precision):
    learn = Learner(toy_data, _model(toy_data), batch_size=32, precision=precision)
    assert learn.amp_dtype in (torch.bfloat16, torch.float16)
    assert (learn.scaler is not None) == (precision == "fp16")
    learn.fit_one_cycle(3, 3e-3)
    assert learn.recorder.history[-1]["train_loss"] < learn.recorder.history[0]["train_loss"]
    assert learn.evaluate()["accuracy"] > 0.9
    assert all(p.dtype == torch.float32 for p in learn.model.parameters())


def test_precision_auto_is_fp32_on_cpu_and_names_are_checked(monkeypatch):
    # A CPU without native bf16 (the decision itself: tests/test_recipes.py).
    monkeypatch.setattr("deepstart.device.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("fp32", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_weighted_loss_moves_with_the_learner(toy_data):
    from deepstart.train.losses import make_loss

    loss = make_loss(class_weights=[1.0, 2.0, 3.0], num_classes=3)
    learn = Learner(toy_data, _model(toy_data), loss_func=loss)
    assert learn.loss_func.weight.device == learn.device
