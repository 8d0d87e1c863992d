"""Distributed training through torchrun: 2 CPU processes with gloo.

The promise: a DDP epoch is the single-process epoch over the same global batches; one run
directory; resume works; a failing rank ends the run; a stop one rank decides is taken by all.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepstart.data.dataset import Batches
from deepstart.run.runner import train_run
from deepstart.train.callbacks import load_checkpoint

from .conftest import bars

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
TRAIN = ["--data", "shapes", "--data-opt", "n_train=480", "--data-opt", "n_test=90"]
TRAIN += ["--size", "16", "--model", "mlp", "--model-opt", "dropout=0", "--seed", "3"]
TRAIN += ["--progress", "plain", "--no-report", "--lr", "3e-3", "--precision", "fp32"]


def test_shards_of_a_global_batch_are_the_single_process_batch():
    images = bars(100, seed=0)
    kw = {"mean": [0.0], "std": [1.0], "shuffle": True, "seed": 4}
    whole = Batches(images, 32, drop_last=True, **kw)  # global batch 2 x 16
    parts = [Batches(images, 16, drop_last=True, rank=r, world=2, **kw) for r in (0, 1)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 3
    for epoch in (0, 1):
        for b in (whole, *parts):
            b.set_epoch(epoch)
        for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts):
            assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    # evaluation keeps every item once, the short last batch split as evenly as it goes
    ev = [Batches(images, 16, mean=[0.0], std=[1.0], rank=r, world=2) for r in (0, 1)]
    seen = torch.cat([y for b in ev for _, y in b])
    assert len(seen) == 100 and ev[0].num_items + ev[1].num_items == 100
    assert [b.num_items for b in ev] == [sum(len(y) for _, y in b) for b in ev]


def _torchrun(args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*cmd, *args], env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )


def _weights(run_dir: Path):
    return load_file(str(run_dir / "model.safetensors"))


@pytest.mark.slow
def test_ddp_epoch_equals_single_process_over_the_same_global_batches(tmp_path):
    ddp = ["--epochs", "1", "--batch-size", "16", "--devices", "2", "--out", str(tmp_path / "ddp")]
    r = subprocess.run(
        [sys.executable, "-m", "deepstart", "train", *TRAIN, *ddp],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    assert "launching: torchrun --nproc_per_node=2" in r.stdout
    assert r.stdout.count("test accuracy") == 1  # only rank 0 speaks
    (ddp_dir,) = (tmp_path / "ddp").iterdir()  # one run directory
    resolved = json.loads((ddp_dir / "config.json").read_text())["resolved"]
    assert resolved["world_size"] == 2 and resolved["global_batch_size"] == 32

    from deepstart.cli import main

    single = ["train", *TRAIN, "--epochs", "1", "--batch-size", "32"]
    assert main([*single, "--out", str(tmp_path / "one")]) == 0
    (one_dir,) = (tmp_path / "one").iterdir()
    a, b = _weights(ddp_dir), _weights(one_dir)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    rows = [json.loads((d / "metrics.jsonl").read_text()) for d in (ddp_dir, one_dir)]
    # the losses and scores are of the whole global batch and the whole valid split
    assert rows[0]["train_loss"] == pytest.approx(rows[1]["train_loss"], rel=1e-4)
    assert rows[0]["valid_loss"] == pytest.approx(rows[1]["valid_loss"], rel=1e-4)
    assert rows[0]["accuracy"] == rows[1]["accuracy"]


@pytest.mark.slow
def test_a_stem_that_stops_learning_mid_fit_trains_on_in_ddp(tmp_path):
    # DDP fixes the set of trainable parameters when it wraps the model, so when --stem-epochs
    # freezes the stem the Learner wraps it again: else DDP waits for the stem's gradients.
    args = [*TRAIN[: TRAIN.index("--model")], "--model", "fast_cifar", "--seed", "3"]
    args += ["--model-opt", "widths=8,8,8,8", "--progress", "plain", "--no-report"]
    args += ["--stem-epochs", "1", "--epochs", "2", "--batch-size", "16", "--devices", "2"]
    r = subprocess.run(
        [sys.executable, "-m", "deepstart", "train", *args, "--out", str(tmp_path)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("test accuracy") == 1
    (run_dir,) = tmp_path.iterdir()
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from deepstart.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from deepstart.train.callbacks import Callback, CancelFit, load_checkpoint
    from deepstart.run.runner import train_run

    mode, out = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])

    class Script(Callback):
        order = 99  # after the checkpoint

        def after_batch(self):
            it = (self.learn.epoch, self.learn.iter)
            if mode == "fail" and rank == 1 and it == (0, 2):
                raise RuntimeError("boom in rank 1")
            if mode == "hang" and rank == 1 and it == (0, 2):
                time.sleep(600)  # alive but silent: only the process-group timeout ends it
            if mode == "stop" and rank == 1 and it == (0, 4):
                raise CancelFit  # a stop only rank 1 decides (like its own clock running out)

        def after_epoch(self):
            if mode == "kill" and self.learn.epoch == 0:
                # leaves the epoch and dies like a killed process: what does it leave behind?
                found = list(Path(out).glob("*/checkpoints/last.pt"))
                epoch = load_checkpoint(found[0])["epoch"] if found else None
                print(f"rank {rank} left epoch 1; last.pt holds epoch {epoch}", flush=True)
                os._exit(3)

    cfg = RunConfig(
        data=DataConfig("shapes", size=(16, 16), options={"n_train": 480, "n_test": 90}),
        model=ModelConfig("mlp", {"dropout": 0.0}),
        train=TrainConfig(epochs=2, lr=3e-3, batch_size=16, seed=3, out=out, devices=2,
                          progress="none", report=False,
                          dist_timeout=4 if mode == "hang" else 60),
    )
    res = train_run(cfg, quiet=True, callbacks=[Script()])
    print(f"rank {rank} epochs {len(res.history)} iter {res.learner.iter}", flush=True)
    if os.path.isdir("/proc/self/task"):  # gloo's threads, still running after train_run?
        names = [open(f"/proc/self/task/{t}/comm").read() for t in os.listdir("/proc/self/task")]
        print(f"threads rank {rank}: {sum('gloo' in n for n in names)} gloo", flush=True)
    """
)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "ddp_script.py"
    path.write_text(SCRIPT)
    return path


