"""``deepstart clean RUN_DIR [--top N] | --apply PLAN | --undo [LOG]``."""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(sub: Any) -> None:
    """Register ``clean``."""
    c = sub.add_parser(
        "clean",
        help="find mislabelled and duplicate pictures with a run's model; fix the folder",
        description="Rank the run's training and validation pictures by the loss of their "
        "label, find identical and near-identical pictures, and write RUN_DIR/clean.html "
        "(keep / relabel / delete, then export a plan) and RUN_DIR/suspects.json. "
        "--apply PLAN carries the plan out on the class folders (files move, deleted ones "
        "to <folder>-removed/ beside the data, with an undo log); --undo puts them back.",
    )
    c.add_argument("run_dir", help="a run directory written by deepstart train")
    c.add_argument("--top", type=int, default=200, help="pictures on the page")
    c.add_argument("--splits", default="train,valid", help="splits to rank, comma-separated")
    c.add_argument("--data", metavar="DIR", help="the run's folder, if it has moved since")
    c.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps"
    )
    act = c.add_mutually_exclusive_group()
    act.add_argument("--apply", metavar="PLAN", help="carry out a plan exported from the page")
    act.add_argument(
        "--undo",
        metavar="LOG",
        nargs="?",
        const="",
        help="move files back, by LOG or the newest undo log beside the folder",
    )
    c.set_defaults(func=cmd_clean)


def cmd_clean(a: argparse.Namespace) -> int:
    from deepstart.errors import ConfigError
    from deepstart.run.clean import apply_run_plan, clean_run, undo_run

    if a.apply:
        apply_run_plan(a.run_dir, a.apply, data_dir=a.data)
        return 0
    if a.undo is not None:
        undo_run(a.run_dir, a.undo or None, data_dir=a.data)
        return 0
    if a.top < 1:
        raise ConfigError(f"--top must be at least 1, got {a.top}")
    splits = [s.strip() for s in a.splits.split(",") if s.strip()]
    clean_run(a.run_dir, top=a.top, splits=splits, data_dir=a.data, device=a.device)
    return 0
