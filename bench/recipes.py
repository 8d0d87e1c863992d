"""Time to accuracy of the recipes, on every seed: from process start to the final test
accuracy.

    python bench/recipes.py                          # every recipe, seeds 0-4, default precision
    python bench/recipes.py mnist-fast cifar10-fast  # some of them
    python bench/recipes.py --seeds 3 --precision fp32 --data ../shared/data
    python bench/recipes.py --record                 # also into the package's results.jsonl

Each run is ``deepstart train --recipe NAME --data ... --seed S`` in a fresh process, exactly
as a user types it (plus ``--no-report``: the report is written after the last accuracy and
would only load the machine). The clock starts before the process is started and stops when
the process prints its last ``test accuracy`` line (the TTA one when the recipe uses TTA), so
start-up, imports, data loading, training and evaluation are all inside. Runs are
interleaved (seed 0 of every recipe, then seed 1, ...) so that a busy spell of the machine
does not fall on one recipe only.

A target holds on every seed, not the median: the table gives the lowest accuracy and the
slowest time against each recipe's targets (``Recipe.target``, ``Recipe.target_seconds``).

Resumable: every finished run is a line of the state file (``--state``, by default
bench/results/recipes-<CPU>.jsonl), and a run already there (same recipe, CPU, core count,
precision and seed, and the recipe as it is now: ``Recipe.fingerprint()``) is not run again,
so a long check can be stopped and split over sessions; a recipe changed since is run again.
``--fresh`` starts over. ``--record`` merges the state's current runs into
src/deepstart/recipes/results.jsonl, which ``deepstart recipes`` shows per CPU (leaving out
runs of an older version of a recipe).

CIFAR-10 is the JPEG copy in ../shared/data/cifar10-jpeg (expect about a point below the
official set); its decoded-array cache is warmed first, so runs time what a user's second
and later runs take (the first decode of the archive takes another 15-20 s).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ACCURACY = re.compile(r"^test accuracy(?: with TTA)? (\d\.\d+) on (\d+) images")


def data_args(dataset: str, shared: Path) -> list[str]:
    if dataset == "shapes":
        return ["--data", "shapes"]
    if dataset in ("mnist", "fashion_mnist"):
        return ["--data", dataset, "--data-dir", str(shared)]
    if dataset == "cifar10":  # the JPEG copy, through folder (its default recipe is CIFAR's)
        archive = shared / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
        return ["--data", "folder", "--data-dir", str(archive)]
    if Path(dataset).expanduser().is_dir():  # a user's folder (train/ and valid/ inside)
        return ["--data", "folder", "--data-dir", str(Path(dataset).expanduser())]
    raise SystemExit(f"no data arguments for {dataset}")


def state_file(kind: str, cpu: str) -> Path:
    """bench/results/KIND-<cpu>.jsonl: one resumable state file per check and CPU type."""
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")
    return ROOT / "bench" / "results" / f"{kind}-{slug}.jsonl"


def run(
    what: list[str], dataset: str, seed: int, shared: Path, out: Path, extra: list[str]
) -> dict:
    """One ``deepstart train`` of ``what`` (``["--recipe", NAME]``, ``["--model", NAME]``) on
    ``dataset`` in a fresh process: its last test accuracy, the seconds to it, the load at its
    start and its epoch lines."""
    cmd = [sys.executable, "-m", "deepstart", "train", *what]
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
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    p.add_argument("--precision", default="auto", help="--precision of the runs (auto, fp32)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="shared data")
    p.add_argument("--state", type=Path, help="the runs so far (default: per CPU, in bench/)")
    p.add_argument("--fresh", action="store_true", help="ignore the state file's runs")
    p.add_argument("--record", action="store_true", help="merge into the package's results")
    p.add_argument("--verbose", action="store_true", help="print every run's epoch lines")
    a, extra = p.parse_known_args()

    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from deepstart.recipes import get_recipe, list_recipes
    from deepstart.recipes.results import (
        RESULTS,
        Run,
        append_run,
        cpu_cores,
        cpu_model,
        merge_into,
        on_target,
        read_runs,
        summarise,
    )

    recipes = [get_recipe(n) for n in a.recipes] if a.recipes else list_recipes()
    shared, cpu, cores = Path(a.data), cpu_model(), cpu_cores()
    state = a.state or state_file("recipes", cpu)
    if a.fresh and state.exists():
        state.unlink()
    # A run counts as done while the recipe is the one it ran (its fingerprint).
    current = {r.name: r.fingerprint() for r in list_recipes()}
    done = {x.key for x in read_runs(state) if x.settings == current.get(x.recipe)}
    print(f"{cpu}; torch {torch.__version__}, {cores} cores, "
          f"load {os.getloadavg()[0]:.2f}; state {state} ({len(done)} runs)")  # fmt: skip
    if any(r.dataset == "cifar10" for r in recipes):
        from deepstart.data.catalog import load_dataset

        archive = shared / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
        load_dataset("folder", data_dir=archive)  # warm the decoded-array cache
    if a.precision != "auto":
        extra = [*extra, "--precision", a.precision]
    with tempfile.TemporaryDirectory(prefix="deepstart-bench-") as tmp:
        for seed in range(a.seeds):
            for r in recipes:
                if (r.name, cpu, cores, a.precision, seed) in done:
                    continue
                res = run(["--recipe", r.name], r.dataset, seed, shared, Path(tmp), extra)
                day = time.strftime("%Y-%m-%d")
                one = Run(r.name, cpu, a.precision, seed, res["accuracy"], round(res["seconds"], 1),
                          day, round(res["load"], 2), current[r.name], cores)  # fmt: skip
                append_run(state, one)
                print(
                    f"  {r.name} seed {seed}: {res['accuracy']:.2%} in {res['seconds']:.1f} s "
                    f"(load {res['load']:.2f} at its start)",
                    flush=True,
                )
                if a.verbose:
                    print("\n".join(res["epochs"]), flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}\n")
    fresh = [x for x in read_runs(state) if x.settings == current.get(x.recipe)]
    here = (cpu, cores, a.precision)
    runs = [x for x in fresh if (x.cpu, x.cores, x.precision) == here and x.seed < a.seeds]
    print(f"{cores}-core {cpu}, precision {a.precision}, seeds 0-{a.seeds - 1}\n")
    print("| recipe | model, epochs | target | lowest test accuracy (seeds) | time: median, "
          "slowest (seeds) | met on every seed |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in recipes:
        mine = sorted((x for x in runs if x.recipe == r.name), key=lambda x: x.seed)
        if not mine:
            continue
        (summ,) = summarise(mine, r.name)
        accs = ", ".join(f"{x.accuracy:.2%}" for x in mine)
        times = ", ".join(f"{x.seconds:.0f}" for x in mine)
        target = f">= {r.target:.1%}" if r.target is not None else "-"
        if r.target_seconds is not None:
            target += f" in <= {r.target_seconds:g} s"
        met = {None: "-", True: "yes", False: "no"}[on_target(summ, r.target, r.target_seconds)]
        epochs = {**{"epochs": 5}, **r.train}["epochs"]
        print(
            f"| {r.name} | {r.model}, {epochs} | {target} | **{summ.lowest:.2%}** ({accs}) | "
            f"{summ.median_seconds:.0f} s, **{summ.slowest_seconds:.0f} s** ({times}) | "
            f"{met} |"
        )
    if a.record:
        n = merge_into(RESULTS, fresh)
        print(f"\nrecorded: {RESULTS} holds {n} runs (deepstart recipes shows them)")


if __name__ == "__main__":
    main()
