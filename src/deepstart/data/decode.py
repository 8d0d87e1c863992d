"""Decoding one image file into a uint8 array, the same way everywhere.

:func:`decode_image` is the single path from a file to pixels, used by
:func:`deepstart.data.folder.load_folder` for training data and meant for prediction too, so a
model sees its inputs exactly as it saw its training images: EXIF orientation applied, any
Pillow mode brought to grey or RGB (alpha composited over black), and a size reached by one of
:data:`RESIZE_POLICIES`.

It also holds the one pixel limit of training folders, ``deepstart predict`` and ``deepstart
serve`` (:func:`max_pixels`): an image whose header declares more pixels is refused before any
pixel is decoded, as a possible decompression bomb (a 100 kB PNG can declare 10^10 pixels).
"""

from __future__ import annotations

import numbers
import os
import re
from typing import IO

import numpy as np
from PIL import Image, ImageOps

from deepstart.errors import ConfigError, DataError

RESIZE_POLICIES = ("squish", "crop", "pad")
MAX_PIXELS_ENV = "DEEPSTART_MAX_PIXELS"


class ImageTooLarge(DataError, Image.DecompressionBombError):
    """An image declaring more than :func:`max_pixels` pixels. Also a Pillow
    DecompressionBombError, so code refusing Pillow's bombs refuses this one too."""


def max_pixels() -> int | None:
    """Most pixels (width x height) an image may declare: ``$DEEPSTART_MAX_PIXELS`` when set,
    else Pillow's ``Image.MAX_IMAGE_PIXELS`` (89,478,485 by default: 9459 x 9459, ~256 MiB of
    RGBA); None means no limit.

    A limit set by the variable is also given to Pillow, whose own check (a warning past it,
    an error past twice it) would otherwise refuse images the user chose to allow.

    Raises:
        ConfigError: a ``$DEEPSTART_MAX_PIXELS`` that is not a positive whole number.

    Example:
        >>> max_pixels()  # with $DEEPSTART_MAX_PIXELS unset
        89478485
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return Image.MAX_IMAGE_PIXELS
    try:
        value = float(raw)  # "2e8" is welcome
    except ValueError:
        value = 0.0
    if not 1 <= value < float("inf"):
        raise ConfigError(
            f"{MAX_PIXELS_ENV} must be a positive whole number of pixels, got {raw!r}; "
            "unset it for the default"
        )
    limit = int(value)
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # Pillow's documented setting for exactly this
    return limit


def open_image(path: str | os.PathLike | IO[bytes]) -> Image.Image:
    """``Image.open`` (the header only), refusing an image over :func:`max_pixels` pixels.

    Raises:
        ImageTooLarge: one line naming the file, its pixels and the limit.

    Example:
        >>> with open_image("cat.jpg") as im:
        ...     im.size
        (500, 375)
    """
    where = str(path) if isinstance(path, (str, os.PathLike)) else "image"
    limit = max_pixels()
    try:
        im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow refused first (past its limit, or its warning made an error): its message
        # holds the pixel count, "Image size (N pixels) exceeds limit of ...".
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(where, int(found.group(1)) if found else None, limit) from None
    w, h = im.size
    if limit is not None and w * h > limit:
        im.close()
        raise _too_large(where, w * h, limit, f"{w}x{h} = ")
    return im


def _too_large(where: str, pixels: int | None, limit: int | None, dims: str = "") -> ImageTooLarge:
    # Plain numbers, as Pillow writes them: "10000000000 pixels" reads the same everywhere.
    count = f"{dims}{pixels} pixels" if pixels is not None else "too many pixels"
    return ImageTooLarge(
        f"{where}: {count}, over the limit of {limit} (a possible decompression bomb); "
        f"if you trust this image, set {MAX_PIXELS_ENV} higher"
    )


def check_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``size`` as ``(H, W)`` (one int means a square), None as it is.

    Raises:
        DataError: for anything but a positive int or a pair of them.

    Example:
        >>> check_size(32)
        (32, 32)
    """
    if size is None:
        return None
    hw = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, numbers.Integral) and v > 0 for v in hw):
        raise DataError(f"size must be a positive int or (H, W), got {size!r}")
    return int(hw[0]), int(hw[1])


def decode_image(
    path: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    resize: str = "squish",
) -> np.ndarray:
    """Decode one image file exactly as :func:`~deepstart.data.folder.load_folder` does.

    The EXIF orientation is applied, alpha is composited over black, any mode (palette,
    CMYK, 16-bit, ...) becomes grey or RGB, and ``size`` is reached by ``resize``.

    Raises:
        ImageTooLarge: the header declares more than :func:`max_pixels` pixels.

    Returns:
        ``(H, W, C)`` uint8; C is ``channels``, or the image's own 1 or 3 when None.

    Example:
        >>> decode_image("cat.jpg", size=64, channels=3).shape
        (64, 64, 3)
    """
    size = check_size(size)
    with open_image(path) as im:
        if size is not None and im.format == "JPEG":
            # JPEG decodes at 1/2, 1/4 or 1/8 scale almost for free; draft never goes below
            # the requested size, and a square request is safe under any EXIF rotation.
            im.draft(None, (max(size), max(size)))
        ImageOps.exif_transpose(im, in_place=True)
        return _prepared(im, size, channels, resize)


