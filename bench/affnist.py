"""AffNIST reproduced, and the padding mistake made visible.

    python bench/affnist.py                   # train, then test centred and off-centre
    python bench/affnist.py --run-dir RUN     # skip training: evaluate an existing run
    python bench/affnist.py --epochs 1 --copies 1   # a quick look
    python bench/affnist.py --copies 1 --epochs 4 --opt translate=false   # no big moves

Three steps, each a fresh ``deepstart`` process exactly as a user would type it (so imports
and data generation are inside the times):

1. ``deepstart train --data affnist ...``: MNIST digits in a 40×40 frame, randomly rotated,
   sheared, scaled and moved (``copies`` versions of each); the run ends by scoring the test
   split, MNIST's test set padded to 40×40 *centred* — the correct preparation.
2. ``deepstart evaluate RUN --data affnist --data-opt test_pad=corner``: the same test digits
   padded off-centre (all 12 pixels of padding on the right and the bottom), the mistake of
   the notes this project grew from. The accuracy drop and the mismatch warning are printed.
3. the same with ``test_pad_value=33`` (a grey frame: what padding a normalised image with 0
   amounts to), a second way to pad "differently".

A markdown summary for docs/benchmarks.md is printed at the end. MNIST comes from
../shared/data/mnist.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "mnist"
DEEPSTART = [sys.executable, "-m", "deepstart"]


def run(args: list[str]) -> tuple[str, float]:
    """Run ``deepstart args``, echoing its output; return (output, seconds)."""
    print("$ deepstart " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*DEEPSTART, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - t0
    print(proc.stdout + proc.stderr, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"deepstart {args[0]} failed with exit code {proc.returncode}")
    return proc.stdout + proc.stderr, seconds


def accuracy(output: str) -> float:
    m = re.search(r"test accuracy ([0-9.]+)", output)
    if m is None:
        raise SystemExit("no test accuracy in the output")
    return float(m.group(1))


def warnings_of(output: str) -> list[str]:
    return [
        line[len("warning: ") :] for line in output.splitlines() if line.startswith("warning: ")
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", help="evaluate this run instead of training one")
    p.add_argument("--model", default="vgg_small")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", default="5e-3")
    p.add_argument("--copies", type=int, default=4)
    p.add_argument(
        "--opt", action="append", default=[], metavar="KEY=VALUE", help="more --data-opt"
    )
    p.add_argument("--data-dir", default=str(SHARED))
    p.add_argument("--out", default="runs")
    a = p.parse_args()

    data = ["--data", "affnist", "--data-dir", a.data_dir, "--data-opt", f"copies={a.copies}"]
    for opt in a.opt:
        data += ["--data-opt", opt]
    rows = []
    if a.run_dir:
        run_dir = a.run_dir
    else:
        train = [
            "train", *data, "--model", a.model, "--epochs", str(a.epochs), "--lr", a.lr,
            "--out", a.out,
        ]  # fmt: skip
        out, seconds = run(train)
        run_dir = re.search(r"run directory: (\S+)", out).group(1)
        rows.append(("train + centred test", " ".join(train), accuracy(out), seconds))
        if warnings_of(out):
            print("UNEXPECTED: the correctly padded test split gave warnings", warnings_of(out))
    results = {}
    for label, opts in (
        ("centred", ["--data-opt", "test_pad=centre"]),
        ("off-centre (corner)", ["--data-opt", "test_pad=corner"]),
        ("grey frame", ["--data-opt", "test_pad_value=33"]),
    ):
        cmd = ["evaluate", run_dir, *data, *opts]
        out, seconds = run(cmd)
        results[label] = (accuracy(out), warnings_of(out))
        rows.append((f"evaluate, {label}", " ".join(cmd), accuracy(out), seconds))

    print("\n| step | command | test accuracy | wall |\n|---|---|---|---|")
    for label, cmd, acc, seconds in rows:
        print(f"| {label} | `deepstart {cmd}` | {acc:.2%} | {seconds:.0f} s |")
    print()
    for label, (acc, warns) in results.items():
        print(f"{label}: {acc:.2%}; warnings: {json.dumps(warns, ensure_ascii=False)}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    import torch  # only for the record

    print(
        f"\ntorch {torch.__version__}, python {platform.python_version()}, "
        f"{platform.machine()} {os.cpu_count()} CPUs, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load average at the end {load}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
