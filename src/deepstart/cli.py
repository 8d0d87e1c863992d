"""The command line: subcommands map flags onto config dataclasses and call the library.

deepstart train --data shapes --model vgg_small --epochs 5
deepstart data list | data show NAME | data make shapes --out DIR
deepstart models
deepstart evaluate RUN_DIR [--data NAME]
deepstart fit-function 'sin(3*x)+0.3*x' [--compare]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepstart.config import (
    FIT_ACTIVATIONS,
    FIT_COMPARE,
    FIT_COMPARE_OPT,
    FIT_OPTIMIZERS,
    OPTIMIZERS,
    SCHEDULES,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from deepstart.errors import DeepstartError


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        nums = [int(p) for p in parts if p]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(nums) == 1:
        return nums[0], nums[0]
    if len(nums) == 2:
        return nums[0], nums[1]
    raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")


def _lr(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"lr must be a number or 'auto', got {text!r}") from None


def _batch(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch size must be N or 'auto', got {text!r}") from None


def _duration(text: str) -> float:
    """Seconds from "90", "90s", "5m" or "1.5h"."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    scale = units.get(t[-1:])
    try:
        return float(t[:-1]) * scale if scale else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"time must be like 90, 90s, 5m or 1.5h: {text!r}"
        ) from None


def _weights(text: str) -> str | list[float]:
    if text == "balanced":
        return text
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"class weights must be 'balanced' or numbers w1,w2,...: {text!r}"
        ) from None


def _value(text: str) -> Any:
    """A KEY=VALUE value: JSON when it parses (numbers, lists, true), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if "," in text:
            return [_value(t) for t in text.split(",")]
        return text


def _pairs(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise DeepstartError(f"{flag} wants KEY=VALUE, got {item!r}")
        key, val = item.split("=", 1)
        out[key.strip().replace("-", "_")] = _value(val.strip())
    return out


def _model(name: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``--model`` as a ModelConfig's name and options: a layer spec becomes the registry model
    ``spec`` with the option ``spec=...`` (so run directories are named ``...-spec``)."""
    from deepstart.models.registry import resolve_spec

    return resolve_spec(name, options)


def _add_data_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--data", required=required, help="dataset name (deepstart data list) or path")
    p.add_argument("--data-dir", help="directory searched first for the dataset's files")
    p.add_argument("--valid-pct", type=float, default=0.1, help="share of train held out (0.1)")
    p.add_argument("--size", type=_size, help="resize images to N or HxW")
    p.add_argument("--channels", type=int, choices=(1, 3), help="convert to 1 or 3 channels")
    p.add_argument("--resize", default="squish", choices=("squish", "crop", "pad"))
    p.add_argument(
        "--data-opt",
        action="append",
        metavar="KEY=VALUE",
        help="source option, e.g. n_train=6000 or classes=circle,star (repeatable)",
    )


