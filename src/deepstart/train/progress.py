"""Progress: a live bar and a line per epoch, wherever the fit runs, and a time estimate.

Where the output goes decides how it looks (``mode="auto"``):

- a notebook (an IPython kernel: Jupyter, JupyterLab, VS Code, Colab): a bar and an epoch
  table in HTML, updated in place (:mod:`deepstart.train.notebook`; at most
  ``NOTEBOOK_UPDATES`` redraws a second, so the display costs well under 1% of training);
- a terminal: rich's live bar, with a Keras-like line per epoch above it;
- anything else (a pipe, a log file, CI): plain lines, and during a long epoch a line every
  ``every`` seconds saying where it is (batch i/n, images/s, time left in the epoch).

After the first training batches every mode says once how long the fit will take, when that
is at least ``estimate_after`` seconds (:mod:`deepstart.train.estimate`).

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
import time
from collections.abc import Callable, Sequence
from typing import Any

from deepstart.errors import ConfigError
from deepstart.train.estimate import FitEstimate, duration_text
from deepstart.train.events import Callback
from deepstart.train.notebook import (
    Display,
    NotebookBar,
    NotebookTable,
    clock_text,
    in_notebook,
    ipython_display,
)

# A progress column: (row key, width in characters, number format); see Task.columns.
Column = tuple[str, int, str]
MODES = ("auto", "rich", "plain", "notebook", "none")
NOTEBOOK_UPDATES = 5.0  # redraws of a notebook bar per second, at most (and the last batch)


def format_row(row: dict[str, Any], epoch: int, n_epochs: int, columns: Sequence[Column]) -> str:
    """One epoch's line: ``epoch`` of ``n_epochs`` of this fit (the row's own epoch counts
    over every fit of the learner), then the columns, the LR and the seconds."""
    cols = "".join(f" {row[key]:>{width}{fmt}}" for key, width, fmt in columns)
    return f"{epoch:>3}/{n_epochs:<3}{cols} {row['lr']:>9.2e} {row['seconds']:>7.1f}s"


def format_header(columns: Sequence[Column]) -> str:
    """The names above the columns of :func:`format_row`."""
    cols = "".join(f" {key:>{width}}" for key, width, _ in columns)
    return f"{'epoch':>7}{cols} {'lr':>9} {'time':>8}"


def row_cells(
    row: dict[str, Any], epoch: int, n_epochs: int, columns: Sequence[Column]
) -> list[str]:
    """The cells of :func:`format_row`, for a table (the header: :func:`header_cells`)."""
    cells = [f"{row[key]:{fmt}}" for key, _, fmt in columns]
    return [f"{epoch}/{n_epochs}", *cells, f"{row['lr']:.2e}", f"{row['seconds']:.1f}s"]


def header_cells(columns: Sequence[Column]) -> list[str]:
    return ["epoch", *(key for key, _, _ in columns), "lr", "time"]


def resolve_mode(mode: str, stream: Any = None) -> str:
    """ "auto" (and "rich", which cannot draw in a notebook) -> "notebook" in an IPython
    kernel writing to stdout; "auto" -> "rich" on a terminal, else "plain"."""
    if mode not in MODES:
        raise ConfigError(f"progress must be one of {', '.join(MODES)}: {mode!r}")
    to_stdout = stream is None or stream is sys.stdout
    if mode in ("auto", "rich") and to_stdout and in_notebook():
        return "notebook"
    if mode == "auto":
        out = stream if stream is not None else sys.stdout
        return "rich" if getattr(out, "isatty", lambda: False)() else "plain"
    return mode


def _rich_bar(stream: Any, loss: bool = False) -> Any:
    """rich's live bar on ``stream``: description, bar, i/n, (loss,) elapsed, time left."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as RichProgress

    bar = RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *([TextColumn("loss {task.fields[loss]}")] if loss else []),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=True,
    )
    bar.start()
    return bar