def prepare_image(
    im: Image.Image,
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    resize: str = "squish",
) -> np.ndarray:
    """An image already in memory, brought to pixels exactly as :func:`decode_image` brings a
    file (EXIF orientation, mode, size); ``im`` itself is left unchanged.

    Returns:
        ``(H, W, C)`` uint8; C is ``channels``, or the image's own 1 or 3 when None.

    Example:
        >>> prepare_image(Image.new("RGBA", (40, 30)), size=16, channels=1).shape
        (16, 16, 1)
    """
    return _prepared(ImageOps.exif_transpose(im), check_size(size), channels, resize)


def _prepared(im: Image.Image, size, channels, resize) -> np.ndarray:
    im = _canonical_mode(im)
    if size is not None:
        im = fit(im, size, resize)
    return to_channels(np.asarray(im), channels)


def _canonical_mode(im: Image.Image) -> Image.Image:
    """The image as L, LA, RGB or RGBA (the modes Pillow resizes well)."""
    mode, transparent = im.mode, "transparency" in im.info
    if mode in ("L", "LA", "RGB", "RGBA") and not transparent:
        return im
    if mode.startswith("I") or mode == "F":
        # 16/32-bit grey: Pillow's convert("L") clips at 255; scale the range instead.
        a = np.asarray(im, dtype=np.float64)
        a = a * 255 if mode == "F" and a.max() <= 1 else a
        a = a / 257 if mode.startswith("I;16") or (mode == "I" and a.max() > 255) else a
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    alpha = transparent or mode in ("PA", "La", "RGBa")
    if mode in ("P", "PA"):
        palette = np.asarray(im.getpalette() or [0, 0, 0], dtype=np.uint8).reshape(-1, 3)
        colour = bool((palette != palette[:, :1]).any())
    else:
        colour = mode not in ("1", "L", "LA", "La")
    return im.convert(("RGBA" if alpha else "RGB") if colour else ("LA" if alpha else "L"))


def fit(im: Image.Image, size: tuple[int, int], resize: str = "squish") -> Image.Image:
    """Bring ``im`` to ``size`` = (H, W) by "squish", "crop" (centre) or "pad" (black).

    Example:
        >>> fit(Image.new("RGB", (64, 32)), (16, 16), "pad").size
        (16, 16)
    """
    (h, w), (w0, h0) = size, im.size
    if (h0, w0) == (h, w):
        return im
    if resize == "pad":
        scale = min(w / w0, h / h0)
        inner = fit(im, (max(1, round(h0 * scale)), max(1, round(w0 * scale))))
        out = Image.new(im.mode, (w, h), 0)  # black, and transparent if there is alpha
        out.paste(inner, ((w - inner.width) // 2, (h - inner.height) // 2))
        return out
    box = (0.0, 0.0, float(w0), float(h0))
    if resize == "crop":
        # The centred window of the source with the target's aspect ratio.
        scale = max(w / w0, h / h0)
        cw, ch = w / scale, h / scale
        box = ((w0 - cw) / 2, (h0 - ch) / 2, (w0 + cw) / 2, (h0 + ch) / 2)
    if w * h < (box[2] - box[0]) * (box[3] - box[1]):
        # Downscale: Lanczos, after a cheap integer reduce() down to 3x the target.
        return im.resize((w, h), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    return im.resize((w, h), Image.Resampling.BICUBIC, box=box)


def to_channels(pixels: np.ndarray, channels: int | None) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 1-4)`` uint8 to ``(H, W, channels)``, alpha over black.

    Example:
        >>> to_channels(np.full((2, 2, 4), 200, np.uint8), 1)[0, 0]  # 78% alpha over black
        array([157], dtype=uint8)
    """
    a = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if a.shape[2] in (2, 4):
        alpha = a[:, :, -1:].astype(np.uint16)
        a = ((a[:, :, :-1] * alpha + 127) // 255).astype(np.uint8)
    if channels == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif channels == 1 and a.shape[2] == 3:
        # Pillow's own RGB -> L weights (ITU-R 601-2 luma, 16-bit fixed point).
        rgb = a.astype(np.uint32)
        luma = rgb[:, :, 0] * 19595 + rgb[:, :, 1] * 38470 + rgb[:, :, 2] * 7471 + 0x8000
        a = (luma >> 16).astype(np.uint8)[:, :, None]
    return a