@pytest.mark.slow
def test_ddp_run_killed_after_an_epoch_resumes_to_the_uninterrupted_result(tmp_path, script):
    ref = _torchrun([str(script), "none", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr
    killed = _torchrun([str(script), "kill", str(tmp_path / "killed")])
    assert killed.returncode != 0
    # Rank 1 has no checkpoint to write, so it is at its after_epoch long before rank 0 has
    # written; the Checkpoint's barrier holds it there until epoch 1 is on disk, so its death
    # (and torchrun then stopping rank 0) cannot cost that epoch, however slow rank 0 is.
    assert "rank 1 left epoch 1; last.pt holds epoch 1" in killed.stdout, killed.stdout
    (run_dir,) = (tmp_path / "killed").iterdir()
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 1
    assert not (run_dir / "model.safetensors").exists()
    # its config says 2 devices: `deepstart train --resume` starts torchrun again by itself
    r = subprocess.run(
        [sys.executable, "-m", "deepstart", "train", "--resume", str(run_dir)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    assert "launching: torchrun" in r.stdout and "resuming" in r.stdout
    (ref_dir,) = (tmp_path / "ref").iterdir()
    a, b = _weights(ref_dir), _weights(run_dir)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [(d / "metrics.jsonl").read_text().splitlines() for d in (ref_dir, run_dir)]
    assert len(rows[0]) == len(rows[1]) == 2


@pytest.mark.slow
def test_a_failing_rank_ends_every_rank_with_its_error(tmp_path, script):
    t = time.monotonic()
    r = _torchrun([str(script), "fail", str(tmp_path / "runs")], timeout=200)
    assert r.returncode != 0
    assert "boom in rank 1" in r.stderr
    assert time.monotonic() - t < 120  # ended by torchrun, not by waiting out a timeout


@pytest.mark.slow
def test_a_silent_rank_ends_the_run_at_the_timeout_not_never(tmp_path, script):
    t = time.monotonic()
    r = _torchrun([str(script), "hang", str(tmp_path / "runs")], timeout=200)
    assert r.returncode != 0
    assert "timed out" in r.stderr.lower() or "timeout" in r.stderr.lower()
    assert time.monotonic() - t < 150  # the 4 s collective timeout, not rank 1's 600 s sleep


@pytest.mark.slow
def test_a_stop_one_rank_decides_is_taken_by_both(tmp_path, script):
    r = _torchrun([str(script), "stop", str(tmp_path / "runs")])
    assert r.returncode == 0, r.stderr
    lines = sorted(x for x in r.stdout.splitlines() if x.startswith("rank "))
    # both stopped after the same batch of the first epoch, and rank 0 wrote the run
    assert lines == ["rank 0 epochs 0 iter 4", "rank 1 epochs 0 iter 4"]  # mid-epoch 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "model.safetensors").is_file()
    # train_run ended the process group for real: a gloo thread left running at exit can
    # abort the process (see distributed.shutdown), for whichever rank leaves first
    if sys.platform == "linux":
        threads = sorted(x for x in r.stdout.splitlines() if x.startswith("threads "))
        assert threads == ["threads rank 0: 0 gloo", "threads rank 1: 0 gloo"]


def test_single_process_run_is_unchanged_by_the_distributed_path(tmp_path, monkeypatch):
    """Without WORLD_SIZE nothing distributed happens (and a stray WORLD_SIZE=1 too)."""
    from deepstart.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    monkeypatch.setenv("WORLD_SIZE", "1")
    cfg = RunConfig(
        data=DataConfig("shapes", size=(16, 16), options={"n_train": 120, "n_test": 30}),
        model=ModelConfig("logreg"),
        train=TrainConfig(epochs=1, batch_size=16, out=str(tmp_path), report=False),
    )
    res = train_run(cfg, quiet=True)
    assert res.learner.dist is None and res.test is not None
