"""``deepstart tune``: a hyperparameter search over training runs."""

from __future__ import annotations

import argparse
from typing import Any

from deepstart.cli.args import _add_data_args, _data_config, _pairs
from deepstart.cli.options import add_option, arg_type, given_options
from deepstart.config import ModelConfig, RunConfig, TrainConfig
from deepstart.config.option import parse_duration
from deepstart.errors import DeepstartError

# The TrainConfig fields a study takes as flags, fixed for every trial unless the space sets
# them (a space can set any training field; tune's own --seed, --max-time and --out are the
# study's).
TRAIN_OPTIONS = (
    "epochs",
    "lr",
    "batch_size",
    "opt",
    "wd",
    "schedule",
    "augment",
    "device",
    "precision",
)


def add_parsers(sub: Any) -> None:
    """Register ``tune`` on the top-level subparsers."""
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
        "--max-time",
        type=arg_type(parse_duration),
        help="time budget: 90s, 30m, 2h; no trial starts after it",
    )
    tn.add_argument("--out", default="runs/studies", help="parent of the study directory")
    tn.add_argument("--study-name", help="default <data>-<model>")
    tn.add_argument("--storage", help="SQL URL (default: SQLite study.db in the study directory)")
    tn.add_argument("--resume", action="store_true", help="continue the study, adding --trials")
    tn.add_argument("--seed", type=int, default=0, help="sampler seed and every trial's seed")
    tn.add_argument(
        "--pruner",
        choices=("median", "none"),
        default="median",
        help="stop a trial early whose validation number is worse than the median of "
        "finished trials at the same epoch (median), or never (none)",
    )
    tn.add_argument(
        "--prune-startup", type=int, default=5, help="finished trials before pruning starts"
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
    for name in TRAIN_OPTIONS:
        add_option(g, TrainConfig, name)
    tn.set_defaults(func=cmd_tune)


def cmd_tune(a: argparse.Namespace) -> int:
    from rich.console import Console

    from deepstart.models.registry import training_defaults
    from deepstart.recipes.choose import FALLBACK_MODEL
    from deepstart.tune import TuneConfig, load_space, parse_space, tune
    from deepstart.tune.page import summary_lines, trials_table
    from deepstart.tune.space import placeholders

    space = None
    if a.space_file:
        space = load_space(a.space_file)
    elif a.space:
        space = parse_space(a.space)
    base = None
    if a.data is not None or a.model is not None or space is not None:
        if a.data is None or space is None:
            raise DeepstartError("a study needs --data and --space (or --space-file)")
        model = a.model or FALLBACK_MODEL
        # A named model starts from its own settings, as deepstart train --model does; a
        # template ("conv{width}-gap") is a different model every trial and has none.
        own = {} if placeholders(model) else training_defaults(model)
        base = RunConfig(
            data=_data_config(a),
            # The model stays as written: a template is filled in per trial.
            model=ModelConfig(model, _pairs(a.model_opt, "--model-opt")),
            train=TrainConfig(
                **{**own, **given_options(a, TrainConfig, TRAIN_OPTIONS)},
                seed=a.seed,
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
