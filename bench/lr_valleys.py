"""Where the LR finder's valley falls, seed after seed, against the LR a run uses without
``--lr auto`` (issue 20: ``--lr auto`` must never end below that LR's result).

    python bench/lr_valleys.py                         # every pair below, seeds 0-4
    python bench/lr_valleys.py mnist_cnn:mnist --seeds 3
    python bench/lr_valleys.py vgg_small:cifar10 -- --batch-size 256

Each sweep is ``deepstart train --data D --model M --lr auto`` as a user types it (the
model's own settings, a fresh process), stopped as soon as the sweep has chosen: the valley
and the other suggestions are read from the run's lr_find.json and the process is killed
before its first epoch. The table gives, per pair, the LR the run would use without ``--lr
auto`` (the model's own, or the default), each seed's valley, their spread (largest over
smallest) and the valley's distance from that LR in factors, which is what
``deepstart.run.resolve`` reads to keep or replace it.

Resumable: every sweep is a line of bench/results/lr-valleys-<CPU>.jsonl; a (model, data,
seed, flags, own settings) already there is skipped. ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recipes import ROOT, data_args, state_file

# model:data pairs: each registered image classifier on the data it is built for (the
# pretrained ImageNet nets are left to bench/photos.py: their sweep needs a photo folder).
PAIRS = [
    "logreg:mnist", "mlp:mnist", "mnist_cnn:mnist", "fast_mnist:mnist", "vgg_small:mnist",
    "spec:mnist",
    "logreg:fashion_mnist", "mlp:fashion_mnist", "mnist_cnn:fashion_mnist",
    "fast_mnist:fashion_mnist", "vgg_small:fashion_mnist",
    "keras_cifar_cnn:cifar10", "fast_cifar:cifar10", "resnet20:cifar10", "resnet56:cifar10",
    "vgg_small:cifar10",
    "vgg_small:shapes", "fast_mnist:shapes",
]  # fmt: skip


def sweep(model: str, data: str, seed: int, shared: Path, out: Path, extra: list[str]) -> dict:
    """One ``deepstart train --lr auto``, stopped once lr_find.json is written: its record."""
    cmd = [sys.executable, "-m", "deepstart", "train", "--model", model, "--lr", "auto"]
    cmd += [*data_args(data, shared), "--seed", str(seed), "--no-report", "--progress", "plain"]
    cmd += ["--out", str(out), *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # the line comes after lr_find.json is written
        lines.append(line)
        if line.startswith("lr auto:"):
            break
    proc.kill()
    proc.wait()
    found = sorted(out.glob("*/lr_find.json"), key=lambda p: p.stat().st_mtime)
    if not lines or not lines[-1].startswith("lr auto:") or not found:
        raise RuntimeError(f"{' '.join(cmd)}: no sweep\n{''.join(lines[-20:])}")
    record = json.loads(found[-1].read_text())
    for f in found:  # the killed run's directory
        shutil.rmtree(f.parent)
    return {
        "suggestions": record["suggestions"],
        "chosen": record["chosen"],
        "line": lines[-1].strip(),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("pairs", nargs="*", help="MODEL:DATA (default: every pair in PAIRS)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="shared data")
    p.add_argument("--state", type=Path, help="the sweeps so far (default: per CPU)")
    p.add_argument("--fresh", action="store_true", help="ignore the state file's sweeps")
    a, extra = p.parse_known_args()
    extra = [x for x in extra if x != "--"]

    sys.path.insert(0, str(ROOT / "src"))
    from deepstart.models.registry import training_defaults
    from deepstart.recipes.choose import usual_lr
    from deepstart.recipes.results import cpu_model

    cpu = cpu_model()
    state = a.state or state_file("lr-valleys", cpu)
    if a.fresh and state.exists():
        state.unlink()
    rows = [json.loads(x) for x in state.read_text().splitlines()] if state.exists() else []
    pairs = [tuple(x.split(":")) for x in (a.pairs or PAIRS)]
    own = {m: training_defaults(m) for m, _ in pairs}
    rows = [r for r in rows if r["own"] == own.get(r["model"], r["own"])]
    done = {(r["model"], r["data"], r["seed"], tuple(r["flags"])) for r in rows}
    print(f"{cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; state {state}")
    shared = Path(a.data)
    with tempfile.TemporaryDirectory(prefix="deepstart-bench-") as tmp:
        for seed in range(a.seeds):
            for model, data in pairs:
                if (model, data, seed, tuple(extra)) in done:
                    continue
                res = sweep(model, data, seed, shared, Path(tmp), extra)
                one = {"model": model, "data": data, "seed": seed, "flags": extra,
                       "own": own[model], "cpu": cpu, "date": time.strftime("%Y-%m-%d"),
                       "load": round(os.getloadavg()[0], 2), **res}  # fmt: skip
                state.parent.mkdir(parents=True, exist_ok=True)
                with state.open("a") as f:
                    f.write(json.dumps(one) + "\n")
                rows.append(one)
                took = f"({res['seconds']} s)"
                print(f"  {model}:{data} seed {seed}: {res['line']} {took}", flush=True)
    print(f"\n{cpu}; extra flags: {' '.join(extra) or 'none'}\n")
    print("| model | data | LR without auto | valley, seeds 0-4 | spread | valley / that LR | "
          "--lr auto kept it |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    recipe = extra[extra.index("--recipe") + 1] if "--recipe" in extra else None
    for model, data in pairs:
        mine = sorted(
            (r for r in rows if (r["model"], r["data"]) == (model, data)
             and r["flags"] == extra and r["cpu"] == cpu and r["seed"] < a.seeds),
            key=lambda r: r["seed"],
        )  # fmt: skip
        if not mine:
            continue
        base, _ = usual_lr(model, recipe)  # what run/resolve.py compares the valley with
        valleys = [r["suggestions"]["valley"] for r in mine]
        factors = [v / base for v in valleys]
        spread = max(valleys) / min(valleys)
        print(
            f"| {model} | {data} | {base:.1e} | {', '.join(f'{v:.1e}' for v in valleys)} | "
            f"{spread:.2f}x | {min(factors):.2f}-{max(factors):.2f} (log2 median "
            f"{statistics.median(math.log2(f) for f in factors):+.2f}) | "
            f"{sum('; keeping ' in r['line'] for r in mine)} of {len(mine)} |"
        )


if __name__ == "__main__":
    main()
