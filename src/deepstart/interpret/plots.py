"""Pictures of data and training, drawn with matplotlib (imported only when a plot is made)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from deepstart.data.dataset import ImageSet, to_display

if TYPE_CHECKING:
    from deepstart.interpret.analysis import Interpretation


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def sample_grid(
    images: ImageSet, path: str | Path, *, per_class: int = 8, seed: int = 0, title: str = ""
) -> Path:
    """Save a PNG with one row per class and ``per_class`` random samples of it.

    Example:
        >>> sample_grid(data.train, "samples.png")
    """
    plt = _pyplot()
    k = len(images.classes)
    gen = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(
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
    return _save(fig, path)


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _save(fig, path: str | Path, dpi: int = 100) -> Path:
    """Lay out, write and close a figure (an open figure would leak memory)."""
    plt = _pyplot()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def prediction_grid(
    interp: Interpretation,
    indices: Sequence[int] | torch.Tensor,
    path: str | Path,
    *,
    title: str = "",
    ncols: int = 8,
) -> Path:
    """Save the pictures at ``indices`` with "predicted / true" and "probability, loss" over
    each; green titles are right, red ones wrong (fastai's ``plot_top_losses`` layout).

    Example:
        >>> prediction_grid(interp, interp.top_losses(16), "top_losses.png", title="Top losses")
    """
    plt = _pyplot()
    indices = [int(i) for i in indices]
    n = max(len(indices), 1)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(ncols * 1.45 + 0.2, nrows * 1.95 + 0.6), squeeze=False
    )
    for j, ax in enumerate(axes.flat):
        _bare(ax)
        if j >= len(indices):
            ax.set_visible(False)
            continue
        it = interp.item(indices[j])
        ax.imshow(to_display(interp.images.images[it["index"]]), cmap="gray", vmin=0, vmax=255)
        ok = it["pred"] == it["true"]
        ax.set_title(
            f"{it['pred']} / {it['true']}\np {it['prob']:.2f}  loss {it['loss']:.2f}",
            fontsize=7,
            color="#1a7f37" if ok else "#cf222e",
        )
    if not indices:
        axes.flat[0].set_visible(True)
        axes.flat[0].text(0.5, 0.5, "none", ha="center", va="center")
    fig.suptitle(
        (title + "\n" if title else "") + "predicted / true, probability of the prediction, loss",
        fontsize=9,
    )
    return _save(fig, path)


def confusion_plot(interp: Interpretation, path: str | Path) -> Path:
    """Save the confusion matrix twice, side by side: counts, and rows normalised to 1 (the
    diagonal is then each class's recall). Rows are true classes, columns predictions."""
    plt = _pyplot()
    classes = interp.classes
    k = len(classes)
    counts = interp.confusion_matrix().numpy()
    norm = interp.confusion_matrix(normalise=True).numpy()
    side = min(max(3.2, 0.42 * k + 1.6), 12)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 0.8, side + 0.3))
    for ax, mat, label in ((axes[0], counts, "counts"), (axes[1], norm, "row-normalised")):
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
    return _save(fig, path)


def _smooth(values: np.ndarray, beta: float | None = None) -> np.ndarray:
    """Debiased exponential moving average (what fastai and TensorBoard show). The default
    ``beta`` averages over about 1/25 of the curve, so a short run is not drawn late."""
    if beta is None:
        beta = 1 - 1 / min(max(len(values) / 25, 1), 50)
    out, avg = np.empty_like(values, dtype=float), 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def curves_plot(
    history: Sequence[dict],
    path: str | Path,
    *,
    batch_losses: Sequence[float] = (),
    batch_lrs: Sequence[float] = (),
    per_epoch: int = 0,
    chance_bits: float | None = None,
    events: Sequence[dict] = (),
) -> Path:
    """Save the training curves: loss per batch and per epoch, validation accuracy, the LR
    schedule, and the losses in bits against the chance level ``log2(K)``.

    ``history`` holds metrics.jsonl's epoch rows; ``per_epoch`` is batches per epoch (to put
    epoch rows on the batch axis); ``events`` are divergence rows, drawn as red lines.
    """
    plt = _pyplot()
    epochs = np.array([r["epoch"] for r in history], dtype=float)
    train = np.array([r["train_loss"] for r in history], dtype=float)
    valid = np.array([r["valid_loss"] for r in history], dtype=float)
    acc = np.array([r["accuracy"] for r in history], dtype=float)
    on_steps = bool(per_epoch) and len(batch_losses) > 0
    x_epoch = epochs * per_epoch if on_steps else epochs
    x_label = "batch" if on_steps else "epoch"
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))

    ax = axes[0][0]
    if on_steps:
        steps = np.arange(1, len(batch_losses) + 1)
        losses = np.asarray(batch_losses, dtype=float)
        ax.plot(steps, losses, color="#8fb4d9", lw=0.6, alpha=0.6, label="batch")
        ax.plot(steps, _smooth(losses), color="#1f5fa8", lw=1.2, label="batch, smoothed")
    ax.plot(x_epoch, train, "o-", color="#1f5fa8", ms=3, label="train (epoch mean)")
    ax.plot(x_epoch, valid, "o-", color="#e07b00", ms=3, label="valid")
    for ev in events:
        if on_steps and ev.get("epoch") is not None:
            # a validation blow-up has no batch: it happened at the end of its epoch
            batch = ev["batch"] if ev.get("batch") is not None else per_epoch
            ax.axvline((ev["epoch"] - 1) * per_epoch + batch, color="#cf222e", lw=0.8)
    ax.set(title="Loss (nats)", xlabel=x_label)
    ax.legend(fontsize=8)

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
    return _save(fig, path)


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
