"""The report's core sections: cheap to write (tables, SVG curves, thumbnails), never run
the model and never import matplotlib, so every run can afford them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from deepstart.display import data_uri
from deepstart.interpret.analysis import Interpretation
from deepstart.interpret.explorer import confusion_table, filtered_grid
from deepstart.interpret.plots import GRIDS
from deepstart.report.page import esc, fmt, img, kv_table, pct, section
from deepstart.report.svg import Series, line_chart
from deepstart.train.display import smooth
from deepstart.train.learner import Learner

SAMPLES_PER_CLASS = 8
SAMPLE_CLASSES = 20  # rows of training samples shown (a 1000-class dataset shows the first 20)


def overview(run: dict[str, Any], interp: Interpretation) -> str:
    res = run["config"].get("resolved", {})
    k = len(interp.classes)
    chance_bits = math.log2(k) if k > 1 else 0.0
    secs = run["results"].get("train_seconds")
    cards = [
        (f"{interp.accuracy * 100:.2f}%", f"{interp.split} accuracy on {len(interp.targets):,}"),
        (
            f"{interp.loss / math.log(2):.3f} bits",
            f"{interp.split} loss; chance is {chance_bits:.3f} bits ({k} classes)",
        ),
        (f"{res.get('parameters', 0):,}", "parameters"),
        (f"{secs:.0f} s" if secs is not None else "–", f"training, {len(run['history'])} epochs"),
    ]
    body = '<div class="cards">' + "".join(
        f'<div class="card"><b>{esc(v)}</b><span>{esc(t)}</span></div>' for v, t in cards
    )
    body += "</div>"
    body += (
        f"<p class='muted'>started {esc(res.get('started', ''))} on "
        f"{esc(res.get('device', '?'))}, torch {esc(res.get('torch', '?'))}, python "
        f"{esc(res.get('python', '?'))}</p>"
    )
    return section("overview", "Overview", body)


def config(run: dict[str, Any]) -> str:
    cfg = run["config"]
    parts = []
    for part in ("data", "model", "train"):
        rows = [(k, v) for k, v in cfg.get(part, {}).items() if v not in (None, {}, [])]
        parts.append(f"<div><h3>{part}</h3>{kv_table(rows)}</div>")
    arch = cfg.get("resolved", {}).get("arch")
    note = f"<p class='muted'>model built as {esc(json.dumps(arch))}</p>" if arch else ""
    return section("config", "Configuration", f'<div class="cols">{"".join(parts)}</div>{note}')


def _sample_strips(images: Any, classes: list[str], seed: int = 0) -> str:
    """Per class (at most ``SAMPLE_CLASSES``), ``SAMPLES_PER_CLASS`` random training pictures
    as thumbnails: the page's picture of the data, without a figure."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for c, name in enumerate(classes[:SAMPLE_CLASSES]):
        idx = torch.nonzero(images.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)[:SAMPLES_PER_CLASS]]
        pics = "".join(f'<img src="{data_uri(images.images[i])}" alt="">' for i in idx.tolist())
        rows.append(f'<div class="strip"><span>{esc(name)}</span>{pics}</div>')
    more = len(classes) - SAMPLE_CLASSES
    tail = f"<p class='muted'>… and {more} more classes</p>" if more > 0 else ""
    return "".join(rows) + tail