def _data_config(a: argparse.Namespace) -> DataConfig:
    return DataConfig(
        name=a.data,
        data_dir=a.data_dir,
        valid_pct=a.valid_pct,
        size=a.size,
        channels=a.channels,
        resize=a.resize,
        options=_pairs(a.data_opt, "--data-opt"),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepstart",
        description="Train, understand and ship an image classifier on your own data.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train a model; writes a run directory")
    _add_data_args(t, required=False)
    t.set_defaults(data="shapes")
    t.add_argument(
        "--model",
        default="vgg_small",
        help="registry name (deepstart models) or a layer spec such as conv32-pool-flat-dense128",
    )
    t.add_argument(
        "--model-opt", action="append", metavar="KEY=VALUE", help="model option, e.g. hidden=512"
    )
    t.add_argument(
        "--pretrained",
        metavar="PATH_OR_URL",
        help="start from these weights: .safetensors/.pth file, URL, or a deepstart run dir",
    )
    t.add_argument("--pretrained-sha256", help="the SHA-256 a downloaded weights file must have")
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument(
        "--lr",
        type=_lr,
        default=1e-3,
        help="peak LR for one_cycle (1e-3); 'auto' runs the LR finder and uses its valley",
    )
    t.add_argument(
        "--batch-size",
        type=_batch,
        default=128,
        help="items per step (128); 'auto' finds the largest that fits the accelerator",
    )
    t.add_argument("--opt", default="adamw", choices=OPTIMIZERS)
    t.add_argument("--wd", type=float, default=0.01, help="weight decay (0.01)")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum / Adam beta1")
    t.add_argument("--nesterov", action="store_true", help="Nesterov momentum for sgd")
    t.add_argument("--schedule", default="one_cycle", choices=SCHEDULES)
    t.add_argument("--pct-start", type=float, default=0.25, help="one_cycle warm-up share")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    t.add_argument("--out", default="runs", help="parent of the run directory (runs)")
    t.add_argument("--no-checkpoint", action="store_true", help="do not write checkpoints")
    t.add_argument(
        "--checkpoint-every", type=float, metavar="MIN", help="also checkpoint every MIN minutes"
    )
    t.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint"
    )
    t.add_argument(
        "--progress",
        default="auto",
        choices=("auto", "rich", "plain", "none"),
        help="live bar (rich), lines only (plain); auto picks by terminal",
    )
    g = t.add_argument_group("training options")
    g.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="autocast: auto = bf16/fp16 on CUDA, fp32 on CPU/MPS",
    )
    g.add_argument(
        "--no-guard",
        action="store_true",
        help="turn off the divergence guard (restore and halve the LR on blow-up)",
    )
    g.add_argument("--guard-tries", type=int, default=5, help="halvings before giving up (5)")
    g.add_argument(
        "--early-stop",
        type=int,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without improvement; keep the best weights",
    )
    g.add_argument("--monitor", default="valid_loss", help="metric for early stopping")
    g.add_argument("--min-delta", type=float, default=0.0, help="smallest change that counts")
    g.add_argument("--grad-clip", type=float, metavar="NORM", help="clip the gradient norm")
    g.add_argument("--label-smoothing", type=float, default=0.0)
    g.add_argument(
        "--class-weights",
        type=_weights,
        metavar="balanced|W1,W2,...",
        help="weight the loss per class, e.g. for imbalanced data",
    )
    g.add_argument("--ema", type=float, metavar="DECAY", help="average the weights (e.g. 0.999)")
    g.add_argument(
        "--max-time",
        type=_duration,
        metavar="T",
        help="stop cleanly after T of training (90s, 5m, 1h)",
    )
    g.add_argument(
        "--fast-dev-run",
        action="store_true",
        help="one training and one validation batch to catch bugs; saves nothing",
    )
    g.add_argument(
        "--overfit-batches",
        type=int,
        default=0,
        metavar="N",
        help="train and validate on N fixed batches: a working model overfits them",
    )
    g.add_argument(
        "--augment",
        choices=("none", "flip", "cifar", "photo", "digits"),
        help="augment training batches on the device: flip, cifar (flip+shift), photo "
        "(crop, flip, rotate, lighting), digits (no flip)",
    )
    g.add_argument(
        "--tta", action="store_true", help="also score the test split with test-time augmentation"
    )
    g.add_argument(
        "--fine-tune",
        action="store_true",
        help="one epoch with the body frozen, then all layers with lower LRs for early ones",
    )
    g.add_argument("--freeze", action="store_true", help="train only the head")
    g.add_argument(
        "--precompute",
        action="store_true",
        help="with the body frozen and no augmentation: compute its features once and train "
        "the head on them (epochs after the first take seconds; BatchNorm stays fixed)",
    )
    g.add_argument(
        "--no-report", action="store_true", help="skip report.html at the end (saves seconds)"
    )
    g.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log to RUN_DIR/tensorboard (pip install 'deepstart[tensorboard]')",
    )
    t.set_defaults(func=cmd_train)

    f = sub.add_parser("lr-find", help="sweep the learning rate and suggest one (with a plot)")
    _add_data_args(f, required=False)
    f.set_defaults(data="shapes")
    f.add_argument("--model", default="vgg_small")
    f.add_argument("--model-opt", action="append", metavar="KEY=VALUE")
    f.add_argument("--batch-size", type=int, default=128)
    f.add_argument("--opt", default="adamw", choices=OPTIMIZERS)
    f.add_argument("--wd", type=float, default=0.01)
    f.add_argument("--start-lr", type=float, default=1e-7)
    f.add_argument("--end-lr", type=float, default=10.0)
    f.add_argument("--num-it", type=int, default=100)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="auto")
    f.add_argument("--out", default="lr_find.png", help="PNG of loss against LR")
    f.set_defaults(func=cmd_lr_find)

    d = sub.add_parser("data", help="list, inspect and make datasets")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    dl = dsub.add_parser("list", help="the datasets deepstart knows and where they are found")
    dl.add_argument("--data-dir", help="also look here")
    dl.set_defaults(func=cmd_data_list)
    ds = dsub.add_parser("show", help="split sizes, classes, mean/std and a PNG sample grid")
    ds.add_argument("name", help="dataset name or folder path")
    ds.add_argument("--out", help="PNG path for the sample grid (default <name>-samples.png)")
    ds.add_argument("--per-class", type=int, default=8)
    ds.add_argument("--seed", type=int, default=0)
    _add_data_args(ds, required=False)
    ds.set_defaults(func=cmd_data_show)
    dm = dsub.add_parser("make", help="write a generated dataset as class folders of PNGs")
    dm.add_argument("kind", choices=("shapes",))
    dm.add_argument("--out", required=True, help="directory to write train/ and test/ into")
    dm.add_argument("--n-train", type=int, default=3000)
    dm.add_argument("--n-test", type=int, default=600)
    dm.add_argument("--size", type=int, default=32)
    dm.add_argument("--classes", default="circle,square,triangle", help="comma-separated")
    dm.add_argument("--channels", type=int, choices=(1, 3), default=1)
    dm.add_argument("--seed", type=int, default=0)
    dm.set_defaults(func=cmd_data_make)

    m = sub.add_parser("models", help="the model registry with parameter counts")
    m.add_argument("--channels", type=int, default=None, help="count for this many channels")
    m.add_argument("--classes", type=int, default=None, help="count for this many classes")
    m.add_argument("--size", type=_size, default=None, help="count for this input size")
    m.set_defaults(func=cmd_models)
    msub = m.add_subparsers(dest="models_command", metavar="show")
    ms = msub.add_parser(
        "show", help="a model's layers: output shapes, parameters and FLOPs per image"
    )
    ms.add_argument("model", help="a registry name or a layer spec such as conv32-pool-flat")
    ms.add_argument(
        "--input-size", type=int, nargs="+", metavar=("H", "W"), dest="show_size", help="H [W]"
    )
    ms.add_argument("--channels", type=int, dest="show_channels", help="image channels")
    ms.add_argument("--classes", type=int, dest="show_classes", help="number of classes")
    ms.add_argument("--model-opt", action="append", metavar="KEY=VALUE", dest="show_opts")
    ms.set_defaults(func=cmd_models_show)

    e = sub.add_parser("evaluate", help="score a run's model: accuracy, loss, per class")
    e.add_argument("run_dir", help="a run directory written by deepstart train")
    _add_data_args(e, required=False)
    e.add_argument("--split", default="test", choices=("test", "valid", "train"))
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser(
        "interpret", help="what a run's model gets wrong: confusion, per-class F1, top losses"
    )
    i.add_argument("run_dir", help="a run directory written by deepstart train")
    _add_data_args(i, required=False)
    i.add_argument("--split", default="test", choices=("test", "valid", "train"))
    i.add_argument("--device", default="auto")
    i.add_argument("--top", type=int, default=16, help="pictures per grid (16)")
    i.add_argument("--out", help="directory for the PNGs (default RUN_DIR/plots)")
    i.add_argument("--json", action="store_true", help="print the tables as JSON")
    i.set_defaults(func=cmd_interpret)

    r = sub.add_parser("report", help="(re)write RUN_DIR/report.html: the whole run on one page")
    r.add_argument("run_dir", help="a run directory written by deepstart train")
    r.add_argument("--split", default="test", choices=("test", "valid", "train"))
    r.add_argument("--device", default="auto")
    r.add_argument(
        "--layer", help="conv layer for feature maps and filters (default: first / last conv)"
    )
    r.set_defaults(func=cmd_report)
    ff = sub.add_parser(
        "fit-function",
        help="learn y = f(x) from a formula or a CSV, with pictures of it converging",
        description="Fit a network to a formula of x (parsed safely: numbers, x, pi, e, "
        "+ - * / ** and sin cos tan exp log sqrt abs tanh sinh cosh ...) or to a CSV of (x, y) "
        "rows. Writes a run directory with fit_progress.png/.gif, loss.png and error.png. The "
        "defaults (a sine-activation MLP, Adam one-cycle then an LBFGS polish) fit sin on "
        "[-2 pi, 2 pi] to a max error below 1e-3 in a few seconds. A formula that starts with "
        "a minus goes after --, e.g. deepstart fit-function -- '-x**2'.",
    )
    ff.add_argument(
        "expression", nargs="?", help="formula of x, e.g. sin or 'sin(3*x)+0.3*x' (quote it)"
    )
    fd = ff.add_argument_group("data")
    fd.add_argument("--csv", metavar="FILE", help="fit the (x, y) rows of a CSV file instead")
    fd.add_argument(
        "--domain",
        type=_domain,
        default=(-2 * math.pi, 2 * math.pi),
        metavar="LO,HI",
        help="x range of the formula; numbers or formulas of pi: --domain=-2*pi,2*pi (default)",
    )
    fd.add_argument("--samples", type=int, default=1000, help="training points (1000)")
    fd.add_argument(
        "--sampling",
        default="chebyshev",
        choices=("chebyshev", "uniform", "random"),
        help="where the samples sit: chebyshev (packed toward the ends, where errors peak; "
        "default), uniform (evenly spaced) or random",
    )
    fd.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise on y (0)")
    fm = ff.add_argument_group("model")
    fm.add_argument("--model", default="fit_mlp", help="regression model (deepstart models)")
    fm.add_argument(
        "--activation",
        default="sine",
        choices=FIT_ACTIVATIONS,
        help="sine (SIREN, default), tanh, silu or relu (the notes' choice: fits are polylines)",
    )
    fm.add_argument("--width", type=int, default=64, help="units per hidden layer (64)")
    fm.add_argument("--depth", type=int, default=3, help="hidden layers (3)")
    fm.add_argument(
        "--fourier", type=int, default=0, metavar="K", help="K Fourier features of x (0: none)"
    )
    fm.add_argument("--w0", type=float, default=30.0, help="frequency scale of sine (30)")
    ft = ff.add_argument_group("training")
    ft.add_argument(
        "--opt",
        default="adam",
        choices=FIT_OPTIMIZERS,
        help="main optimizer (adam); lbfgs suits small full-batch fits",
    )
    ft.add_argument(
        "--lr",
        type=float,
        help="peak LR (default: adam 1e-3 with sine, 1e-2 with the others; sgd 10x; lbfgs 1)",
    )
    ft.add_argument(
        "--schedule",
        default="one_cycle",
        choices=SCHEDULES,
        help="LR schedule of the main optimizer (one_cycle); lbfgs always runs constant",
    )
    ft.add_argument("--steps", type=int, default=300, help="main optimizer steps (300)")
    ft.add_argument(
        "--batch-size", type=int, help="points per step (default: all of them, full batch)"
    )
    ft.add_argument(
        "--polish",
        type=int,
        default=100,
        metavar="STEPS",
        help="LBFGS steps after the main optimizer (100; 0: none)",
    )
    ft.add_argument("--loss", default="mse", choices=("mse", "mae"), help="loss (mse)")
    fc = ft.add_mutually_exclusive_group()
    fc.add_argument(
        "--compare",
        nargs="?",
        const=FIT_COMPARE,
        metavar="NAMES",
        help=f"train variants side by side and print a table (default list: {FIT_COMPARE}; "
        "give the formula first: fit-function sin --compare); "
        "names: notes (the beginner's ReLU setting), relu, tanh, silu, sine, sgd, adam, adamw, "
        "lbfgs, adam+lbfgs",
    )
    fc.add_argument(
        "--compare-opt",
        nargs="?",
        const=FIT_COMPARE_OPT,
        metavar="NAMES",
        help=f"the same, over optimizers (default list: {FIT_COMPARE_OPT})",
    )
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument(
        "--device", default="cpu", help="cpu (default: fastest for tiny fits), cuda, mps, auto"
    )
    ft.add_argument("--out", default="runs", help="parent of the run directory (runs)")
    ft.add_argument("--progress", default="auto", choices=("auto", "rich", "plain", "none"))
    ft.add_argument("--no-pictures", action="store_true", help="skip the PNGs and the GIF")
    ft.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: a tiny fit gains little from more, and loses a lot when "
        "another process holds a core)",
    )
    ff.set_defaults(func=cmd_fit_function)
    return parser


