"""``deepstart train`` and ``deepstart lr-find``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from deepstart.cli.args import (
    _add_data_args,
    _batch,
    _data_config,
    _duration,
    _lr,
    _model,
    _pairs,
    _weights,
)
from deepstart.config import OPTIMIZERS, SCHEDULES, ModelConfig, TrainConfig


def add_parsers(sub: Any) -> None:
    """Register ``train`` and ``lr-find`` on the top-level subparsers."""
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
    t.add_argument("--pct-start", type=float, help="one_cycle/triangle warm-up share (0.25)")
    t.add_argument(
        "--norm-bias-lr",
        type=float,
        metavar="MULT",
        help="LR multiplier of BatchNorm shifts (1; airbench's SGD: 64)",
    )
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
        "--lookahead",
        action=argparse.BooleanOptionalAction,
        help="pull the weights to a slow average every 5 steps (airbench's lookahead)",
    )
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
        choices=("none", "flip", "cifar", "cifar-alt", "photo", "digits"),
        help="augment training batches on the device: flip, cifar (flip+shift), cifar-alt "
        "(cifar, each image mirrored every other epoch), photo (crop, flip, rotate, "
        "lighting), digits (no flip)",
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
    g.add_argument(
        "--freeze-epochs",
        type=int,
        metavar="N",
        help="epochs with the body frozen before --fine-tune unfreezes it (default 1)",
    )
    g.add_argument(
        "--keep-frozen",
        type=int,
        metavar="N",
        help="layer groups --fine-tune leaves frozen when it unfreezes (default 0: none)",
    )
    g.add_argument(
        "--keep-better",
        action=argparse.BooleanOptionalAction,
        help="--fine-tune: keep the frozen phase's weights if unfreezing ends with a worse "
        "validation loss",
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


def cmd_train(a: argparse.Namespace) -> int:
    from deepstart.run.runner import Interrupted, load_run_config, train_run
    from deepstart.train.distributed import launch, world_from_env

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

    from deepstart.recipes import choose_recipe_why, run_config

    data = _data_config(a)
    recipe, why = choose_recipe_why(a.recipe, data.name, data.data_dir, model=a.model)
    if recipe is not None and recipe.valid_pct is not None and a.valid_pct is None:
        data = dataclasses.replace(data, valid_pct=recipe.valid_pct)
    if recipe is not None and recipe.size is not None and a.size is None:
        data = dataclasses.replace(data, size=(recipe.size, recipe.size))
    if recipe is not None and recipe.resize is not None and a.resize is None:
        data = dataclasses.replace(data, resize=recipe.resize)
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
        "lookahead": a.lookahead,
        "norm_bias_lr": a.norm_bias_lr,
        "augment": None if a.augment == "none" else a.augment,
        "tta": a.tta,
        "freeze_epochs": a.freeze_epochs,
        "keep_frozen": a.keep_frozen,
        "keep_better": a.keep_better,
        # switches a recipe may turn on: typed means True, untyped leaves the recipe's value
        "fine_tune": a.fine_tune or None,
        "precompute": a.precompute or None,
    }
    given = {k: v for k, v in settable.items() if v is not None}
    if a.augment == "none":
        given["augment"] = None  # typed: no augmentation, whatever the recipe says
    if a.freeze and not a.fine_tune:
        given["fine_tune"] = False  # typed: the head only, even where a recipe fine-tunes
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
            "freeze": a.freeze,
            "devices": a.devices,
            "sync_bn": a.sync_bn,
            "dist_timeout": a.dist_timeout,
            "report": not a.no_report,
            "tensorboard": a.tensorboard,
        },
    )
    if recipe is not None and world_from_env() == 1:
        overridden = sorted(k for k in given if k in recipe.train)
        if recipe.valid_pct is not None and a.valid_pct is not None:
            overridden.append("valid_pct")
        overridden += ["size"] if recipe.size is not None and a.size is not None else []
        overridden += ["resize"] if recipe.resize is not None and a.resize is not None else []
        overridden += ["model"] if model is not None and model != recipe.model else []
        note = f" (overridden: {', '.join(overridden)})" if overridden else ""
        print(f"recipe {recipe.name}: {recipe.summary()}{note}", flush=True)
        print(f"  chosen: {why}", flush=True)
    elif a.model is None and world_from_env() == 1:
        print(f"no recipe ({why}): training {cfg.model.name} with the plain defaults", flush=True)
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
    from deepstart.run.runner import lr_find_run

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
