"""The Learner's events and the vocabulary callbacks use to react to them.

A :class:`Callback` defines methods named after events (``before_fit``, ``after_batch``,
...); the Learner calls them in ``order``. A callback changes the flow of training only by
raising one of the small exceptions here: ``CancelBatch``, ``CancelEpoch``, ``CancelFit``
or ``RestartEpoch``. This module imports nothing from the rest of deepstart, so every
callback module can build on it without pulling in the Learner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deepstart.train.learner import Learner

# The events, in the order one epoch raises them (validation sits inside the epoch).
EVENTS = (
    "before_fit",
    "before_epoch",
    "before_train",
    "before_batch",
    "after_pred",
    "after_loss",
    "after_backward",
    "after_step",
    "after_batch",
    "after_train",
    "before_validate",
    "after_validate",
    "after_epoch",
    "after_fit",
    "after_cancel_batch",
    "after_cancel_epoch",
    "after_cancel_fit",
)


class CancelBatch(Exception):
    """Skip the rest of this batch."""


class CancelEpoch(Exception):
    """Skip the rest of this epoch."""


class CancelFit(Exception):
    """Stop training now (``after_fit`` still runs)."""


class RestartEpoch(Exception):
    """Run the current epoch again from batch ``learn.restart_at`` (set before raising).

    Raised by a callback that has just restored an earlier state of the learner (weights,
    optimizer, ``train_iter``), e.g. the divergence guard: the epoch's batches are a pure
    function of (seed, epoch), so the same batches follow again.
    """


class Callback:
    """Base class. ``self.learn`` is set when the callback is added to a Learner.

    ``skip_lr_find``: leave this callback out of the LR finder's sweep (set by callbacks
    whose effect the sweep could not undo, such as a weight average or a restore).

    A callback whose state outlives a fit (and so must survive a resume) returns it from
    ``state_dict`` as JSON-able values; checkpoints keep it under the class name and
    ``load_state_dict`` gets it back.
    """

    order: int = 0
    skip_lr_find: bool = False
    learn: Learner

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
