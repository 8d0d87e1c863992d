"""From a TrainConfig to the Learner's keyword arguments and the callbacks its options ask for.

The Learner's keyword parameters and TrainConfig's fields share their names on purpose: every
field the Learner takes is handed over by name here, so a new training option is a field in
:mod:`deepstart.config` and a parameter (and its use) in the Learner — no mapping to edit.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache
from typing import Any

from deepstart.config import TrainConfig
from deepstart.train.callbacks import Callback
from deepstart.train.extras import EMA, EarlyStopping, GradientClip, Lookahead, MaxTime
from deepstart.train.finetune import StemFreeze
from deepstart.train.guard import DivergenceGuard
from deepstart.train.learner import Learner
from deepstart.train.progressive import ProgressiveResize


@cache
def _learner_parameters() -> frozenset[str]:
    sig = inspect.signature(Learner.__init__)
    return frozenset(n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY)


def learner_kwargs(tc: TrainConfig, **given: Any) -> dict[str, Any]:
    """Learner keyword arguments: every TrainConfig field the Learner takes, by name, then
    ``given`` (what the run decides itself: the device object, the loss, callbacks, log...).

    ``tc`` must be resolved (no "auto" left): see :func:`deepstart.run.resolve.resolve_train`.
    """
    names = _learner_parameters()
    kwargs = {name: getattr(tc, name) for name in names if hasattr(tc, name)}
    unknown = set(given) - names
    if unknown:
        raise TypeError(f"Learner takes no {sorted(unknown)}")
    return {**kwargs, **given}


def option_callbacks(tc: TrainConfig, log: Callable[[str], None]) -> list[Callback]:
    """The callbacks that TrainConfig's options ask for."""
    cbs: list[Callback] = []
    if tc.guard:  # replaces the Learner's default guard (same kind, the configured tries)
        cbs.append(DivergenceGuard(max_tries=tc.guard_tries, log=log))
    if tc.grad_clip:
        cbs.append(GradientClip(max_norm=tc.grad_clip))
    if tc.ema:
        cbs.append(EMA(decay=tc.ema))
    if tc.lookahead:
        cbs.append(Lookahead())
    if tc.early_stop:
        cbs.append(
            EarlyStopping(
                monitor=tc.monitor, patience=tc.early_stop, min_delta=tc.min_delta, log=log
            )
        )
    if tc.stem_epochs is not None:
        cbs.append(StemFreeze(tc.stem_epochs))
    if tc.small_epochs:
        # with fine_tune, epochs (and so small_epochs) counts the unfrozen phase's epochs
        phase = 1 if tc.fine_tune else None
        cbs.append(ProgressiveResize(tc.small_epochs, tc.small_scale, phase=phase))
    if tc.max_time:
        cbs.append(MaxTime(tc.max_time, log=log))
    return cbs
