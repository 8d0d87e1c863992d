"""The progress lines: a Keras-like line per epoch, under a live bar in a terminal.

Which columns a line has, and how each number is written, is the learner's task's
(:meth:`deepstart.train.task.Task.columns`): losses to 4 decimals and accuracy for
classifiers, 4 significant digits for regression, whose losses can be 1e-8.

Example:
    >>> learn = Learner(data, model, callbacks=[Progress("plain")])
    >>> learn.fit_one_cycle(2, 3e-3)
    loss in nats; valid_bits = nats / ln 2; chance level for 3 classes = log2(3) = 1.585 bits
      epoch train_loss valid_loss valid_bits  accuracy        lr     time
      1/2       0.9120     0.5311      0.766    0.8000  3.00e-03     1.2s
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from deepstart.train.events import Callback

# A progress column: (row key, width in characters, number format); see Task.columns.
Column = tuple[str, int, str]


def format_row(row: dict[str, Any], epoch: int, n_epochs: int, columns: Sequence[Column]) -> str:
    """One epoch's line: ``epoch`` of ``n_epochs`` of this fit (the row's own epoch counts
    over every fit of the learner), then the columns, the LR and the seconds."""
    cols = "".join(f" {row[key]:>{width}{fmt}}" for key, width, fmt in columns)
    return f"{epoch:>3}/{n_epochs:<3}{cols} {row['lr']:>9.2e} {row['seconds']:>7.1f}s"


def format_header(columns: Sequence[Column]) -> str:
    """The names above the columns of :func:`format_row`."""
    cols = "".join(f" {key:>{width}}" for key, width, _ in columns)
    return f"{'epoch':>7}{cols} {'lr':>9} {'time':>8}"


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
        legend = self.learn.task.legend(self.learn)  # what the columns mean
        if legend:
            self._print(legend)
        self._print(format_header(self.learn.task.columns()))

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
                fields["loss"] = f"{self.learn.recorder.last_loss():{self.learn.task.loss_format}}"
            self._bar.update(self._task, advance=1, **fields)

    def before_validate(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self._bar.tasks[-1].description} valid")

    def after_epoch(self) -> None:
        if self._bar is not None:
            self._bar.remove_task(self._task)
        learn = self.learn
        row = learn.recorder.history[-1]
        self._print(format_row(row, learn.epoch + 1, learn.n_epochs, learn.task.columns()))

    def after_fit(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
