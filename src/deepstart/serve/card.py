"""The model's card: what it is, what it was trained on, how well it did, how it learned.

Built once when the server starts, from the bundle's ``model.json`` and, when the server was
given a run directory, the run's ``results.json`` (per-class test accuracy) and
``metrics.jsonl`` (one row per epoch). The training curves are drawn here as small inline SVG
charts, so the page needs no chart library and works offline.

Example:
    >>> card = model_card(load_bundle("runs/x"), "runs/x")
    >>> card["dataset"], card["test"]["accuracy"]
    ('shapes', 0.98)
"""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any

_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch rows of ``run_dir/metrics.jsonl`` (empty when there is none); a row that is
    not a JSON object, such as a line cut short by a killed run, is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int | float):
            rows.append(row)
    return rows


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def line_chart_svg(
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str,
    xlabel: str = "epoch",
    width: int = 320,
    height: int = 200,
) -> str:
    """A small line chart as an SVG string: one polyline (with dots) per series, a legend,
    and the axes' ranges written at their ends. Text is escaped; nothing runs.

    Args:
        series: name -> ``[(x, y), ...]``; non-finite points are dropped.
        title: drawn above the plot.

    Example:
        >>> svg = line_chart_svg({"train": [(1, 0.9), (2, 0.5)]}, title="loss")
        >>> svg.startswith("<svg") and "polyline" in svg
        True
    """
    clean = {k: [(x, y) for x, y in v if _finite(x) and _finite(y)] for k, v in series.items()}
    clean = {k: v for k, v in clean.items() if v}
    left, right, top, bottom = 44, 10, 24, 34
    pw, ph = width - left - right, height - top - bottom
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}" '
        'font-family="sans-serif" font-size="10">',
        f'<text x="{left}" y="14" font-size="12">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    if not clean:
        out.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle">no data'
                   "</text></svg>")  # fmt: skip
        return "".join(out)
    xs = [x for v in clean.values() for x, _ in v]
    ys = [y for v in clean.values() for _, y in v]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1 = x1 if x1 > x0 else x0 + 1  # one epoch: a dot at the left
    pad = (y1 - y0) * 0.05 or abs(y0) * 0.05 or 0.5
    y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    legend_x = left + pw
    for i, (name, pts) in enumerate(clean.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out.extend(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in pts
        )
        # The legend sits in the title row, right-aligned, so it never covers a line.
        lx = legend_x - 22 - 6 * len(name)
        legend_x = lx - 8
        out.append(
            f'<line x1="{lx}" y1="11" x2="{lx + 14}" y2="11" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{lx + 18}" y="14">{escape(name)}</text>'
        )
    for y, label in ((top + ph, y0), (top + 8, y1)):
        out.append(f'<text x="{left - 4}" y="{y}" text-anchor="end">{label:.3g}</text>')
    base = top + ph + 14
    out.append(f'<text x="{left}" y="{base}" text-anchor="middle">{x0:g}</text>')
    out.append(f'<text x="{left + pw}" y="{base}" text-anchor="middle">{x1:g}</text>')
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">{escape(xlabel)}</text>'
    )
    out.append("</svg>")
    return "".join(out)


def curves(rows: list[dict[str, Any]]) -> list[str]:
    """The loss and accuracy charts of a run's epoch rows (none without rows)."""
    if not rows:
        return []

    def pts(key: str) -> list[tuple[float, float]]:
        return [(r["epoch"], r[key]) for r in rows if key in r]

    charts = [line_chart_svg({"train": pts("train_loss"), "valid": pts("valid_loss")},
                             title="loss (nats)")]  # fmt: skip
    if any("accuracy" in r for r in rows):
        charts.append(line_chart_svg({"valid": pts("accuracy")}, title="validation accuracy"))
    return charts


def model_card(bundle: Any, source: str | Path, explain: list[str] | None = None) -> dict:
    """Everything ``GET /api/model`` says about the served model.

    Args:
        bundle: the loaded bundle (its ``meta`` is ``model.json``).
        source: the path it was loaded from; a run directory adds curves and per-class scores.
        explain: the heat-map methods the server offers for it.

    Returns:
        A JSON-ready dict: name, arch, dataset, classes, input (size, channels, resize,
        mean, std), drawable, params, test (accuracy, loss, n, per_class), epochs, curves
        (rows), charts (SVG strings) and explain.
    """
    meta = dict(bundle.meta)
    prep = bundle.preprocess
    arch = meta.get("arch") or {}
    test = dict(meta.get("test") or {})
    source = Path(source)
    results: dict[str, Any] = {}
    if source.is_dir() and (source / "results.json").is_file():
        try:
            results = json.loads((source / "results.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            results = {}
    if isinstance(results.get("test"), dict) and "per_class" in results["test"]:
        test["per_class"] = results["test"]["per_class"]
    rows = read_metrics(source) if source.is_dir() else []
    model = getattr(bundle, "model", None)
    params = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else None
    return {
        "name": source.name,
        "arch": arch.get("name"),
        "dataset": meta.get("dataset"),
        "classes": list(bundle.classes),
        "input": prep.to_dict(),
        # A canvas to draw on makes sense for MNIST-like inputs: grey and small.
        "drawable": prep.channels == 1 and max(prep.size) <= 64,
        "params": params,
        "test": test or None,
        "epochs": results.get("epochs", len(rows) or None),
        "curves": rows,
        "charts": curves(rows),
        "explain": list(explain or []),
    }
