"""Settle a run's "auto" settings before its Learner is built.

``batch_size="auto"`` becomes the largest batch that fits the accelerator and ``lr="auto"``
the LR finder's valley, each found on a probe Learner over the run's own model and data (both
searches restore the model exactly). The Learner that trains is then built from the resolved
config, and that config is what config.json records, so a resumed or repeated run uses the
very values this one did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from deepstart.config import TrainConfig
from deepstart.errors import ConfigError
from deepstart.run.rundir import LR_FIND, RunDir
from deepstart.train.learner import Learner
from deepstart.train.lr_finder import lr_find
from deepstart.train.memory import find_batch_size

# What a probe Learner uses while a value it does not need is still "auto".
PROBE_LR = 1e-3
PROBE_BATCH = 128


def resolve_train(
    tc: TrainConfig,
    make_learner: Callable[[TrainConfig], Learner],
    run: RunDir,
    *,
    resuming: bool = False,
    distributed: bool = False,
    main: bool = True,
    log: Callable[[str], None] = lambda m: None,
) -> TrainConfig:
    """``tc`` with every "auto" replaced by a value.

    ``make_learner(tc)`` builds a Learner set up as the run will train (frozen layers
    included) from a config with concrete values; probes are built with it and thrown away.
    """
    if tc.batch_size == "auto":
        if distributed:
            raise ConfigError("--batch-size auto is not supported in distributed runs yet")
        probe = make_learner(dataclasses.replace(tc, batch_size=PROBE_BATCH, lr=PROBE_LR))
        tc = dataclasses.replace(tc, batch_size=find_batch_size(probe))
    if tc.lr == "auto":
        tc = dataclasses.replace(tc, lr=_find_lr(tc, make_learner, run, resuming, log, main))
    return tc


def _find_lr(
    tc: TrainConfig,
    make_learner: Callable[[TrainConfig], Learner],
    run: RunDir,
    resuming: bool,
    log: Callable[[str], None],
    main: bool,
) -> float:
    """The LR finder's valley (recorded in lr_find.json and lr_find.png; a resumed run of an
    older deepstart, whose config still says "auto", reuses the recorded value)."""
    record = run.file(LR_FIND)
    if resuming and record.is_file():
        return float(run.read_json(LR_FIND)["chosen"])  # one line if the file is damaged
    # Every rank sweeps (the losses are reduced over ranks, so all choose the same LR).
    probe = make_learner(dataclasses.replace(tc, lr=PROBE_LR))
    plot = run.file("lr_find.png")
    res = lr_find(probe, plot=plot if main else None)
    lr = float(res.suggestions["valley"])
    if main:
        run.write_json(LR_FIND, {"chosen": lr, "rule": "valley", **res.to_dict()})
    shown = ", ".join(f"{k} {v:.1e}" for k, v in res.suggestions.items())
    log(f"lr auto: LR finder suggests {shown}; using valley {lr:.2e} (plot {plot})")
    return lr
