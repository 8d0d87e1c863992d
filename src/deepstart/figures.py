"""matplotlib figures that show themselves in a notebook, made without pyplot.

Import this module inside functions only: it imports matplotlib (a heavy import).

Why not pyplot: in ipykernel 6/7 (matplotlib-inline) a pyplot figure returned as a cell's
last expression is displayed twice (once as the cell's value, once when the backend flushes
its open figures at the end of the cell), and every pyplot figure stays open until closed, so
a loop of plots leaks memory. A plain ``matplotlib.figure.Figure`` is never flushed, but
IPython only knows how to draw it once the inline backend has been activated (``%matplotlib
inline`` or a first pyplot figure); before that it shows ``<Figure size 700x450 with 1
Axes>``. :class:`InlineFigure` is a plain Figure with a ``_repr_png_``: it shows exactly once,
as a PNG, in any IPython front end (Jupyter, VS Code, Colab), magics or not. Calling
``matplotlib.use`` is avoided too: it would switch a notebook away from its inline backend.

Example:
    >>> fig, axes = subplots(1, 2, figsize=(6, 3))
    >>> axes[0][0].plot([1, 2, 3]); fig  # the last expression of a cell: one picture
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


class InlineFigure(Figure):
    """A matplotlib ``Figure`` on its own Agg canvas that IPython displays as a PNG.

    It is an ordinary Figure otherwise: ``fig.savefig(path)``, ``fig.axes``, ``fig.add_subplot``
    all work; ``plt.show()`` does not know it (it is not pyplot's), which is what keeps it from
    being shown twice.
    """

    def _repr_png_(self) -> bytes:
        return png_bytes(self)


def new_figure(figsize: tuple[float, float], **kwargs: Any) -> InlineFigure:
    """An empty :class:`InlineFigure` of ``figsize`` inches, drawn by Agg (no display needed,
    safe from any thread). ``kwargs`` go to ``Figure`` (``layout="constrained"``, ...)."""
    fig = InlineFigure(figsize=figsize, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def subplots(
    nrows: int = 1,
    ncols: int = 1,
    *,
    figsize: tuple[float, float],
    squeeze: bool = False,
    **kwargs: Any,
) -> tuple[InlineFigure, Any]:
    """``plt.subplots`` without pyplot: the figure and its axes, an ``(nrows, ncols)`` array
    unless ``squeeze`` (unlike pyplot, off by default). ``kwargs`` go to ``Figure.subplots``.

    Example:
        >>> fig, axes = subplots(2, 3, figsize=(6, 4))  # axes[1][2] is the last one
    """
    fig = new_figure(figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)


def bare(ax: Any) -> None:
    """No ticks and no frame: an axes that only holds a picture."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def png_bytes(fig: Figure, dpi: float | None = None) -> bytes:
    """The figure as PNG bytes, cropped to what is drawn (as the inline backend does)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, bbox_inches="tight")
    return buf.getvalue()


def save(fig: Figure, path: str | Path, dpi: int = 100, *, tight: bool = True) -> Path:
    """Lay out (``tight``) and write ``fig`` as a PNG at ``path``; return the path.

    Nothing to close afterwards: the figure is not pyplot's, so it is freed with its last
    reference."""
    if tight:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
