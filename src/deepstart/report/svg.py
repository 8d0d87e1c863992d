"""Line charts as inline SVG: the report's training curves without matplotlib.

A report after a 3-second training cannot afford matplotlib (importing pyplot alone takes
most of a second on a laptop CPU); a few hundred points of SVG cost milliseconds, stay sharp
at any zoom and need no data URI.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

W, H = 420, 230  # chart size in CSS pixels
LEFT, RIGHT, TOP, BOTTOM = 52, 10, 26, 34  # margins: room for tick labels and the title
MAX_POINTS = 600  # longer series are thinned: a chart 360 px wide shows no more


@dataclass(frozen=True)
class Series:
    """One line: ``xs`` and ``ys`` of equal length; ``dots`` marks each point (epochs)."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str
    width: float = 1.5
    dots: bool = False
    opacity: float = 1.0


def _thin(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    step = max(1, math.ceil(len(xs) / MAX_POINTS))
    return list(xs[::step]), list(ys[::step])


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round values between ``lo`` and ``hi``."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float, log: bool) -> str:
    if log:
        return f"{10**v:.0e}"
    return f"{v:.3g}"


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    xlabel: str = "",
    log_y: bool = False,
    hline: tuple[float, str] | None = None,
    vlines: Sequence[float] = (),
    ylim: tuple[float, float] | None = None,
) -> str:
    """An ``<svg>`` element: the series on shared axes, a legend, a dashed ``hline`` (value,
    label) such as the chance level, red ``vlines`` (divergence events) at x positions."""
    pts = []
    for s in series:
        xs, ys = _thin(s.xs, s.ys)
        keep = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not log_y)]
        pts.append([(x, math.log10(y) if log_y else y) for x, y in keep])
    xs_all = [x for p in pts for x, _ in p]
    ys_all = [y for p in pts for _, y in p] + ([hline[0]] if hline and not log_y else [])
    if not xs_all:
        empty = f'<text x="10" y="20">{html.escape(title)}: no data</text>'
        return f'<svg class="chart" width="{W}" height="{H}">{empty}</svg>'
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = ylim if ylim else (min(ys_all), max(ys_all))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def py(y: float) -> float:
        return H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM)

    e = html.escape
    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" role="img" aria-label="{e(title)}">',
        f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="600">'
        f"{e(title)}</text>",
        f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
        'fill="none" stroke="#d0d7de"/>',
    ]
    for t in _ticks(y0, y1):
        y = py(t)
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">'
            f"{_label(t, log_y)}</text>"
        )
    for t in _ticks(x0, x1):
        out.append(
            f'<text x="{px(t):.1f}" y="{H - BOTTOM + 14}" text-anchor="middle" font-size="10">'
            f"{t:.0f}</text>"
        )
    if xlabel:
        out.append(
            f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 4}" text-anchor="middle" '
            f'font-size="10" fill="#57606a">{e(xlabel)}</text>'
        )
    for v in vlines:
        if x0 <= v <= x1:
            out.append(
                f'<line x1="{px(v):.1f}" x2="{px(v):.1f}" y1="{TOP}" y2="{H - BOTTOM}" '
                'stroke="#cf222e"/>'
            )
    if hline is not None and not log_y and y0 <= hline[0] <= y1:
        y = py(hline[0])
        out.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#888" '
            'stroke-dasharray="4 3"/>'
        )
    legend = [] if hline is None else [(hline[1], "#888")]
    for s, p in zip(series, pts):
        if not p:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in p)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{s.color}" '
            f'stroke-width="{s.width}" opacity="{s.opacity}"/>'
        )
        if s.dots:
            out += [
                f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{s.color}"/>'
                for x, y in p
            ]
        legend.append((s.label, s.color))
    for i, (label, color) in enumerate(legend):
        y = TOP + 12 + 13 * i
        out.append(
            f'<rect x="{W - RIGHT - 118}" y="{y - 8}" width="10" height="3" fill="{color}"/>'
        )
        out.append(f'<text x="{W - RIGHT - 104}" y="{y - 3}" font-size="10">{e(label)}</text>')
    out.append("</svg>")
    return "".join(out)
