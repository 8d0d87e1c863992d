"""The command line: subcommands map flags onto config dataclasses and call the library.

deepstart train --data shapes --model vgg_small --epochs 5
deepstart data list | data show NAME | data make shapes --out DIR
deepstart models
deepstart evaluate RUN_DIR [--data NAME]
deepstart fit-function 'sin(3*x)+0.3*x' [--compare]
deepstart export RUN_DIR --out model.zip [--onnx model.onnx]
deepstart predict model.zip photos/ 'more/*.jpg' [--top-k 3] [--json | --csv]
deepstart serve model.zip [--host 127.0.0.1 --port 8000]
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
        help="registry name (deepstart models) or a layer spec such as conv32-pool-flat-dense128; "
        "default: the recipe's model (vgg_small when the data has no recipe)",
    )
    t.add_argument(
        "--recipe",
        help="a named recipe (deepstart recipes): model + training settings tuned for "
        "time-to-accuracy; default: the dataset's own when --model is not given. Flags given "
        "override the recipe's values",
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
    # The settings a recipe can set default to None (unset): the recipe's value, else
    # TrainConfig's default (given in the help), fills them in (deepstart.recipes.run_config).
    t.add_argument("--epochs", type=int, help="epochs (5)")
    t.add_argument(
        "--lr",
        type=_lr,
        help="peak LR for one_cycle (1e-3); 'auto' runs the LR finder and uses its valley",
    )
    t.add_argument(
        "--batch-size",
        type=_batch,
        help="items per step (128); 'auto' finds the largest that fits the accelerator",
    )
    t.add_argument("--opt", choices=OPTIMIZERS, help="optimizer (adamw)")
    t.add_argument("--wd", type=float, help="weight decay (0.01)")
    t.add_argument("--momentum", type=float, help="SGD momentum / Adam beta1 (0.9)")
    t.add_argument(
        "--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum for sgd"
    )
    t.add_argument("--schedule", choices=SCHEDULES, help="LR schedule (one_cycle)")
    t.add_argument("--pct-start", type=float, help="one_cycle warm-up share (0.25)")
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
        choices=("auto", "fp32", "bf16", "fp16"),
        help="autocast (auto): bf16/fp16 on CUDA, bf16 on CPUs with native bf16 "
        "(avx512_bf16, amx_bf16), else fp32",
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
    g.add_argument("--label-smoothing", type=float, help="(0)")
    g.add_argument(
        "--class-weights",
        type=_weights,
        metavar="balanced|W1,W2,...",
        help="weight the loss per class, e.g. for imbalanced data",
    )
    g.add_argument("--ema", type=float, metavar="DECAY", help="average the weights (e.g. 0.999)")
    g.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="train in N processes with DistributedDataParallel (launches torchrun; "
        "--batch-size is per process)",
    )
    g.add_argument(
        "--sync-bn", action="store_true", help="synchronise BatchNorm over processes (CUDA)"
    )
    g.add_argument(
        "--dist-timeout",
        type=_duration,
        default=300.0,
        metavar="T",
        help="how long a process waits for the others before the run fails (default 5m)",
    )
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
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="also score the test split with test-time augmentation",
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
    rc = sub.add_parser(
        "recipes",
        help="the named training recipes: model, epochs, what each reached and how fast",
        description="Recipes are models with training settings tuned for time-to-accuracy "
        "(docs/speed.md). deepstart train --data NAME uses the dataset's default recipe when "
        "no --model is given; --recipe NAME picks one; flags given override its values.",
    )
    rc.set_defaults(func=cmd_recipes)
    _add_tune_parser(sub)

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

    x = sub.add_parser(
        "export",
        help="ship a run's model: a bundle (.zip or folder) and/or an ONNX file",
        description="Write RUN_DIR's model as a bundle (model.safetensors, model.json and the "
        "training config.json) in a .zip or a folder, and/or as ONNX (needs deepstart[onnx]): "
        "input float32 (N, C, H, W) in 0-255 pixel units, normalisation inside the graph, "
        "checked against PyTorch on random inputs.",
    )
    x.add_argument("run_dir", help="a run directory (or a bundle) to export")
    x.add_argument("--out", help="bundle to write: NAME.zip, or else a folder")
    x.add_argument("--onnx", metavar="FILE", help="also (or only) write an ONNX file")
    x.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "predict",
        help="classify image files with a bundle, run dir or .onnx file",
        description="Predict image files (PNG, JPEG, BMP, GIF, WebP, TIFF), folders (searched "
        "recursively) and globs with the bundle's own preprocessing. Unreadable files are "
        "reported and the rest predicted; the exit status is 1 if any file failed.",
    )
    p.add_argument("bundle", help="a .zip or folder bundle, a run directory, or a .onnx file")
    p.add_argument("images", nargs="+", help="image files, folders or globs ('*.jpg')")
    p.add_argument("--top-k", type=int, default=3, help="classes shown per image (3)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fmt.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (64)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    p.set_defaults(func=cmd_predict)
    sv = sub.add_parser(
        "serve",
        help="a local web app to try a model: draw or drop an image, see what it thinks",
        description="Serve a page with a drawing canvas (grey, small models), an image upload, "
        "the top-k predictions with a Grad-CAM or saliency heat map, and the model card; plus "
        "a JSON API (POST /api/predict, GET /api/model, schema at /openapi.json). Needs "
        "pip install 'deepstart[serve]'. See docs/serve.md.",
    )
    sv.add_argument("bundle", help="a .zip or folder bundle, a run directory, or a .onnx file")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: only here)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port (8000)")
    sv.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    sv.add_argument(
        "--threads",
        type=int,
        help="PyTorch threads per prediction (1); cores/threads predictions run at once",
    )
    sv.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest image file accepted (10)"
    )
    sv.set_defaults(func=cmd_serve)
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
    from deepstart.train.distributed import launch, world_from_env
    from deepstart.train.runner import Interrupted, load_run_config, train_run

    if a.resume:
        cfg = load_run_config(a.resume)
        if cfg.train.devices > 1 and world_from_env() == 1:  # resume as it ran: distributed
            return launch(cfg.train.devices, ["train", "--resume", str(a.resume)])
        try:
            train_run(cfg, resume=a.resume)
        except Interrupted as e:
            print(f"deepstart: {e}", file=sys.stderr)
            return 130
        return 0

    from deepstart.recipes import choose_recipe, run_config

    data = _data_config(a)
    recipe = choose_recipe(a.recipe, data.name, data.data_dir, model=a.model)
    model, model_options = (None, _pairs(a.model_opt, "--model-opt"))
    if a.model is not None:
        model, model_options = _model(a.model, model_options)
    # What a recipe may set counts as given only when the flag was typed (None: unset).
    settable = {
        "epochs": a.epochs,
        "lr": a.lr,
        "batch_size": a.batch_size,
        "opt": a.opt,
        "wd": a.wd,
        "momentum": a.momentum,
        "nesterov": a.nesterov,
        "schedule": a.schedule,
        "pct_start": a.pct_start,
        "precision": a.precision,
        "label_smoothing": a.label_smoothing,
        "ema": a.ema,
        "augment": None if a.augment == "none" else a.augment,
        "tta": a.tta,
    }
    given = {k: v for k, v in settable.items() if v is not None}
    if a.augment == "none":
        given["augment"] = None  # typed: no augmentation, whatever the recipe says
    cfg = run_config(
        data,
        recipe=recipe,
        model=model,
        model_options=model_options,
        pretrained=a.pretrained,
        pretrained_sha256=a.pretrained_sha256,
        train={
            **given,
            "seed": a.seed,
            "device": a.device,
            "out": a.out,
            "checkpoint": not a.no_checkpoint,
            "checkpoint_minutes": a.checkpoint_every,
            "progress": a.progress,
            "guard": not a.no_guard,
            "guard_tries": a.guard_tries,
            "early_stop": a.early_stop,
            "monitor": a.monitor,
            "min_delta": a.min_delta,
            "grad_clip": a.grad_clip,
            "class_weights": a.class_weights,
            "max_time": a.max_time,
            "fast_dev_run": a.fast_dev_run,
            "overfit_batches": a.overfit_batches,
            "fine_tune": a.fine_tune,
            "freeze": a.freeze,
            "precompute": a.precompute,
            "devices": a.devices,
            "sync_bn": a.sync_bn,
            "dist_timeout": a.dist_timeout,
            "report": not a.no_report,
            "tensorboard": a.tensorboard,
        },
    )
    if recipe is not None and world_from_env() == 1:
        overridden = sorted(k for k in given if k in recipe.train) + (
            ["model"] if model is not None and model != recipe.model else []
        )
        note = f" (overridden: {', '.join(overridden)})" if overridden else ""
        print(f"recipe {recipe.name}: {recipe.summary()}{note}", flush=True)
    if cfg.train.devices > 1 and world_from_env() == 1:
        # Start this same command in N processes; each sees WORLD_SIZE and trains its part.
        return launch(cfg.train.devices, a.argv)
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


def cmd_recipes(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from deepstart.recipes import recipe_rows

    rows = recipe_rows()
    table = Table(title="recipes: deepstart train --recipe NAME")
    for col in ("recipe", "data", "model", "epochs", "target", "reached", "time", "measured"):
        right = col in ("epochs", "target", "reached", "time")
        keep = col in ("recipe", "data", "model")  # names stay whole; the rest may wrap
        table.add_column(col, justify="right" if right else "left", no_wrap=keep)
    for r in rows:
        data = r["dataset"] + (" *" if r["default"] else "")
        target = f"{r['target']:.1%}" if r["target"] is not None else "-"
        reached = f"{r['accuracy']:.2%}" if r["accuracy"] is not None else "-"
        seconds = f"{r['seconds']:.0f} s" if r["seconds"] is not None else "-"
        cells = (r["name"], data, r["model"], str(r["epochs"]), target, reached, seconds)
        table.add_row(*cells, r["date"] or "not yet")
    console = Console()
    if not console.is_terminal:  # piped or captured: rich would squeeze it into 80 columns
        console = Console(width=110)
    console.print(table)
    lines = [
        "* the dataset's default: what deepstart train --data NAME trains without --model",
        "reached: median test accuracy over seeds; time: from process start to it "
        "(python bench/recipes.py, docs/benchmarks.md)",
    ]
    for r in rows:
        where = f" [measured on {r['machine']}]" if r["machine"] else ""
        lines.append(f"{r['name']}: {r['description']}; {r['summary']}{where}")
    for line in lines:
        console.print(line, highlight=False, markup=False)
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
        a.model,
        in_channels=c,
        num_classes=k,
        input_size=(h, w),
        **_pairs(a.show_opts, "--model-opt"),
    )
    title = f"{a.model} ({info.family}): {c}x{h}x{w} -> {k} classes"
    Console().print(summarize(model, (c, h, w)).table(title=title))
    return 0


def _add_tune_parser(sub: Any) -> None:
    tn = sub.add_parser(
        "tune",
        help="hyperparameter search with Optuna; every trial is a run directory",
        description="Search a space of hyperparameters (TPE sampling, median pruning); the "
        "study is kept in SQLite (or --storage) and can be resumed. See docs/experiment.md.",
    )
    _add_data_args(tn, required=False)
    tn.add_argument(
        "--model",
        help="registry name, layer spec, or spec template such as 'conv{width}-pool-gap' "
        "(default vgg_small)",
    )
    tn.add_argument("--model-opt", action="append", metavar="KEY=VALUE", help="fixed model option")
    sp = tn.add_mutually_exclusive_group()
    sp.add_argument(
        "--space",
        help="what to search, e.g. 'lr=log(1e-4,1e-1) batch_size=[64,128,256] "
        "width=int(16,64) epochs=3'",
    )
    sp.add_argument("--space-file", metavar="YAML", help="the same as a YAML mapping")
    tn.add_argument("--trials", type=int, default=20, help="trials to run now (20)")
    tn.add_argument(
        "--metric",
        choices=("valid_loss", "valid_bits", "accuracy", "train_loss"),
        help="last-epoch validation number to optimise (valid_loss)",
    )
    tn.add_argument("--direction", choices=("minimize", "maximize"), help="default: the metric's")
    tn.add_argument(
        "--max-time", type=_duration, help="time budget: 90s, 30m, 2h; no trial starts after it"
    )
    tn.add_argument("--out", default="runs/studies", help="parent of the study directory")
    tn.add_argument("--study-name", help="default <data>-<model>")
    tn.add_argument("--storage", help="SQL URL (default: SQLite study.db in the study directory)")
    tn.add_argument("--resume", action="store_true", help="continue the study, adding --trials")
    tn.add_argument("--seed", type=int, default=0, help="sampler seed and every trial's seed")
    tn.add_argument("--pruner", choices=("median", "none"), default="median")
    tn.add_argument(
        "--prune-startup", type=int, default=5, help="finished trials before pruning starts (5)"
    )
    tn.add_argument(
        "--prune-warmup", type=int, default=1, help="epochs a trial runs before it can be pruned"
    )
    tn.add_argument(
        "--enqueue",
        action="append",
        metavar="'K=V ...'",
        help="a parameter set to try first, e.g. 'lr=3e-3 width=32' (repeatable)",
    )
    tn.add_argument("--trial-reports", action="store_true", help="report.html for every trial")
    tn.add_argument(
        "--no-report", action="store_true", help="skip the best trial's report.html (~10 s)"
    )
    tn.add_argument("--verbose", action="store_true", help="show each trial's training")
    g = tn.add_argument_group("training (fixed unless the space sets them)")
    g.add_argument("--epochs", type=int, default=5)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--opt", default="adamw", choices=OPTIMIZERS)
    g.add_argument("--wd", type=float, default=0.01)
    g.add_argument("--schedule", default="one_cycle", choices=SCHEDULES)
    g.add_argument("--augment", choices=("flip", "cifar", "photo", "digits"))
    g.add_argument("--device", default="auto")
    g.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    tn.set_defaults(func=cmd_tune)


def cmd_tune(a: argparse.Namespace) -> int:
    from rich.console import Console

    from deepstart.tune import TuneConfig, load_space, parse_space, tune
    from deepstart.tune.page import summary_lines, trials_table

    space = None
    if a.space_file:
        space = load_space(a.space_file)
    elif a.space:
        space = parse_space(a.space)
    base = None
    if a.data is not None or a.model is not None or space is not None:
        if a.data is None or space is None:
            raise DeepstartError("a study needs --data and --space (or --space-file)")
        base = RunConfig(
            data=_data_config(a),
            # The model stays as written: a template is filled in per trial.
            model=ModelConfig(a.model or "vgg_small", _pairs(a.model_opt, "--model-opt")),
            train=TrainConfig(
                epochs=a.epochs,
                lr=a.lr,
                batch_size=a.batch_size,
                opt=a.opt,
                wd=a.wd,
                schedule=a.schedule,
                augment=a.augment,
                seed=a.seed,
                device=a.device,
                precision=a.precision,
                checkpoint=False,  # a stopped trial is not continued: the study moves on
            ),
        )
    elif not a.resume:
        raise DeepstartError("a study needs --data and --space (or --space-file)")
    enqueue = tuple(parse_space(e).fixed for e in a.enqueue or [])
    cfg = TuneConfig(
        base=base,
        space=space,
        trials=a.trials,
        metric=a.metric,
        direction=a.direction,
        max_time=a.max_time,
        out=a.out,
        study_name=a.study_name,
        storage=a.storage,
        resume=a.resume,
        seed=a.seed,
        pruner=a.pruner,
        prune_startup=a.prune_startup,
        prune_warmup=a.prune_warmup,
        enqueue=enqueue,
        trial_reports=a.trial_reports,
        best_report=not a.no_report,
        verbose=a.verbose,
    )
    result = tune(cfg)
    console = Console()
    console.print(trials_table(result))
    for line in summary_lines(result):
        console.print(line, highlight=False, markup=False)
    return 130 if result.interrupted else 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from deepstart.train.runner import evaluate_run, format_eval

    data = _data_config(a) if a.data else None
    # Mismatch warnings ("test images are centred at ...") go to stderr under --json, so
    # stdout stays one JSON document (they are in its "input_warnings" too).
    log = (lambda m: print(m, file=sys.stderr)) if a.json else print
    res = evaluate_run(a.run_dir, data=data, split=a.split, device=a.device, log=log)
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


def cmd_export(a: argparse.Namespace) -> int:
    from deepstart.bundle import export_bundle, load_bundle

    if not a.out and not a.onnx:
        raise DeepstartError("say what to write: --out model.zip (or a folder), --onnx FILE")
    if a.out:
        out = export_bundle(a.run_dir, a.out)
        print(f"bundle: {out}")
    if a.onnx:
        res = load_bundle(a.run_dir).export_onnx(a.onnx)
        print(f"onnx: {res.path} (exported in {res.seconds:.1f} s)")
        print(
            f"parity with PyTorch: max abs diff {res.max_abs_diff:.2e} over logits up to "
            f"{res.max_abs_logit:.2f} (random inputs, batches of 1 and 7)"
        )
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from rich.console import Console

    from deepstart.bundle import load_bundle
    from deepstart.predict import predictions_csv, predictions_json, predictions_table

    bundle = load_bundle(a.bundle, device=a.device)
    preds = bundle.predict(
        a.images,
        top_k=a.top_k,
        batch_size=a.batch_size,
        log=lambda msg: print(f"warning: {msg}", file=sys.stderr),
    )
    k = max(1, min(a.top_k, len(bundle.classes)))
    if a.json:
        print(predictions_json(preds))
    elif a.csv:
        print(predictions_csv(preds, k), end="")
    else:
        Console().print(predictions_table(preds, k))
    failed = [p for p in preds if p.error]
    for p in failed:
        print(f"deepstart: {p.source}: {p.error}", file=sys.stderr)
    if failed:
        print(f"deepstart: {len(failed)} of {len(preds)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_serve(a: argparse.Namespace) -> int:
    from deepstart.serve import run

    if a.max_upload_mb <= 0:
        raise DeepstartError(f"--max-upload-mb must be positive, got {a.max_upload_mb}")
    run(
        a.bundle,
        host=a.host,
        port=a.port,
        device=a.device,
        threads=a.threads,
        max_upload_bytes=int(a.max_upload_mb * 2**20),
    )
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
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to start it again (torchrun)
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
