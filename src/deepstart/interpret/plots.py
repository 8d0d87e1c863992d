"""Pictures of data and training, drawn with matplotlib (imported only when a plot is made).

Each picture has a ``*_figure`` function returning a figure (an
:class:`~deepstart.figures.InlineFigure`, which a notebook shows inline) and a function that
saves it as a PNG for the report; both paths draw with the same code. No pyplot: its global
state would keep every figure open, and ``matplotlib.use`` would take a notebook off its
inline backend.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepstart.data.dataset import ImageSet, to_display
from deepstart.train.display import draw_loss

if TYPE_CHECKING:
    from deepstart.figures import InlineFigure
    from deepstart.interpret.analysis import Interpretation


def _figures() -> Any:
    """The figure helpers (:mod:`deepstart.figures`), imported when a picture is drawn."""
    from deepstart import figures

    return figures


def _pyplot() -> Any:
    """pyplot for Optuna's plots (deepstart.tune.page), which draw through it; deepstart's own
    pictures use :func:`_figures`. Outside a notebook kernel it is put on Agg (files only:
    never a window); inside one the kernel's inline backend is left alone, or the user's own
    plots would stop showing."""
    import sys

    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bare(ax: Any) -> None:
    _figures().bare(ax)


def _save(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Lay out and write a figure; a pyplot one is closed (an open one would leak memory)."""
    path = _figures().save(fig, path, dpi)
    if "matplotlib.pyplot" in sys.modules:  # a figure of ours is not pyplot's: a no-op then
        sys.modules["matplotlib.pyplot"].close(fig)
    return path


