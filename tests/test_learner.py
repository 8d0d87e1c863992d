import math

import pytest
import torch
from safetensors.torch import load_file

from deepstart.models.registry import create_model
from deepstart.ship.bundle import load_model, save_model
from deepstart.train.callbacks import Callback, CancelFit, Checkpoint, load_checkpoint
from deepstart.train.events import EVENTS
from deepstart.train.learner import Learner
from deepstart.train.schedule import one_cycle


def _model(data, name="vgg_small", **kw):
    torch.manual_seed(0)
    return create_model(
        name, in_channels=data.channels, num_classes=data.num_classes, input_size=data.size, **kw
    )


class EventLog(Callback):
    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        if name in EVENTS:
            return lambda: self.events.append(name)
        raise AttributeError(name)


def test_event_order(toy_data):
    log = EventLog()
    learn = Learner(toy_data, _model(toy_data, "logreg"), batch_size=64, callbacks=[log])
    learn.fit(2, 1e-2)
    n_batches = len(toy_data.train) // 64
    per_batch = [
        "before_batch",
        "after_pred",
        "after_loss",
        "after_backward",
        "after_step",
        "after_batch",
    ]
    epoch = [
        "before_epoch",
        "before_train",
        *per_batch * n_batches,
        "after_train",
        "before_validate",
        "after_validate",
        "after_epoch",
    ]
    assert log.events == ["before_fit", *epoch, *epoch, "after_fit"]


