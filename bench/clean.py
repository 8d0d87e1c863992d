"""Does ``deepstart clean`` find wrong labels, and does fixing them pay? (issue 23)

    python bench/clean.py cifar10 --work /tmp/clean-bench [--flip 0.02] [--seed 0]
    python bench/clean.py mnist --work /tmp/clean-bench

1. Writes a class-folder copy of the dataset from ../shared/data (CIFAR-10: the JPEG copy;
   MNIST: the IDX files as PNGs), with ``--flip`` of the training files filed under a wrong
   class (another class at random; every training file renamed ``NNNNN.ext`` so names tell
   nothing). The test split is left clean.
2. Trains the dataset's recipe (cifar10-fast, mnist-fast) on it and ranks the training and
   validation pictures with ``deepstart.run.clean.rank_run``: precision and recall of the
   flipped files in the top 1% and 5% of the ranking, for items trained on and held out.
3. Plays a user who looks at the top ``--review`` of the ranking and recognises every flipped
   picture there (an oracle for the human): the plan relabels those back, ``apply_run_plan``
   moves the files, and the same recipe and seed train again on the cleaned folder.
   ``--reference`` also trains on the unflipped copy (the ceiling).

Prints a JSON summary and writes it to WORK/clean-<data>-seed<S>.json (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tarfile
import time
from pathlib import Path

import torch

from deepstart.cli import main as cli
from deepstart.data.folder import write_folder
from deepstart.data.layout import IMAGE_EXTENSIONS
from deepstart.run.clean import apply_run_plan, rank_run, write_clean

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RECIPES = {"cifar10": "cifar10-fast", "mnist": "mnist-fast"}


def original(name: str, work: Path) -> Path:
    """The dataset as class folders ``{train,test}/<class>/`` under ``work``, made once."""
    out = work / f"{name}-folders"
    if (out / "train").is_dir():
        return out
    if name == "cifar10":
        with tarfile.open(SHARED / "cifar10-jpeg" / "cifar10-jpeg.tar.gz") as tar:
            tar.extractall(work / "extract", filter="data")
        (work / "extract" / "cifar10-jpeg").rename(out)
    else:
        from deepstart.data.mnist import load_mnist

        train, test = load_mnist("mnist", data_dir=SHARED / "mnist", download=False)
        write_folder(train, out, "train")
        write_folder(test, out, "test")
    return out


def flipped_copy(src: Path, dst: Path, flip: float, seed: int) -> dict[str, str]:
    """Hard links (copies across file systems) of ``src`` with ``flip`` of train misfiled;
    returns {flipped file relative to dst: its true class}."""
    classes = sorted(d.name for d in (src / "train").iterdir() if d.is_dir())
    files = [
        (c, p)
        for c in classes
        for p in sorted((src / "train" / c).iterdir())
        if p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    gen = torch.Generator().manual_seed(seed)
    n = round(flip * len(files))
    chosen = set(torch.randperm(len(files), generator=gen)[:n].tolist())
    shift = torch.randint(1, len(classes), (len(files),), generator=gen).tolist()
    truth = {}
    for i, (c, p) in enumerate(files):
        k = classes.index(c)
        to = classes[(k + shift[i]) % len(classes)] if i in chosen else c
        rel = f"train/{to}/{i:05d}{p.suffix}"
        _link(p, dst / rel)
        if i in chosen:
            truth[rel] = c
    for p in sorted((src / "test").rglob("*")):
        if p.is_file():
            _link(p, dst / p.relative_to(src))
    return truth


def _link(a: Path, b: Path) -> None:
    b.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(a, b)
    except OSError:
        b.write_bytes(a.read_bytes())


def train(folder: Path, out: Path, recipe: str, seed: int, epochs: int | None) -> dict:
    """One recipe run on ``folder``; its test accuracy (and with TTA) and wall time."""
    argv = ["train", "--recipe", recipe, "--data", "folder", "--data-dir", str(folder)]
    argv += ["--seed", str(seed), "--out", str(out), "--progress", "plain", "--no-report"]
    argv += ["--epochs", str(epochs)] if epochs else []
    before = set(out.iterdir()) if out.exists() else set()
    start = time.perf_counter()
    assert cli(argv) == 0
    seconds = time.perf_counter() - start
    (run,) = set(out.iterdir()) - before
    res = json.loads((run / "results.json").read_text())
    tta = (res.get("test_tta") or {}).get("accuracy")
    return {"run": str(run), "test": res["test"]["accuracy"], "test_tta": tta, "s": seconds}


def ranking_scores(ranked, truth: dict[str, str]) -> dict:
    """Precision and recall of the flipped files at the top 1% and 5% of the ranking."""
    files, split = ranked.files, ranked.suspects.split
    n, bad = len(files), set(truth)
    out = {"ranked": n, "flipped": len(bad & set(files))}
    for pct in (1, 5):
        k = round(n * pct / 100)
        top = files[:k]
        hits = sum(f in bad for f in top)
        out[f"top{pct}%"] = {"k": k, "hits": hits, "precision": hits / k, "recall": hits / len(bad)}
        for s in ("train", "valid"):  # trained on, and held out
            mine = [f for f, sp in zip(files, split) if sp == s and f in bad]
            found = sum(f in bad for f, sp in zip(top, split[:k]) if sp == s)
            out[f"top{pct}%"][f"recall_{s}"] = found / max(len(mine), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", choices=sorted(RECIPES))
    p.add_argument("--work", type=Path, default=Path("/tmp/clean-bench"))
    p.add_argument("--flip", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--review", type=float, default=0.05, help="share of the ranking reviewed")
    p.add_argument("--reference", action="store_true", help="also train on the unflipped copy")
    a = p.parse_args()
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DEEPSTART_CACHE", str(work / "cache"))
    tag = f"{a.data}-seed{a.seed}"
    info = {
        "data": a.data, "recipe": RECIPES[a.data], "flip": a.flip, "seed": a.seed,
        "review": a.review, "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": _cpu(),
        "torch": torch.__version__, "python": platform.python_version(),
        "load_before": os.getloadavg(),
    }  # fmt: skip
    src = original(a.data, work)
    copy = work / f"{tag}-flipped"
    if copy.exists():
        raise SystemExit(f"{copy} exists: remove it (or choose another --work) to start afresh")
    truth = flipped_copy(src, copy, a.flip, a.seed)
    runs = work / f"{tag}-runs"
    info["noisy"] = train(copy, runs, RECIPES[a.data], a.seed, a.epochs)
    start = time.perf_counter()
    ranked = rank_run(info["noisy"]["run"], log=print)
    info["rank_seconds"] = time.perf_counter() - start
    write_clean(ranked)
    info["ranking"] = ranking_scores(ranked, truth)
    info["lookalike_groups"] = len(ranked.suspects.groups)
    reviewed = ranked.files[: round(len(ranked.files) * a.review)]
    actions = [{"file": f, "action": "relabel", "to": truth[f]} for f in reviewed if f in truth]
    plan = work / f"{tag}-plan.json"
    root = str(ranked.root)
    plan.write_text(json.dumps({"deepstart": "clean-plan", "root": root, "actions": actions}))
    apply_run_plan(info["noisy"]["run"], plan, log=print)
    info["relabelled"] = len(actions)
    info["cleaned"] = train(copy, runs, RECIPES[a.data], a.seed, a.epochs)
    info["gain"] = info["cleaned"]["test"] - info["noisy"]["test"]
    if a.reference:
        info["reference"] = train(src, work / f"{tag}-reference", RECIPES[a.data], a.seed, a.epochs)
    info["load_after"] = os.getloadavg()
    text = json.dumps(info, indent=1)
    (work / f"clean-{tag}.json").write_text(text + "\n")
    print(text)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor()


if __name__ == "__main__":
    main()
