"""Progress in a notebook (Jupyter, JupyterLab, VS Code, Colab): HTML that updates in place.

A fit shows two outputs, each one ``IPython.display`` handle updated in place: a bar for the
batches of the current epoch (a ``<progress>`` element, batch i/n, loss, elapsed, time left),
and below it a table that grows a row per epoch, with the legend and any notes (the time
estimate) above it. No ipywidgets: plain HTML with a text/plain twin, so every front end
that renders outputs shows it, and a saved notebook keeps the final state.

IPython is imported only inside functions, and only when a kernel is already running
(:func:`in_notebook` looks in ``sys.modules`` before asking), so a terminal fit never pays
for it. The rendering functions are pure: tests and ``bench/progress_overhead.py`` call them
with a fake ``display``.

Example:
    >>> bar = NotebookBar(ipython_display())  # (tests pass a fake display)
    >>> bar.show(3, 10, "epoch 1/2", "loss 0.52 · 0:01 elapsed · 0:03 left")  # then in place
"""

from __future__ import annotations

import html
import sys
from collections.abc import Callable, Sequence
from typing import Any

# show(bundle) -> a handle with update(bundle): bundle maps MIME type -> content.
Bundle = dict[str, str]
Display = Callable[[Bundle], Any]

_STYLE = "font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px"


def in_notebook() -> bool:
    """True inside an IPython kernel (Jupyter, JupyterLab, VS Code, Colab), False in plain
    Python and in terminal IPython (which shows text, where the rich bar works)."""
    if "IPython" not in sys.modules:  # every kernel has imported it; don't import it here
        return False
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - a half-installed IPython
        return False
    shell = get_ipython()
    # ZMQInteractiveShell (ipykernel, and Colab's subclass) has a kernel; the terminal's not.
    return shell is not None and getattr(shell, "kernel", None) is not None


def ipython_display() -> Display:
    """``show(bundle)`` through IPython: a new output with a display id, updated in place."""
    from IPython.display import display

    def show(bundle: Bundle) -> Any:
        return _Handle(display(bundle, raw=True, display_id=True))

    return show


class _Handle:
    """IPython's DisplayHandle, with ``update(bundle)`` meaning a raw MIME bundle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def update(self, bundle: Bundle) -> None:
        self.handle.update(bundle, raw=True)


def clock_text(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour), as progress bars write time.

    Example:
        >>> clock_text(75.4), clock_text(3725)
        ('1:15', '1:02:05')
    """
    s = max(round(seconds), 0)
    h, m = divmod(s, 3600)
    return f"{h}:{m // 60:02d}:{m % 60:02d}" if h else f"{m // 60}:{m % 60:02d}"


def bar_html(done: int, total: int, title: str, detail: str) -> str:
    """A progress element ``done`` of ``total`` wide, with ``title`` and ``detail`` after it."""
    value = min(max(done, 0), max(total, 1))
    return (
        f'<div style="{_STYLE}">'
        f'<progress value="{value}" max="{max(total, 1)}" '
        f'style="width: 320px; height: 1em; vertical-align: middle"></progress> '
        f"<b>{html.escape(title)}</b> {done}/{total} {html.escape(detail)}</div>"
    )


def bar_text(done: int, total: int, title: str, detail: str, width: int = 30) -> str:
    """The text/plain twin of :func:`bar_html`: ``[#####.....] title 3/10 detail``."""
    filled = int(width * min(max(done, 0), total) / total) if total > 0 else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {title} {done}/{total} {detail}"


def table_html(header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str]) -> str:
    """The epoch table: ``notes`` (legend, estimate) as paragraphs, then a row per epoch."""
    cell = "padding: 1px 10px; text-align: right"
    head = "".join(f'<th style="{cell}">{html.escape(h)}</th>' for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td style="{cell}">{html.escape(c)}</td>' for c in row) + "</tr>"
        for row in rows
    )
    paras = "".join(f'<p style="margin: 2px 0">{html.escape(n)}</p>' for n in notes)
    return (
        f'<div style="{_STYLE}">{paras}<table style="border-collapse: collapse">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


class NotebookBar:
    """One output that shows a bar: created by the first :meth:`show`, then updated."""

    def __init__(self, display: Display) -> None:
        self.display = display
        self.handle: Any = None

    def show(self, done: int, total: int, title: str, detail: str) -> None:
        bundle = {
            "text/html": bar_html(done, total, title, detail),
            "text/plain": bar_text(done, total, title, detail),
        }
        if self.handle is None:
            self.handle = self.display(bundle)
        else:
            self.handle.update(bundle)


class NotebookTable:
    """One output holding the notes and the epoch table; each change redraws it in place."""

    def __init__(self, display: Display, header: Sequence[str]) -> None:
        self.display = display
        self.header = list(header)
        self.rows: list[list[str]] = []
        self.notes: list[str] = []
        self.handle: Any = None

    def note(self, text: str) -> None:
        self.notes.extend(text.splitlines())
        self.draw()

    def add_row(self, cells: Sequence[str]) -> None:
        self.rows.append(list(cells))
        self.draw()

    def draw(self) -> None:
        widths = [max(len(c) for c in col) for col in zip(self.header, *self.rows, strict=True)]
        lines = [" ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in self.rows]
        head = " ".join(h.rjust(w) for h, w in zip(self.header, widths, strict=True))
        bundle = {
            "text/html": table_html(self.header, self.rows, self.notes),
            "text/plain": "\n".join([*self.notes, head, *lines]),
        }
        if self.handle is None:
            self.handle = self.display(bundle)
        else:
            self.handle.update(bundle)
