"""The notebook side of training: the recorder's :class:`History` as a table, the loss
curves as a figure, and the Learner's ``repr``, HTML card and :meth:`show_results`.

Figures are :class:`deepstart.figures.InlineFigure`: the last expression of a cell shows as
one picture, with no ``%matplotlib`` magic (matplotlib is imported only when one is drawn).

Example:
    >>> learn.recorder.history     # a table in a notebook; still a list of dicts
    >>> learn.recorder.plot_loss() # training loss per batch and validation loss per epoch
    >>> learn.show_results()       # validation pictures titled "target / prediction"
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepstart.data.dataset import ImageSet, conform_images
from deepstart.errors import ConfigError

if TYPE_CHECKING:
    from deepstart.figures import InlineFigure
    from deepstart.train.learner import Learner

_SHOWN = 50  # history rows in a notebook table: the first and last half of them beyond this


class History(list):
    """The recorder's rows, one dict per epoch: a plain list (``==`` a list, ``json.dumps``,
    slicing, ``list(h)`` all as before) that displays as a table in a notebook.

    Example:
        >>> learn.recorder.history[-1]["accuracy"]
        0.9533
    """

    def columns(self) -> list[str]:
        """The keys of the rows, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def _rows(self) -> list[Any]:
        if len(self) <= _SHOWN:
            return list(self)
        half = _SHOWN // 2
        return [*self[:half], None, *self[-half:]]  # None: the rows left out

    def text(self) -> str:
        """A plain-text table (what a terminal IPython shows)."""
        cols = self.columns()
        if not cols:
            return "History(no epochs yet)"
        cells = [[_fmt(r.get(c)) for c in cols] if r else ["..."] * len(cols) for r in self._rows()]
        widths = [max(len(x) for x in [c, *(row[j] for row in cells)]) for j, c in enumerate(cols)]
        lines = [cols, *cells]
        return "\n".join("  ".join(v.rjust(w) for v, w in zip(ln, widths)) for ln in lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def _repr_html_(self) -> str:
        from deepstart.display import html_table

        cols = self.columns()
        if not cols:
            return "<p>History: no epochs yet</p>"
        rows = [[_fmt(r.get(c)) for c in cols] if r else ["..."] * len(cols) for r in self._rows()]
        return html_table(cols, rows)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3e}" if 0 < abs(v) < 1e-3 else f"{v:.4f}"
    return str(v)


def smooth(values: Sequence[float] | np.ndarray, beta: float | None = None) -> np.ndarray:
    """Debiased exponential moving average (what fastai and TensorBoard show). The default
    ``beta`` averages over about 1/25 of the curve, so a short run is not drawn late.

    Example:
        >>> smooth([1.0, 2.0], beta=0.5).round(3).tolist()
        [1.0, 1.667]
    """
    values = np.asarray(values, dtype=float)
    if beta is None:
        beta = 1 - 1 / min(max(len(values) / 25, 1), 50)
    out, avg = np.empty_like(values, dtype=float), 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def draw_loss(
    ax: Any,
    history: Sequence[dict],
    batch_losses: Sequence[float] = (),
    per_epoch: int = 0,
    events: Iterable[dict] = (),
) -> None:
    """Draw the losses on ``ax``: per batch (raw and smoothed) when ``batch_losses`` and
    ``per_epoch`` (batches per epoch) are given, the epochs' train and valid losses, and
    divergence ``events`` (rows with ``epoch`` and ``batch``) as red lines."""
    epochs = np.array([r["epoch"] for r in history], dtype=float)
    train = np.array([r.get("train_loss", math.nan) for r in history], dtype=float)
    valid = np.array([r.get("valid_loss", math.nan) for r in history], dtype=float)
    on_steps = bool(per_epoch) and len(batch_losses) > 0
    x_epoch = epochs * per_epoch if on_steps else epochs
    if on_steps:
        steps = np.arange(1, len(batch_losses) + 1)
        losses = np.asarray(batch_losses, dtype=float)
        ax.plot(steps, losses, color="#8fb4d9", lw=0.6, alpha=0.6, label="batch")
        ax.plot(steps, smooth(losses), color="#1f5fa8", lw=1.2, label="batch, smoothed")
    ax.plot(x_epoch, train, "o-", color="#1f5fa8", ms=3, label="train (epoch mean)")
    ax.plot(x_epoch, valid, "o-", color="#e07b00", ms=3, label="valid")
    for ev in events:
        if on_steps and ev.get("epoch") is not None:
            # a validation blow-up has no batch: it happened at the end of its epoch
            batch = ev["batch"] if ev.get("batch") is not None else per_epoch
            ax.axvline((ev["epoch"] - 1) * per_epoch + batch, color="#cf222e", lw=0.8)
    ax.set(title="Loss (nats)", xlabel="batch" if on_steps else "epoch")
    ax.legend(fontsize=8)


