"""The notes' models with their own training settings, on every seed (issue 20):
``deepstart train --data D --model M`` as a user types it, against the notes' numbers, and the
same with ``--lr auto``, which must never end below the model's own LR.

    python bench/model_defaults.py                       # every model below, seeds 0-4
    python bench/model_defaults.py logreg mlp --seeds 5  # some of them
    python bench/model_defaults.py mnist_cnn --lr-auto   # also --lr auto, seed for seed
    python bench/model_defaults.py mnist_cnn --label ls --label-smoothing 0.1  # try a change
    python bench/model_defaults.py vgg_small:mnist --lr-auto  # any model on any data

A model of MODELS trains on its data against the notes' number; MODEL:DATA names any
registered model on any dataset of bench/recipes.py's (no target: the table compares arms).

Unknown flags go to ``deepstart train``; ``--label`` names such a variant in the state and
table (the model's own settings are ``own``). Each run is a fresh process with
``--no-report``; its accuracy is the last ``test accuracy`` line (with TTA where the model's
settings use it). Resumable like bench/recipes.py: every finished run is a line of
bench/results/models-<CPU>.jsonl, and a run already there (model, data, variant, CPU,
precision, seed) with the model's own settings as they are now is skipped; ``--fresh``
starts over.

A seed's accuracy repeats exactly on one CPU type whatever the load, so the accuracy columns
hold on a busy machine; the times do not (the load at each run's start is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from recipes import ROOT, run, state_file

# The notes' models, their data and the notes' numbers (the targets on every seed).
MODELS = {
    "logreg": ("mnist", 0.92, "the notes' one softmax layer: 92-93% in 5 epochs"),
    "mlp": ("mnist", 0.98, ">= 98% in 10 epochs"),
    "mnist_cnn": ("mnist", 0.9925, "the Keras mnist_cnn example: 99.25% in 12 epochs"),
    "keras_cifar_cnn": ("cifar10", 0.7935, "the notes' Keras CIFAR-10 CNN: 79.35% in 100 epochs"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("models", nargs="*", help=f"models (default: {', '.join(MODELS)})")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    p.add_argument("--precision", default="auto", help="--precision of the runs (auto, fp32)")
    p.add_argument("--lr-auto", action="store_true", help="also run each with --lr auto")
    p.add_argument("--label", default="own", help="the variant's name (with extra flags)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="shared data")
    p.add_argument("--state", type=Path, help="the runs so far (default: per CPU, in bench/)")
    p.add_argument("--fresh", action="store_true", help="ignore the state file's runs")
    a, extra = p.parse_known_args()
    if extra and a.label == "own":
        raise SystemExit(f"name the variant of {' '.join(extra)} with --label")

    sys.path.insert(0, str(ROOT / "src"))
    from deepstart.models.registry import training_defaults
    from deepstart.recipes.results import cpu_model

    cpu = cpu_model()
    state = a.state or state_file("models", cpu)
    if a.fresh and state.exists():
        state.unlink()
    runs = [json.loads(x) for x in state.read_text().splitlines()] if state.exists() else []
    # A run counts as done while the model's own settings are the ones it ran with.
    # (model, data, target): the notes' models on their data, or MODEL:DATA without a target
    pairs = [
        (n.split(":")[0], n.split(":")[1], None) if ":" in n else (n, *MODELS[n][:2])
        for n in (a.models or list(MODELS))
    ]
    own = {name: training_defaults(name) for name, _, _ in pairs}
    runs = [r for r in runs if r.get("own") == own.get(r["model"], r.get("own"))]
    done = {(r["model"], r["data"], r["variant"], r["cpu"], r["precision"], r["seed"])
            for r in runs}  # fmt: skip
    print(f"{cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; state {state}")
    variants = [(a.label, extra)] + ([("lr-auto", [*extra, "--lr", "auto"])] if a.lr_auto else [])
    if a.precision != "auto":
        variants = [(v, [*x, "--precision", a.precision]) for v, x in variants]
    shared = Path(a.data)
    with tempfile.TemporaryDirectory(prefix="deepstart-bench-") as tmp:
        for seed in range(a.seeds):
            for name, data, _ in pairs:
                for variant, flags in variants:
                    if (name, data, variant, cpu, a.precision, seed) in done:
                        continue
                    res = run(["--model", name], data, seed, shared, Path(tmp), flags)
                    one = {
                        **{"model": name, "data": data, "variant": variant, "flags": flags},
                        **{"own": own[name], "cpu": cpu, "precision": a.precision, "seed": seed},
                        **{"accuracy": res["accuracy"], "seconds": round(res["seconds"], 1)},
                        **{"date": time.strftime("%Y-%m-%d"), "load": round(res["load"], 2)},
                    }
                    state.parent.mkdir(parents=True, exist_ok=True)
                    with state.open("a") as f:
                        f.write(json.dumps(one) + "\n")
                    runs.append(one)
                    took = f"{res['seconds']:.0f} s (load {res['load']:.2f})"
                    print(
                        f"  {name}:{data} {variant} seed {seed}: {res['accuracy']:.2%} in {took}",
                        flush=True,
                    )
    print(f"\n{cpu}, precision {a.precision}, seeds 0-{a.seeds - 1}\n")
    print("| model | data | variant | target | lowest (seeds 0-4) | median time | every seed |")
    print("|---|---|---|---|---|---|---|")
    for name, data, target in pairs:
        ours = [r for r in runs if (r["model"], r["data"]) == (name, data)]
        for variant in sorted({r["variant"] for r in ours}):
            mine = sorted(
                (r for r in ours if r["variant"] == variant
                 and r["cpu"] == cpu and r["precision"] == a.precision and r["seed"] < a.seeds),
                key=lambda r: r["seed"],
            )  # fmt: skip
            if not mine:
                continue
            low = min(r["accuracy"] for r in mine)
            accs = ", ".join(f"{r['accuracy']:.2%}" for r in mine)
            secs = statistics.median(r["seconds"] for r in mine)
            full = len(mine) == a.seeds
            met = "-" if target is None else "yes" if low >= target and full else "no"
            goal = "-" if target is None else f"{target:.2%}"
            print(f"| {name} | {data} | {variant} | {goal} | **{low:.2%}** ({accs}) | "
                  f"{secs:.0f} s | {met} |")  # fmt: skip


if __name__ == "__main__":
    main()
