"""One process against two (DistributedDataParallel over gloo) on this machine's CPU cores.

    python bench/distributed.py [--rounds 3] [--per-class 1000] [--model mnist_cnn]

Trains the same model for one epoch on MNIST (``--per-class`` training images of each digit)
with the same global batch of 128, interleaved A B A B ...:

- A: one process using every core (torch threads = cores);
- B: one process with one thread (what each DDP process gets);
- C: ``--devices 2``, two processes with one thread each and 64 images per process.

It prints the training seconds (``results.json``) and the wall time of each command, and
their medians. On a 2-core CPU the two processes split the same two cores that one process
already uses with two threads, and add an all-reduce of every gradient per step, so expect
no gain: DDP pays off with one accelerator per process. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data")


def run(devices: int, args: argparse.Namespace, threads: int | None = None) -> tuple[float, float]:
    out = tempfile.mkdtemp(prefix="bench-ddp-")
    cmd = [sys.executable, "-m", "deepstart", "train", "--data", "mnist", "--data-dir", DATA]
    cmd += ["--data-opt", f"train_per_class={args.per_class}", "--model", args.model]
    cmd += ["--epochs", "1", "--lr", "3e-3", "--no-report", "--progress", "none"]
    cmd += ["--out", out, "--no-checkpoint"]
    cmd += ["--batch-size", str(128 // devices)]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if devices > 1:
        cmd += ["--devices", str(devices)]
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // devices))
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    wall = time.perf_counter() - t
    (run_dir,) = Path(out).iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    return results["train_seconds"], wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--model", default="mnist_cnn")
    args = p.parse_args()
    modes = {
        "1 process, all threads": (1, None),
        "1 process, 1 thread": (1, 1),
        "2 processes": (2, None),
    }
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode, (devices, threads) in modes.items():
            train, wall = run(devices, args, threads)
            times[mode].append((train, wall))
            print(f"round {r + 1}: {mode}: training {train:.1f} s, wall {wall:.1f} s")
    base = statistics.median(x[0] for x in times["1 process, all threads"])
    for mode, xs in times.items():
        train, wall = (statistics.median(x[i] for x in xs) for i in (0, 1))
        print(f"median {mode}: training {train:.1f} s ({base / train:.2f}x), wall {wall:.1f} s")


if __name__ == "__main__":
    main()