def sample_grid_figure(
    images: ImageSet, *, per_class: int = 8, seed: int = 0, title: str = ""
) -> InlineFigure:
    """One row per class and ``per_class`` random samples of it."""
    k = len(images.classes)
    gen = torch.Generator().manual_seed(seed)
    fig, axes = _figures().subplots(
        k, per_class, figsize=(per_class * 1.1 + 1.2, k * 1.1 + 0.6), squeeze=False
    )
    for c, name in enumerate(images.classes):
        idx = torch.nonzero(images.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)[:per_class]]
        for j in range(per_class):
            ax = axes[c][j]
            _bare(ax)
            if j < len(idx):
                ax.imshow(to_display(images.images[idx[j]]), cmap="gray", vmin=0, vmax=255)
        axes[c][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def sample_grid(
    images: ImageSet, path: str | Path, *, per_class: int = 8, seed: int = 0, title: str = ""
) -> Path:
    """Save a PNG with one row per class and ``per_class`` random samples of it.

    Example:
        >>> sample_grid(data.train, "samples.png")
    """
    return _save(sample_grid_figure(images, per_class=per_class, seed=seed, title=title), path)


def prediction_figure(
    interp: Interpretation,
    indices: Sequence[int] | torch.Tensor,
    *,
    title: str = "",
    ncols: int = 8,
) -> InlineFigure:
    """The pictures at ``indices`` with "predicted / true" and "probability, loss" over
    each; green titles are right, red ones wrong (fastai's ``plot_top_losses`` layout)."""
    from deepstart.data.show import RIGHT, WRONG, image_grid

    items = [interp.item(int(i)) for i in indices]
    titles = [
        f"{it['pred']} / {it['true']}\np {it['prob']:.2f}  loss {it['loss']:.2f}" for it in items
    ]
    colors = [RIGHT if it["pred"] == it["true"] else WRONG for it in items]
    return image_grid(
        [interp.images.images[it["index"]] for it in items],
        titles,
        colors,
        ncols=ncols,
        panel=1.45,
        title_lines=2,
        title=(title + "\n" if title else "") + "predicted / true, probability, loss",
    )


def prediction_grid(
    interp: Interpretation,
    indices: Sequence[int] | torch.Tensor,
    path: str | Path,
    *,
    title: str = "",
    ncols: int = 8,
) -> Path:
    """Save :func:`prediction_figure` as a PNG.

    Example:
        >>> prediction_grid(interp, interp.top_losses(16), "top_losses.png", title="Top losses")
    """
    return _save(prediction_figure(interp, indices, title=title, ncols=ncols), path)


def confusion_figure(interp: Interpretation, normalise: bool | None = None) -> InlineFigure:
    """The confusion matrix: counts (``normalise=False``), rows normalised to 1 (``True``: the
    diagonal is then each class's recall), or both side by side (``None``). Rows are true
    classes, columns predictions."""
    classes = interp.classes
    k = len(classes)
    panels = []
    if normalise is not True:
        panels.append((interp.confusion_matrix().numpy(), "counts"))
    if normalise is not False:
        panels.append((interp.confusion_matrix(normalise=True).numpy(), "row-normalised"))
    side = min(max(3.2, 0.42 * k + 1.6), 12)
    fig, axes = _figures().subplots(
        1, len(panels), figsize=(len(panels) * side + 0.8, side + 0.3), squeeze=False
    )
    for ax, (mat, label) in zip(axes[0], panels):
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=mat.max() if mat.max() > 0 else 1)
        ax.set_title(f"Confusion matrix ({label}), {interp.split}", fontsize=10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_xticks(range(k), classes, rotation=90 if k > 6 else 0, fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        if k <= 20:  # beyond that the numbers are unreadable; the colours still tell
            hi = mat.max() / 2 if mat.max() > 0 else 1
            for t in range(k):
                for p in range(k):
                    v = mat[t, p]
                    text = f"{v:d}" if label == "counts" else f"{v:.2f}"
                    if label != "counts" and v == 0:
                        text = "0"
                    ax.text(
                        p,
                        t,
                        text,
                        ha="center",
                        va="center",
                        fontsize=7 if k > 10 else 8,
                        color="white" if v > hi else "black",
                    )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def confusion_plot(interp: Interpretation, path: str | Path) -> Path:
    """Save the confusion matrix twice, side by side: counts, and rows normalised to 1."""
    return _save(confusion_figure(interp), path)


def curves_figure(
    history: Sequence[dict],
    *,
    batch_losses: Sequence[float] = (),
    batch_lrs: Sequence[float] = (),
    per_epoch: int = 0,
    chance_bits: float | None = None,
    events: Sequence[dict] = (),
) -> InlineFigure:
    """The training curves: loss per batch and per epoch, validation accuracy, the LR
    schedule, and the losses in bits against the chance level ``log2(K)``.

    ``history`` holds metrics.jsonl's epoch rows; ``per_epoch`` is batches per epoch (to put
    epoch rows on the batch axis); ``events`` are divergence rows, drawn as red lines.
    """
    epochs = np.array([r["epoch"] for r in history], dtype=float)
    train = np.array([r["train_loss"] for r in history], dtype=float)
    valid = np.array([r["valid_loss"] for r in history], dtype=float)
    acc = np.array([r["accuracy"] for r in history], dtype=float)
    fig, axes = _figures().subplots(2, 2, figsize=(11, 7))

    draw_loss(axes[0][0], history, batch_losses, per_epoch, events)

    ax = axes[0][1]
    ax.plot(epochs, acc * 100, "o-", color="#1a7f37", ms=3)
    ax.set(title="Validation accuracy (%)", xlabel="epoch")
    if len(acc):
        ax.text(
            0.98,
            0.04,
            f"last {acc[-1] * 100:.2f}%, best {np.nanmax(acc) * 100:.2f}%",
            transform=ax.transAxes,
            ha="right",
            fontsize=9,
        )

    ax = axes[1][0]
    if len(batch_lrs):
        ax.plot(np.arange(1, len(batch_lrs) + 1), batch_lrs, color="#6639ba")
        ax.set(xlabel="batch")
    else:
        ax.plot(epochs, [r["lr"] for r in history], "o-", color="#6639ba", ms=3)
        ax.set(xlabel="epoch")
    ax.set(title="Learning rate", yscale="log")

    ax = axes[1][1]
    bits = 1 / np.log(2)
    ax.plot(epochs, train * bits, "o-", color="#1f5fa8", ms=3, label="train")
    ax.plot(epochs, valid * bits, "o-", color="#e07b00", ms=3, label="valid")
    if chance_bits is not None:
        ax.axhline(chance_bits, color="gray", ls="--", lw=1, label=f"chance {chance_bits:.2f}")
        ax.set_ylim(0, max(chance_bits * 1.1, float(np.nanmax(valid * bits, initial=0)) * 1.05))
    ax.set(title="Loss (bits per image)", xlabel="epoch")
    ax.legend(fontsize=8)

    from matplotlib.ticker import MaxNLocator

    for a in axes.flat:
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def curves_plot(history: Sequence[dict], path: str | Path, **kwargs: Any) -> Path:
    """Save :func:`curves_figure` (same keywords) as a PNG."""
    return _save(curves_figure(history, **kwargs), path)


# The picture grids of an interpretation: (file stem, title, caption).
GRIDS = (
    ("top_losses", "Top losses", "the pictures that cost the most loss, highest first"),
    ("confident_wrong", "Most confident mistakes", "per true class, the surest wrong answers"),
    ("confident_right", "Most confident correct", "per class, what the model finds most typical"),
    ("uncertain", "Most uncertain", "top probability nearest to chance: the model cannot decide"),
)


def grid_indices(interp: Interpretation, top: int = 16, per_class: int = 2) -> dict[str, list]:
    """The items each of :data:`GRIDS` shows: ``top`` top losses and most uncertain, and
    ``per_class`` most confident wrong and right pictures of every class (at most ``2 * top``
    of them: with many classes, the most confident ones)."""

    def by_class(correct: bool) -> list[int]:
        picked = interp.most_confident(correct=correct, per_class=per_class)
        idx = [int(i) for v in picked.values() for i in v]
        if len(idx) > 2 * top:  # many classes: keep the surest, still in class order
            conf = interp.confidence[idx]
            keep = set(torch.topk(conf, 2 * top).indices.tolist())
            idx = [i for j, i in enumerate(idx) if j in keep]
        return idx

    return {
        "top_losses": interp.top_losses(top).tolist(),
        "confident_wrong": by_class(False),
        "confident_right": by_class(True),
        "uncertain": interp.most_uncertain(top).tolist(),
    }


def write_interpretation_plots(
    interp: Interpretation, out: str | Path, *, top: int = 16, per_class: int = 2
) -> dict[str, Path]:
    """Save ``confusion.png`` and the four picture grids of :data:`GRIDS` into ``out``.

    Example:
        >>> write_interpretation_plots(interp, "plots")["top_losses"]
        PosixPath('plots/top_losses.png')
    """
    out = Path(out)
    written = {"confusion": confusion_plot(interp, out / "confusion.png")}
    chosen = grid_indices(interp, top, per_class)
    for stem, title, _ in GRIDS:
        written[stem] = prediction_grid(interp, chosen[stem], out / f"{stem}.png", title=title)
    return written