def cmd_train(a: argparse.Namespace) -> int:
    from deepstart.train.runner import Interrupted, load_run_config, train_run

    if a.resume:
        cfg = load_run_config(a.resume)
        try:
            train_run(cfg, resume=a.resume)
        except Interrupted as e:
            print(f"deepstart: {e}", file=sys.stderr)
            return 130
        return 0

    cfg = RunConfig(
        data=_data_config(a),
        model=ModelConfig(
            *_model(a.model, _pairs(a.model_opt, "--model-opt")),
            pretrained=a.pretrained,
            pretrained_sha256=a.pretrained_sha256,
        ),
        train=TrainConfig(
            epochs=a.epochs,
            lr=a.lr,
            batch_size=a.batch_size,
            opt=a.opt,
            wd=a.wd,
            momentum=a.momentum,
            nesterov=a.nesterov,
            schedule=a.schedule,
            pct_start=a.pct_start,
            seed=a.seed,
            device=a.device,
            out=a.out,
            checkpoint=not a.no_checkpoint,
            checkpoint_minutes=a.checkpoint_every,
            progress=a.progress,
            precision=a.precision,
            guard=not a.no_guard,
            guard_tries=a.guard_tries,
            early_stop=a.early_stop,
            monitor=a.monitor,
            min_delta=a.min_delta,
            grad_clip=a.grad_clip,
            label_smoothing=a.label_smoothing,
            class_weights=a.class_weights,
            ema=a.ema,
            max_time=a.max_time,
            fast_dev_run=a.fast_dev_run,
            overfit_batches=a.overfit_batches,
            augment=None if a.augment in (None, "none") else a.augment,
            tta=a.tta,
            fine_tune=a.fine_tune,
            freeze=a.freeze,
            precompute=a.precompute,
            report=not a.no_report,
            tensorboard=a.tensorboard,
        ),
    )
    try:
        train_run(cfg)
    except Interrupted as e:
        print(f"deepstart: {e}", file=sys.stderr)
        return 130
    return 0