def data(learn: Learner) -> str:
    ds = learn.data
    summary = ds.summary()
    splits = summary["splits"]
    head = "".join(f"<th>{esc(s)}</th>" for s in splits)
    rows = "".join(
        f"<tr><td>{esc(name)}</td>"
        + "".join(f"<td>{summary['class_counts'][s][c]:,}</td>" for s in splits)
        + "</tr>"
        for c, name in enumerate(ds.classes)
    )
    total = "".join(f"<td><b>{n:,}</b></td>" for n in splits.values())
    table = f"<table><tr><th>class</th>{head}</tr>{rows}<tr><td><b>all</b></td>{total}</tr></table>"
    prep = learn.preprocess
    facts = kv_table(
        [
            ("dataset", ds.name),
            ("image size", f"{prep.size[0]}×{prep.size[1]}, {prep.channels} channel(s)"),
            ("mean (train)", ", ".join(f"{m:.4f}" for m in prep.mean)),
            ("std (train)", ", ".join(f"{s:.4f}" for s in prep.std)),
            ("resize policy", prep.resize),
        ]
    )
    notes = "".join(f"<li>{esc(n)}</li>" for n in ds.notes)
    body = (
        f'<div class="cols"><div>{facts}</div><div>{table}</div></div>'
        + (f"<ul class='muted'>{notes}</ul>" if notes else "")
        + "<h3>Training samples</h3>"
        + _sample_strips(ds.train, ds.classes)
        + "<p class='muted'>random training pictures, one row per class</p>"
    )
    return section("data", "Data", body)


def _charts(run: dict[str, Any], k: int) -> str:
    """Loss per batch and epoch, validation accuracy, the LR, and the losses in bits against
    chance: the four panels of ``plots/curves.png``, as SVG."""
    history, batches = run["history"], run["batches"]
    epochs = [float(r["epoch"]) for r in history]
    train = [float(r["train_loss"]) for r in history]
    valid = [float(r["valid_loss"]) for r in history]
    acc = [float(r["accuracy"]) * 100 for r in history]
    losses, lrs = list(batches.get("loss", ())), list(batches.get("lr", ()))
    per_epoch = int(batches.get("per_epoch", 0) or 0)
    on_steps = bool(per_epoch) and bool(losses)
    x_epoch = [e * per_epoch for e in epochs] if on_steps else epochs
    loss_series = []
    if on_steps:
        steps = list(range(1, len(losses) + 1))
        loss_series += [
            Series("batch", steps, losses, "#8fb4d9", width=0.8, opacity=0.6),
            Series("batch, smoothed", steps, smooth(losses).tolist(), "#1f5fa8"),
        ]
    loss_series += [
        Series("train (epoch)", x_epoch, train, "#1f5fa8", dots=True),
        Series("valid", x_epoch, valid, "#e07b00", dots=True),
    ]
    events = []
    for ev in run["events"]:
        if on_steps and ev.get("epoch") is not None:
            # a validation blow-up has no batch: it happened at the end of its epoch
            batch = ev["batch"] if ev.get("batch") is not None else per_epoch
            events.append((ev["epoch"] - 1) * per_epoch + batch)
    x_label = "batch" if on_steps else "epoch"
    charts = [line_chart("Loss (nats)", loss_series, xlabel=x_label, vlines=events)]
    last = f", last {acc[-1]:.2f}%" if acc and math.isfinite(acc[-1]) else ""
    charts.append(
        line_chart(
            f"Validation accuracy (%){last}",
            [Series("valid", epochs, acc, "#1a7f37", dots=True)],
            xlabel="epoch",
        )
    )
    lr_series = (
        Series("lr", list(range(1, len(lrs) + 1)), lrs, "#6639ba")
        if lrs
        else Series("lr", epochs, [float(r["lr"]) for r in history], "#6639ba", dots=True)
    )
    charts.append(
        line_chart("Learning rate", [lr_series], xlabel="batch" if lrs else "epoch", log_y=True)
    )
    bits = 1 / math.log(2)
    chance = math.log2(k) if k > 1 else None
    top = max([v * bits for v in valid if math.isfinite(v)] + [chance or 0.0]) * 1.05
    charts.append(
        line_chart(
            "Loss (bits per image)",
            [
                Series("train", epochs, [v * bits for v in train], "#1f5fa8", dots=True),
                Series("valid", epochs, [v * bits for v in valid], "#e07b00", dots=True),
            ],
            xlabel="epoch",
            hline=(chance, f"chance {chance:.2f}") if chance else None,
            ylim=(0.0, top) if chance else None,
        )
    )
    return '<div class="charts">' + "".join(charts) + "</div>"