def test_cancel_fit_stops_and_still_runs_after_fit(toy_data):
    class StopAfterOne(Callback):
        order = 100  # after the Recorder has written the epoch's row

        def after_epoch(self):
            raise CancelFit

    log = EventLog()
    learn = Learner(toy_data, _model(toy_data, "logreg"), callbacks=[StopAfterOne(), log])
    learn.fit(5, 1e-2)
    assert len(learn.recorder.history) == 1
    assert log.events[-2:] == ["after_cancel_fit", "after_fit"]


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw"])
def test_converges_and_changes_weights(toy_data, opt):
    model = _model(toy_data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    learn = Learner(toy_data, model, opt=opt, batch_size=32, seed=1)
    learn.fit_one_cycle(4, 0.05 if opt == "sgd" else 3e-3)
    h = learn.recorder.history
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["valid_loss"] < math.log(3) / 2
    assert learn.evaluate()["accuracy"] >= 0.95
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("weight" in k for k in changed)


def test_one_cycle_lr_follows_schedule(toy_data):
    learn = Learner(toy_data, _model(toy_data, "logreg"), batch_size=32)
    learn.fit_one_cycle(2, 0.01, pct_start=0.25)
    lrs = learn.recorder.batch_lrs
    n = len(lrs)
    expected = one_cycle(0.01, pct_start=0.25)
    assert lrs == pytest.approx([expected(i / n) for i in range(n)])
    assert lrs[0] == pytest.approx(0.01 / 25)


def test_same_seed_is_bit_for_bit(toy_data):
    def run():
        torch.manual_seed(0)
        model = _model(toy_data, "mnist_cnn")  # has dropout: uses the global RNG
        learn = Learner(toy_data, model, batch_size=32, seed=3)
        learn.fit_one_cycle(2, 3e-3)
        return model.state_dict(), learn.recorder.history

    (s1, h1), (s2, h2) = run(), run()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert [r["train_loss"] for r in h1] == [r["train_loss"] for r in h2]


def test_evaluate_per_class_and_bits(toy_data):
    learn = Learner(toy_data, _model(toy_data), batch_size=32)
    learn.fit_one_cycle(2, 3e-3)
    res = learn.evaluate("test")
    assert res["n"] == len(toy_data.test)
    assert sum(p["n"] for p in res["per_class"]) == res["n"]
    assert res["chance_bits"] == pytest.approx(math.log2(3))
    assert res["loss_bits"] == pytest.approx(res["loss"] / math.log(2))
    weighted = sum(p["accuracy"] * p["n"] for p in res["per_class"]) / res["n"]
    assert weighted == pytest.approx(res["accuracy"])


def test_get_preds_accepts_splits_layouts_and_sizes(toy_data):
    learn = Learner(toy_data, _model(toy_data), batch_size=32)
    learn.fit_one_cycle(2, 3e-3)
    probs, targets = learn.get_preds()  # the validation split, as fastai's
    assert probs.shape == (len(toy_data.valid), 3) and torch.equal(targets, toy_data.valid.labels)
    acc = float((probs.argmax(1) == targets).double().mean())
    assert acc == pytest.approx(learn.evaluate("valid")["accuracy"])
    imgs = toy_data.test.images[:6]
    p, none = learn.get_preds(imgs)  # a batch of images: no targets
    assert p.shape == (6, 3) and none is None
    torch.testing.assert_close(p.sum(1), torch.ones(6))
    torch.testing.assert_close(learn.get_preds(imgs[:, 0].numpy()[:, None])[0], p)  # (N,1,H,W)
    torch.testing.assert_close(learn.get_preds(imgs.permute(0, 2, 3, 1))[0], p)  # (N, H, W, C)
    torch.testing.assert_close(learn.get_preds(imgs.float() / 255)[0], p)  # floats in [0, 1]
    torch.testing.assert_close(learn.get_preds(list(imgs))[0], p)  # a list of CHW images
    big = torch.nn.functional.interpolate(imgs.float(), size=(32, 32)).to(torch.uint8)
    assert (learn.get_preds(big)[0].argmax(1) == p.argmax(1)).float().mean() >= 0.8
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        learn.get_preds(imgs.float())  # 0-255 floats: refused, not read as white


def test_checkpoints_and_saved_model_round_trip(toy_data, tmp_path):
    model = _model(toy_data)
    learn = Learner(toy_data, model, batch_size=32, callbacks=[Checkpoint(tmp_path / "ck")])
    learn.recorder.path = tmp_path / "metrics.jsonl"
    learn.fit_one_cycle(2, 3e-3)
    last = load_checkpoint(tmp_path / "ck" / "last.pt")
    assert last["epoch"] == 2
    assert all(torch.equal(last["model"][k], v) for k, v in model.state_dict().items())
    assert (tmp_path / "ck" / "best.pt").is_file()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    save_model(model, tmp_path / "m", classes=toy_data.classes, preprocess=toy_data.preprocess)
    assert set(load_file(str(tmp_path / "m" / "model.safetensors"))) == set(model.state_dict())
    saved = load_model(tmp_path / "m")
    x = torch.randn(4, 1, 16, 16)
    model.eval()
    torch.testing.assert_close(saved.model(x), model(x), rtol=0, atol=0)
    assert saved.preprocess == toy_data.preprocess


def test_restart_epoch_from_a_snapshot_replays_the_same_batches(toy_data):
    from deepstart.train.callbacks import RestartEpoch

    class RewindOnce(Callback):
        """Snapshot after batch 1 of epoch 1, rewind to it after batch 4, once."""

        order = 50
        done = False

        def after_batch(self):
            learn = self.learn
            if learn.epoch == 1 and learn.iter == 1 and not self.done:
                self.snap = learn.snapshot()
            if learn.epoch == 1 and learn.iter == 4 and not self.done:
                self.done = True
                learn.restore(self.snap)
                learn.restart_at = self.snap["iter"] + 1
                raise RestartEpoch

    def run(cbs):
        learn = Learner(toy_data, _model(toy_data, "logreg"), batch_size=16, seed=2)
        learn.fit_one_cycle(3, 1e-2, callbacks=cbs)
        return learn

    plain, rewound = run([]), run([RewindOnce()])
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(rewound.model.state_dict()[k], v, rtol=0, atol=0)
    # the rolled-back batches are dropped from the record: each batch counts once
    assert rewound.recorder.batch_lrs == plain.recorder.batch_lrs
    assert rewound.recorder.batch_losses == plain.recorder.batch_losses
    assert rewound.recorder.history[1]["train_loss"] == plain.recorder.history[1]["train_loss"]


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_a_snapshot_restores_the_same_state_twice(toy_data, opt):
    """The optimizer's state must be copied back, not aliased: training after one restore
    must not change what the next restore puts back (the guard sweeps, then restores)."""
    learn = Learner(toy_data, _model(toy_data), opt=opt, batch_size=32, quiet=True)
    learn.fit(1, 1e-2)
    snap = learn.snapshot()
    state = {k: v.clone() for k, v in learn.opt.state_dict()["state"][0].items()}
    learn.restore(snap)
    learn.fit(1, 1e-1)  # changes every weight and the optimizer's running averages
    learn.restore(snap)
    for k, v in learn.opt.state_dict()["state"][0].items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_restart_into_an_earlier_epoch(toy_data):
    from deepstart.train.callbacks import RestartEpoch

    class BackToEpochOne(Callback):
        order = 50
        done = False

        def before_epoch(self):
            if self.learn.epoch == 1 and not hasattr(self, "snap"):
                self.snap = self.learn.snapshot()

        def after_batch(self):
            if self.learn.epoch == 2 and self.learn.iter == 2 and not self.done:
                self.done = True
                self.learn.restore(self.snap)  # the start of epoch 1 (0-based)
                self.learn.restart_at = 0
                raise RestartEpoch

    def run(cbs):
        learn = Learner(toy_data, _model(toy_data, "logreg"), batch_size=16, seed=2)
        learn.fit_one_cycle(3, 1e-2, callbacks=cbs)
        return learn

    plain, back = run([]), run([BackToEpochOne()])
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(back.model.state_dict()[k], v, rtol=0, atol=0)
    assert [r["epoch"] for r in back.recorder.history] == [1, 2, 3]
    assert back.recorder.batch_losses == plain.recorder.batch_losses


def test_cpu_evaluation_batches_of_big_images_are_capped(toy_data):
    from deepstart.data.dataset import ImageSet
    from deepstart.train.task import EVAL_CPU_PIXELS

    learn = Learner(toy_data, _model(toy_data), batch_size=64, device="cpu", log=lambda m: 0)
    assert learn.eval_batch_size(toy_data.valid) == 128  # 16 px: twice the training batch
    big = ImageSet(torch.zeros(3, 3, 224, 224, dtype=torch.uint8), torch.zeros(3), ["a"])
    assert learn.eval_batch_size(big) == 32 == EVAL_CPU_PIXELS // (224 * 224)
    huge = ImageSet(torch.zeros(1, 3, 2000, 2000, dtype=torch.uint8), torch.zeros(1), ["a"])
    assert learn.eval_batch_size(huge) == 32  # never below half the training batch
