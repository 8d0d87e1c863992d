"""Drawings of what the network sees (the results of :mod:`deepstart.interpret.vision`).

Each function saves one PNG and returns its path; matplotlib is imported only when a figure
is drawn. Panels are about 1.1 inches square, so 28x28 and 32x32 images stay readable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from deepstart.interpret.plots import _bare, _figures, _save, to_display
from deepstart.interpret.vision import HAND_KERNELS, VisionError

_PANEL = 1.1  # inches per image panel


def _grid(n: int, ncols: int, title: str, row_pad: float = 0.0):
    """A figure with ``n`` bare panels on ``ncols`` columns: ``(fig, flat axes)``."""
    plt = _figures()
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    height = nrows * (_PANEL + row_pad) + (0.5 if title else 0.1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * _PANEL + 0.2, height), squeeze=False)
    for ax in axes.flat:
        _bare(ax)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig, list(axes.flat)


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def kernel_grid(
    weights: torch.Tensor,
    path: str | Path,
    *,
    title: str = "first-layer kernels",
    max_kernels: int = 64,
    ncols: int = 8,
    labels: Sequence[str] | None = None,
) -> Path:
    """Save the first layer's kernels ``(O, I, kh, kw)`` as a grid of small images.

    Each kernel is min-max scaled on its own (so only its pattern shows, not its size). With
    3 input channels it is drawn in colour; otherwise the mean over input channels is drawn in
    grey — the mean is what the kernel does to a grey (equal-channel) input.

    Args:
        weights: e.g. :func:`~deepstart.interpret.vision.first_layer_weights`.
        path: the PNG to write.
        title: figure title.
        max_kernels: draw at most this many (the first ones).
        ncols: panels per row.
        labels: a caption per kernel (e.g. class names for logreg's templates).

    Example:
        >>> kernel_grid(first_layer_weights(model), "kernels.png")
    """
    w = weights.detach().to("cpu", torch.float32)[:max_kernels].numpy()
    fig, axes = _grid(len(w), ncols, title, row_pad=0.2 if labels else 0.0)
    for i, k in enumerate(w):
        if k.shape[0] == 3:
            axes[i].imshow(_minmax(k).transpose(1, 2, 0), interpolation="nearest")
        else:
            axes[i].imshow(_minmax(k.mean(0)), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if labels is not None and i < len(labels):
            axes[i].set_title(str(labels[i]), fontsize=8)
    return _save(fig, path)


def hand_kernels_figure(
    image: torch.Tensor,
    results: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    kernels: Mapping[str, torch.Tensor] = HAND_KERNELS,
    title: str = "what a 3x3 convolution does",
) -> Path:
    """Save one image and its convolution with each hand-made kernel.

    The top row shows each kernel with its numbers, the bottom row the input then each result
    (``results`` from :func:`~deepstart.interpret.vision.apply_kernels`), each scaled to its
    own range in grey.

    Example:
        >>> hand_kernels_figure(img, apply_kernels(img), "kernels.png")  # img (C, H, W) uint8
    """
    plt = _figures()
    names = list(results)
    ncols = len(names) + 1
    fig, axes = plt.subplots(
        2, ncols, figsize=(ncols * _PANEL + 0.2, 2 * _PANEL + 0.9), squeeze=False
    )
    for ax in axes.flat:
        _bare(ax)
    axes[0][0].text(0.5, 0.5, "kernel", ha="center", va="center", fontsize=9)
    axes[1][0].imshow(to_display(image.detach().cpu()), cmap="gray", vmin=0, vmax=255)
    axes[1][0].set_title("input", fontsize=8)
    for j, name in enumerate(names, start=1):
        axes[1][j].imshow(results[name].detach().cpu().numpy(), cmap="gray")
        axes[1][j].set_title(name, fontsize=7)
        if name in kernels:
            k = torch.as_tensor(kernels[name]).detach().cpu().numpy()
            lim = float(np.abs(k).max()) or 1.0
            axes[0][j].imshow(k, cmap="RdBu_r", vmin=-lim, vmax=lim)
            if k.size <= 25:  # numbers only fit in small kernels
                for (r, c), v in np.ndenumerate(k):
                    colour = "white" if abs(v) > 0.6 * lim else "black"  # readable on dark
                    axes[0][j].text(
                        c, r, f"{v:.2g}", ha="center", va="center", fontsize=6, color=colour
                    )
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def feature_map_grid(
    maps: torch.Tensor,
    path: str | Path,
    *,
    title: str = "feature maps",
    max_maps: int = 32,
    ncols: int = 8,
) -> Path:
    """Save the channels of one feature map ``(C', h, w)``, each on its own colour scale.

    Example:
        >>> feature_map_grid(feature_maps(model, x, "body.0"), "maps.png")
    """
    m = maps.detach().to("cpu", torch.float32)[:max_maps].numpy()
    fig, axes = _grid(len(m), ncols, title, row_pad=0.15)
    for i, a in enumerate(m):
        axes[i].imshow(a, cmap="viridis", interpolation="nearest")
        axes[i].set_title(str(i), fontsize=7)
    return _save(fig, path)


def filter_grid(
    images: torch.Tensor,
    path: str | Path,
    *,
    title: str = "what each filter responds to",
    labels: Sequence[str] | None = None,
    ncols: int = 8,
) -> Path:
    """Save images ``(n, C, H, W)`` in [0, 1] (e.g. from ``visualise_filters``) as a grid.

    Example:
        >>> filter_grid(visualise_filters(model, "body.3", range(16), mean=m, std=s), "f.png")
    """
    imgs = images.detach().to("cpu", torch.float32).clamp(0, 1)
    fig, axes = _grid(len(imgs), ncols, title, row_pad=0.15)
    for i, img in enumerate(imgs):
        a = img.numpy()
        if a.shape[0] == 3:
            axes[i].imshow(a.transpose(1, 2, 0))
        else:
            axes[i].imshow(a[0], cmap="gray", vmin=0, vmax=1)
        axes[i].set_title(str(labels[i]) if labels is not None else str(i), fontsize=7)
    return _save(fig, path)


def heatmap_grid(
    images: torch.Tensor,
    maps: torch.Tensor | Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    titles: Sequence[str] | None = None,
    title: str = "",
    cmap: str = "jet",
    alpha: float = 0.5,
) -> Path:
    """Save images ``(N, C, H, W)`` uint8 with heat maps ``(N, H, W)`` laid over them.

    ``maps`` is one tensor (one row of overlays) or a dict name -> tensor (a row of plain
    images, then one labelled row per method: saliency, SmoothGrad, Grad-CAM...). Each map is
    scaled from 0 to its own maximum.

    Args:
        images: the images as the user sees them (uint8).
        maps: heat maps, one per image, e.g. from ``grad_cam``.
        path: the PNG to write.
        titles: a caption per image (e.g. "circle (0.98)").
        title: figure title.
        cmap, alpha: colour map and opacity of the overlay.

    Example:
        >>> heatmap_grid(imgs, {"Grad-CAM": grad_cam(model, x)}, "cam.png")
    """
    rows = {"": maps} if isinstance(maps, torch.Tensor) else dict(maps)
    labelled = not isinstance(maps, torch.Tensor)
    n = len(images)
    nrows = len(rows) + labelled
    plt = _figures()
    fig, axes = plt.subplots(
        nrows,
        n,
        figsize=(n * _PANEL + (0.9 if labelled else 0.2), nrows * (_PANEL + 0.15) + 0.5),
        squeeze=False,
    )
    for ax in axes.flat:
        _bare(ax)
    shown = [to_display(img.detach().cpu()) for img in images]
    grey = images.shape[1] == 1
    if labelled:
        for j in range(n):
            axes[0][j].imshow(shown[j], cmap="gray", vmin=0, vmax=255)
        axes[0][0].set_ylabel("image", fontsize=8)
    for r, (name, m) in enumerate(rows.items(), start=int(labelled)):
        if len(m) != n:
            raise VisionError(f"{name or 'maps'}: {len(m)} heat maps for {n} images")
        for j in range(n):
            a = m[j].detach().to("cpu", torch.float32).numpy()
            axes[r][j].imshow(shown[j], cmap="gray" if grey else None, vmin=0, vmax=255)
            top = float(a.max())
            axes[r][j].imshow(a, cmap=cmap, alpha=alpha, vmin=0, vmax=top if top > 0 else 1)
        if name:
            axes[r][0].set_ylabel(name, fontsize=8)
    if titles is not None:
        for j, t in enumerate(titles[:n]):
            axes[0][j].set_title(str(t), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