def training(run: dict[str, Any], interp: Interpretation, run_dir: Path) -> str:
    history = run["history"]
    if not history:
        return section("training", "Training", "<p>No epoch finished.</p>")
    cols = ("epoch", "train_loss", "valid_loss", "valid_bits", "accuracy", "lr", "seconds")
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = "".join(
        "<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in history
    )
    body = _charts(run, len(interp.classes))
    body += "<p class='muted'>loss, accuracy, learning rate and loss in bits against chance</p>"
    body += f"<table><tr>{head}</tr>{rows}</table>"
    if run["events"]:
        items = "".join(
            f"<li>{esc(', '.join(f'{k}={fmt(v)}' for k, v in ev.items() if k != 'event'))}</li>"
            for ev in run["events"]
        )
        body += f"<h3>Divergence guard</h3><ul>{items}</ul>"
    lr_png = run_dir / "lr_find.png"
    if lr_png.is_file():
        chosen = run["lr_find"].get("chosen")
        caption = "LR finder: loss against learning rate"
        if chosen:
            caption += f"; the run used {float(chosen):.2e}"
        rec = run["lr_find"]
        if rec.get("rule") == "usual":  # --lr auto kept the LR the run has without it
            valley = rec["suggestions"]["valley"]
            # runs of session 21 recorded no reason: the valley was within keep_within
            why = rec.get("why") or f"the valley is within {rec['keep_within']:g}x of it"
            caption += f", {rec['usual_lr_from']} LR (valley {valley:.2e}; {why})"
        body += "<h3>LR finder</h3>" + img(lr_png, caption, name=lr_png.name)
    return section("training", "Training", body)


def results(interp: Interpretation, summary: dict[str, Any]) -> str:
    head = "<tr><th>class</th><th>support</th><th>predicted</th><th>precision</th>"
    head += "<th>recall</th><th>F1</th></tr>"
    rows = "".join(
        f"<tr><td>{esc(r['class'])}</td><td>{r['support']:,}</td><td>{r['predicted']:,}</td>"
        f"<td>{pct(r['precision'])}</td><td>{pct(r['recall'])}</td><td>{pct(r['f1'])}</td></tr>"
        for r in summary["per_class"]
    )
    m = summary["macro"]
    rows += (
        f"<tr><td><b>macro average</b></td><td></td><td></td><td>{pct(m['precision'])}</td>"
        f"<td>{pct(m['recall'])}</td><td>{pct(m['f1'])}</td></tr>"
    )
    pairs = summary["most_confused"][:10]
    confused = (
        "<table><tr><th>true</th><th>predicted as</th><th>count</th></tr>"
        + "".join(f"<tr><td>{esc(t)}</td><td>{esc(p)}</td><td>{n}</td></tr>" for t, p, n in pairs)
        + "</table>"
        if pairs
        else "<p>No mistakes.</p>"
    )
    body = (
        f'<div class="cols"><div><h3>Per class ({esc(interp.split)})</h3><table>{head}{rows}'
        f"</table></div><div><h3>Most confused pairs</h3>{confused}</div></div>"
        + "<h3>Confusion matrix</h3><p class='muted'>Rows are true classes, columns "
        "predictions; the shade is the row's share. Click a cell for its pictures.</p>"
        + confusion_table(interp)
    )
    return section("results", "Results", body)


# Grids drawn by the page (filterable by class) rather than embedded as figures.
FILTERED = {"top_losses": "losses", "uncertain": "uncertain"}


def pictures(written: dict[str, Path], classes: list[str], left_out: str) -> str:
    """The filterable grids the page draws, and the figure grids among ``written`` (the
    most confident right and wrong pictures per class, when their figures were drawn)."""
    body = ""
    for stem, title, caption in GRIDS:
        if stem in FILTERED:
            body += filtered_grid(FILTERED[stem], title, caption, classes)
        elif stem in written:
            body += f"<h3>{esc(title)}</h3>" + img(written[stem], caption)
    body += "<p class='muted'>Titles: predicted / true class, probability of the prediction, "
    body += "loss in nats; green is right, red wrong.</p>" + left_out
    return section("pictures", "Pictures", body)
