"""A picture of what an augmentation does: each row an original, then augmented versions.

Augmentation runs exactly as in training (normalised floats, the same ``Augment``), then the
batch is de-normalised to pixels for display. The drawing is the data layer's
(:func:`deepstart.data.show.augment_grid`, which ``data.show_batch(augment=...)`` shares);
this module adds what needs the augmentation presets: a preset name, and a PNG file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deepstart.augment import Augmentation, make_augment
from deepstart.data.dataset import Augment, ImageSet
from deepstart.data.show import augment_grid
from deepstart.interpret.plots import _save

if TYPE_CHECKING:
    from deepstart.figures import InlineFigure


def show_batch_figure(
    images: ImageSet,
    augment: str | Augmentation | dict | Augment,
    *,
    n: int = 16,
    per_row: int = 4,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    title: str = "",
) -> InlineFigure:
    """The figure :func:`show_batch` saves (it shows inline in a notebook)."""
    if mean is None or std is None:
        mean, std = images.mean_std()
    # An Augmentation is callable too, but unbound: it needs the mean/std first.
    bound = not isinstance(augment, (str, dict, Augmentation))
    aug = augment if bound else make_augment(augment, mean, std)
    return augment_grid(images, aug, mean, std, n=n, per_row=per_row, seed=seed, title=title)


def show_batch(
    images: ImageSet,
    augment: str | Augmentation | dict | Augment,
    path: str | Path,
    *,
    n: int = 16,
    per_row: int = 4,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    title: str = "",
) -> Path:
    """Save a PNG of ``n`` augmented samples: ``ceil(n / per_row)`` random images, each row
    the original and then ``per_row`` augmented versions of it.

    Args:
        images: where the pictures come from (e.g. ``data.train``).
        augment: a preset name, an :class:`~deepstart.augment.Augmentation`, or an
            ``Augment`` callable already bound to ``mean``/``std``.
        path: the PNG to write.
        mean, std: the normalisation augmentations see (default: ``images.mean_std()``).
        seed: picks the images and seeds the augmentations.

    Example:
        >>> show_batch(data.train, "photo", "augment.png", mean=data.mean, std=data.std)
    """
    fig = show_batch_figure(
        images, augment, n=n, per_row=per_row, mean=mean, std=std, seed=seed, title=title
    )
    return _save(fig, path)
