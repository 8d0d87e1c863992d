"""Never lose a run: a run killed (SIGKILL) or interrupted (Ctrl-C) and resumed ends exactly
where an uninterrupted run with the same seed ends, on CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ARGS = [
    "--data",
    "shapes",
    "--data-opt",
    "n_train=1200",
    "--data-opt",
    "n_test=200",
    "--size",
    "16",
    "--model",
    "vgg_small",
    "--epochs",
    "4",
    "--lr",
    "3e-3",
    "--batch-size",
    "32",
    "--seed",
    "7",
    "--progress",
    "plain",
    "--no-report",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


def _cmd(*extra):
    return [sys.executable, "-m", "deepstart", "train", *extra]


def _run_dir(out: Path) -> Path:
    (d,) = out.iterdir()
    return d


def _mid_epoch_checkpoint(out: Path) -> bool:
    """Whether the run's last.pt is a mid-epoch checkpoint early in an epoch after the first
    (so the kill lands mid-epoch however slowly a loaded machine runs)."""
    ckpt = list(out.glob("*/checkpoints/last.pt"))
    if not ckpt:
        return False
    state = torch.load(ckpt[0], map_location="cpu", weights_only=True)  # written atomically
    return state["epoch"] >= 1 and 0 < state["next_iter"] <= 10


def _start_and_stop(
    out: Path, sig: int, extra=(), after_epochs: int = 1, ready=None
) -> subprocess.Popen:
    """Start a run, wait until `after_epochs` epochs are checkpointed (and `ready(out)`, if
    given), then send `sig`."""
    p = subprocess.Popen(
        _cmd(*ARGS, "--out", str(out), *extra),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        metrics = list(out.glob("*/metrics.jsonl"))
        ckpt = list(out.glob("*/checkpoints/last.pt"))
        if metrics and ckpt and len(metrics[0].read_text().splitlines()) >= after_epochs:
            if ready is None:
                time.sleep(0.4)  # well into the next epoch
                break
            if ready(out):
                break
        if p.poll() is not None:
            pytest.fail(f"run ended before it could be stopped: {p.communicate()}")
        time.sleep(0.02)
    assert p.poll() is None, "run finished before the signal: make the test run longer"
    p.send_signal(sig)
    p.wait(timeout=120)
    return p


def _resume(run_dir: Path) -> subprocess.CompletedProcess:
    r = subprocess.run(
        _cmd("--resume", str(run_dir), "--progress", "plain"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return r


def _outcome(run_dir: Path):
    weights = load_file(str(run_dir / "model.safetensors"))
    results = json.loads((run_dir / "results.json").read_text())["test"]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return weights, results, rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    subprocess.run(
        _cmd(*ARGS, "--out", str(out)), env=ENV, check=True, capture_output=True, timeout=300
    )
    return _outcome(_run_dir(out))


def _assert_same(run_dir: Path, reference):
    weights, results, rows = _outcome(run_dir)
    ref_weights, ref_results, ref_rows = reference
    assert set(weights) == set(ref_weights)
    for k in weights:
        assert torch.equal(weights[k], ref_weights[k]), k
    assert results["accuracy"] == ref_results["accuracy"]
    assert results["loss"] == ref_results["loss"]
    assert rows == ref_rows


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, reference):
    p = _start_and_stop(tmp_path, signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL
    run_dir = _run_dir(tmp_path)
    assert not (run_dir / "model.safetensors").exists()
    r = _resume(run_dir)
    assert "resuming" in r.stdout
    _assert_same(run_dir, reference)


@pytest.mark.slow
def test_sigkill_after_a_mid_epoch_checkpoint_resumes_mid_epoch(tmp_path, reference):
    # --checkpoint-every 0.0001 minutes: a checkpoint after (almost) every batch
    p = _start_and_stop(
        tmp_path,
        signal.SIGKILL,
        extra=["--checkpoint-every", "0.0001"],
        ready=_mid_epoch_checkpoint,
    )
    assert p.returncode == -signal.SIGKILL
    run_dir = _run_dir(tmp_path)
    r = _resume(run_dir)
    assert " batch " in r.stdout.split("resuming", 1)[1].splitlines()[0]  # resumed mid-epoch
    _assert_same(run_dir, reference)


@pytest.mark.slow
def test_ctrl_c_saves_says_how_to_resume_and_resumes(tmp_path, reference):
    p = _start_and_stop(tmp_path, signal.SIGINT)
    _, err = p.communicate()
    assert p.returncode == 130, err
    run_dir = _run_dir(tmp_path)
    assert f"resume with: deepstart train --resume {run_dir}" in err
    assert "Traceback" not in err
    _resume(run_dir)
    _assert_same(run_dir, reference)
