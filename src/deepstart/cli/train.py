"""``deepstart train`` and ``deepstart lr-find``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from deepstart.cli.args import _add_data_args, _data_config, _model, _pairs
from deepstart.cli.options import add_option, add_option_groups, given_options
from deepstart.config import ModelConfig, RunConfig, TrainConfig
from deepstart.config.option import default_of, option_of
from deepstart.errors import ConfigError

# The TrainConfig fields `deepstart lr-find` takes as flags (its --out is the plot's path):
# what the optimizer does on one batch, and which layers train (the sweep of a head on a
# frozen pretrained body is the one fine_tune's first phase needs).
LR_FIND_OPTIONS = (
    "batch_size",
    "opt",
    "wd",
    "momentum",
    "seed",
    "device",
    "precision",
    "freeze",
    "fine_tune",
)
MODEL_HELP = "registry name (deepstart models) or a layer spec such as conv32-pool-flat-dense128"


def add_parsers(sub: Any) -> None:
    """Register ``train`` and ``lr-find`` on the top-level subparsers."""
    t = sub.add_parser(
        "train",
        help="train a model; writes a run directory",
        description="Train a model and write a run directory. A training flag not typed "
        "takes the recipe's value (deepstart recipes), else the default shown.",
    )
    _add_data_args(t, required=False)
    t.set_defaults(data="shapes")
    _add_model_args(
        t, MODEL_HELP + "; default: the recipe's model (vgg_small when the data has no recipe)"
    )
    t.add_argument(
        "--recipe",
        help="a named recipe (deepstart recipes): model + training settings tuned for "
        "time-to-accuracy; default: the dataset's own when --model is not given. Flags given "
        "override the recipe's values",
    )
    t.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint"
    )
    # A flag for every TrainConfig field, grouped by concern. Untyped flags stay out of the
    # namespace: the recipe's value, else the default, fills them in (recipes.run_config).
    add_option_groups(t, TrainConfig)
    t.set_defaults(func=cmd_train)

    f = sub.add_parser(
        "lr-find",
        help="sweep the learning rate and suggest one (with a plot)",
        description="Train up to --num-it batches with the LR rising exponentially, plot the "
        "loss against the LR and suggest LRs; the model, its pretrained weights and which "
        "layers train are chosen with train's flags.",
    )
    _add_data_args(f, required=False)
    f.set_defaults(data="shapes")
    _add_model_args(
        f, MODEL_HELP + "; default: the model deepstart train trains on this data (its recipe's)"
    )
    # The sweep runs at one batch size: no "auto" here.
    add_option(f, TrainConfig, "batch_size", parse=int, metavar="N", help="items per step")
    swept_head = {
        "freeze": "sweep the head only, the body frozen as --freeze trains it",
        "fine_tune": "sweep fine_tune's first phase: the head only, the body frozen",
    }
    for name in LR_FIND_OPTIONS[1:]:
        add_option(
            f, TrainConfig, name, **({"help": swept_head[name]} if name in swept_head else {})
        )
    f.add_argument("--start-lr", type=float, default=1e-7, help="the sweep's first LR")
    f.add_argument("--end-lr", type=float, default=10.0, help="the sweep's last LR")
    f.add_argument(
        "--num-it",
        type=int,
        default=100,
        metavar="N",
        help="batches of the sweep; it stops sooner once the loss has blown up",
    )
    f.add_argument("--out", default="lr_find.png", help="PNG of loss against LR")
    f.set_defaults(func=cmd_lr_find)


def _add_model_args(p: argparse.ArgumentParser, model_help: str) -> None:
    """--model, --model-opt and ModelConfig's option fields (--pretrained,
    --pretrained-sha256: generated from the fields), as train and lr-find take them."""
    p.add_argument("--model", help=model_help)
    p.add_argument(
        "--model-opt",
        action="append",
        metavar="KEY=VALUE",
        help="model option, e.g. hidden=512 (repeatable)",
    )
    for name in ("pretrained", "pretrained_sha256"):
        add_option(p, ModelConfig, name)
    p.set_defaults(pretrained=None, pretrained_sha256=None)


def cmd_train(a: argparse.Namespace) -> int:
    from deepstart.run.runner import Interrupted, load_run_config, train_run
    from deepstart.train.distributed import launch, world_from_env

    if a.resume:
        cfg = _resume_config(a, load_run_config(a.resume))
        if cfg.train.devices > 1 and world_from_env() == 1:  # resume as it ran: distributed
            return launch(cfg.train.devices, a.argv)
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
    model, model_options = _typed_model(a)
    # Only typed flags are given: the recipe's values, then the defaults, fill in the rest.
    given = given_options(a, TrainConfig)
    if given.get("freeze") and not given.get("fine_tune"):
        given["fine_tune"] = False  # typed: the head only, even where a recipe fine-tunes
    cfg = run_config(
        data,
        recipe=recipe,
        model=model,
        model_options=model_options,
        pretrained=a.pretrained,
        pretrained_sha256=a.pretrained_sha256,
        train=given,
    )
    if recipe is not None and world_from_env() == 1:
        overridden = sorted(k for k in given if k in recipe.train)
        if recipe.valid_pct is not None and a.valid_pct is not None:
            overridden.append("valid_pct")
        overridden += ["size"] if recipe.size is not None and a.size is not None else []
        overridden += ["resize"] if recipe.resize is not None and a.resize is not None else []
        overridden += ["model"] if model is not None and model != recipe.model else []
        if "small_epochs" not in given and cfg.train.small_epochs != recipe.train.get(
            "small_epochs"
        ):  # --epochs typed: the small epochs kept their share (recipes.choose)
            overridden.append(f"small_epochs -> {cfg.train.small_epochs}")
        note = f" (overridden: {', '.join(overridden)})" if overridden else ""
        print(f"recipe {recipe.name}: {recipe.summary()}{note}", flush=True)
        print(f"  chosen: {why}", flush=True)
    elif world_from_env() == 1:
        print(f"no recipe ({why}): {_own_settings(cfg.model.name, given)}", flush=True)
    if cfg.train.devices > 1 and world_from_env() == 1:
        # Start this same command in N processes; each sees WORLD_SIZE and trains its part.
        return launch(cfg.train.devices, a.argv)
    try:
        train_run(cfg)
    except Interrupted as e:
        print(f"deepstart: {e}", file=sys.stderr)
        return 130
    return 0


def _own_settings(name: str, given: dict[str, Any]) -> str:
    """What a run without a recipe trains with: the model's own settings (those not typed)
    and the plain defaults for the rest."""
    from deepstart.models.registry import training_defaults

    own = {k: v for k, v in training_defaults(name).items() if k not in given}
    if not own:
        return f"training {name} with the plain defaults"
    shown = ", ".join(f"{k} {v}" for k, v in own.items())
    return f"training {name} with its own settings ({shown}; deepstart models) and the defaults"


# The flags a resumed run takes: how it shows progress, what it writes besides its checkpoints
# and where it runs. Any other would make it a different run from the one its checkpoint holds.
RESUME_OPTIONS = ("report", "progress", "tensorboard", "checkpoint_minutes", "device")
# Flags of the data and the model, which a resumed run takes from its config.json.
_RUN_FLAGS = ("data_dir", "valid_pct", "size", "channels", "resize", "normalize", "data_opt",
              "model", "model_opt", "recipe", "pretrained", "pretrained_sha256")  # fmt: skip


def _resume_config(a: argparse.Namespace, cfg: RunConfig) -> RunConfig:
    """The run's own config with the typed RESUME_OPTIONS flags applied; any other typed
    flag is refused in one line rather than silently ignored."""
    given = given_options(a, TrainConfig)
    refused = [_flag(name) for name in given if name not in RESUME_OPTIONS]
    refused += ["--" + n.replace("_", "-") for n in _RUN_FLAGS if getattr(a, n) is not None]
    if refused:
        allowed = ", ".join(_flag(name) for name in RESUME_OPTIONS)
        raise ConfigError(
            f"--resume continues {a.resume} as it was configured: {', '.join(refused)} cannot "
            f"change (only {allowed} may)"
        )
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **given))


def _flag(name: str) -> str:
    opt = option_of(TrainConfig, name)
    flag = (opt.flag if opt is not None else None) or "--" + name.replace("_", "-")
    if isinstance(default_of(TrainConfig, name), bool):
        return f"{flag}/--no-{flag[2:]}"
    return flag


def _typed_model(a: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    """--model (None when not typed: the recipe's, or the fallback) and --model-opt."""
    options = _pairs(a.model_opt, "--model-opt")
    return _model(a.model, options) if a.model is not None else (None, options)


def cmd_lr_find(a: argparse.Namespace) -> int:
    from deepstart.recipes.choose import default_recipe, run_config, usual_lr
    from deepstart.run.resolve import choose
    from deepstart.run.runner import lr_find_run

    data = _data_config(a)
    name, options = _typed_model(a)
    # Without --model, the model `deepstart train` would train on this data: its recipe's
    # (with the recipe's pretrained weights), so the LR swept is the LR of that run.
    recipe = None if a.model else default_recipe(data.name, data.data_dir)
    model = run_config(
        data,
        recipe=recipe,
        model=name,
        model_options=options,
        pretrained=a.pretrained,
        pretrained_sha256=a.pretrained_sha256,
    ).model
    if recipe is not None:
        print(f"lr-find: {model.name}, the model of recipe {recipe.name} (--model picks another)")
    tc = TrainConfig(**given_options(a, TrainConfig, LR_FIND_OPTIONS))
    res = lr_find_run(
        data,
        model,
        tc,
        log=print,
        start_lr=a.start_lr,
        end_lr=a.end_lr,
        num_it=a.num_it,
        plot=a.out,
    )
    for name, lr in res.suggestions.items():
        star = "  <- read by --lr auto" if name == "valley" else ""
        print(f"  {name:<8} {lr:.2e}{star}")
    # What train --lr auto does with such a valley (its own sweep adds the run's loss options
    # and augmentation, so its valley may differ a little): run/resolve.py.
    usual, whose = usual_lr(model.name, recipe.name if recipe is not None else None)
    pick = choose(res.suggestions["valley"], res.lowest, usual)
    if pick.keep:
        print(f"  --lr auto would keep {usual:.2e}, {whose} LR: {pick.why}")
    else:
        print(f"  --lr auto would use the valley: {whose} LR, {usual:.1e}, {pick.why}")
    if tc.freeze or tc.fine_tune:
        print("  (the head's LR: the body was frozen, as in fine_tune's first phase)")
    print(f"plot: {a.out}")
    return 0
