"""What the report costs a run: report time / training time, per recipe and for ResNet-34.

    python bench/report_cost.py                       # every job below, seed 0
    python bench/report_cost.py mnist-fast resnet34   # some of them
    python bench/report_cost.py --photos /tmp/catdog  # the folder for photos and resnet34

Each job is one ``deepstart train`` in a fresh process, with the report on (the default).
Training time is ``train_seconds`` from the run's results.json (the fit loop only); the
report's time is what ``train`` prints on its ``report: ... (N.Ns)`` line (from the start
of ``build_report`` to report.html on disk). The test/valid scoring between the two is
neither. Issue 22's target: the report costs at most 10% of training.

``photos`` and ``resnet34`` need a class-folder of photos (``python bench/photos.py folder
DIR`` writes CIFAR-10's cat and dog pictures upsampled to 256 px). ``resnet34`` is issue
22's case: a ResNet-34 at 64 px, 3 epochs, fine-tuned (random weights here: the report's
work does not depend on what the weights are).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = re.compile(r"^report: (\S+) \((\d+\.\d+)s\)")


def jobs(shared: Path, photos: Path) -> dict[str, list[str]]:
    cifar = shared / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    return {
        "shapes-fast": ["--recipe", "shapes-fast", "--data", "shapes"],
        "mnist-fast": ["--recipe", "mnist-fast", "--data", "mnist", "--data-dir", str(shared)],
        "fashion-fast": [
            *("--recipe", "fashion-fast", "--data", "fashion_mnist", "--data-dir", str(shared))
        ],
        "cifar10-fast": ["--recipe", "cifar10-fast", "--data", "folder", "--data-dir", str(cifar)],
        "photos": ["--data", "folder", "--data-dir", str(photos)],
        "resnet34": [
            *("--data", "folder", "--data-dir", str(photos), "--model", "resnet34"),
            *("--size", "64", "--epochs", "3", "--batch-size", "64", "--lr", "1e-3"),
        ],
    }


def run(name: str, args: list[str], seed: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "deepstart", "train", *args, "--seed", str(seed)]
    cmd += ["--out", str(out / name)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    report = None
    for line in proc.stdout.splitlines() + proc.stderr.splitlines():
        m = REPORT.match(line.strip())
        if m:
            report = (Path(m.group(1)), float(m.group(2)))
    if report is None:
        raise SystemExit(f"{name}: no report line in\n{proc.stdout[-2000:]}")
    results = json.loads((report[0].parent / "results.json").read_text())
    return {"train": results["train_seconds"], "report": report[1], "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--photos", type=Path, default=Path("/tmp/catdog"))
    a = p.parse_args()
    table = jobs(a.data.resolve(), a.photos.resolve())
    names = a.names or list(table)
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'job':<14} {'training':>9} {'report':>8} {'report/training':>16} {'wall':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            r = run(name, table[name], a.seed, Path(tmp))
            ratio = r["report"] / r["train"]
            print(
                f"{name:<14} {r['train']:8.1f}s {r['report']:7.1f}s {ratio:15.1%} "
                f"{r['wall']:6.1f}s",
                flush=True,
            )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