def cmd_lr_find(a: argparse.Namespace) -> int:
    from deepstart.train.runner import lr_find_run

    res = lr_find_run(
        _data_config(a),
        ModelConfig(*_model(a.model, _pairs(a.model_opt, "--model-opt"))),
        TrainConfig(batch_size=a.batch_size, opt=a.opt, wd=a.wd, seed=a.seed, device=a.device),
        start_lr=a.start_lr,
        end_lr=a.end_lr,
        num_it=a.num_it,
        plot=a.out,
    )
    for name, lr in res.suggestions.items():
        star = "  <- used by --lr auto" if name == "valley" else ""
        print(f"  {name:<8} {lr:.2e}{star}")
    print(f"plot: {a.out}")
    return 0


def cmd_data_list(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from deepstart.data.catalog import list_datasets, locate

    table = Table(title="datasets")
    for col in ("name", "description", "found"):
        table.add_column(col)
    for info in list_datasets():
        table.add_row(info.name, info.description, locate(info.name, a.data_dir))
    Console().print(table)
    print("looked in: --data-dir, $DEEPSTART_DATA, then the cache; see docs/datasets.md")
    return 0


def cmd_data_show(a: argparse.Namespace) -> int:
    from deepstart.data.catalog import load_dataset
    from deepstart.interpret.plots import sample_grid
    from deepstart.train.runner import describe

    data = load_dataset(
        a.name if a.data is None else a.data,
        data_dir=a.data_dir,
        valid_pct=a.valid_pct,
        seed=a.seed,
        size=a.size,
        channels=a.channels,
        resize=a.resize,
        **_pairs(a.data_opt, "--data-opt"),
    )
    print(describe(data))
    for note in data.notes:
        print(f"  note: {note}")
    summary = data.summary()
    width = max(len("class"), *(len(c) for c in data.classes))
    print(f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in summary["class_counts"]))
    for i, name in enumerate(data.classes):
        counts = "  ".join(f"{v[i]:>6}" for v in summary["class_counts"].values())
        print(f"{name:<{width}}  {counts}")
    out = Path(a.out or f"{Path(data.name).name}-samples.png")
    sample_grid(data.train, out, per_class=a.per_class, seed=a.seed, title=data.name)
    print(f"sample grid: {out}")
    return 0


