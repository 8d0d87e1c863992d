"""Pictures and tables of a dataset for notebooks (:class:`DatasetDisplay`, the display side
of ``Dataset``): grids of images with their labels, a
dataset's ``repr`` and its HTML card. matplotlib is imported only when a figure is drawn.

The drawing here is the data layer's, so ``data.show_batch()`` needs nothing above it; the
interpretation grids (``interp.plot_top_losses``), ``learn.show_results()`` and the
augmentation picture reuse :func:`image_grid`.

Example:
    >>> data.show_batch(n=8)  # the last expression of a notebook cell: one picture
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepstart.errors import DataError

if TYPE_CHECKING:
    from deepstart.data.dataset import Augment, Dataset, ImageSet
    from deepstart.figures import InlineFigure

PANEL = 1.1  # inches per picture
RIGHT, WRONG = "#1a7f37", "#cf222e"  # green and red titles: prediction right / wrong


def to_display(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` uint8 -> ``(H, W)`` or ``(H, W, 3)`` array for imshow."""
    a = image.cpu().numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


class ImageSetDisplay:
    """What ``repr(images)`` says of an :class:`~deepstart.data.dataset.ImageSet`: sizes only."""

    def __repr__(self) -> str:
        return imageset_repr(self)  # type: ignore[arg-type]


