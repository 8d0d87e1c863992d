"""A picture of what an augmentation does: each row an original, then augmented versions.

Augmentation runs exactly as in training (normalised floats, the same ``Augment``), then the
batch is de-normalised to pixels for display. matplotlib is imported only when drawing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from deepstart.augment import Augmentation, make_augment
from deepstart.data.dataset import Augment, ImageSet
from deepstart.interpret.plots import _bare, _pyplot, _save, to_display

_PANEL = 1.1  # inches per image panel


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
    if mean is None or std is None:
        mean, std = images.mean_std()
    # An Augmentation is callable too, but unbound: it needs the mean/std first.
    bound = not isinstance(augment, (str, dict, Augmentation))
    aug = augment if bound else make_augment(augment, mean, std)
    rows = max(1, min(math.ceil(n / per_row), len(images)))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=gen)[:rows]
    c = images.channels
    m = torch.as_tensor(list(mean), dtype=torch.float32).view(1, c, 1, 1)
    s = torch.as_tensor(list(std), dtype=torch.float32).view(1, c, 1, 1)
    original = images.images[idx]  # (R, C, H, W) uint8
    x = original.float() / 255.0
    x = (x.repeat_interleave(per_row, dim=0) - m) / s  # (R * per_row, C, H, W) normalised
    if aug is not None:
        x = aug(x, gen)
    shown = ((x * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)
    shown = shown.view(rows, per_row, *shown.shape[1:])  # (R, per_row, C, H, W)

    plt = _pyplot()
    grey = {"cmap": "gray", "vmin": 0, "vmax": 255} if c == 1 else {}
    cols = per_row + 1
    height = rows * _PANEL + (0.6 if title else 0.3)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * _PANEL + 0.2, height), squeeze=False)
    for r in range(rows):
        label = images.classes[int(images.labels[idx[r]])]
        axes[r][0].imshow(to_display(original[r]), **grey)
        axes[r][0].set_title(f"{label}" if r else f"original: {label}", fontsize=7)
        for j in range(per_row):
            axes[r][j + 1].imshow(to_display(shown[r, j]), **grey)
        for ax in axes[r]:
            _bare(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
