"""The TensorBoard callback, checked by reading its event files back after real fits."""

import io
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from deepstart.data.dataset import make_dataset
from deepstart.errors import DeepstartError
from deepstart.models.registry import create_model
from deepstart.train.guard import DivergenceGuard
from deepstart.train.learner import Learner
from deepstart.train.tensorboard import TensorBoardLogger, TensorBoardMissing, sample_indices

from .conftest import bars

# The reader comes with the optional tensorboard package (pip install 'deepstart[tensorboard]').
EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
).EventAccumulator

EPOCHS, EVERY, BATCH = 3, 5, 16


def _read(log_dir):
    # 0: keep every record (the defaults sample scalars down to 10,000, images to 4).
    acc = EventAccumulator(
        str(log_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}
    )
    return acc.Reload()


def _f32(values):
    return np.asarray(values, dtype=np.float32).tolist()


def _model(data, name):
    torch.manual_seed(0)
    return create_model(
        name, in_channels=data.channels, num_classes=data.num_classes, input_size=data.size
    )


def _data():
    return make_dataset("bars", bars(240, seed=0), bars(60, seed=1), valid_pct=0.2, seed=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short real fit (mlp, 3 epochs of 12 batches), shared by the reading tests."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = _data()
    log_dir = tmp_path_factory.mktemp("tb")
    tb = TensorBoardLogger(log_dir, every=EVERY, images=16)
    learn = Learner(data, _model(data, "mlp"), batch_size=BATCH, guard=False)
    learn.fit_one_cycle(EPOCHS, 3e-3, callbacks=[tb])
    return learn, tb, _read(log_dir)


def test_epoch_scalars_match_the_recorder_history(run):
    learn, _, acc = run
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr"} <= tags
    history = learn.recorder.history
    assert len(history) == EPOCHS
    for name in ("train_loss", "valid_loss", "valid_bits", "accuracy"):
        events = acc.Scalars(f"epoch/{name}")
        assert [e.step for e in events] == [row["epoch"] for row in history] == [1, 2, 3]
        assert [e.value for e in events] == _f32([row[name] for row in history])
    chance = acc.Scalars("epoch/chance_bits")
    assert [e.value for e in chance] == _f32([math.log2(3)] * EPOCHS)
    assert "custom_scalars__config__" in acc.Tags()["tensors"]  # valid vs chance bits chart


def test_batch_curves_every_n_steps_match_the_recorded_batches(run):
    learn, _, acc = run
    n_batches = EPOCHS * (len(learn.data.train) // BATCH)
    assert len(learn.recorder.batch_losses) == n_batches == 36
    steps = list(range(0, n_batches, EVERY))
    losses, lrs = acc.Scalars("train/loss"), acc.Scalars("train/lr")
    assert [e.step for e in losses] == [e.step for e in lrs] == steps
    assert [e.value for e in losses] == _f32([learn.recorder.batch_losses[s] for s in steps])
    assert [e.value for e in lrs] == _f32([learn.recorder.batch_lrs[s] for s in steps])
    assert len({e.value for e in lrs}) > 3  # the one-cycle schedule moved


def test_prediction_grid_once_per_epoch(run):
    _, _, acc = run
    images = acc.Images("predictions")
    assert [e.step for e in images] == [1, 2, 3]
    for e in images:
        assert 300 <= e.width <= 2000 and 300 <= e.height <= 2000  # a 4 x 4 grid of tiles
        png = Image.open(io.BytesIO(e.encoded_image_string))
        assert png.size == (e.width, e.height)


def test_weight_and_gradient_histograms_for_every_parameter(run):
    learn, _, acc = run
    params = dict(learn.model.named_parameters())
    tags = set(acc.Tags()["histograms"])
    assert {f"weights/{n}" for n in params} | {f"grads/{n}" for n in params} == tags
    for name, p in params.items():
        events = acc.Histograms(f"weights/{name}")
        assert [e.step for e in events] == [1, 2, 3]
        last = events[-1].histogram_value
        assert last.num == p.numel()
        # The last epoch's histogram is of the weights the fit ended with.
        assert last.sum == pytest.approx(float(p.detach().double().sum()), rel=1e-4, abs=1e-4)
        assert (last.min, last.max) == pytest.approx(
            (float(p.detach().min()), float(p.detach().max()))
        )
        assert acc.Histograms(f"grads/{name}")[-1].histogram_value.num == p.numel()


def test_writer_is_closed_after_fit(run):
    _, tb, _ = run
    assert tb.writer is None
    assert tb.skip_lr_find and tb.order > 10  # after the Recorder completes the metrics


def test_sample_is_fixed_and_spread_over_classes():
    valid = _data().valid  # 48 items, 16 per class
    idx = sample_indices(valid, 16, seed=0)
    assert torch.equal(idx, sample_indices(valid, 16, seed=0))
    assert not torch.equal(idx, sample_indices(valid, 16, seed=1))
    labels = valid.labels[idx]
    assert torch.bincount(labels).tolist() == [6, 5, 5]
    assert torch.equal(labels, labels.sort().values) and len(set(idx.tolist())) == 16
    assert len(sample_indices(valid, 100)) == 48


@pytest.mark.parametrize("module", ["torch.utils.tensorboard", "tensorboard"])
def test_missing_tensorboard_says_how_to_install_it(monkeypatch, tmp_path, module):
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    with pytest.raises(DeepstartError, match=r"pip install 'deepstart\[tensorboard\]'") as err:
        TensorBoardLogger(tmp_path / "tb")
    assert isinstance(err.value, TensorBoardMissing) and isinstance(err.value, ImportError)
    assert not (tmp_path / "tb").exists()


def test_disabled_writes_nothing(tmp_path):
    data = _data()
    tb = TensorBoardLogger(tmp_path / "tb", enabled=False)
    Learner(data, _model(data, "logreg"), batch_size=32, guard=False).fit(1, 1e-2, callbacks=[tb])
    assert not (tmp_path / "tb").exists()


class NanLoss(nn.Module):
    """Cross-entropy, but NaN on the given calls (1-based)."""

    def __init__(self, nan_at):
        super().__init__()
        self.nan_at, self.calls = set(nan_at), 0

    def forward(self, pred, target):
        self.calls += 1
        loss = F.cross_entropy(pred, target)
        return loss * math.nan if self.calls in self.nan_at else loss


def test_divergence_guard_restart_rewrites_the_redone_steps(tmp_path):
    data = _data()
    guard = DivergenceGuard(snapshot_every=4, log=lambda s: None)
    tb = TensorBoardLogger(tmp_path / "tb", every=2, images=4)
    learn = Learner(
        data, _model(data, "logreg"), loss_func=NanLoss({9}), batch_size=BATCH, guard=False
    )
    learn.fit(2, 1e-2, callbacks=[guard, tb])
    [event] = guard.events
    assert (event["batch"], event["restored_batch"]) == (8, 4)
    assert tb.writer is None
    acc = _read(tmp_path / "tb")

    # Batches 4..8 ran twice: the first time ending in the NaN at step 8, then again at half
    # the LR. TensorBoard keeps the newest record of a step; it is the recorded batch.
    losses = acc.Scalars("train/loss")
    steps = [e.step for e in losses]
    assert steps[:8] == [0, 2, 4, 6, 8, 4, 6, 8] and math.isnan(losses[4].value)
    newest = {e.step: e.value for e in losses}
    assert list(newest) == list(range(0, 24, 2))
    assert list(newest.values()) == _f32([learn.recorder.batch_losses[s] for s in newest])
    lrs = {e.step: e.value for e in acc.Scalars("train/lr")}
    assert list(lrs.values()) == _f32([learn.recorder.batch_lrs[s] for s in lrs])
    assert lrs[2] == pytest.approx(1e-2) and lrs[4] == pytest.approx(5e-3)

    # The restart came before the epoch ended: each epoch is written once.
    assert [e.step for e in acc.Scalars("epoch/accuracy")] == [1, 2]
    assert [e.step for e in acc.Images("predictions")] == [1, 2]


def test_a_guard_that_gives_up_still_closes_the_file(tmp_path):
    data = _data()
    guard = DivergenceGuard(max_tries=1, log=lambda s: None)
    tb = TensorBoardLogger(tmp_path / "tb", every=1, images=4)
    learn = Learner(
        data, _model(data, "logreg"), loss_func=NanLoss(range(1, 100)), batch_size=32, guard=False
    )
    learn.fit(2, 1e-2, callbacks=[guard, tb])
    assert guard.gave_up and tb.writer is None
    acc = _read(tmp_path / "tb")
    assert all(math.isnan(e.value) for e in acc.Scalars("train/loss"))
    assert "epoch/accuracy" not in acc.Tags()["scalars"]