def loss_figure(history: Sequence[dict], batch_losses: Sequence[float] = ()) -> InlineFigure:
    """The training loss per batch and the epochs' losses, on the batch axis (fastai's
    ``plot_loss``). Batches per epoch are read off the record: all batches / epochs."""
    from deepstart.figures import new_figure

    fig = new_figure((7, 4.2), layout="constrained")
    ax = fig.add_subplot()
    per_epoch = len(batch_losses) // len(history) if history else 0
    draw_loss(ax, history, batch_losses, per_epoch)
    ax.grid(alpha=0.3)
    if not history and not batch_losses:
        ax.text(0.5, 0.5, "nothing trained yet", ha="center", va="center", transform=ax.transAxes)
    return fig


def _best(history: Sequence[dict]) -> str:
    if not history:
        return ""
    key = "accuracy" if "accuracy" in history[-1] else "valid_loss"
    pick = max if key == "accuracy" else min
    ok = [r for r in history if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
    if not ok:
        return ""
    row = pick(ok, key=lambda r: r[key])
    return f"best {key} {row[key]:.4g} (epoch {row['epoch']})"


def describe(learn: Learner) -> dict[str, str]:
    """The facts a Learner's repr shows, as short strings."""
    from deepstart.models.summary import human

    arch = getattr(learn.model, "arch", None)
    name = arch.get("name") if isinstance(arch, dict) else type(learn.model).__name__
    params = sum(p.numel() for p in learn.model.parameters())
    trainable = sum(p.numel() for p in learn.model.parameters() if p.requires_grad)
    frozen = f", {human(params - trainable)} frozen" if trainable < params else ""
    data = learn.data
    if hasattr(data, "classes") and hasattr(data, "train"):
        data_text = f"{data.name!r}: {data.num_classes} classes, {len(data.train)} training images"
    else:
        data_text = f"{type(data).__name__} ({len(getattr(data, 'train', ()))} training items)"
    history = learn.recorder.history
    return {
        "model": f"{name} ({human(params)} parameters{frozen})",
        "data": data_text,
        "optimizer": f"{learn.opt_name}, lr {learn.lr:.1e}, wd {learn.wd:g}",
        "trained": f"{len(history)} epoch{'' if len(history) == 1 else 's'}"
        + (f"; {_best(history)}" if _best(history) else ""),
        "device": str(learn.device),
    }


class DisplayMixin:
    """The Learner's notebook side: a one-line ``repr``, an HTML card and :meth:`show_results`."""

    def __repr__(self) -> str:
        try:
            d = describe(self)  # type: ignore[arg-type]
        except AttributeError:  # half-built (an error in __init__, seen from a debugger)
            return f"<{type(self).__name__}, not fully built>"
        return f"Learner({d['model']}; data {d['data']}; {d['optimizer']}; {d['trained']})"

    def _repr_html_(self) -> str:
        from deepstart.display import html_table

        rows = [[k, html.escape(v)] for k, v in describe(self).items()]  # type: ignore[arg-type]
        return "<b>Learner</b>" + html_table(["", ""], rows, raw=True)

    def show_results(
        self, n: int = 9, *, split: str | ImageSet = "valid", ncols: int = 3, seed: int = 0
    ) -> InlineFigure:
        """``n`` random pictures of ``split`` titled "target / prediction" (green when right,
        red when wrong), as a figure that shows inline in a notebook (fastai's
        ``show_results``). For image classifiers.

        Example:
            >>> learn.show_results(6, split="test")
        """
        from deepstart.data.show import RIGHT, WRONG, image_grid
        from deepstart.train.evaluation import resolve_split, score

        learn: Learner = self  # type: ignore[assignment]
        images = resolve_split(learn.data, split)
        if learn.task.name != "classification" or not isinstance(images, ImageSet):
            raise ConfigError("show_results shows pictures: it is for image classifiers")
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(images), generator=gen)[: max(n, 0)]
        picked = conform_images(images.subset(idx), learn.preprocess)
        probs = score(learn, learn.batches(picked))["probs"]
        classes, titles, colors = images.classes, [], []
        for target, p in zip(picked.labels.tolist(), probs):
            pred = int(p.argmax())
            titles.append(f"{classes[target]} / {classes[pred]}\n{float(p[pred]):.2f}")
            colors.append(RIGHT if pred == target else WRONG)
        where = split if isinstance(split, str) else "custom"
        return image_grid(
            list(picked.images), titles, colors, ncols=ncols, panel=1.45, title_lines=2,
            title=f"{where}: target / prediction, probability",
        )  # fmt: skip
