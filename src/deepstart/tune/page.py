"""A study's results: the trials table, Optuna's plots as PNG, and ``study.html``.

The page is self-contained like a run's ``report.html``: the plots are embedded as PNG data
URIs (and kept in ``plots/``), no script, no CDN. ``study.json`` holds the same rows as data.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepstart.cache import atomic_write

if TYPE_CHECKING:
    from deepstart.tune.study import StudyResult

PLOTS = {
    "history": "optimisation history: each trial's score and the best so far",
    "importances": "parameter importances (PED-ANOVA): how much each parameter moves the score",
    "slice": "slice plot: the score against each parameter's value",
}


def write_plots(study: Any, directory: Path) -> tuple[dict[str, Path], list[str]]:
    """Draw the plots that the study's trials allow; returns them and why others are missing
    (importances need two finished trials that differ, for instance)."""
    from deepstart.interpret.plots import _pyplot

    plt = _pyplot()  # Agg, except in a notebook kernel (its inline backend stays)
    import optuna
    from optuna.visualization import matplotlib as ovm

    directory.mkdir(parents=True, exist_ok=True)
    makers = {
        "history": lambda: ovm.plot_optimization_history(study),
        "importances": lambda: ovm.plot_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        ),
        "slice": lambda: ovm.plot_slice(study),
    }
    written, notes = {}, []
    for key, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning, small-sample warnings
                ax = make()
        except Exception as e:  # optuna raises ValueError/RuntimeError for too few trials
            notes.append(f"no {key} plot: {e}")
            continue
        first = ax.flat[0] if hasattr(ax, "flat") else ax
        fig = first.figure
        if not fig.axes or not any(a.has_data() for a in fig.axes):
            notes.append(f"no {key} plot: nothing to draw yet")
            plt.close(fig)
            continue
        path = directory / f"{key}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written[key] = path
    return written, notes


def trials_table(result: StudyResult) -> Any:
    """The trials as a rich ``Table``: number, state, metric, parameters, epochs, time."""
    from rich.table import Table

    names = _param_names(result)
    table = Table(title=f"study {result.name}: {result.metric} ({result.direction})")
    for col in ("#", "state", result.metric, *names, "epochs", "time", "note"):
        right = col not in ("state", "note")
        table.add_column(col, justify="right" if right else "left")
    best = result.best.number if result.best else None
    for r in result.rows:
        cells = [
            f"{r.number}" + (" *" if r.number == best else ""),
            r.state,
            _fmt(r.value),
            *(_fmt(r.params.get(n)) for n in names),
            _fmt(r.epochs),
            f"{r.seconds:.1f}s" if r.seconds is not None else "-",
            r.note[:60],
        ]
        table.add_row(*cells, style="bold" if r.number == best else None)
    return table


def summary_lines(result: StudyResult) -> list[str]:
    """What to print under the table: the best trial, where things are."""
    counts = _counts(result)
    lines = [", ".join(f"{n} {s.lower()}" for s, n in counts.items()) or "no trials"]
    b = result.best
    if b is not None:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in b.params.items())
        lines.append(f"best: trial {b.number}, {result.metric} {_fmt(b.value)} ({params})")
        if b.run_dir:
            lines.append(f"best run directory (bundle, config, report): {b.run_dir}")
    if result.html is not None:
        lines.append(f"study page: {result.html}")
    lines.append(f"storage: {result.storage} (study {result.name!r}; --resume adds trials)")
    lines.extend(result.notes)
    return lines


def write_study_json(result: StudyResult) -> Path:
    path = result.directory / "study.json"
    data = {
        "name": result.name,
        "storage": result.storage,
        "metric": result.metric,
        "direction": result.direction,
        "space": result.space.describe(),
        "best": result.best.number if result.best else None,
        "trials": [_finite(vars(r)) for r in result.rows],
    }
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    return path


def write_study_page(result: StudyResult) -> Path:
    """``study.html`` in the study directory: setup, best trial, trials, plots."""
    from deepstart.interpret.html import CSS

    d = result.directory
    counts = _counts(result)
    total = sum(r.seconds or 0.0 for r in result.rows)
    cards = [
        (
            str(len(result.rows)),
            "trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()),
        ),
        (_fmt(result.best.value) if result.best else "-", f"best {result.metric}"),
        (f"{total / 60:.1f} min", "training time, all trials"),
    ]
    card_html = "".join(
        f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for v, k in cards
    )
    base = result.base
    setup = [
        ("data", f"{base.data.name} {base.data.options or ''}".strip()),
        ("model", _model_text(base)),
        ("space", result.space.describe()),
        ("metric", f"{result.metric} of the last epoch ({result.direction})"),
        ("training", f"seed {base.train.seed}, {base.train.opt}, {base.train.schedule}"),
        ("storage", f"{result.storage} (study {result.name})"),
    ]
    sections = [
        f'<section id="overview"><div class="cards">{card_html}</div></section>',
        _section("setup", "Setup", _kv(setup)),
        _section("best", "Best trial", _best_html(result)),
        _section("trials", "Trials", _trials_html(result)),
        _section("plots", "Plots", _plots_html(result)),
    ]
    if result.notes:
        notes = "".join(f"<li>{_e(n)}</li>" for n in result.notes)
        sections.append(_section("notes", "Notes", f"<ul>{notes}</ul>"))
    made = time.strftime("%Y-%m-%d %H:%M")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>deepstart study: {_e(result.name)}</title><style>{CSS}"
        "tr.best td{font-weight:bold;background:#fff8c5} table.kv td{text-align:left}"
        "</style></head><body>"
        f"<header><h1>study {_e(result.name)}</h1><p>deepstart tune, made {made}</p></header>"
        f"<main>{''.join(sections)}</main></body></html>\n"
    )
    path = d / "study.html"
    with atomic_write(path, "w") as f:
        f.write(page)
    return path


def _best_html(result: StudyResult) -> str:
    b = result.best
    if b is None:
        return "<p class='muted'>no trial has finished yet</p>"
    rows = [("trial", b.number), (result.metric, _fmt(b.value))]
    rows += [(k, _fmt(v)) for k, v in b.params.items()]
    body = _kv(rows)
    if b.run_dir:
        rel = os.path.relpath(b.run_dir, result.directory)
        links = f'<a href="{_e(rel)}/">{_e(rel)}</a>'
        if (Path(b.run_dir) / "report.html").is_file():
            links += f' &middot; <a href="{_e(rel)}/report.html">its report</a>'
        body += (
            f"<p>run directory (bundle <code>model.safetensors</code> + <code>model.json</code>,"
            f" <code>config.json</code> to train it again): {links}</p>"
        )
    return body


def _trials_html(result: StudyResult) -> str:
    names = _param_names(result)
    head = "".join(
        f"<th>{_e(c)}</th>" for c in ("#", "state", result.metric, *names, "epochs", "time", "note")
    )
    best = result.best.number if result.best else None
    rows = []
    for r in result.rows:
        cells = [
            str(r.number),
            r.state,
            _fmt(r.value),
            *(_fmt(r.params.get(n)) for n in names),
            _fmt(r.epochs),
            f"{r.seconds:.1f}s" if r.seconds is not None else "-",
            r.note,
        ]
        cls = ' class="best"' if r.number == best else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _plots_html(result: StudyResult) -> str:
    if not result.plots:
        return "<p class='muted'>no plots (see the notes)</p>"
    figs = []
    for key, path in result.plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        figs.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{_e(PLOTS[key])}" '
            f'data-file="plots/{_e(Path(path).name)}"><figcaption>{_e(PLOTS[key])}'
            f"</figcaption></figure>"
        )
    return "".join(figs)


def _model_text(base: Any) -> str:
    opts = dict(base.model.options)
    spec = opts.pop("spec", None)
    text = spec if spec and base.model.name == "spec" else base.model.name
    return f"{text} {opts}" if opts else text


def _param_names(result: StudyResult) -> list[str]:
    names = [p.name for p in result.space.searched]
    for r in result.rows:  # parameters of enqueued or older trials too
        names += [k for k in r.params if k not in names]
    return names


def _counts(result: StudyResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in result.rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    return counts


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_e(title)}</h2>{body}</section>'


def _kv(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
