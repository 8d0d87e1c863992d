"""Callbacks: everything optional about training, as reactions to the Learner's events.

A callback defines methods named after events (``before_fit``, ``after_batch``, ...); the
Learner calls them in ``order``. It can stop work by raising ``CancelBatch``,
``CancelEpoch`` or ``CancelFit``. The base class and those exceptions live in
:mod:`deepstart.train.events`, the progress lines in :mod:`deepstart.train.progress`; both
are importable from here too. This module holds the ones a fit always or usually has: the
LR schedule, the Recorder, checkpoints and Ctrl-C handling.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from deepstart.cache import atomic_write, json_safe, remove_stale_temps
from deepstart.errors import DataError
from deepstart.train.display import History, loss_figure
from deepstart.train.events import (
    Callback,
    CancelBatch,
    CancelEpoch,
    CancelFit,
    RestartEpoch,
)
from deepstart.train.progress import Progress

if TYPE_CHECKING:
    from deepstart.figures import InlineFigure
    from deepstart.train.learner import Learner

__all__ = [
    "Callback",
    "CancelBatch",
    "CancelEpoch",
    "CancelFit",
    "Checkpoint",
    "GracefulInterrupt",
    "ParamScheduler",
    "Progress",
    "Recorder",
    "RestartEpoch",
    "load_checkpoint",
    "restore_checkpoint",
]


class ParamScheduler(Callback):
    """Sets the LR (and momentum) before every training batch from a schedule of progress."""

    order = -10

    def __init__(
        self, lr: Callable[[float], float], momentum: Callable[[float], float] | None = None
    ) -> None:
        self.lr_sched, self.mom_sched = lr, momentum

    def _set(self, pct: float) -> None:
        # lr_mult lets a callback scale the whole schedule (the divergence guard halves it).
        self.learn.set_hyper("lr", self.lr_sched(pct) * self.learn.lr_mult)
        if self.mom_sched is not None:
            self.learn.set_hyper("momentum", self.mom_sched(pct))

    def peak(self, pct: float) -> float:
        """The highest LR the schedule sets from progress ``pct`` to the end, before
        ``lr_mult``: the divergence guard caps it at the LR it found safe, so an LR lowered
        in one-cycle's warm-up does not climb past that again. Sampled every 1/1000 of the
        fit (schedules are smooth or piecewise constant), plus both ends."""
        pct = min(max(float(pct), 0.0), 1.0)
        points = [pct + (1 - pct) * i / 1000 for i in range(1001)]
        return max(self.lr_sched(p) for p in points)

    def before_fit(self) -> None:
        self._set(self.learn.train_iter / max(self.learn.total_iters, 1))

    def before_batch(self) -> None:
        if self.learn.training:
            self._set(self.learn.train_iter / max(self.learn.total_iters, 1))


class Recorder(Callback):
    """Keeps per-batch losses and LRs and one row of metrics per epoch.

    ``history`` rows hold: epoch (1-based, counted over every fit of the learner), train_loss,
    valid_loss, valid_bits, accuracy, lr, seconds. With ``path`` each row is also appended to a
    JSON-lines file as it is made. The scores between epoch and lr are the task's
    (:meth:`deepstart.train.task.Task.row`): for regression max_error and rms_error take the
    places of valid_bits and accuracy, and values keep 6 significant digits.

    ``history`` is a :class:`~deepstart.train.display.History`: a list of dicts that shows
    as a table in a notebook (so does the recorder); :meth:`plot_loss` draws the losses.
    """

    order = 10

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.history: History = History()
        self.batch_losses: list[float] = []
        self.batch_lrs: list[float] = []

        # The current epoch's batches; kept across a restart or a resume (see before_epoch).
        self._losses: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._lrs: list[float] = []

    def before_fit(self) -> None:
        self.fit_start = time.perf_counter()
        # Rows and batches of earlier fits stay (fine_tune is two fits): this fit's epoch 0 is
        # row `epoch_offset`. A resumed fit already holds its first train_iter batches.
        learn = self.learn
        per = max(len(learn.train_dl), 1)
        self.epoch_offset = max(len(self.history) - learn.train_iter // per, 0)
        self.batch_offset = max(len(self.batch_losses) - (learn.train_iter - learn.restart_at), 0)
        if self.path is not None:  # exists from the start, even if no epoch ends
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()

    def before_epoch(self) -> None:
        # A restarted epoch (divergence guard, resume) keeps the batches before restart_at
        # and drops the ones that are being redone, so train_loss covers each batch once.
        keep = self.learn.restart_at
        if keep == 0:
            self.epoch_start = time.perf_counter()
        # After a restore into an earlier epoch, forget what came after the restored point.
        del self.history[self.epoch_offset + self.learn.epoch :]
        done = self.batch_offset + max(self.learn.train_iter - keep, 0)
        del self.batch_losses[done:]
        del self.batch_lrs[done:]
        self._losses, self._sizes, self._lrs = (
            self._losses[:keep],
            self._sizes[:keep],
            self._lrs[:keep],
        )

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.training or learn.loss is None:
            return
        # Losses stay on the device until the epoch ends: one host sync per epoch, not per batch.
        self._losses.append(learn.loss.detach())
        self._sizes.append(len(learn.yb))
        self._lrs.append(float(learn.opt.param_groups[-1]["lr"]))

    def after_train(self) -> None:
        if self._losses:
            losses = torch.stack([v.float().cpu() for v in self._losses]).tolist()
            self.batch_losses.extend(losses)
            self.batch_lrs.extend(self._lrs)
            self.train_loss = sum(v * n for v, n in zip(losses, self._sizes)) / sum(self._sizes)
        else:
            self.train_loss = math.nan
        self._losses, self._sizes, self._lrs = [], [], []

    def state(self) -> dict[str, Any]:
        """What a checkpoint needs to continue the record exactly (JSON-able)."""
        return {
            "history": list(self.history),  # a plain list: weights_only loading
            "batch_losses": self.batch_losses,
            "batch_lrs": self.batch_lrs,
            "epoch_losses": [float(v) for v in self._losses],
            "epoch_sizes": self._sizes,
            "epoch_lrs": self._lrs,
            "epoch_elapsed": time.perf_counter()
            - getattr(self, "epoch_start", time.perf_counter()),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = History(state["history"])
        self.batch_losses = list(state["batch_losses"])
        self.batch_lrs = list(state["batch_lrs"])
        self._losses = [torch.tensor(v) for v in state["epoch_losses"]]
        self._sizes = list(state["epoch_sizes"])
        self._lrs = list(state["epoch_lrs"])
        self.epoch_start = time.perf_counter() - float(state.get("epoch_elapsed", 0.0))

    def table(self) -> History:
        """The epochs' rows: a table in a notebook, ``print(recorder.table().text())`` in a
        terminal."""
        return self.history

    def _repr_html_(self) -> str:
        return self.history._repr_html_()

    def plot_loss(self) -> InlineFigure:
        """Training loss per batch (raw and smoothed) and the epochs' train and valid losses,
        as a figure that shows inline in a notebook.

        Example:
            >>> learn.recorder.plot_loss()
        """
        return loss_figure(self.history, self.batch_losses)

    def last_loss(self) -> float:
        """Loss of the last batch, for a progress bar (costs a host sync)."""
        return float(self._losses[-1]) if getattr(self, "_losses", None) else math.nan

    def after_epoch(self) -> None:
        learn = self.learn
        row = {
            "epoch": self.epoch_offset + learn.epoch + 1,
            **learn.task.row(learn.metrics, self.train_loss),
            # the LR of the epoch's last step: a run resumed after that step (Ctrl-C on an
            # epoch's last batch) trains no batch here, and the optimizer then holds the
            # schedule's next LR, set at before_fit
            "lr": self.batch_lrs[-1] if self.batch_lrs else float(learn.opt.param_groups[-1]["lr"]),
            "seconds": round(time.perf_counter() - self.epoch_start, 3),
        }
        learn.metrics.update(row)
        self.history.append(row)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:  # strict JSON: a NaN loss is written as null
                f.write(json.dumps(json_safe(row), allow_nan=False) + "\n")


class Checkpoint(Callback):
    """Saves ``last.pt`` at every epoch end (and every ``every_minutes`` mid-epoch) and
    ``best.pt`` when ``monitor`` improves; always atomically (temp file + rename).

    A checkpoint holds everything needed to continue exactly: weights, optimizer state, the
    schedule position (``train_iter``, ``lr_mult``), the batch size, torch RNG states, the
    recorder's history and the current epoch's batch losses. Only tensors and plain
    containers: ``torch.load(weights_only=True)`` reads it and can never run code.

    In a distributed run every process has one: rank 0 writes, and at an epoch's end the
    others wait until its files are on disk, so a process that dies after the epoch (even
    in a later callback) cannot take that epoch's checkpoint with it.
    """

    order = 30

    def __init__(
        self,
        directory: str | Path,
        monitor: str = "valid_loss",
        mode: str = "min",
        every_minutes: float | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.monitor, self.mode = monitor, mode
        self.best = math.inf if mode == "min" else -math.inf
        self.every = every_minutes * 60 if every_minutes else None

    def before_fit(self) -> None:
        self._last_save = time.monotonic()
        if self.writes:  # a run killed mid-save left a temp file; nothing will rename it now
            for name in ("last.pt", "best.pt"):
                remove_stale_temps(self.dir / name)

    def state(self, *, mid_epoch: bool) -> dict[str, Any]:
        learn = self.learn
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
        return {
            "format": "deepstart.checkpoint",
            "version": 1,
            "model": learn.model.state_dict(),
            "opt": learn.opt.state_dict() if learn.opt is not None else {},
            # where to continue: epoch (0-based) and its first batch still to do
            "epoch": learn.epoch if mid_epoch else learn.epoch + 1,
            "next_iter": learn.iter + 1 if mid_epoch else 0,
            "n_epochs": learn.n_epochs,
            "phase": learn.phase,
            "train_iter": learn.train_iter,
            "lr_mult": learn.lr_mult,
            "batch_size": learn.batch_size,
            "best": self.best,
            "rng": rng,
            "recorder": json.dumps(learn.recorder.state()),
            "callbacks": json.dumps(
                {type(cb).__name__: st for cb in learn.callbacks if (st := cb.state_dict())}
            ),
        }

    def save(
        self, name: str = "last.pt", *, mid_epoch: bool = False, state: dict | None = None
    ) -> Path:
        path = self.dir / name
        with atomic_write(path) as f:
            torch.save(state if state is not None else self.state(mid_epoch=mid_epoch), f)
        self._last_save = time.monotonic()
        return path

    @property
    def writes(self) -> bool:
        """This process writes the checkpoints (rank 0 of a distributed run)."""
        return self.learn.dist is None or self.learn.dist.is_main

    def after_batch(self) -> None:
        due = self.every is not None and time.monotonic() - self._last_save >= self.every
        if due and self.learn.training and self.writes:
            self.save(mid_epoch=True)

    def after_epoch(self) -> None:
        value = self.learn.metrics.get(self.monitor)
        better = False
        if value is not None and math.isfinite(value):
            better = value < self.best if self.mode == "min" else value > self.best
            if better:
                self.best = value
        if self.writes:
            state = self.state(mid_epoch=False)
            self.save("last.pt", state=state)
            if better:
                self.save("best.pt", state=state)
        if self.learn.dist is not None:
            self.learn.dist.barrier()  # no process leaves the epoch before it is on disk


def restore_checkpoint(learn: Learner, ckpt: dict[str, Any]) -> tuple[int, int]:
    """Put a checkpoint's state into ``learn``; returns ``(start_epoch, restart_at)`` for
    ``fit`` (and sets ``learn.phase``, the fit of a multi-fit plan such as fine_tune to
    continue in). The learner must have the same model, data and optimizer kind, and the
    same layers frozen as when the checkpoint was saved (the optimizer holds only the
    trainable ones)."""
    try:
        learn.model.load_state_dict(ckpt["model"])
        learn.batch_size = int(ckpt["batch_size"])
        learn.phase = int(ckpt.get("phase", 0))
        learn.create_opt()
        if ckpt["opt"]:
            learn.opt.load_state_dict(ckpt["opt"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:  # torch's are many lines
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"the checkpoint does not fit this model and optimizer ({why})") from None
    learn.lr_mult = float(ckpt["lr_mult"])
    learn.recorder.load_state(json.loads(ckpt["recorder"]))
    states = json.loads(ckpt.get("callbacks", "{}"))  # none in checkpoints before 2026-12-06
    for cb in learn.callbacks:
        if type(cb).__name__ in states:
            cb.load_state_dict(states[type(cb).__name__])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(ckpt["rng"]["cuda"]))
    cb = learn.get_callback(Checkpoint)
    if cb is not None:
        cb.best = float(ckpt["best"])
    return int(ckpt["epoch"]), int(ckpt["next_iter"])


class GracefulInterrupt(Callback):
    """Ctrl-C stops after the current batch, saving a mid-epoch checkpoint first.

    A second Ctrl-C stops at once. Only installed from the main thread (signals go there).
    """

    order = 40

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.log = log
        self.requested = False
        self.interrupted = False
        self.saved: Path | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log("\ninterrupt: stopping after this batch and saving (Ctrl-C again stops now)")

    def before_fit(self) -> None:
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)

    def after_batch(self) -> None:
        if self.requested and self.learn.training:
            ck = self.learn.get_callback(Checkpoint)
            if ck is not None and ck.writes:
                self.saved = ck.save(mid_epoch=True)
            self.interrupted = True
            raise CancelFit

    def after_fit(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


# What restore_checkpoint reads from a checkpoint.
_KEYS = ("model", "opt", "epoch", "next_iter", "lr_mult", "batch_size", "best", "rng", "recorder")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling code.

    Raises:
        DataError: in one line, for a file that is empty, truncated, not a torch file, holds
            Python objects beyond tensors (refused unread) or is not a deepstart checkpoint.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises EOFError, RuntimeError, UnpicklingError... for these
        if type(e).__name__ == "UnpicklingError":
            why = "it holds Python objects, not only tensors; deepstart never loads those"
        elif path.is_file() and path.stat().st_size == 0:
            why = "an empty file"
        else:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"{path}: not a readable checkpoint ({why})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "deepstart.checkpoint":
        raise DataError(f"{path}: not a deepstart checkpoint (no format 'deepstart.checkpoint')")
    missing = [k for k in _KEYS if k not in ckpt]
    if missing:
        raise DataError(f"{path}: not a deepstart checkpoint (it has no {', '.join(missing)})")
    return ckpt
