"""Settle a run's "auto" settings before its Learner is built.

``batch_size="auto"`` becomes the largest batch that fits the accelerator and ``lr="auto"``
the LR finder's valley, each found on a probe Learner over the run's own model and data (both
searches restore the model exactly). The Learner that trains is then built from the resolved
config, and that config is what config.json records, so a resumed or repeated run uses the
very values this one did.

``lr="auto"`` keeps the run's usual LR (a recipe's or the model's own, tuned by full runs on
five seeds, else the default) unless the sweep gives a clear sign it is wrong, so that
``--lr auto`` cannot end below it where it keeps it (:func:`choose`):

- The valley within a factor of :data:`KEEP_WITHIN` of it, either way: kept. Why 3
  (docs/benchmarks.md, session 21): one sweep's valley moves from seed to seed by up to 2.5x
  on three pairs of model and data in four, so it is weak evidence against an LR that close;
  where the valley was 2-3x from the usual LR, full runs at it ended above on two seeds and
  below on three.
- The valley more than 3x above it (another batch size, optimizer or dataset, or a model
  without a tuned LR such as resnet56 at the default 1e-3): the valley. 3.4-45x above that
  default, it ended above on 30 seeds of 31 and tied the last.
- The valley more than 3x below it: the valley only when the usual LR is at or past the
  sweep's lowest loss, where the loss had stopped falling. Below that point the usual LR
  still trains, and the valley runs low: for logreg on Fashion-MNIST (valley 3.6-5.3x below
  its own 1e-2, lowest loss at 5.5-9.5e-2) the valley ended below on four seeds of five
  (session 22).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from deepstart.config import TrainConfig
from deepstart.errors import ConfigError
from deepstart.recipes.choose import usual_lr
from deepstart.run.rundir import LR_FIND, RunDir
from deepstart.train.learner import Learner
from deepstart.train.lr_finder import lr_find
from deepstart.train.memory import find_batch_size

# What a probe Learner uses while a value it does not need is still "auto".
PROBE_LR = 1e-3
PROBE_BATCH = 128

# --lr auto keeps the usual LR when the valley is within this factor of it, either way.
KEEP_WITHIN = 3.0


def resolve_train(
    tc: TrainConfig,
    make_learner: Callable[[TrainConfig], Learner],
    run: RunDir,
    *,
    resuming: bool = False,
    distributed: bool = False,
    main: bool = True,
    log: Callable[[str], None] = lambda m: None,
    model: str | None = None,
) -> TrainConfig:
    """``tc`` with every "auto" replaced by a value.

    ``make_learner(tc)`` builds a Learner set up as the run will train (frozen layers
    included) from a config with concrete values; probes are built with it and thrown away.
    ``model`` (the registry name or layer spec) says whose own LR ``lr="auto"`` may keep;
    without it only ``tc.recipe``'s or the default is.
    """
    if tc.batch_size == "auto":
        if distributed:
            raise ConfigError("--batch-size auto is not supported in distributed runs yet")
        probe = make_learner(dataclasses.replace(tc, batch_size=PROBE_BATCH, lr=PROBE_LR))
        tc = dataclasses.replace(tc, batch_size=find_batch_size(probe))
    if tc.lr == "auto":
        lr = _find_lr(tc, make_learner, run, resuming, log, main, model)
        tc = dataclasses.replace(tc, lr=lr)
    return tc


def near(valley: float, usual: float) -> bool:
    """Whether the valley is within :data:`KEEP_WITHIN` of ``usual``, either way
    (``near(6e-3, 2e-3)`` and ``near(7e-4, 2e-3)`` are; 6.1e-3 is not)."""
    return 1 / KEEP_WITHIN <= valley / usual <= KEEP_WITHIN


@dataclasses.dataclass(frozen=True)
class AutoLR:
    """What ``--lr auto`` does with a sweep: keep the usual LR or use the valley, and why
    (a clause that follows "keeping <LR>, <whose> LR:" or "<whose> LR, <LR>,")."""

    keep: bool
    why: str


def choose(valley: float, lowest: float, usual: float) -> AutoLR:
    """Keep ``usual`` or use ``valley``, given the LR of the sweep's lowest loss ``lowest``
    (NaN when unknown); the rule and its evidence are in this module's docstring.

    Example:
        >>> choose(3e-3, 5e-2, 2e-3).keep, choose(3e-2, 5e-2, 2e-3).keep
        (True, False)
        >>> choose(2e-3, 6e-2, 1e-2).keep, choose(2e-3, 6e-3, 1e-2).keep
        (True, False)
    """
    far = f"more than {KEEP_WITHIN:g}x"
    if not math.isfinite(valley):  # a sweep cut short (too few points) has no valley
        return AutoLR(True, "the sweep was too short to suggest an LR")
    if near(valley, usual):
        return AutoLR(True, f"the valley is within {KEEP_WITHIN:g}x of it, about as far as the "
                            "valley moves from seed to seed")  # fmt: skip
    if valley > usual:
        return AutoLR(False, f"is {far} below the valley")
    if usual < lowest:
        return AutoLR(True, f"the valley is {far} below it, but the sweep's loss kept falling "
                            f"up to {lowest:.1e}, past it: the valley runs low there")  # fmt: skip
    return AutoLR(False, f"is {far} above the valley and past the sweep's lowest loss "
                         f"({lowest:.1e}): too high for this run")  # fmt: skip


def _find_lr(
    tc: TrainConfig,
    make_learner: Callable[[TrainConfig], Learner],
    run: RunDir,
    resuming: bool,
    log: Callable[[str], None],
    main: bool,
    model: str | None,
) -> float:
    """The LR finder's valley, or the usual LR when :func:`choose` keeps it (recorded in
    lr_find.json and lr_find.png; a resumed run of an older deepstart, whose config still
    says "auto", reuses the recorded value)."""
    record = run.file(LR_FIND)
    if resuming and record.is_file():
        return float(run.read_json(LR_FIND)["chosen"])  # one line if the file is damaged
    # Every rank sweeps (the losses are reduced over ranks, so all choose the same LR).
    probe = make_learner(dataclasses.replace(tc, lr=PROBE_LR))
    plot = run.file("lr_find.png")
    res = lr_find(probe, plot=plot if main else None)
    valley = float(res.suggestions["valley"])
    usual, whose = usual_lr(model, tc.recipe)
    pick = choose(valley, res.lowest, usual)
    lr, rule = (usual, "usual") if pick.keep else (valley, "valley")
    if main:
        run.write_json(
            LR_FIND,
            {"chosen": lr, "rule": rule, "why": pick.why, "usual_lr": usual,
             "usual_lr_from": whose, "keep_within": KEEP_WITHIN, **res.to_dict()},
        )  # fmt: skip
    shown = ", ".join(f"{k} {v:.1e}" for k, v in res.suggestions.items())
    if pick.keep:
        how = f"keeping {lr:.2e}, {whose} LR: {pick.why}"
    else:
        how = f"using valley {lr:.2e}: {whose} LR, {usual:.1e}, {pick.why}"
    log(f"lr auto: LR finder suggests {shown}; {how} (plot {plot})")
    return lr
