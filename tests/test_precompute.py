"""Cached features (precompute): the head trained on body outputs computed once must learn
exactly what it learns from full forward passes through the same fixed body."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from deepstart.cli import main
from deepstart.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from deepstart.data.dataset import Batches
from deepstart.models.registry import create_model
from deepstart.run.runner import load_run_config, train_run
from deepstart.train.callbacks import Callback
from deepstart.train.learner import Learner
from deepstart.train.precompute import FeatureBatches


def _resnet():
    torch.manual_seed(0)
    return create_model("resnet20", in_channels=1, num_classes=3, input_size=(16, 16))


def _learner(data, model, logs=None, **kw):
    log = logs.append if logs is not None else (lambda m: None)
    kw.setdefault("precision", "fp32")  # the equalities below are of exact arithmetic
    return Learner(data, model, batch_size=32, device="cpu", log=log, guard=False, **kw)


class CountImages:
    """Counts the images that pass through a module (a forward hook)."""

    def __init__(self, module):
        self.n = 0
        module.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.n += len(inputs[0])


def test_feature_batches_follow_the_image_batches_order(toy_data):
    train = toy_data.train
    images = Batches(train, 32, mean=[0.0], std=[1.0], shuffle=True, drop_last=True, seed=3)
    feats = FeatureBatches(
        torch.arange(len(train)).float(), train.labels, 32, shuffle=True, drop_last=True, seed=3
    )
    assert len(images) == len(feats) == len(train) // 32
    for epoch in (0, 1):
        images.set_epoch(epoch)
        feats.set_epoch(epoch)
        for (xb, yb), (fb, fyb) in zip(images, feats):
            # the feature carries its image's index: the same items, in the same order
            assert torch.equal(yb, fyb)
            assert torch.equal(xb, images.normalize(train.images[fb.long()]))
    feats.set_epoch(1, start=2)
    assert len(list(feats)) == len(feats) - 2


def test_cached_head_training_equals_full_passes_through_a_fixed_body(toy_data):
    model = _resnet()
    full = _learner(toy_data, copy.deepcopy(model), seed=1)
    full.freeze(train_bn=False)  # a fixed body: BatchNorm frozen, statistics kept
    cached = _learner(toy_data, copy.deepcopy(model), seed=1, precompute=True)
    cached.freeze()
    body_runs = CountImages(cached.model.conv1)
    full.fit_one_cycle(3, 1e-2)
    cached.fit_one_cycle(3, 1e-2)

    assert cached.head_only is False  # only during the fit
    # the body ran once over train and once over valid, not once per epoch
    assert body_runs.n == len(toy_data.train) + len(toy_data.valid)
    before, a, b = model.state_dict(), full.model.state_dict(), cached.model.state_dict()
    for k in before:
        if k.startswith("fc."):
            assert not torch.equal(before[k], b[k]), k  # the head learned
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
        elif before[k].is_floating_point():
            assert torch.equal(before[k], a[k]), k  # fixed body: weights and statistics
            assert torch.equal(before[k], b[k]), k
    for ra, rb in zip(full.recorder.history, cached.recorder.history):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["valid_loss"] == pytest.approx(rb["valid_loss"], rel=1e-4)
        assert ra["accuracy"] == rb["accuracy"]
    # evaluation runs the whole model and agrees with the cached valid score
    valid = cached.evaluate("valid")
    assert valid["accuracy"] == pytest.approx(cached.recorder.history[-1]["accuracy"], abs=1e-6)
    assert valid["loss"] == pytest.approx(cached.recorder.history[-1]["valid_loss"], rel=1e-4)


def test_cache_is_reused_while_the_body_is_unchanged_and_refreshed_after(toy_data):
    logs = []
    learn = _learner(toy_data, _resnet(), logs, precompute=True)
    runs = CountImages(learn.model.conv1)
    learn.freeze()
    learn.fit(1, 1e-2)
    first = runs.n
    learn.fit(1, 1e-2)  # same body: the cache serves the second fit
    assert runs.n == first
    learn.unfreeze()
    learn.fit(1, 1e-3)  # everything trains: full passes, and the body changes
    assert any("not frozen" in m for m in logs)
    full_pass = runs.n
    assert full_pass > first + len(toy_data.train)
    learn.freeze()
    learn.fit(1, 1e-2)  # a changed body: computed again
    assert runs.n == full_pass + first


def test_augmentation_turns_the_cache_off_with_a_reason(toy_data):
    logs = []
    learn = _learner(toy_data, _resnet(), logs, precompute=True, augment="flip")
    learn.freeze()
    learn.fit(1, 1e-2)
    assert not any(isinstance(dl, FeatureBatches) for dl in (learn.train_dl, learn.valid_dl))
    assert any("augmented" in m for m in logs)
    assert len(learn.recorder.history) == 1


def test_cli_freeze_with_precompute(tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["train", "--data", "shapes", "--data-opt", "n_train=240", "--data-opt", "n_test=60"]
    args += ["--size", "16", "--model", "vgg_small", "--epochs", "3", "--batch-size", "32"]
    args += ["--out", str(out), "--progress", "plain", "--no-report", "--lr", "1e-2"]
    assert main([*args, "--freeze", "--precompute"]) == 0
    text = capsys.readouterr().out
    assert "precompute: body features of train" in text
    (run_dir,) = out.iterdir()
    assert json.loads((run_dir / "config.json").read_text())["train"]["precompute"] is True
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 3
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test"]["n"] == 60


class Killed(Exception):
    """Stands in for SIGKILL: leaves the run directory as a dead process would."""


class KillAfter(Callback):
    order = 99  # after the Checkpoint callback has saved the epoch

    def __init__(self, phase, epoch):
        self.at = (phase, epoch)

    def after_epoch(self):
        if (self.learn.phase, self.learn.epoch) == self.at:
            raise Killed


def fine_tune_config(out, precompute=False, *, lr=3e-3, pretrained=None):
    """`deepstart train --model vgg_small --fine-tune` on 240 small shapes, 2 unfrozen epochs
    after the frozen one (also the guard's resume test, with ``pretrained`` weights)."""
    return RunConfig(
        data=DataConfig(
            "shapes", size=(16, 16), options={"n_train": 240, "n_test": 60}, valid_pct=0.2
        ),
        model=ModelConfig("vgg_small", pretrained=pretrained),
        train=TrainConfig(
            epochs=2,
            lr=lr,
            batch_size=32,
            seed=5,
            out=str(out),
            progress="none",
            report=False,
            fine_tune=True,
            precompute=precompute,
        ),
    )


@pytest.mark.parametrize(
    ("kill_at", "precompute"),
    [((0, 0), False), ((1, 0), False), ((1, 0), True)],
    ids=["after-frozen", "mid-unfrozen", "mid-unfrozen-precomputed"],
)
def test_fine_tune_run_resumes_to_the_uninterrupted_result(tmp_path, kill_at, precompute):
    ref = train_run(fine_tune_config(tmp_path / "ref", precompute), quiet=True)
    with pytest.raises(Killed):
        train_run(
            fine_tune_config(tmp_path / "killed", precompute),
            quiet=True,
            callbacks=[KillAfter(*kill_at)],
        )
    (run_dir,) = (tmp_path / "killed").iterdir()
    res = train_run(load_run_config(run_dir), resume=run_dir, quiet=True)
    assert len(res.history) == len(ref.history) == 3  # frozen epoch + 2
    for a, b in zip(res.history, ref.history):
        assert a["epoch"] == b["epoch"] and a["train_loss"] == b["train_loss"]
    want = load_file(str(ref.run_dir / "model.safetensors"))
    got = load_file(str(run_dir / "model.safetensors"))
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert res.test["accuracy"] == ref.test["accuracy"]
