"""In-memory snapshots of a learner's training state, to go back to within a run.

A snapshot copies what training changes (weights, optimizer state, the schedule position)
to the CPU, so the divergence guard can undo a blow-up, and the LR finder and the batch-size
probe can leave the learner as they found it. Checkpoints on disk, which also keep RNG
states and the Recorder, are :class:`deepstart.train.callbacks.Checkpoint`.

Example:
    >>> snap = take(learn)
    >>> learn.fit(1, 10.0)  # diverges
    >>> restore(learn, snap)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from deepstart.train.learner import Learner


def _to_cpu(obj: Any) -> Any:
    """A deep copy of ``obj`` with every tensor on the CPU (new containers: nothing is
    shared with the optimizer's live state)."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def take(learn: Learner) -> dict[str, Any]:
    """A copy of everything training changes: weights, optimizer state, progress
    (``train_iter``, ``epoch``, ``iter``). Held in memory as CPU copies."""
    return {
        "model": {k: v.detach().to("cpu", copy=True) for k, v in learn.model.state_dict().items()},
        "opt": _to_cpu(learn.opt.state_dict()) if learn.opt is not None else None,
        "train_iter": learn.train_iter,
        "epoch": learn.epoch,
        "iter": learn.iter,
    }


def restore(learn: Learner, snap: dict[str, Any]) -> None:
    """Put back a :func:`take`: weights, optimizer state and the progress counters."""
    learn.model.load_state_dict(snap["model"])
    if learn.opt is not None and snap["opt"] is not None:
        # A copy: load_state_dict keeps tensors already on the right device and dtype as
        # they are (on the CPU, the snapshot's own), and the next step would change the
        # snapshot in place; restoring it twice (the guard's sweep) must give one state.
        learn.opt.load_state_dict(_to_cpu(snap["opt"]))  # moves state to the params' device
    learn.train_iter, learn.epoch, learn.iter = snap["train_iter"], snap["epoch"], snap["iter"]