class DatasetDisplay:
    """The notebook side of a :class:`~deepstart.data.dataset.Dataset`: a one-line ``repr``,
    an HTML card (``_repr_html_``) and :meth:`show_batch`."""

    def show_batch(self, n: int = 16, *, split: str = "train", **kwargs: Any) -> InlineFigure:
        """``n`` random pictures of ``split`` with their labels, as a figure that shows inline
        in a notebook (no ``%matplotlib`` needed); see :func:`show_batch` (``augment=``,
        ``ncols=``, ``seed=``).

        Example:
            >>> data.show_batch(n=8, split="valid")
        """
        return show_batch(self, n, split=split, **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return dataset_repr(self)  # type: ignore[arg-type]

    def _repr_html_(self) -> str:
        return dataset_html(self)  # type: ignore[arg-type]


def image_grid(
    images: Sequence[torch.Tensor] | torch.Tensor,
    titles: Sequence[str] = (),
    colors: Sequence[str] = (),
    *,
    ncols: int = 8,
    title: str = "",
    panel: float = PANEL,
    title_lines: int = 1,
) -> InlineFigure:
    """A figure of ``(C, H, W)`` uint8 pictures, ``ncols`` a row, each with an optional
    title (and title colour); an empty list gives one panel saying "none".

    ``title_lines`` is how many lines the titles take (room is made for them).

    Example:
        >>> image_grid(data.train.images[:4], ["a", "b", "c", "d"], ncols=2)
    """
    from deepstart.figures import bare, subplots

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    text_h = 0.15 * title_lines + 0.1 if titles else 0.05
    height = nrows * (panel + text_h) + (0.45 if title else 0.1)
    fig, axes = subplots(nrows, ncols, figsize=(ncols * panel + 0.2, height))
    for j, ax in enumerate(axes.flat):
        bare(ax)
        if j >= n:
            ax.set_visible(False)
            continue
        img = images[j]
        grey = {"cmap": "gray", "vmin": 0, "vmax": 255} if img.shape[0] == 1 else {}
        ax.imshow(to_display(img), **grey)
        if j < len(titles):
            color = colors[j] if j < len(colors) else "black"
            ax.set_title(titles[j], fontsize=7, color=color)
    if n == 0:
        axes.flat[0].set_visible(True)
        axes.flat[0].text(0.5, 0.5, "none", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def augmented(
    images: ImageSet,
    augment: Augment | None,
    mean: Sequence[float],
    std: Sequence[float],
    index: torch.Tensor,
    seed: int = 0,
) -> torch.Tensor:
    """The pictures at ``index`` as a training batch sees them after ``augment`` (a bound
    ``(x, generator) -> x``, e.g. ``make_augment("photo", data.mean, data.std)``), back in
    ``(N, C, H, W)`` uint8 pixels: normalised, augmented, de-normalised."""
    x = images.images[index]
    if augment is None:
        return x
    c = images.channels
    m = torch.as_tensor(list(mean), dtype=torch.float32).view(1, c, 1, 1)
    s = torch.as_tensor(list(std), dtype=torch.float32).view(1, c, 1, 1)
    x = augment((x.float() / 255.0 - m) / s, torch.Generator().manual_seed(seed))
    return ((x * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)


def show_batch(
    data: Dataset,
    n: int = 16,
    *,
    split: str = "train",
    ncols: int = 8,
    seed: int = 0,
    augment: Augment | None = None,
) -> InlineFigure:
    """``n`` random pictures of ``split`` with their labels (see :meth:`Dataset.show_batch`)."""
    images = getattr(data, split, None) if split in ("train", "valid", "test") else None
    if images is None:
        raise DataError(f"{data.name} has no {split!r} split; use train, valid or test")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=gen)[: max(n, 0)]
    shown = augmented(images, augment, data.mean, data.std, idx, seed)
    titles = [images.classes[int(images.labels[i])] for i in idx]
    what = f"{data.name} {split}" + (", augmented" if augment is not None else "")
    return image_grid(list(shown), titles, ncols=ncols, title=f"{what}: {len(idx)} pictures")


def augment_grid(
    images: ImageSet,
    augment: Augment | None,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    n: int = 16,
    per_row: int = 4,
    seed: int = 0,
    title: str = "",
) -> InlineFigure:
    """Each row a random original, then ``per_row`` augmented versions of it
    (``ceil(n / per_row)`` rows); the picture behind ``deepstart augment``."""
    from deepstart.figures import bare, subplots

    rows = max(1, min(math.ceil(n / per_row), len(images)))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=gen)[:rows]
    # each original repeated per_row times, augmented from one generator (seeded by seed)
    shown = augmented(images, augment, mean, std, idx.repeat_interleave(per_row), seed)
    shown = shown.view(rows, per_row, *shown.shape[1:])  # (R, per_row, C, H, W)
    grey = {"cmap": "gray", "vmin": 0, "vmax": 255} if images.channels == 1 else {}
    cols = per_row + 1
    height = rows * PANEL + (0.6 if title else 0.3)
    fig, axes = subplots(rows, cols, figsize=(cols * PANEL + 0.2, height))
    for r in range(rows):
        label = images.classes[int(images.labels[idx[r]])]
        axes[r][0].imshow(to_display(images.images[idx[r]]), **grey)
        axes[r][0].set_title(f"{label}" if r else f"original: {label}", fontsize=7)
        for j in range(per_row):
            axes[r][j + 1].imshow(to_display(shown[r, j]), **grey)
        for ax in axes[r]:
            bare(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _shape(images: ImageSet) -> str:
    c, (h, w) = images.channels, images.size
    return f"{c}x{h}x{w} {str(images.images.dtype).removeprefix('torch.')}"


def imageset_repr(images: ImageSet) -> str:
    """``ImageSet(300 images 1x32x32 uint8, 3 classes)``: no pixel values."""
    return f"ImageSet({len(images)} images {_shape(images)}, {len(images.classes)} classes)"


def _classes(classes: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(classes[:limit])
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > limit else "")


def dataset_repr(data: Dataset) -> str:
    """``Dataset('shapes', 3 classes: circle, square, triangle; train 270, valid 30,
    test 300; images 1x32x32 uint8)``: one line, no pixel values."""
    named = (("train", data.train), ("valid", data.valid), ("test", data.test))
    splits = ", ".join(f"{k} {len(v)}" for k, v in named if v is not None)
    return (
        f"Dataset({data.name!r}, {data.num_classes} classes: {_classes(data.classes)}; "
        f"{splits}; images {_shape(data.train)})"
    )


def dataset_html(data: Dataset, per_class: int = 1, max_classes: int = 12) -> str:
    """A dataset's card: a table of its splits (pictures per class in each) and a strip of
    ``per_class`` training pictures of up to ``max_classes`` classes, embedded as data URIs."""
    from deepstart.display import html_table, img_tag

    named = (("train", data.train), ("valid", data.valid), ("test", data.test))
    splits = [(k, v) for k, v in named if v is not None]
    counts = {k: v.class_counts() for k, v in splits}
    shown = data.classes[:max_classes]
    rows = [[name, *(counts[k][c] for k, _ in splits)] for c, name in enumerate(shown)]
    rows.append(["all", *(len(v) for _, v in splits)])
    if len(data.classes) > max_classes:
        rows.insert(-1, [f"... {len(data.classes) - max_classes} more", *("" for _ in splits)])
    table = html_table(["class", *(k for k, _ in splits)], rows)
    strip = []
    for c, name in enumerate(shown):
        idx = torch.nonzero(data.train.labels == c).flatten()[:per_class]
        strip += [img_tag(data.train.images[int(i)], 48, title=name) for i in idx]
    mean = ", ".join(f"{m:.3f}" for m in data.mean)
    std = ", ".join(f"{s:.3f}" for s in data.std)
    notes = "".join(f"<br><i>{html.escape(n)}</i>" for n in data.notes)
    return (
        f"<div><b>Dataset {html.escape(data.name)}</b>: {data.num_classes} classes, images "
        f"{html.escape(_shape(data.train))}; mean ({mean}), std ({std}) in [0, 1] units"
        f"{notes}{table}<div>{''.join(strip)}</div></div>"
    )
