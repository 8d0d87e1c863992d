"""Small pictures embedded in self-contained pages: one image -> a ``data:`` URI.

The report's clickable confusion matrix, the cleaning page and a notebook's table of suspects
show hundreds of pictures each, so each must be small: at most ``MAX_SIDE`` pixels a side
(the page scales it up, pixelated, for tiny digits), PNG for grey pictures (exact, and a
28 px digit takes ~300 bytes), JPEG for colour ones (a 32 px CIFAR-10 picture takes 1.0 KB as
JPEG at quality 85 and 2.3 KB as PNG).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

MAX_SIDE = 64  # pixels: enough to judge a label, small enough to embed a thousand
_JPEG_FROM = 16  # colour pictures with a side above this are stored as JPEG


def thumbnail(image: torch.Tensor, max_side: int = MAX_SIDE) -> Image.Image:
    """A ``(C, H, W)`` uint8 image as a PIL image at most ``max_side`` pixels a side."""
    a = image.detach().cpu().numpy()
    pixels = a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0))
    im = Image.fromarray(pixels)
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return im


def data_uri(image: torch.Tensor, max_side: int = MAX_SIDE) -> str:
    """``data:image/png;base64,...`` (or ``image/jpeg``) of a ``(C, H, W)`` uint8 image.

    Example:
        >>> data_uri(data.test.images[0])[:22]
        'data:image/png;base64,'
    """
    im = thumbnail(image, max_side)
    buf = io.BytesIO()
    if im.mode == "RGB" and max(im.size) > _JPEG_FROM:
        im.save(buf, format="JPEG", quality=85)
        kind = "jpeg"
    else:
        im.save(buf, format="PNG", optimize=True)
        kind = "png"
    return f"data:image/{kind};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
