"""Deterministic image-batch transforms: affine matrices, one resampling, lighting, fixed views.

Pure functions of a float batch ``x`` ``(N, C, H, W)`` (normalised by ``mean``/``std``, or in
pixel units when those are None) and per-image parameters; no randomness here. They live in
the data layer because data sets are built with them too (affNIST warps MNIST digits), and
:mod:`deepstart.augment` draws their random parameters for training.

Coordinates are normalised (``[-1, 1]``, pixel centres, ``align_corners=False``); a matrix
``(N, 3, 3)`` maps *output* coordinates to *input* coordinates, as ``affine_grid`` wants.

Example:
    >>> theta = rotation_matrix(torch.tensor([90.0]), 8, 8)
    >>> warp(x, theta, mode="nearest")  # == torch.rot90(x, 1, dims=(2, 3))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from deepstart.errors import ConfigError

PADDINGS = ("reflection", "zeros", "border")
MODES = ("bilinear", "nearest")


def scale_matrix(
    sx: torch.Tensor, sy: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor
) -> torch.Tensor:
    """``(N, 3, 3)`` matrices ``u_in = (sx * u_out + tx, sy * v_out + ty)``.

    In normalised coordinates: ``sx = -1`` is a horizontal flip, ``sx = sy = 1/s`` a zoom in by
    ``s``, ``(sx, sy, tx, ty)`` = (width, height, centre) fractions a crop.
    """
    m = torch.zeros(len(sx), 3, 3, dtype=sx.dtype, device=sx.device)
    m[:, 0, 0], m[:, 1, 1], m[:, 2, 2] = sx, sy, 1.0
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def rotation_matrix(degrees: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, 3, 3)`` matrices that rotate an ``height x width`` image by ``degrees``
    counter-clockwise on screen, about its centre (a true rotation in pixels, also when the
    image is not square).

    Example:
        >>> theta = rotation_matrix(torch.tensor([90.0]), 8, 8)
        >>> warp(x, theta, mode="nearest")  # == torch.rot90(x, 1, dims=(2, 3))
    """
    a = torch.deg2rad(degrees)
    cos, sin = torch.cos(a), torch.sin(a)
    # Normalised x is pixels / (W/2), y is pixels / (H/2): conjugate the pixel rotation by that
    # per-axis scale. y points down, so this sign is counter-clockwise as seen.
    m = torch.zeros(len(degrees), 3, 3, dtype=degrees.dtype, device=degrees.device)
    m[:, 0, 0], m[:, 0, 1] = cos, -sin * (height / width)
    m[:, 1, 0], m[:, 1, 1] = sin * (width / height), cos
    m[:, 2, 2] = 1.0
    return m


def _pixel_stats(
    x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, C, 1, 1)`` mean and std of the normalisation; None means ``x`` is in pixels."""
    c = x.shape[1]
    m = torch.zeros(c) if mean is None else torch.as_tensor(mean, dtype=torch.float32)
    s = torch.ones(c) if std is None else torch.as_tensor(std, dtype=torch.float32)
    if m.numel() != c or s.numel() != c:
        raise ConfigError(f"mean/std have {m.numel()}/{s.numel()} channels, images have {c}")
    return m.to(x.device, x.dtype).view(1, c, 1, 1), s.to(x.device, x.dtype).view(1, c, 1, 1)


def _layout_of(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` stored channels-last when ``x`` was (the ops here return NCHW), so a
    channels-last pipeline stays so after a transform."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def warp(
    x: torch.Tensor,
    theta: torch.Tensor,
    *,
    mode: str = "bilinear",
    padding: str = "reflection",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Resample ``x`` ``(N, C, H, W)`` through per-image affine matrices ``theta``
    ``(N, 3, 3)`` or ``(N, 2, 3)`` that map output to input coordinates (normalised).

    ``padding`` fills what comes from outside the image: "reflection" mirrors it (photos),
    "border" repeats the edge, "zeros" is black — pixel 0, which in a normalised batch is
    ``-mean/std``, not 0 (0 there is the mean colour).

    Example:
        >>> warp(x, torch.eye(3).expand(len(x), 3, 3))  # the identity, up to float rounding
    """
    if mode not in MODES or padding not in PADDINGS:
        raise ConfigError(f"warp wants mode in {MODES} and padding in {PADDINGS}")
    theta = theta[:, :2].to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, H, W, 2)
    if padding == "zeros":
        # grid_sample pads with 0; shift so that 0 is black, sample, shift back. Exact, since
        # the interpolation weights of each output pixel sum to 1.
        m, s = _pixel_stats(x, mean, std)
        black = -m / s  # (1, C, 1, 1)
        out = F.grid_sample(x - black, grid, mode=mode, padding_mode="zeros", align_corners=False)
        out.add_(black)
    else:
        out = F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)
    return _layout_of(x, out)


def adjust_lighting(
    x: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Change brightness and contrast of each image, in pixel units.

    With ``p = x * std + mean`` the pixel value in [0, 1] and ``m`` the image's mean pixel,
    ``p' = clamp((p - m) * contrast + m + brightness, 0, 1)``, then normalised back: brightness
    adds to every pixel (so the mean pixel rises by exactly ``brightness`` unless clamped) and
    contrast scales the spread about the mean (the mean stays).

    Args:
        x: ``(N, C, H, W)`` float batch, normalised by ``mean``/``std`` (None: pixel units).
        brightness: ``(N,)`` additive, in pixel units (0.1 is +10% of full scale).
        contrast: ``(N,)`` factor (1 keeps the image).

    Example:
        >>> adjust_lighting(x, torch.full((n,), 0.1), torch.ones(n), mean=mean, std=std)
    """
    m, s = _pixel_stats(x, mean, std)  # (1, C, 1, 1)
    b = brightness.to(x.device, x.dtype).view(-1, 1, 1, 1)
    c = contrast.to(x.device, x.dtype).view(-1, 1, 1, 1)
    # The mean pixel of each image, (N, 1, 1, 1), from per-channel means (no pixel copy).
    centre = (x.mean(dim=(2, 3), keepdim=True) * s + m).mean(dim=1, keepdim=True)
    # Substituting p = x * s + m, the formula is one multiply-add per pixel in normalised
    # units, x' = x * c + offset, clamped to where pixels 0 and 1 land.
    offset = (m * (c - 1) + centre * (1 - c) + b) / s  # (N, C, 1, 1)
    out = torch.addcmul(offset, x, c).clamp_(-m / s, (1 - m) / s)
    return _layout_of(x, out)


class View(NamedTuple):
    """One fixed test-time view: mirrored or not, shifted by ``(dx, dy)`` whole pixels,
    and its weight in the mix (a view list's weights sum to 1)."""

    mirror: bool
    dx: int
    dy: int
    weight: float


def apply_view(
    x: torch.Tensor,
    view: View,
    *,
    padding: str = "reflection",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` seen through ``view``: mirrored exactly, shifted by whole
    pixels with ``padding`` for what comes in from outside (as training's shifts were).

    Example:
        >>> apply_view(x, View(True, 0, 0, 0.5)).equal(x.flip(3))
        True
    """
    if view.mirror:
        x = x.flip(3)
    if view.dx or view.dy:
        n, _, h, w = x.shape
        one = torch.ones(n, device=x.device)
        theta = scale_matrix(one, one, one * (2 * view.dx / w), one * (2 * view.dy / h))
        x = warp(x, theta, mode="nearest", padding=padding, mean=mean, std=std)
    return x
