"""Hostile runs (issue 22 items 6, 9, 10): an empty validation split, numbers JSON cannot hold,
broken checkpoints, runs that fail before their first epoch, and temp files a kill left."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

from deepstart.cache import atomic_write
from deepstart.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from deepstart.data.dataset import DataError, make_dataset
from deepstart.models.registry import create_model
from deepstart.run.runner import train_run
from deepstart.train.callbacks import Callback, Checkpoint, load_checkpoint
from deepstart.train.learner import Learner
from tests.conftest import bars


def _strict(line: str) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON: {line}")

    return json.loads(line, parse_constant=refuse)


# -- item 6: an empty validation split ----------------------------------------------------------
def test_a_split_that_leaves_no_validation_images_is_refused_at_load():
    # One image per class: holding out any share of each leaves none (before: valid_loss 0.0
    # every epoch, chosen as the best).
    one_each = bars(3)
    with pytest.raises(DataError, match="no validation images") as e:
        make_dataset("tiny", one_each, bars(6, seed=1), valid_pct=0.1)
    assert "\n" not in str(e.value)


def test_an_empty_given_validation_split_is_refused():
    empty = bars(30).subset([])
    with pytest.raises(DataError, match="validation split has no images"):
        make_dataset("given", bars(30), None, valid=empty)
    data = make_dataset("ok", bars(30), None, valid_pct=0.2)
    with pytest.raises(DataError, match="validation split has no images"):
        dataclasses.replace(data, valid=empty)  # a hand-made Dataset is checked too


def test_scoring_no_items_gives_no_loss_rather_than_a_perfect_one(toy_data):
    learn = Learner(toy_data, create_model("logreg", in_channels=1, num_classes=3,
                    input_size=(16, 16)), device="cpu", log=lambda m: None)  # fmt: skip
    res = learn.evaluate(toy_data.valid.subset([]))
    assert res["n"] == 0
    assert math.isnan(res["loss"]) and math.isnan(res["accuracy"])


def test_metrics_rows_are_strict_json_and_nan_is_never_best(tmp_path, toy_data):
    model = create_model("logreg", in_channels=1, num_classes=3, input_size=(16, 16))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(math.nan)  # every loss NaN: the row holds numbers JSON has no name for
    ckpt = Checkpoint(tmp_path / "checkpoints")
    learn = Learner(toy_data, model, device="cpu", guard=False, callbacks=[ckpt],
                    log=lambda m: None)  # fmt: skip
    learn.recorder.path = tmp_path / "metrics.jsonl"
    learn.fit(1, 1e-3)
    (line,) = learn.recorder.path.read_text().splitlines()
    row = _strict(line)
    assert row["valid_loss"] is None and row["train_loss"] is None
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "checkpoints" / "best.pt").exists()


# -- item 9: a checkpoint that is not one ----------------------------------------------------
class _Smuggled:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    ("write", "says"),
    [
        (lambda p: p.write_bytes(b""), "not a readable checkpoint"),
        (lambda p: p.write_bytes(b"\x00garbage" * 50), "not a readable checkpoint"),
        (lambda p: torch.save({"x": _Smuggled()}, p), "not a readable checkpoint"),
        (lambda p: torch.save({"weights": torch.zeros(2)}, p), "not a deepstart checkpoint"),
        (lambda p: torch.save([1, 2], p), "not a deepstart checkpoint"),
    ],
)
def test_a_broken_checkpoint_is_one_line(tmp_path, capsys, write, says):
    path = tmp_path / "last.pt"
    write(path)
    with pytest.raises(DataError, match=says) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert "this must never run" not in capsys.readouterr().out


# -- item 10: runs that fail early leave nothing behind ------------------------------------------
class _FailInEpoch(Callback):
    """Raises in a training batch of epoch ``epoch`` (0-based): a run that breaks."""

    def __init__(self, epoch: int = 0) -> None:
        self.at = epoch

    def after_batch(self) -> None:
        if self.learn.epoch >= self.at:
            raise RuntimeError(f"boom in epoch {self.learn.epoch + 1}")


def _tiny(out: Path, **train) -> RunConfig:
    data = DataConfig("shapes", size=(16, 16), options={"n_train": 60, "n_test": 30})
    tc = TrainConfig(out=str(out), report=False, progress="none", batch_size=32, **train)
    return RunConfig(data=data, model=ModelConfig("logreg"), train=tc)


def test_a_run_that_fails_before_its_first_epoch_ends_removes_its_directory(tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(RuntimeError, match="boom"):
        train_run(_tiny(out, epochs=1), callbacks=[_FailInEpoch(0)], quiet=True)
    assert list(out.iterdir()) == []  # before: a directory holding only config.json


def test_a_run_that_fails_after_an_epoch_keeps_its_directory(tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(RuntimeError, match="boom"):
        train_run(_tiny(out, epochs=2), callbacks=[_FailInEpoch(1)], quiet=True)
    (run,) = out.iterdir()
    assert (run / "checkpoints" / "last.pt").is_file()  # something to resume from


# -- item 10: temp files of a write that was killed ----------------------------------------------
def _stale(path: Path, tag: str, age: float) -> Path:
    tmp = path.parent / f".{path.name}.{tag}.tmp"
    tmp.write_bytes(b"half a file")
    when = time.time() - age
    os.utime(tmp, (when, when))
    return tmp


def test_the_next_write_removes_stale_temp_files_of_its_target_only(tmp_path):
    target = tmp_path / "last.pt"
    old = _stale(target, "k3j_9xq2", age=3600)  # from a process killed an hour ago
    fresh = _stale(target, "a1b2c3d4", age=-60)  # being written by a live process
    other = _stale(tmp_path / "best.pt", "zzzzzzzz", age=3600)  # another target's
    odd = tmp_path / f".last.pt.{'x' * 8}.keep"  # not the temp-name pattern
    odd.write_bytes(b"mine")
    with atomic_write(target) as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole"
    assert not old.exists()
    assert fresh.exists() and other.exists() and odd.exists()


def test_a_checkpoint_cleans_its_stale_temp_files_when_training_starts(tmp_path, toy_data):
    ckdir = tmp_path / "checkpoints"
    ckdir.mkdir()
    stale = [_stale(ckdir / name, "q1w2e3r4", age=3600) for name in ("last.pt", "best.pt")]
    seen: list[bool] = []

    class Look(Callback):
        order = 35  # after the checkpoint's before_fit, before any epoch is saved

        def before_epoch(self) -> None:
            seen.append(any(p.exists() for p in stale))

    model = create_model("logreg", in_channels=1, num_classes=3, input_size=(16, 16))
    learn = Learner(toy_data, model, device="cpu", callbacks=[Checkpoint(ckdir), Look()],
                    log=lambda m: None)  # fmt: skip
    learn.fit(1, 1e-3)
    assert seen == [False]
