"""Callbacks: everything optional about training, as reactions to the Learner's events.

A callback defines methods named after events (``before_fit``, ``after_batch``, ...); the
Learner calls them in ``order``. It can stop work by raising ``CancelBatch``,
``CancelEpoch`` or ``CancelFit``.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from deepstart.cache import atomic_write

if TYPE_CHECKING:
    from deepstart.train.learner import Learner


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
    """

    order: int = 0
    skip_lr_find: bool = False
    learn: Learner


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

    def before_fit(self) -> None:
        self._set(self.learn.train_iter / max(self.learn.total_iters, 1))

    def before_batch(self) -> None:
        if self.learn.training:
            self._set(self.learn.train_iter / max(self.learn.total_iters, 1))


class Recorder(Callback):
    """Keeps per-batch losses and LRs and one row of metrics per epoch.

    ``history`` rows hold: epoch (1-based, counted over every fit of the learner), train_loss,
    valid_loss, valid_bits, accuracy, lr, seconds. With ``path`` each row is also appended to a
    JSON-lines file as it is made. For regression (``learn.task``) max_error and rms_error
    take the places of valid_bits and accuracy, and values keep 6 significant digits (a fit's
    loss can be 1e-8).
    """

    order = 10

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.history: list[dict[str, Any]] = []
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
            "history": self.history,
            "batch_losses": self.batch_losses,
            "batch_lrs": self.batch_lrs,
            "epoch_losses": [float(v) for v in self._losses],
            "epoch_sizes": self._sizes,
            "epoch_lrs": self._lrs,
            "epoch_elapsed": time.perf_counter()
            - getattr(self, "epoch_start", time.perf_counter()),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.batch_losses = list(state["batch_losses"])
        self.batch_lrs = list(state["batch_lrs"])
        self._losses = [torch.tensor(v) for v in state["epoch_losses"]]
        self._sizes = list(state["epoch_sizes"])
        self._lrs = list(state["epoch_lrs"])
        self.epoch_start = time.perf_counter() - float(state.get("epoch_elapsed", 0.0))

    def last_loss(self) -> float:
        """Loss of the last batch, for a progress bar (costs a host sync)."""
        return float(self._losses[-1]) if getattr(self, "_losses", None) else math.nan

    def after_epoch(self) -> None:
        learn = self.learn
        m = learn.metrics
        if learn.task == "regression":
            scores = {k: _significant(m[k]) for k in ("valid_loss", "max_error", "rms_error")}
            train_loss = _significant(self.train_loss)
        else:
            scores = {
                "valid_loss": round(m["valid_loss"], 6),
                "valid_bits": round(m["valid_loss"] / math.log(2), 6),
                "accuracy": round(m["accuracy"], 6),
            }
            train_loss = round(self.train_loss, 6)
        row = {
            "epoch": self.epoch_offset + learn.epoch + 1,
            "train_loss": train_loss,
            **scores,
            "lr": float(learn.opt.param_groups[-1]["lr"]),
            "seconds": round(time.perf_counter() - self.epoch_start, 3),
        }
        learn.metrics.update(row)
        self.history.append(row)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def _significant(value: float, digits: int = 6) -> float:
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


# The progress columns between epoch and lr, per task: (row key, width, number format).
COLUMNS = {
    "classification": (
        ("train_loss", 10, ".4f"),
        ("valid_loss", 10, ".4f"),
        ("valid_bits", 10, ".3f"),
        ("accuracy", 9, ".4f"),
    ),
    "regression": (
        ("train_loss", 10, ".3e"),
        ("valid_loss", 10, ".3e"),
        ("max_error", 10, ".3e"),
        ("rms_error", 10, ".3e"),
    ),
}


def _fmt_row(row: dict[str, Any], epoch: int, n_epochs: int, task: str = "classification") -> str:
    # epoch / n_epochs of this fit (the row's own epoch counts over every fit)
    cols = "".join(f" {row[key]:>{width}{fmt}}" for key, width, fmt in COLUMNS[task])
    return f"{epoch:>3}/{n_epochs:<3}{cols} {row['lr']:>9.2e} {row['seconds']:>7.1f}s"


def _header(task: str = "classification") -> str:
    cols = "".join(f" {key:>{width}}" for key, width, _ in COLUMNS[task])
    return f"{'epoch':>7}{cols} {'lr':>9} {'time':>8}"


HEADER = _header()


class Progress(Callback):
    """A Keras-like line per epoch, under a live progress bar in a terminal.

    ``mode``: "rich" (live bar), "plain" (lines only, for CI and log files), "none", or
    "auto" (rich when stdout is a terminal).
    """

    order = 20

    def __init__(self, mode: str = "auto", stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "rich" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode
        self._bar = None

    def _print(self, text: str) -> None:
        if self.mode == "none":
            return
        if self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    def before_fit(self) -> None:
        if self.mode == "rich":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._bar.start()
        self._print(self._legend())
        self._print(_header(self.learn.task))

    def _legend(self) -> str:
        """What the columns mean, printed above them."""
        learn = self.learn
        if learn.task == "regression":
            from deepstart.train.regression import describe_loss

            return (
                f"loss = {describe_loss(learn.loss_func)}; max_error, rms_error = largest and "
                f"root-mean-square |f(x) - y| on the {len(learn.data.valid)} validation points"
            )
        k = learn.num_classes
        chance = math.log2(k) if k > 1 else 0.0
        return (
            f"loss in nats; valid_bits = nats / ln 2; chance level for {k} classes = "
            f"log2({k}) = {chance:.3f} bits"
        )

    def before_train(self) -> None:
        if self._bar is not None:
            if getattr(self, "_task", None) is not None and self._task in self._bar.task_ids:
                self._bar.remove_task(self._task)  # a restarted epoch: replace its bar
            desc = f"epoch {self.learn.epoch + 1}/{self.learn.n_epochs}"
            self._task = self._bar.add_task(desc, total=self.learn.n_iter, loss="-")

    def after_batch(self) -> None:
        if self._bar is not None and self.learn.training:
            i = self.learn.iter
            fields = {}
            if i % 10 == 0 or i == self.learn.n_iter - 1:
                fmt = ".3e" if self.learn.task == "regression" else ".4f"
                fields["loss"] = f"{self.learn.recorder.last_loss():{fmt}}"
            self._bar.update(self._task, advance=1, **fields)

    def before_validate(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self._bar.tasks[-1].description} valid")

    def after_epoch(self) -> None:
        if self._bar is not None:
            self._bar.remove_task(self._task)
        learn = self.learn
        row = learn.recorder.history[-1]
        self._print(_fmt_row(row, learn.epoch + 1, learn.n_epochs, learn.task))

    def after_fit(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


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
    learn.model.load_state_dict(ckpt["model"])
    learn.batch_size = int(ckpt["batch_size"])
    learn.phase = int(ckpt.get("phase", 0))
    learn.create_opt()
    if ckpt["opt"]:
        learn.opt.load_state_dict(ckpt["opt"])
    learn.lr_mult = float(ckpt["lr_mult"])
    learn.recorder.load_state(json.loads(ckpt["recorder"]))
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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling code."""
    return torch.load(path, map_location="cpu", weights_only=True)
