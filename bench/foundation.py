"""Acceptance runs of the foundation: wall-clock and test accuracy of the notes' models.

    python bench/foundation.py                # all runs
    python bench/foundation.py mnist_cnn      # runs whose name contains "mnist_cnn"

Each run goes through ``deepstart train`` exactly as a user would type it (a fresh process,
so import and data loading are inside the time), with its output in the terminal; a markdown
table for docs/benchmarks.md is printed at the end. Data comes from ../shared/data.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

RUNS = {
    "shapes-vgg_small (make demo)": [
        "--data",
        "shapes",
        "--model",
        "vgg_small",
        "--epochs",
        "6",
        "--lr",
        "3e-3",
    ],
    "mnist-logreg": [
        "--data",
        "mnist",
        "--data-dir",
        str(SHARED),
        "--model",
        "logreg",
        "--epochs",
        "5",
        "--lr",
        "1e-2",
    ],
    "mnist-mlp": [
        "--data",
        "mnist",
        "--data-dir",
        str(SHARED),
        "--model",
        "mlp",
        "--epochs",
        "5",
        "--lr",
        "1e-3",
    ],
    "mnist-mnist_cnn": [
        "--data",
        "mnist",
        "--data-dir",
        str(SHARED),
        "--model",
        "mnist_cnn",
        "--epochs",
        "5",
        "--lr",
        "3e-3",
    ],
    "cifar10jpeg-keras_cifar_cnn": [
        "--data",
        "folder",
        "--data-dir",
        str(SHARED / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"),
        "--model",
        "keras_cifar_cnn",
        "--epochs",
        "5",
        "--lr",
        "2e-3",
    ],
}


def run(name: str, args: list[str], out: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "deepstart",
        "train",
        *args,
        "--out",
        str(out),
        "--progress",
        "plain",
    ]
    print("$ deepstart train " + " ".join(args), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    (run_dir,) = sorted(out.iterdir())[-1:]
    results = json.loads((run_dir / "results.json").read_text())
    return {
        "name": name,
        "command": "deepstart train " + " ".join(a.replace(str(ROOT.parent), "..") for a in args),
        "accuracy": results["test"]["accuracy"],
        "train_seconds": results["train_seconds"],
        "wall_seconds": round(seconds, 1),
    }


def main() -> None:
    wanted = sys.argv[1:]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in RUNS.items():
            if wanted and not any(w in name for w in wanted):
                continue
            out = Path(tmp) / name.split()[0]
            out.mkdir()
            rows.append(run(name, args, out))
    import torch

    print(
        f"\n{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} threads"
    )
    print("| run | command | test accuracy | training s | wall s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | `{r['command']}` | {r['accuracy']:.2%} | "
            f"{r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
