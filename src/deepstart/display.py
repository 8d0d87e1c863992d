"""Small building blocks of the notebook displays (``_repr_html_``): HTML tables and pictures
as ``data:`` URIs. Pure strings and PIL; nothing heavy is imported.

The report's clickable confusion matrix, the cleaning page and a notebook's table of suspects
show hundreds of pictures each, so each must be small: at most ``MAX_SIDE`` pixels a side
(the page scales it up, pixelated, for tiny digits), PNG for grey pictures (exact, and a
28 px digit takes ~300 bytes), JPEG for colour ones (a 32 px CIFAR-10 picture takes 1.0 KB as
JPEG at quality 85 and 2.3 KB as PNG).

Example:
    >>> html_table(["epoch", "loss"], [[1, "0.52"]])
    '<table><tr><th>epoch</th><th>loss</th></tr><tr><td>1</td><td>0.52</td></tr></table>'
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

MAX_SIDE = 64  # pixels: enough to judge a label, small enough to embed a thousand
_JPEG_FROM = 16  # colour pictures with a side above this are stored as JPEG


def cell(value: Any) -> str:
    """One value as table text, escaped: floats to 4 significant digits, NaN/None as "-"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def html_table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    caption: str = "",
    raw: bool = False,
) -> str:
    """An HTML table; every value goes through :func:`cell` unless ``raw`` (cells already
    HTML, e.g. coloured or with pictures)."""
    fmt = (lambda v: str(v)) if raw else cell
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"


def thumbnail(image: torch.Tensor, max_side: int = MAX_SIDE) -> Any:
    """A ``(C, H, W)`` uint8 image as a PIL image at most ``max_side`` pixels a side."""
    from PIL import Image

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


def img_tag(image: torch.Tensor, width: int = 48, title: str = "") -> str:
    """An ``<img>`` of a ``(C, H, W)`` uint8 image, ``width`` CSS pixels wide, pixelated (so a
    28 px digit is not blurred when scaled up)."""
    t = f' title="{html.escape(title)}"' if title else ""
    return (
        f'<img src="{data_uri(image)}" width="{width}"{t} '
        'style="image-rendering:pixelated;margin:1px">'
    )
