"""Pictures of data and training, drawn with matplotlib (imported only when a plot is made)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deepstart.data.dataset import ImageSet


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def to_display(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` uint8 -> ``(H, W)`` or ``(H, W, 3)`` array for imshow."""
    a = image.cpu().numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


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
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(idx):
                ax.imshow(to_display(images.images[idx[j]]), cmap="gray", vmin=0, vmax=255)
        axes[c][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
