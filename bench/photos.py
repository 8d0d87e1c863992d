"""The photos recipe on real pictures: wall time from process start, accuracy, throughput.

    python bench/photos.py folder OUT [--classes cat,dog] [--train 1000] [--valid 500]
    python bench/photos.py recipe FOLDER [--seeds 0 1 2] [deepstart train flags...]
    python bench/photos.py throughput [--models efficientnet_lite0 resnet18 resnet34]
    python bench/photos.py scaling OUT [--sizes 500 1000 2000 4000]

``folder`` writes a class-folder photo set from the CIFAR-10 JPEG copy in ../shared/data:
``--train``/``--valid`` pictures per class, upsampled to ``--side`` px (bicubic) and saved as
JPEG, in ``OUT/train/<class>`` and ``OUT/valid/<class>`` (these machines have no real photo
folder such as dogs-vs-cats: CIFAR's 32 px photos, upsampled, stand in; say so next to every
figure). ``recipe`` runs ``deepstart train --data folder --data-dir FOLDER`` (the default
command: the photos recipe) in a fresh process per seed and reports the wall time from process
start, the decode, feature and training times it printed, and the validation accuracy (plain
and with TTA). ``throughput`` times training steps and predictions per second at 224 px for
each model (random weights: the arithmetic is the same). ``scaling`` runs the recipe on
folders of growing size. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz"


def cpu_model() -> str:
    from deepstart.recipes.results import cpu_model as named  # one naming of CPUs

    return named()


def make_folder(args: argparse.Namespace) -> None:
    from PIL import Image

    from deepstart.data.archive import extract_archive

    src = extract_archive(CIFAR, quiet=True)
    while not (src / "train").is_dir():  # the archive's lone top folder
        src = next(p for p in src.iterdir() if p.is_dir())
    out = Path(args.out)
    for split, n, from_split in (("train", args.train, "train"), ("valid", args.valid, "test")):
        for c in args.classes.split(","):
            dest = out / split / c
            dest.mkdir(parents=True, exist_ok=True)
            files = sorted((src / from_split / c).iterdir())[:n]
            for f in files:
                with Image.open(f) as im:
                    big = im.convert("RGB").resize((args.side, args.side), Image.BICUBIC)
                    big.save(dest / f"{f.stem}.jpg", quality=90)
    print(f"wrote {out}: {args.classes} x ({args.train} train + {args.valid} valid), {args.side}px")


_TIMES = {
    "decoded": re.compile(r"decoded (\d+) images in ([\d.]+) s"),
    "features_train": re.compile(r"precompute: body features of train \((\d+) .* in ([\d.]+) s"),
    "features_valid": re.compile(r"precompute: body features of valid \((\d+) .* in ([\d.]+) s"),
}


def run_recipe(folder: str, seed: int, extra: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "deepstart", "train", "--data", "folder", "--data-dir"]
    cmd += [folder, "--seed", str(seed), "--out", str(out), "--progress", "plain", *extra]
    # A fresh cache: the decode (and the weights' one-time conversion) counts, as on a
    # user's first run.
    env = {**os.environ, "DEEPSTART_CACHE": tempfile.mkdtemp(prefix="deepstart-cold-")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    shutil.rmtree(env["DEEPSTART_CACHE"], ignore_errors=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    run_dir = Path(re.search(r"run directory: (\S+)", proc.stdout).group(1))
    results = json.loads((run_dir / "results.json").read_text())
    split = "test" if results.get("test") else "valid"
    row = {
        "seed": seed,
        "wall_s": round(wall, 1),
        "train_s": results["train_seconds"],
        "accuracy": results[split]["accuracy"],
        "tta": (results.get(f"{split}_tta") or {}).get("accuracy"),
        "split": split,
        "run_dir": str(run_dir),
    }
    for name, pattern in _TIMES.items():
        m = pattern.search(proc.stdout)
        row[f"{name}_s"] = float(m.group(2)) if m else None
    return row


def recipe(args: argparse.Namespace) -> None:
    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for seed in args.seeds:
        row = run_recipe(args.folder, seed, args.extra, Path(args.out))
        rows.append(row)
        print(json.dumps(row), flush=True)
    accs = [r["tta"] or r["accuracy"] for r in rows]
    walls = [r["wall_s"] for r in rows]
    print(
        f"min accuracy {min(accs):.4f} (median {statistics.median(accs):.4f}); wall median "
        f"{statistics.median(walls):.1f} s, max {max(walls):.1f} s over seeds {args.seeds}"
    )


def throughput(args: argparse.Namespace) -> None:
    from deepstart.device import resolve_precision
    from deepstart.models.registry import create_model

    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    dtype = resolve_precision("auto", torch.device("cpu"), "classification")
    x = torch.randn(args.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch,))
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=2).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), 1e-4)

        def step(train: bool, model=model, opt=opt) -> None:
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                if train:
                    model.train()
                    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                else:
                    model.eval()
                    with torch.no_grad():
                        model(x)

        out = {"model": name, "precision": str(dtype).replace("torch.", "")}
        for kind, train in (("train", True), ("predict", False)):
            step(train)  # warm-up
            times = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                step(train)
                times.append(time.perf_counter() - t)
            out[f"{kind}_img_s"] = round(args.batch / statistics.median(times), 1)
        print(json.dumps(out), flush=True)


def scaling(args: argparse.Namespace) -> None:
    print(f"CPU: {cpu_model()}, torch {torch.__version__}")
    for n in args.sizes:
        folder = Path(args.out) / f"catdog-{n}"
        if not folder.is_dir():
            per_class = n // 2
            make_folder(
                argparse.Namespace(
                    out=str(folder),
                    classes="cat,dog",
                    train=per_class * 2 // 3,
                    valid=per_class - per_class * 2 // 3,
                    side=args.side,
                )
            )
        row = run_recipe(str(folder), 0, [], Path(args.out) / "runs")
        print(json.dumps({"images": n, **row}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("folder")
    f.add_argument("out")
    f.add_argument("--classes", default="cat,dog")
    f.add_argument("--train", type=int, default=1000, help="per class")
    f.add_argument("--valid", type=int, default=500, help="per class")
    f.add_argument("--side", type=int, default=256)
    f.set_defaults(func=make_folder)
    r = sub.add_parser("recipe")
    r.add_argument("folder")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--out", default="/tmp/deepstart-bench-photos")
    r.set_defaults(func=recipe)
    t = sub.add_parser("throughput")
    t.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet18", "resnet34"])
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--rounds", type=int, default=5)
    t.set_defaults(func=throughput)
    s = sub.add_parser("scaling")
    s.add_argument("out")
    s.add_argument("--sizes", type=int, nargs="+", default=[750, 1500, 3000, 6000])
    s.add_argument("--side", type=int, default=256)
    s.set_defaults(func=scaling)
    args, extra = p.parse_known_args()  # the rest: flags for deepstart train
    args.extra = [a for a in extra if a != "--"]
    args.func(args)


if __name__ == "__main__":
    main()