def cmd_data_make(a: argparse.Namespace) -> int:
    from deepstart.data.shapes import write_shapes_folder

    classes = tuple(c.strip() for c in a.classes.split(",") if c.strip())
    out = write_shapes_folder(
        a.out,
        n_train=a.n_train,
        n_test=a.n_test,
        size=a.size,
        classes=classes,
        seed=a.seed,
        channels=a.channels,
    )
    print(f"wrote {a.n_train} train + {a.n_test} test PNGs of {', '.join(classes)} to {out}")
    print(f"train on it: deepstart train --data folder --data-dir {out}")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from deepstart.models.registry import count_parameters, create_model, list_models

    table = Table(title="models")
    for col in ("name", "family", "input", "parameters", "description"):
        table.add_column(col, justify="right" if col == "parameters" else "left")
    for info in list_models(task=None):
        if info.task == "regression":
            n = f"{count_parameters(create_model(info.name)):,}"
            table.add_row(info.name, info.family, "x (N, 1) -> y (N, 1)", n, info.description)
            continue
        c = a.channels or info.in_channels
        size = a.size or info.input_size
        k = a.classes or info.num_classes
        try:
            model = create_model(info.name, in_channels=c, num_classes=k, input_size=size)
            n = f"{count_parameters(model):,}"
        except DeepstartError as e:
            n = f"n/a ({e})"
        shape = f"{c}x{size[0]}x{size[1]}, {k} classes"
        table.add_row(info.name, info.family, shape, n, info.description)
    Console().print(table)
    return 0


