"""AffNIST, generated: MNIST digits padded to 40×40 and moved by random affine transforms.

Tieleman's affNIST (https://www.cs.toronto.edu/~tijmen/affNIST/) pads each 28×28 MNIST digit
with 6 background pixels to 40×40 and applies "reasonable" random affine transforms — 32
per original — with "significant translations", so that a model must learn that a digit in
the upper right corner means the same as one in the lower left. Its test set is MNIST's test
set transformed the same way; its "just centred" version is the plain 6-pixel pad.

This module builds the same kind of data from the MNIST files, on the fly, with batched tensor
operations (one ``grid_sample`` per chunk, through :func:`deepstart.data.transforms.warp`):

- rotation uniform in ±20°, shear uniform in ±0.2 (``x += shear * y``), horizontal and
  vertical scale each uniform in 0.8–1.2 (independently), composed as rotate · shear ·
  scale about the frame's centre. These are the ranges the affNIST page gives as we recall
  it (the stored copy we could search shows the 40×40 frame, the 6-pixel pad and the 32
  copies, not the ranges); see :class:`AffineRanges` to change them.
- then a translation drawn uniformly among those that keep the transformed digit's bounding
  box at least ``margin`` pixels inside the frame — so no ink is ever cut off.

The train (and valid) splits are ``copies`` transformed versions of each original; the test
split is MNIST's test set *untransformed*, padded to 40×40: centred (the correct preparation,
which is how the notes this project grew from scored 99.22%) or, to reproduce their mistake,
off-centre (``test_pad="corner"``) or with a grey frame (``test_pad_value``).

Example:
    >>> train, valid, test = load_affnist(data_dir="../shared/data/mnist", copies=4)
    >>> train.images.shape, test.images.shape
    (torch.Size([216004, 1, 40, 40]), torch.Size([10000, 1, 40, 40]))
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from deepstart.cache import atomic_dir, cache_root
from deepstart.data.dataset import DataError, ImageSet
from deepstart.data.transforms import warp

SIZE = 40  # affNIST's frame, pixels
DEFAULT_COPIES = 4  # measured against 1 and 2 copies: docs/benchmarks.md (AffNIST)
CHUNK = 8192  # images warped at a time (8192 x 40 x 40 float32 = 52 MB)
CACHE_VERSION = 1  # bump when the generator's output changes

# Where the 28×28 digit goes in the 40×40 test frame: (top, left) padding in pixels.
TEST_PADS = {
    "centre": (6, 6),
    "center": (6, 6),
    "corner": (0, 0),  # the whole 12-pixel pad on the right and the bottom
    "top_left": (0, 0),
    "top_right": (0, 12),
    "bottom_left": (12, 0),
    "bottom_right": (12, 12),
}


@dataclass(frozen=True)
class AffineRanges:
    """The random transform of each copy, each parameter uniform in its range.

    Attributes:
        degrees: rotation in ``[-degrees, degrees]``, counter-clockwise on screen.
        shear: horizontal shear ``x += shear * y`` in ``[-shear, shear]``.
        scale: horizontal and vertical scale, each drawn independently in this range.
        margin: pixels kept free between the transformed digit's bounding box and the frame.
        translate: move each digit to a random place in the frame (affNIST). False keeps it
            centred (moved only as far as needed to stay inside): "affine-jittered" digits
            without the big translations.
    """

    degrees: float = 20.0
    shear: float = 0.2
    scale: tuple[float, float] = (0.8, 1.2)
    margin: float = 1.0
    translate: bool = True

    def __post_init__(self) -> None:
        if self.degrees < 0 or self.shear < 0 or self.margin < 0:
            raise DataError("AffineRanges: degrees, shear and margin must be >= 0")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise DataError(f"AffineRanges: scale must satisfy 0 < lo <= hi, got {self.scale}")


def pad_digits(
    images: torch.Tensor, size: int = SIZE, where: str = "centre", value: int = 0
) -> torch.Tensor:
    """Pad ``(N, C, h, w)`` uint8 images to ``size × size``.

    Args:
        images: the digits, e.g. MNIST's ``(N, 1, 28, 28)``.
        size: the frame, pixels.
        where: "centre" (affNIST's "just centred": 6 pixels each side for 28 in 40) or
            "corner", "top_left", "top_right", "bottom_left", "bottom_right" (off-centre: the
            mistake this module helps reproduce).
        value: the pixel value of the pad; 0 is MNIST's black background.

    Example:
        >>> pad_digits(torch.ones(2, 1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([2, 1, 40, 40])
    """
    h, w = images.shape[2:]
    if h > size or w > size:
        raise DataError(f"cannot pad {h}×{w} images to {size}×{size}")
    if where not in TEST_PADS:
        raise DataError(f"unknown pad {where!r}; use one of {', '.join(TEST_PADS)}")
    if not 0 <= int(value) <= 255:
        raise DataError(f"pad value must be in 0..255, got {value}")
    dy, dx = size - h, size - w
    top, left = TEST_PADS[where]
    if (dy, dx) != (12, 12):  # the table is for 28 in 40; scale it to other sizes
        top, left = round(top / 12 * dy), round(left / 12 * dx)
    out = torch.full(
        (images.shape[0], images.shape[1], size, size), int(value), dtype=torch.uint8
    ).to(images.device)
    out[:, :, top : top + h, left : left + w] = images
    return out


def _bounding_boxes(images: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` float ``(x0, y0, x1, y1)``: the pixel edges around each image's ink,
    relative to the frame's centre, in pixels (an empty image gives a point at the centre)."""
    n, _, h, w = images.shape
    ink = images.amax(dim=1) > 0  # (N, H, W)
    cols, rows = ink.any(dim=1), ink.any(dim=2)  # (N, W), (N, H)
    xs = torch.arange(w, device=images.device).expand(n, w)
    ys = torch.arange(h, device=images.device).expand(n, h)
    big = max(h, w) + 1
    x0 = torch.where(cols, xs, big).amin(1).float()
    x1 = torch.where(cols, xs, -1).amax(1).float() + 1  # edge after the last ink column
    y0 = torch.where(rows, ys, big).amin(1).float()
    y1 = torch.where(rows, ys, -1).amax(1).float() + 1
    empty = ~cols.any(1)
    box = torch.stack([x0 - w / 2, y0 - h / 2, x1 - w / 2, y1 - h / 2], dim=1)
    return torch.where(empty[:, None], torch.zeros_like(box), box)


def sample_transforms(
    boxes: torch.Tensor, gen: torch.Generator, ranges: AffineRanges, size: int = SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one affine transform per bounding box.

    Args:
        boxes: ``(N, 4)`` ``(x0, y0, x1, y1)`` ink boxes about the frame centre, pixels.
        gen: the random source (CPU generator).
        ranges: the parameter ranges.
        size: the frame, pixels.

    Returns:
        ``(linear, shift)``: ``(N, 2, 2)`` matrices and ``(N, 2)`` translations in pixels,
        mapping a point ``p`` of the padded digit (about the centre, ``(x, y)``, y down) to
        ``linear @ p + shift`` in the output frame.

    Example:
        >>> lin, t = sample_transforms(torch.zeros(3, 4), torch.Generator().manual_seed(0),
        ...                            AffineRanges())
    """
    n = len(boxes)

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo

    a = torch.deg2rad(u(-ranges.degrees, ranges.degrees))
    sh = u(-ranges.shear, ranges.shear)
    sx, sy = u(*ranges.scale), u(*ranges.scale)
    cos, sin = torch.cos(a), torch.sin(a)
    # rotate · shear · scale. With y pointing down, [[cos, sin], [-sin, cos]] turns the
    # picture counter-clockwise as seen.
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    shear = torch.eye(2, dtype=torch.float64).repeat(n, 1, 1)
    shear[:, 0, 1] = sh
    scale = torch.diag_embed(torch.stack([sx, sy], -1))
    linear = rot @ shear @ scale  # (N, 2, 2)
    # Where the box's corners land; the translation keeps them inside the frame.
    b = boxes.to(torch.float64)
    corners = torch.stack(
        [b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], dim=1
    )  # (N, 4, 2)
    moved = corners @ linear.transpose(1, 2)  # (N, 4, 2)
    lo, hi = moved.amin(1), moved.amax(1)  # (N, 2) each
    half = size / 2 - ranges.margin
    t_lo, t_hi = -half - lo, half - hi  # allowed translation range per axis
    # A box too big to fit even centred (not possible with the default ranges) is centred.
    fits = t_lo <= t_hi
    mid = (t_lo + t_hi) / 2
    r = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    if ranges.translate:
        shift = torch.where(fits, t_lo + r * (t_hi - t_lo), mid)
    else:  # the smallest move that keeps the box inside (none, with the default ranges)
        shift = torch.where(fits, torch.zeros_like(mid).clamp(t_lo, t_hi), mid)
    return linear, shift


def transform_digits(
    images: torch.Tensor,
    copies: int,
    seed: int = 0,
    ranges: AffineRanges | None = None,
    size: int = SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``copies`` randomly transformed versions of each digit, in a ``size × size`` frame.

    Deterministic: the same images, copies, seed and ranges give the same bytes (the random
    draws are float64 from a CPU generator, so they are the same on every device).

    Args:
        images: ``(N, 1, h, w)`` uint8 digits on black, e.g. MNIST's 28×28.
        copies: versions per digit.
        seed: seeds the transforms.
        ranges: the transform ranges (default: affNIST's).
        size: the output frame, pixels.

    Returns:
        ``(out, index)``: ``(N * copies, 1, size, size)`` uint8 images, copy-major (all
        digits' first copies, then their second ...), and ``(N * copies,)`` the index of each
        one's original, to take labels with.

    Example:
        >>> out, idx = transform_digits(mnist_train.images, copies=4, seed=0)
        >>> labels = mnist_train.labels[idx]
    """
    if copies < 1:
        raise DataError(f"copies must be at least 1, got {copies}")
    ranges = ranges or AffineRanges()
    padded = pad_digits(images, size)  # (N, C, S, S), digit centred
    boxes = _bounding_boxes(padded).cpu()
    n = len(images)
    gen = torch.Generator().manual_seed(int(seed))
    out = torch.empty((n * copies, images.shape[1], size, size), dtype=torch.uint8)
    for k in range(copies):
        linear, shift = sample_transforms(boxes, gen, ranges, size)
        # warp wants output -> input, normalised: p_in = L^-1 (p_out - t). For a square
        # frame the pixel -> normalised scale (2 / size) is the same on both axes, so only
        # the translation changes units.
        inv = torch.linalg.inv(linear)  # (N, 2, 2)
        theta = torch.zeros(n, 3, 3, dtype=torch.float64)
        theta[:, :2, :2] = inv
        theta[:, :2, 2] = -(inv @ shift.unsqueeze(-1)).squeeze(-1) * (2 / size)
        theta[:, 2, 2] = 1.0
        theta = theta.to(torch.float32)
        for start in range(0, n, CHUNK):
            x = padded[start : start + CHUNK].to(torch.float32)  # pixel units, 0 = black
            y = warp(x, theta[start : start + CHUNK], mode="bilinear", padding="zeros")
            out[k * n + start : k * n + start + len(x)] = y.round().clamp(0, 255).to(torch.uint8)
    index = torch.arange(n).repeat(copies)
    return out, index


def load_affnist(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    copies: int = DEFAULT_COPIES,
    seed: int = 0,
    valid_pct: float = 0.1,
    test_pad: str = "centre",
    test_pad_value: int = 0,
    degrees: float = 20.0,
    shear: float = 0.2,
    scale: tuple[float, float] = (0.8, 1.2),
    translate: bool = True,
    cache: bool = True,
) -> tuple[ImageSet, ImageSet | None, ImageSet]:
    """Generate affNIST-style train and valid splits from MNIST, and a padded MNIST test.

    Args:
        data_dir: where MNIST's IDX files are (see :func:`deepstart.data.mnist.load_mnist`).
        download: fetch MNIST into the cache when missing.
        copies: transformed versions of each training digit (affNIST made 32).
        seed: seeds the valid hold-out and the transforms.
        valid_pct: share of MNIST's training *originals* held out (with their copies) for
            validation, so no copy of a valid digit is trained on; 0 gives no valid split.
        test_pad: where the test digits sit in the 40×40 frame: "centre" (correct) or an
            off-centre pad such as "corner" (the whole pad on the right and bottom).
        test_pad_value: the test pad's pixel value (0, black, is correct; e.g. 33 is what
            padding a *normalised* image with 0 amounts to).
        degrees, shear, scale, translate: the transforms (see :class:`AffineRanges`).
        cache: keep the generated images in the data cache (``cache_root()/affnist``, keyed
            by a hash of the originals and every setting), so the next load reads them
            instead of warping again.

    Returns:
        ``(train, valid or None, test)`` ImageSets of ``(N, 1, 40, 40)`` uint8.

    Example:
        >>> train, valid, test = load_affnist(copies=2, test_pad="corner")
    """
    from deepstart.data.mnist import load_mnist

    mnist_train, mnist_test = load_mnist("mnist", data_dir=data_dir, download=download)
    ranges = AffineRanges(
        degrees=float(degrees), shear=float(shear), scale=_pair(scale), translate=bool(translate)
    )
    copies = int(copies)
    valid = None
    if valid_pct > 0:
        mnist_train, mnist_valid = mnist_train.split(valid_pct, seed)
        valid = _transformed(mnist_valid, copies, seed + 1, ranges, cache)
    train = _transformed(mnist_train, copies, seed, ranges, cache)
    test = ImageSet(
        pad_digits(mnist_test.images, SIZE, test_pad, test_pad_value),
        mnist_test.labels,
        list(mnist_test.classes),
    )
    return train, valid, test


def _transformed(
    s: ImageSet, copies: int, seed: int, ranges: AffineRanges, cache: bool
) -> ImageSet:
    """``copies`` transformed versions of ``s``, from the cache when they were made before."""
    index = torch.arange(len(s)).repeat(copies)
    labels = s.labels[index]
    folder = _cache_dir(s.images, copies, seed, ranges) if cache else None
    if folder is not None:
        try:
            # allow_pickle=False: a cache file can only ever be plain numbers.
            images = np.load(folder / "images.npy", allow_pickle=False)
            if images.shape == (len(index), s.channels, SIZE, SIZE) and images.dtype == np.uint8:
                return ImageSet(torch.from_numpy(images), labels, list(s.classes))
        except (OSError, ValueError):
            pass  # absent or broken: generate again
    images_t, _ = transform_digits(s.images, copies, seed, ranges)
    if folder is not None:
        try:
            with atomic_dir(folder, replace=True) as tmp:
                np.save(tmp / "images.npy", images_t.numpy(), allow_pickle=False)
        except OSError:
            pass  # a read-only or full cache costs time, not correctness
    return ImageSet(images_t, labels, list(s.classes))


def _cache_dir(images: torch.Tensor, copies: int, seed: int, ranges: AffineRanges) -> Path:
    """``cache_root()/affnist/<key>``: the key hashes the originals' bytes and every setting."""
    h = hashlib.sha256()
    params = {"version": CACHE_VERSION, "copies": copies, "seed": seed, **asdict(ranges)}
    h.update(json.dumps(params, sort_keys=True).encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(images.contiguous().cpu().numpy().tobytes())
    return cache_root() / "affnist" / h.hexdigest()[:32]


def _pair(v: tuple[float, float] | list[float]) -> tuple[float, float]:
    lo, hi = v
    return float(lo), float(hi)
