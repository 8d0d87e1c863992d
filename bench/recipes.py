"""Time to accuracy of the recipes: from process start to the final test accuracy.

    python bench/recipes.py                          # every recipe, seeds 0 1 2
    python bench/recipes.py mnist-fast cifar10-fast  # some of them
    python bench/recipes.py --seeds 1 --data ../shared/data

Each run is ``deepstart train --recipe NAME --data ... --seed S`` in a fresh process, exactly
as a user types it (plus ``--no-report``: the report is written after the last accuracy and
would only load the machine). The clock starts before the process is started and stops when
the process prints its last ``test accuracy`` line (the TTA one when the recipe uses TTA), so
start-up, imports, data loading, training and evaluation are all inside. Runs are
interleaved (seed 0 of every recipe, then seed 1, ...) so that a busy spell of the machine
does not fall on one recipe only. The table compares the medians with issue 7's targets.

CIFAR-10 is the JPEG copy in ../shared/data/cifar10-jpeg (expect about a point below the
official set); its decoded-array cache is warmed first, so runs time what a user's second
and later runs take (the first decode of the archive takes another 15-20 s).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# issue 7's targets: recipe -> (accuracy, seconds)
TARGETS = {
    "shapes-fast": (0.999, 10),
    "mnist-fast": (0.994, 60),
    "mnist-995": (0.995, 240),
    "fashion-fast": (0.93, 180),
    "cifar10-fast": (0.80, 180),
    "cifar10-90": (0.90, 1200),
}

ACCURACY = re.compile(r"^test accuracy(?: with TTA)? (\d\.\d+) on (\d+) images")


def data_args(dataset: str, shared: Path) -> list[str]:
    if dataset == "shapes":
        return ["--data", "shapes"]
    if dataset in ("mnist", "fashion_mnist"):
        return ["--data", dataset, "--data-dir", str(shared)]
    if dataset == "cifar10":  # the JPEG copy, through folder (its default recipe is CIFAR's)
        archive = shared / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
        return ["--data", "folder", "--data-dir", str(archive)]
    raise SystemExit(f"no data arguments for {dataset}")


def run(recipe: str, dataset: str, seed: int, shared: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "deepstart", "train", "--recipe", recipe]
    cmd += [*data_args(dataset, shared), "--seed", str(seed), "--no-report"]
    cmd += ["--progress", "plain", "--out", str(out), *extra]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    accuracy, seconds, epochs = None, None, []
    assert proc.stdout is not None
    for line in proc.stdout:
        m = ACCURACY.match(line.strip())
        if m:
            accuracy, seconds = float(m.group(1)), time.perf_counter() - start
        if re.match(r"^\s+\d+/\d+\s", line):
            epochs.append(line.rstrip())
    if proc.wait() != 0 or accuracy is None:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode})")
    return {"accuracy": accuracy, "seconds": seconds, "load": load, "epochs": epochs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("recipes", nargs="*", help="recipe names (default: all)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="shared data")
    p.add_argument("--verbose", action="store_true", help="print every run's epoch lines")
    a, extra = p.parse_known_args()

    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from deepstart.recipes import get_recipe, list_recipes

    recipes = [get_recipe(n) for n in a.recipes] if a.recipes else list_recipes()
    shared = Path(a.data)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    if any(r.dataset == "cifar10" for r in recipes):
        from deepstart.data.catalog import load_dataset

        archive = shared / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
        load_dataset("folder", data_dir=archive)  # warm the decoded-array cache
    results: dict[str, list[dict]] = {r.name: [] for r in recipes}
    with tempfile.TemporaryDirectory(prefix="deepstart-bench-") as tmp:
        for seed in range(a.seeds):
            for r in recipes:
                res = run(r.name, r.dataset, seed, shared, Path(tmp), extra)
                results[r.name].append(res)
                print(
                    f"  {r.name} seed {seed}: {res['accuracy']:.2%} in {res['seconds']:.1f} s "
                    f"(load {res['load']:.2f} at its start)",
                    flush=True,
                )
                if a.verbose:
                    print("\n".join(res["epochs"]), flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}\n")
    print("| recipe | model, epochs | target | test accuracy (median; seeds) | time to it "
          "(median; seeds) | met |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in recipes:
        runs = results[r.name]
        acc = statistics.median(x["accuracy"] for x in runs)
        secs = statistics.median(x["seconds"] for x in runs)
        accs = ", ".join(f"{x['accuracy']:.2%}" for x in runs)
        times = ", ".join(f"{x['seconds']:.0f}" for x in runs)
        goal_acc, goal_s = TARGETS.get(r.name, (None, None))
        target = f">= {goal_acc:.1%} in <= {goal_s} s" if goal_acc else "-"
        met = "-" if goal_acc is None else ("yes" if acc >= goal_acc and secs <= goal_s else "no")
        epochs = {**{"epochs": 5}, **r.train}["epochs"]
        print(
            f"| {r.name} | {r.model}, {epochs} | {target} | **{acc:.2%}** ({accs}) | "
            f"**{secs:.0f} s** ({times}) | {met} |"
        )
    print("\nfor src/deepstart/recipes.py (Measured):")
    day = time.strftime("%Y-%m-%d")
    for r in recipes:
        runs = results[r.name]
        acc = statistics.median(x["accuracy"] for x in runs)
        secs = statistics.median(x["seconds"] for x in runs)
        print(f'  {r.name}: Measured({acc:.4f}, {secs:.0f}, "{day}")')


if __name__ == "__main__":
    main()