def cmd_models_show(a: argparse.Namespace) -> int:
    from rich.console import Console

    from deepstart.models.registry import create_model, get_model_info
    from deepstart.models.summary import summarize

    info = get_model_info(a.model)
    if info.task != "classification":
        raise DeepstartError(f"{a.model} is a {info.task} model; models show draws image models")
    if a.show_size is not None and len(a.show_size) not in (1, 2):
        raise DeepstartError(f"--input-size takes H [W], got {a.show_size}")
    h, w = (a.show_size * 2)[:2] if a.show_size else info.input_size
    c = a.show_channels or info.in_channels
    k = a.show_classes or info.num_classes
    model = create_model(
        a.model, in_channels=c, num_classes=k, input_size=(h, w), **_pairs(a.show_opts, "--model-opt")
    )
    title = f"{a.model} ({info.family}): {c}x{h}x{w} -> {k} classes"
    Console().print(summarize(model, (c, h, w)).table(title=title))
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from deepstart.train.runner import evaluate_run, format_eval

    data = _data_config(a) if a.data else None
    res = evaluate_run(a.run_dir, data=data, split=a.split, device=a.device)
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    print(format_eval(res))
    width = max(len(p["class"]) for p in res["per_class"])
    for p in res["per_class"]:
        print(f"  {p['class']:<{width}}  {p['accuracy']:.4f}  ({p['n']} images)")
    return 0


