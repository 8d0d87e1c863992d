"""Transfer learning without ImageNet weights, and what cached features (precompute) buy.

    python bench/transfer.py pretrain [--epochs 4]                    # 8 CIFAR classes
    python bench/transfer.py finetune PRETRAINED_RUN [--seeds 0 1 2]  # cat/dog, 100 per class
    python bench/transfer.py precompute [PRETRAINED_RUN] [--per-class 1000] [--epochs 5]

``pretrain`` trains resnet20 on the eight CIFAR-10 classes that are not cats or dogs.
``finetune`` fine-tunes that body on cat vs dog from only 100 training images per class and
trains the same model from scratch on the same images for the same number of epochs, for each
seed, and scores both on all 2,000 cat/dog test images. ``precompute`` trains the head of the
frozen body for ``--epochs`` epochs twice, interleaved: with full forward passes through the
fixed body, and on features computed once; it prints the time of every epoch and the test
accuracy of both. Data: the CIFAR-10 JPEG copy in ../shared/data (results: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from deepstart.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from deepstart.data.catalog import load_dataset
from deepstart.models.registry import create_model
from deepstart.run.runner import apply_pretrained, train_run
from deepstart.train.callbacks import Callback
from deepstart.train.learner import Learner

CIFAR = str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz")
EIGHT = "airplane,automobile,bird,deer,frog,horse,ship,truck"


def pretrain(args: argparse.Namespace) -> None:
    cfg = RunConfig(
        data=DataConfig("folder", data_dir=CIFAR, options={"classes": EIGHT}),
        model=ModelConfig("resnet20"),
        train=TrainConfig(
            epochs=args.epochs,
            lr=3e-3,
            augment="cifar",
            precision="bf16",
            out=args.out,
            report=False,
            progress="plain",
        ),
    )
    res = train_run(cfg)
    print(f"pretrained run: {res.run_dir} test accuracy {res.test['accuracy']:.4f}")


def _cat_dog(seed: int, out: str, pretrained: str | None, epochs: int) -> float:
    cfg = RunConfig(
        data=DataConfig(
            "folder",
            data_dir=CIFAR,
            valid_pct=0.0,  # 200 images are too few to hold any out; valid is the test split
            options={"classes": "cat,dog", "train_per_class": 100},
        ),
        model=ModelConfig("resnet20", pretrained=pretrained),
        train=TrainConfig(
            epochs=epochs if pretrained else epochs + 1,  # fine_tune adds its frozen epoch
            lr=3e-3,
            batch_size=32,
            seed=seed,
            augment="cifar",
            precision="bf16",
            fine_tune=pretrained is not None,
            out=out,
            report=False,
            progress="none",
        ),
    )
    return train_run(cfg, quiet=True).test["accuracy"]


def finetune(args: argparse.Namespace) -> None:
    rows = []
    for seed in args.seeds:  # interleaved: fine-tuned, scratch, next seed
        t = time.perf_counter()
        ft = _cat_dog(seed, f"{args.out}/ft", args.pretrained, args.epochs)
        t_ft = time.perf_counter() - t
        t = time.perf_counter()
        sc = _cat_dog(seed, f"{args.out}/scratch", None, args.epochs)
        t_sc = time.perf_counter() - t
        rows.append((seed, ft, sc))
        print(f"seed {seed}: fine-tuned {ft:.4f} ({t_ft:.0f} s), scratch {sc:.4f} ({t_sc:.0f} s)")
    fts, scs = [r[1] for r in rows], [r[2] for r in rows]
    print(
        f"median fine-tuned {statistics.median(fts):.4f} (min {min(fts):.4f}), "
        f"scratch {statistics.median(scs):.4f} (max {max(scs):.4f}), "
        f"gap per seed {[round(100 * (a - b), 2) for _, a, b in rows]} points"
    )


class EpochTimer(Callback):
    """Seconds of each epoch, and of the set-up before the first (where the features of a
    cached fit are computed: ``fit`` makes its batches before ``before_fit``)."""

    def before_fit(self) -> None:
        self.times: list[float] = []

    def before_epoch(self) -> None:
        self.t = time.perf_counter()

    def after_epoch(self) -> None:
        self.times.append(time.perf_counter() - self.t)


def precompute(args: argparse.Namespace) -> None:
    torch.set_num_threads(2)
    size = (args.size, args.size) if args.size else None
    data = load_dataset(
        "folder",
        data_dir=CIFAR,
        size=size,
        seed=0,
        classes="cat,dog",
        train_per_class=args.per_class,
    )
    model = create_model(args.model, in_channels=3, num_classes=2, input_size=data.size)
    if args.pretrained:  # loads the body and switches data to the run's normalisation
        apply_pretrained(ModelConfig(args.model, pretrained=args.pretrained), model, data, print)
    print(f"{args.model} cat/dog: train {len(data.train)}, valid {len(data.valid)}, {data.size}")
    results = {}
    for mode in ("full", "cached") * args.rounds:
        learn = Learner(
            data,
            copy.deepcopy(model),
            batch_size=64,
            device="cpu",
            precision=args.precision,
            precompute=mode == "cached",
            log=print,
            seed=0,
            callbacks=[EpochTimer()],
        )
        # the same fixed body in both: BatchNorm frozen too, so the head learns the same thing
        learn.freeze(train_bn=mode == "cached")
        t = time.perf_counter()
        learn.fit_one_cycle(args.epochs, 1e-2)
        total = time.perf_counter() - t
        times = learn.get_callback(EpochTimer).times
        acc = learn.evaluate("test")["accuracy"]
        results.setdefault(mode, []).append((times, total, acc))
        print(
            f"{mode}: epochs {[round(x, 3) for x in times]} s, total {total:.1f} s, test {acc:.4f}"
        )
    full_epoch = statistics.median(t for times, _, _ in results["full"] for t in times)
    cached_epoch = statistics.median(t for times, _, _ in results["cached"] for t in times)
    # what the cached fit spends outside its epochs: computing the features, mostly
    setup = statistics.median(total - sum(times) for times, total, _ in results["cached"])
    whole = statistics.median(r[1] for r in results["full"]) / statistics.median(
        r[1] for r in results["cached"]
    )
    print(
        f"median epoch: full passes {full_epoch:.3f} s, cached {cached_epoch:.4f} s "
        f"({full_epoch / cached_epoch:.0f}x) after {setup:.2f} s computing the features; "
        f"{whole:.1f}x for the whole {args.epochs}-epoch fit"
    )
    accs = {mode: [round(r[2], 4) for r in rs] for mode, rs in results.items()}
    print(f"test accuracy: full passes {accs['full']}, cached {accs['cached']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pretrain")
    a.add_argument("--epochs", type=int, default=4)
    a.add_argument("--out", default="/tmp/transfer/pre")
    a.set_defaults(func=pretrain)
    b = sub.add_parser("finetune")
    b.add_argument("pretrained")
    b.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    b.add_argument("--epochs", type=int, default=8)
    b.add_argument("--out", default="/tmp/transfer")
    b.set_defaults(func=finetune)
    c = sub.add_parser("precompute")
    c.add_argument("pretrained", nargs="?")
    c.add_argument("--model", default="resnet20")
    c.add_argument("--size", type=int, default=None, help="resize the 32x32 images (photos)")
    c.add_argument("--per-class", type=int, default=1000)
    c.add_argument("--epochs", type=int, default=5)
    c.add_argument("--rounds", type=int, default=2)
    c.add_argument("--precision", default="fp32")
    c.set_defaults(func=precompute)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
