"""How long ``report.html`` takes, and where the time goes.

    python bench/report.py RUN_DIR [RUN_DIR ...] [--rounds 3]

Rebuilds each run's report ``--rounds`` times, interleaved (A B A B ...), and prints the
median wall time of the whole report and of its parts (loading the model and data, predicting
the split, the interpretation plots, the vision section). The report is written at the end of
every ``deepstart train``, so this is what a run pays for it (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

from deepstart.interpret import plots
from deepstart.interpret.analysis import Interpretation
from deepstart.report import build_report, read_run
from deepstart.report.budget import Budget
from deepstart.report.panels import Panels
from deepstart.run.runner import load_run_learner


def timed_parts(run_dir: Path) -> dict[str, float]:
    """Seconds of each part of one report build (the sum is close to the whole)."""
    parts = {}
    t = time.perf_counter()
    learn = load_run_learner(run_dir, device="cpu")
    parts["load model + data"] = time.perf_counter() - t
    t = time.perf_counter()
    interp = Interpretation.from_learner(learn, "test")
    parts["predict split"] = time.perf_counter() - t
    t = time.perf_counter()
    plots.write_interpretation_plots(interp, run_dir / "plots")
    parts["interpretation plots"] = time.perf_counter() - t
    t = time.perf_counter()
    Panels(learn, interp, run_dir / "plots", Budget(None), read_run(run_dir)).draw_all()
    parts["slow panels (all)"] = time.perf_counter() - t
    t = time.perf_counter()
    build_report(run_dir, learn=learn)
    parts["whole report (given the learner)"] = time.perf_counter() - t
    return parts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    results: dict[Path, dict[str, list[float]]] = {r: defaultdict(list) for r in a.runs}
    for _ in range(a.rounds):
        for run in a.runs:
            for k, v in timed_parts(run).items():
                results[run][k].append(v)
    for run, parts in results.items():
        print(f"\n{run.name}")
        for k, vs in parts.items():
            each = ", ".join(f"{v:.2f}" for v in vs)
            print(f"  {k:<34} median {statistics.median(vs):6.2f} s  ({each})")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