def cmd_interpret(a: argparse.Namespace) -> int:
    from deepstart.interpret.analysis import Interpretation
    from deepstart.interpret.plots import write_interpretation_plots
    from deepstart.train.runner import load_run_learner

    data = _data_config(a) if a.data else None
    learn = load_run_learner(a.run_dir, data=data, device=a.device)
    interp = Interpretation.from_learner(learn, a.split)
    out = Path(a.out) if a.out else Path(a.run_dir) / "plots"
    written = write_interpretation_plots(interp, out, top=a.top)
    if a.json:
        print(json.dumps(interp.summary(top=a.top), indent=2, default=str))
        return 0
    print(interp.text_summary(top=min(a.top, 10)))
    print("plots: " + ", ".join(str(p) for p in written))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from deepstart.report import build_report

    path = build_report(a.run_dir, split=a.split, device=a.device, layer=a.layer)
    print(f"report: {path}")
    return 0


def _domain(text: str) -> tuple[float, float]:
    """``LO,HI``: numbers or constant formulas such as -2*pi (read by the safe parser)."""
    import torch

    from deepstart.data.expression import ExpressionError, parse_expression

    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"domain must be LO,HI, got {text!r}")
    try:
        # Evaluated at x = nan: a bound that uses x comes out nan and is refused.
        nan = torch.tensor(math.nan, dtype=torch.float64)
        lo, hi = (float(parse_expression(p)(nan)) for p in parts)
    except ExpressionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise argparse.ArgumentTypeError(f"domain bounds must be finite numbers: {text!r}")
    return lo, hi


def cmd_fit_function(a: argparse.Namespace) -> int:
    from deepstart.config import FitConfig
    from deepstart.train.fit_compare import compare_fits
    from deepstart.train.fitting import fit_function

    if (a.expression is None) == (a.csv is None):
        raise DeepstartError("give a formula of x (e.g. sin) or --csv FILE, not both")
    cfg = FitConfig(
        expression=a.expression or "",
        csv=a.csv,
        domain=a.domain,
        samples=a.samples,
        sampling=a.sampling,
        noise=a.noise,
        model=a.model,
        activation=a.activation,
        width=a.width,
        depth=a.depth,
        fourier=a.fourier,
        w0=a.w0,
        opt=a.opt,
        lr=a.lr,
        schedule=a.schedule,
        steps=a.steps,
        batch_size=a.batch_size,
        polish=a.polish,
        loss=a.loss,
        seed=a.seed,
        device=a.device,
        out=a.out,
        progress=a.progress,
        pictures=not a.no_pictures,
        threads=a.threads,
    )
    names = a.compare or a.compare_opt
    if names:
        compare_fits(cfg, names.split(","))
    else:
        fit_function(cfg)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DeepstartError as e:
        print(f"deepstart: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepstart: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
