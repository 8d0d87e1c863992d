"""The report's HTML pieces: the page, its sections, embedded pictures, tables, numbers."""

from __future__ import annotations

import base64
import html
import json
import math
import time
from pathlib import Path
from typing import Any

from deepstart.interpret.html import CSS

# (section id, link text) of the page's navigation bar, in page order
NAV = (
    ("overview", "Overview"),
    ("config", "Config"),
    ("data", "Data"),
    ("training", "Training"),
    ("results", "Results"),
    ("pictures", "Pictures"),
    ("vision", "What the network sees"),
)

# Charts side by side, a strip of thumbnails per class (the report's own additions to CSS).
EXTRA_CSS = (
    ".charts{display:flex;flex-wrap:wrap;gap:12px}.charts svg{background:#fff}"
    ".strip{display:flex;align-items:center;gap:3px;margin:2px 0}"
    ".strip span{width:110px;font-size:12px;text-align:right;padding-right:6px}"
    ".strip img{width:48px;height:48px;image-rendering:pixelated;object-fit:contain}"
)


def page(title: str, sections: list[str]) -> str:
    nav = "".join(f'<a href="#{key}">{label}</a>' for key, label in NAV)
    made = time.strftime("%Y-%m-%d %H:%M")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>deepstart report: {esc(title)}</title><style>{CSS}{EXTRA_CSS}</style></head>"
        f"<body><header><h1>{esc(title)}</h1><p>deepstart run report, made {made}</p></header>"
        f"<nav>{nav}</nav><main>{''.join(sections)}</main></body></html>\n"
    )


def section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{esc(title)}</h2>{body}</section>'


def img(path: Path, caption: str, name: str | None = None) -> str:
    """An embedded PNG; ``data-file`` says where the same file is, relative to the run dir."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    name = name or f"plots/{Path(path).name}"
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}" '
        f'data-file="{esc(name)}"><figcaption>{esc(caption)}</figcaption></figure>'
    )


def kv_table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.3g}" if abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.4g}"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


def pct(v: float | None) -> str:
    return "–" if v is None or math.isnan(v) else f"{v * 100:.2f}%"


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)
