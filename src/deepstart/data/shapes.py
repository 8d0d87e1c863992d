"""Synthetic shapes: a tiny image-classification task that needs no download.

Each image is one filled shape (circle, square, triangle, ...) of random size, position,
rotation and brightness on a random darker background, with Gaussian noise. Shapes are drawn
at 4x resolution and averaged down, which gives anti-aliased edges; circles and ellipses with
scikit-image, polygons for the whole batch at once in numpy, as are colouring and noise.
Everything is a pure function of the seed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from skimage import draw

from deepstart.data.dataset import DataError, ImageSet
from deepstart.data.folder import write_folder

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ellipse",
    "pentagon",
    "hexagon",
    "ring",
)
"""Every shape kind that can be drawn."""

DEFAULT_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")

# Each kind's radius relative to the drawn scale, so that kinds cover similar areas and no
# class can be told apart by size alone.
_RADIUS = {
    "circle": 0.85,
    "square": 1.0,
    "triangle": 1.15,
    "star": 1.15,
    "cross": 1.0,
    "ellipse": 1.05,
    "pentagon": 0.95,
    "hexagon": 0.9,
    "ring": 1.0,
}
_SUPERSAMPLE = 4  # drawn at 4x and block-averaged: 16 coverage levels per edge pixel


def _check_kinds(kinds: Sequence[str]) -> None:
    unknown = [k for k in kinds if k not in SHAPES]
    if unknown:
        raise DataError(f"unknown shape kind {unknown[0]!r}; known kinds: {', '.join(SHAPES)}")


def _outline(kind: str, radius: float, theta: float, rng: np.random.Generator) -> np.ndarray:
    """Polygon vertices ``(V, 2)`` as (x, y) offsets from the centre, in pixels, rotated."""
    if kind == "star":
        # 10 vertices alternating outer and inner radius; 0.45 keeps the arms fat at 32 px.
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        angles = np.arange(10) * (np.pi / 5)
        local = np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)
    elif kind == "cross":
        w = 0.33  # arm half-width, relative to the arm length
        local = np.array(
            [
                (w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1),
                (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1),
            ]
        )  # fmt: skip
    else:
        sides = {"square": 4, "triangle": 3, "pentagon": 5, "hexagon": 6}[kind]
        angles = np.arange(sides) * (2 * np.pi / sides)
        local = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    c, s = np.cos(theta), np.sin(theta)
    rotation = np.array([[c, s], [-s, c]])
    return radius * local @ rotation


def _fill_polygons(rows: np.ndarray, cols: np.ndarray, big: int) -> np.ndarray:
    """``(N, big, big)`` bool: which pixels lie inside each polygon, polygon ``n`` having
    vertices ``(rows[n], cols[n])`` (``(N, V)`` float64, sub-pixel units).

    The even-odd rule on pixel centres at integer coordinates, as ``skimage.draw.polygon``
    decides (W. R. Franklin's PNPOLY, the same float64 arithmetic in the same order, so the
    same pixels; skimage also counts a pixel centre exactly on an edge as inside, which the
    random float vertices here never produce), for a whole batch of polygons at once: where
    an edge crosses row ``y`` depends on the row alone, so the divisions are ``(N, H, V)``
    and each pixel only compares its column with them. 2,400 polygons at 128x128: ~0.1 s,
    against ~0.65 s one ``draw.polygon`` call at a time (Intel Xeon with AMX).
    """
    y = np.arange(big, dtype=np.float64)[None, :, None]  # (1, H, 1) row coordinates
    yi, xi = rows[:, None, :], cols[:, None, :]  # (N, 1, V): vertex i
    yj, xj = np.roll(yi, 1, axis=2), np.roll(xi, 1, axis=2)  # vertex i - 1 (wrapping)
    straddle = ((yi <= y) & (y < yj)) | ((yj <= y) & (y < yi))  # (N, H, V)
    with np.errstate(divide="ignore", invalid="ignore"):  # flat edges never straddle
        cross = (xj - xi) * (y - yi) / (yj - yi) + xi  # (N, H, V) column where edge meets row
    cross = np.where(straddle, cross, -np.inf)  # a pixel is never left of a missed edge
    x = np.arange(big, dtype=np.float64)  # (W,) column coordinates
    inside = np.zeros((len(rows), big, big), dtype=bool)
    for v in range(rows.shape[1]):  # odd number of crossings to the right: inside
        inside ^= x < cross[:, :, v, None]
    return inside


def _coverage(kinds: Sequence[str], size: int, rng: np.random.Generator) -> np.ndarray:
    """Fraction of each pixel covered by its shape: ``(N, size, size)`` float32 in [0, 1]."""
    ss = _SUPERSAMPLE
    big = size * ss
    masks = np.zeros((len(kinds), big, big), dtype=bool)  # (N, 4H, 4W), one fill per image
    polygons: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}  # by vertex count
    for i, kind in enumerate(kinds):
        # Scale in [0.18, 0.36] of the image, centre kept ~one radius from the border, so
        # shapes are recognisable and at most slightly clipped.
        scale = rng.uniform(0.18, 0.36) * size
        radius = scale * _RADIUS[kind]
        margin = min(radius * 0.9, size / 2)
        cx, cy = rng.uniform(margin, size - margin, size=2)
        theta = rng.uniform(0, 2 * np.pi)
        # Pixel j covers [j, j + 1) in image units; sub-pixel i has its centre at
        # (i + 0.5) / ss, so image coordinate x is sub-pixel coordinate x * ss - 0.5.
        r0, c0, rad = cy * ss - 0.5, cx * ss - 0.5, radius * ss
        if kind in ("circle", "ring"):
            masks[i][draw.disk((r0, c0), rad, shape=(big, big))] = True
            if kind == "ring":
                masks[i][draw.disk((r0, c0), rad * 0.55, shape=(big, big))] = False
        elif kind == "ellipse":
            minor = rad * rng.uniform(0.4, 0.6)
            rr, cc = draw.ellipse(r0, c0, rad, minor, shape=(big, big), rotation=theta)
            masks[i, rr, cc] = True
        else:
            xy = _outline(kind, rad, theta, rng)
            polygons.setdefault(len(xy), []).append((i, r0 + xy[:, 1], c0 + xy[:, 0]))
    for same in polygons.values():  # filled in batches of equal vertex count
        for start in range(0, len(same), 256):  # (256, 128, 128) bools: 4 MB at a time
            chunk = same[start : start + 256]
            index = [i for i, _, _ in chunk]
            rows = np.stack([r for _, r, _ in chunk])
            cols = np.stack([c for _, _, c in chunk])
            masks[index] = _fill_polygons(rows, cols, big)
    # Covered sub-pixels per 4x4 block, summed as uint8 (at most 16) one slice at a time:
    # numpy's strided sum over both block axes at once took 0.19 s of 0.5 s for 3,600 images.
    sub = masks.view(np.uint8).reshape(len(kinds), size, ss, size, ss)
    across = sub[:, :, 0].copy()  # (N, H, W, ss)
    for k in range(1, ss):
        across += sub[:, :, k]
    count = across[..., 0].copy()  # (N, H, W)
    for k in range(1, ss):
        count += across[..., k]
    return count.astype(np.float32) / (ss * ss)


def _paint(
    coverage: np.ndarray, rng: np.random.Generator, channels: int, noise: float
) -> np.ndarray:
    """Colour shapes onto backgrounds and add noise: ``(N, C, H, W)`` uint8."""
    n = len(coverage)
    if channels == 1:
        fg = rng.uniform(128, 255, size=(n, 1))
        # Background at least 64 levels darker than the shape, and never brighter than 96.
        bg = rng.uniform(0, 1, size=(n, 1)) * np.minimum(96, fg - 64)
    else:
        # A random hue at a bright value on a dark colour: the brightest channel of the
        # shape beats every background channel by at least 80 levels.
        hue = rng.uniform(0, 1, size=(n, 3))
        fg = hue / hue.max(axis=1, keepdims=True) * rng.uniform(160, 255, size=(n, 1))
        bg = rng.uniform(0, 80, size=(n, 3))
    fg = fg.astype(np.float32)[:, :, None, None]  # (N, C, 1, 1) grey levels
    bg = bg.astype(np.float32)[:, :, None, None]
    img = bg + (fg - bg) * coverage[:, None]  # (N, C, H, W) float32, 0..255
    if noise > 0:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise * 255)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def draw_shape(
    kind: str,
    size: int,
    rng: np.random.Generator,
    *,
    channels: int = 1,
    noise: float = 0.05,
) -> np.ndarray:
    """Draw one filled shape of random size, position, rotation and colour.

    Args:
        kind: one of :data:`SHAPES`.
        size: image side in pixels.
        rng: numpy generator; the image is a pure function of its state.
        channels: 1 (grey) or 3 (colour).
        noise: standard deviation of the Gaussian noise, in [0, 1] pixel units.

    Returns:
        ``(size, size)`` uint8 for one channel, ``(size, size, 3)`` for three.

    Example:
        >>> img = draw_shape("star", 32, np.random.default_rng(0))
        >>> img.shape, img.dtype
        ((32, 32), dtype('uint8'))
    """
    _check_args([kind], size, channels, noise)
    img = _paint(_coverage([kind], size, rng), rng, channels, noise)[0]  # (C, H, W)
    return img[0] if channels == 1 else img.transpose(1, 2, 0)


def _check_args(classes: Sequence[str], size: int, channels: int, noise: float) -> None:
    _check_kinds(classes)
    if len(set(classes)) != len(classes) or not classes:
        raise DataError(f"classes must be distinct and non-empty, got {list(classes)}")
    if size < 8:
        raise DataError(f"shapes need size >= 8 pixels to be recognisable, got {size}")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if not 0 <= noise <= 1:
        raise DataError(f"noise is a std in [0, 1] pixel units, got {noise}")


def make_shapes(
    n: int,
    *,
    size: int = 32,
    classes: Sequence[str] = DEFAULT_CLASSES,
    seed: int = 0,
    channels: int = 1,
    noise: float = 0.05,
) -> ImageSet:
    """Make ``n`` shape images, split evenly over ``classes`` and shuffled.

    The same arguments always give identical bytes; different seeds give different images.

    Example:
        >>> data = make_shapes(300, size=16, seed=1)
        >>> data.images.shape, data.class_counts()
        (torch.Size([300, 1, 16, 16]), [100, 100, 100])
    """
    classes = tuple(classes)
    _check_args(classes, size, channels, noise)
    if n < 0:
        raise DataError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    k = len(classes)
    counts = [n // k + (1 if i < n % k else 0) for i in range(k)]
    labels = rng.permutation(np.repeat(np.arange(k), counts))  # (N,) class order, shuffled
    coverage = _coverage([classes[c] for c in labels], size, rng)
    images = _paint(coverage, rng, channels, noise)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), list(classes))


def load_shapes(
    *,
    n_train: int = 3000,
    n_test: int = 600,
    size: int = 32,
    classes: Sequence[str] = DEFAULT_CLASSES,
    seed: int = 0,
    channels: int = 1,
    noise: float = 0.05,
) -> tuple[ImageSet, ImageSet]:
    """Train and test shape sets, drawn from two independent streams derived from ``seed``.

    Example:
        >>> train, test = load_shapes(n_train=300, n_test=60, size=16)
        >>> len(train), len(test)
        (300, 60)
    """
    # SeedSequence.spawn gives statistically independent streams, so test never repeats
    # train's images (and seed s's test is not seed s+1's train).
    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    kwargs = {"size": size, "classes": classes, "channels": channels, "noise": noise}
    train = make_shapes(n_train, seed=int(train_seq.generate_state(1)[0]), **kwargs)
    test = make_shapes(n_test, seed=int(test_seq.generate_state(1)[0]), **kwargs)
    return train, test


def write_shapes_folder(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 3000,
    n_test: int = 600,
    size: int = 32,
    classes: Sequence[str] = DEFAULT_CLASSES,
    seed: int = 0,
    channels: int = 1,
    noise: float = 0.05,
) -> Path:
    """Write shapes as PNGs in ``out_dir/{train,test}/<class>/00000.png``; return ``out_dir``.

    The result is an ordinary class-folder dataset: any image viewer opens it and
    :func:`deepstart.data.folder.load_folder` reads back exactly the same pixels.

    Example:
        >>> root = write_shapes_folder("shapes-png", n_train=90, n_test=30, size=16)
        >>> sorted(p.name for p in (root / "train").iterdir())
        ['circle', 'square', 'triangle']
    """
    train, test = load_shapes(
        n_train=n_train,
        n_test=n_test,
        size=size,
        classes=classes,
        seed=seed,
        channels=channels,
        noise=noise,
    )
    out = Path(out_dir)
    write_folder(train, out, "train")
    write_folder(test, out, "test")
    return out