class Progress(Callback):
    """A live bar and a line (or table row) per epoch; see the module's docstring.

    Args:
        mode: "auto", "rich", "plain", "notebook" or "none".
        stream: where text goes (stdout).
        clock: seconds, for throttling and the estimate only (tests pass a fake one).
        display: ``show(bundle) -> handle`` for the notebook mode (IPython's by default).
        hint: ``hint(seconds) -> str | None``, added to the time estimate (a faster recipe).
        every: seconds between the "where it is" lines of plain mode.
        estimate_after: the estimate is said for fits at least this long (seconds).
        default: added by the Learner itself; it stands aside in a fit given its own Progress.
    """

    order = 20

    def __init__(
        self,
        mode: str = "auto",
        stream: Any = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        display: Display | None = None,
        hint: Callable[[float], str | None] | None = None,
        every: float = 30.0,
        estimate_after: float = 30.0,
        default: bool = False,
    ) -> None:
        self.mode = resolve_mode(mode, stream)
        self._stream = stream
        self.clock, self.display, self.every = clock, display, float(every)
        self.estimate = FitEstimate(estimate_after, hint)
        self.default = default
        self._bar: Any = None  # rich's live bar, during a fit
        self._nb_bar: NotebookBar | None = None
        self._nb_table: NotebookTable | None = None
        self._on = False  # this fit shows progress
        self._last_line = self._shown = self._t_epoch = 0.0
        self._items = 0

    @property
    def stream(self) -> Any:
        """Where text goes: the one given, else sys.stdout when it is written (so output
        follows a redirected stdout)."""
        return self._stream if self._stream is not None else sys.stdout

    def _display(self) -> Display:
        return self.display if self.display is not None else ipython_display()

    def _print(self, text: str) -> None:
        if not self._on:
            return
        if self._nb_table is not None:
            self._nb_table.note(text)
        elif self._bar is not None:
            self._bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)
        self._last_line = self.clock()

    def before_fit(self) -> None:
        learn = self.learn
        others = [c for c in learn.callbacks if isinstance(c, Progress) and c is not self]
        self._on = self.mode != "none" and not (self.default and others)
        if not self._on:
            return
        now = self.clock()
        self.estimate.start(learn, now)
        self._last_line = now
        columns = learn.task.columns()
        if self.mode == "rich":
            self._bar = _rich_bar(self.stream, loss=True)
        elif self.mode == "notebook":
            show = self._display()
            self._nb_bar = NotebookBar(show)
            self._nb_bar.show(0, len(learn.train_dl), self._title(), "starting")
            self._nb_table = NotebookTable(show, header_cells(columns))
        legend = learn.task.legend(learn)  # what the columns mean
        if legend:
            self._print(legend)
        if self._nb_table is None:
            self._print(format_header(columns))
        else:
            self._nb_table.draw()  # the empty table under the bar, now

    def _title(self) -> str:
        return f"epoch {self.learn.epoch + 1}/{self.learn.n_epochs}"

    def before_train(self) -> None:
        if not self._on:
            return
        now = self._t_epoch = self._shown = self.clock()
        self._items = 0
        self.estimate.train_start(now)
        if self._bar is not None:
            if getattr(self, "_task", None) is not None and self._task in self._bar.task_ids:
                self._bar.remove_task(self._task)  # a restarted epoch: replace its bar
            self._task = self._bar.add_task(self._title(), total=self.learn.n_iter, loss="-")
        elif self._nb_bar is not None:
            self._nb_bar.show(self.learn.restart_at, self.learn.n_iter, self._title(), "")

    def after_batch(self) -> None:
        learn = self.learn
        if not (self._on and learn.training):
            return
        now = self.clock()
        line = self.estimate.batch(learn, now)
        if line is not None:
            self._print(line)
        i, n = learn.iter, learn.n_iter
        if self._bar is not None:
            fields = {}
            if i % 10 == 0 or i == n - 1:
                fields["loss"] = f"{learn.recorder.last_loss():{learn.task.loss_format}}"
            self._bar.update(self._task, advance=1, **fields)
        elif self._nb_bar is not None:
            # Redraw at most NOTEBOOK_UPDATES times a second, and always at the epoch's end.
            if now - self._shown >= 1 / NOTEBOOK_UPDATES or i == n - 1:
                self._shown = now
                self._nb_bar.show(i + 1, n, self._title(), self._where(now, with_loss=True))
        elif self.mode == "plain":
            self._items += len(learn.yb) if learn.yb is not None else 0
            if now - self._last_line >= self.every and i < n - 1:
                self._print(f"  {self._title()}: batch {i + 1}/{n}, {self._where(now)}")

    def _where(self, now: float, with_loss: bool = False) -> str:
        """Speed and time left in the epoch, from the batches of it seen so far."""
        learn = self.learn
        done = learn.iter + 1 - learn.restart_at
        spent = now - self._t_epoch
        left = (learn.n_iter - learn.iter - 1) * spent / max(done, 1)
        if with_loss:  # (a host sync: only when drawn)
            loss = f"{learn.recorder.last_loss():{learn.task.loss_format}}"
            return f"loss {loss} · {clock_text(spent)} elapsed · {clock_text(left)} left"
        rate = self._items / spent if spent > 0 else 0.0
        return f"{rate:,.1f} images/s, about {duration_text(left)} left in the epoch"

    def before_validate(self) -> None:
        if not self._on:
            return
        self.estimate.validate_start(self.clock())
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self._bar.tasks[-1].description} valid")
        elif self._nb_bar is not None:
            n = self.learn.n_iter
            self._nb_bar.show(n, n, self._title(), "validating")

    def after_validate(self) -> None:
        if self._on:
            self.estimate.validate_end(self.clock())

    def after_epoch(self) -> None:
        if not self._on:
            return
        if self._bar is not None:
            self._bar.remove_task(self._task)
        learn = self.learn
        row, at = learn.recorder.history[-1], (learn.epoch + 1, learn.n_epochs)
        if self._nb_table is not None:
            self._nb_table.add_row(row_cells(row, *at, learn.task.columns()))
        else:
            self._print(format_row(row, *at, learn.task.columns()))

    def after_fit(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._nb_bar is not None:
            learn = self.learn
            said = "stopped" if learn.cancelled else "done"
            spent = clock_text(self.clock() - self.estimate.t_fit)
            n = learn.n_iter
            self._nb_bar.show(n, n, self._title(), f"{said} in {spent}")
        self._nb_bar = self._nb_table = None
        self._on = False

    def for_sweep(self, sweep: Any) -> list[Callback]:
        """The LR finder's progress, shown as this callback shows a fit's."""
        return [] if self.mode == "none" else [SweepProgress(self, sweep)]


class SweepProgress(Callback):
    """The LR finder's sweep: a bar (terminal, notebook) and one line at its end.

    ``sweep`` is the finder's callback (its ``num_it``, ``lrs``, ``smoothed`` and
    ``stop_reason`` are read); ``parent`` the Progress whose mode, stream and clock it uses.
    """

    order = 110  # after the sweep (100) has recorded the step and set the plan

    def __init__(self, parent: Progress, sweep: Any) -> None:
        self.parent, self.sweep = parent, sweep
        self._bar: Any = None
        self._nb_bar: NotebookBar | None = None

    def before_fit(self) -> None:
        p = self.parent
        self._t0 = self._shown = p.clock()
        if p.mode == "rich":
            self._bar = _rich_bar(p.stream)
            self._task = self._bar.add_task("LR finder", total=self.sweep.num_it)
        elif p.mode == "notebook":
            self._nb_bar = NotebookBar(p._display())
            self._nb_bar.show(0, self.sweep.num_it, "LR finder", "")

    def after_step(self) -> None:
        k, sw = len(self.sweep.lrs), self.sweep
        if self._bar is not None:
            self._bar.update(self._task, completed=k)
        elif self._nb_bar is not None:
            now = self.parent.clock()
            if now - self._shown >= 1 / NOTEBOOK_UPDATES or k >= sw.num_it:
                self._shown = now
                detail = f"lr {sw.lrs[-1]:.1e} · loss {sw.smoothed[-1]:.4g}"
                self._nb_bar.show(k, sw.num_it, "LR finder", detail)

    def after_fit(self) -> None:
        sw, p = self.sweep, self.parent
        spent = duration_text(p.clock() - self._t0)
        span = f"lr {sw.lrs[0]:.1e} to {sw.lrs[-1]:.1e}, " if sw.lrs else ""
        line = f"LR finder: {len(sw.lrs)} steps, {span}{spent} ({sw.stop_reason})"
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self._nb_bar is not None:
            self._nb_bar.show(len(sw.lrs), sw.num_it, "LR finder", line.split(": ", 1)[1])
            self._nb_bar = None
        else:
            print(line, file=p.stream, flush=True)
