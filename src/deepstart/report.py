"""A run directory -> ``report.html``: everything about one run on one page.

The page is self-contained: every picture is embedded as a data URI (and the figures also kept
in ``plots/`` beside it), the little script that makes the confusion matrix clickable and the
grids filterable is inline (:mod:`deepstart.interpret.explorer`), and nothing comes from a CDN,
so it opens offline and can be mailed. The numbers behind the pictures go to
``interpretation.json``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deepstart.data.dataset import conform_images
from deepstart.interpret import plots
from deepstart.interpret.analysis import Interpretation
from deepstart.interpret.explorer import confusion_table, explorer_assets, filtered_grid
from deepstart.interpret.html import CSS
from deepstart.run.rundir import RunDir, load_run_learner
from deepstart.train.learner import Learner

TOP_LOSSES = 16  # pictures in the top-losses and most-uncertain grids
PER_CLASS = 2  # most confident right / wrong pictures per class
SALIENCY_IMAGES = 8
FILTER_SIDE = 64  # the largest side of the activation-maximisation images


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The JSON files of a run directory (:meth:`deepstart.run.rundir.RunDir.read`)."""
    return RunDir(run_dir).read()


def build_report(
    run_dir: str | Path,
    *,
    learn: Learner | None = None,
    split: str = "test",
    device: str = "auto",
    layer: str | None = None,
    log: Callable[[str], None] = lambda m: None,
    scored: dict[str, Any] | None = None,
) -> Path:
    """Write ``plots/*.png``, ``interpretation.json`` and ``report.html`` for a run.

    ``learn`` is a Learner holding the trained model and its data (``train`` passes its own);
    without it the run's saved model and dataset are loaded. ``layer`` names the conv layer
    whose feature maps and filters are shown (default: maps of the first, filters of the last).
    ``scored`` is ``learn.evaluate(split)``'s result when the caller has it (``train`` has):
    its probabilities are used as they are, so the report shows the very numbers the run
    printed and the split is not predicted twice.

    Example:
        >>> build_report("runs/20261123-101500-mnist-mnist_cnn")
        PosixPath('runs/20261123-101500-mnist-mnist_cnn/report.html')
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    if learn is None:
        learn = load_run_learner(run_dir, device=device)
    if layer is not None:
        _check_layer(learn.model, layer)
    if scored is not None and scored.get("split") in (split, "valid") and "probs" in scored:
        images = conform_images(learn._split(scored["split"]), learn.preprocess)
        interp = Interpretation(images, scored["probs"], scored["split"])
    else:
        interp = Interpretation.from_learner(learn, split)
    out = run_dir / "plots"
    summary = interp.summary(top=TOP_LOSSES)
    (run_dir / "interpretation.json").write_text(json.dumps(_finite(summary), indent=2) + "\n")
    written = plots.write_interpretation_plots(interp, out, top=TOP_LOSSES, per_class=PER_CLASS)

    sections = [
        _overview(run, interp),
        _config_section(run),
        _data_section(learn, run, out),
        _training_section(run, interp, out, run_dir),
        _results_section(interp, summary),
        _pictures_section(written, interp.classes),
        _vision_section(learn, interp, out, layer),
        explorer_assets(interp, TOP_LOSSES),  # the pictures and script of the two above
    ]
    title = _title(run)
    page = _page(title, sections)
    path = run_dir / "report.html"
    path.write_text(page)
    log(f"report: {path} ({time.perf_counter() - start:.1f}s)")
    return path


# -- sections ---------------------------------------------------------------------------------
def _title(run: dict[str, Any]) -> str:
    cfg = run["config"]
    return f"{cfg.get('data', {}).get('name', '?')} · {cfg.get('model', {}).get('name', '?')}"


def _overview(run: dict[str, Any], interp: Interpretation) -> str:
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
        f'<div class="card"><b>{_e(v)}</b><span>{_e(t)}</span></div>' for v, t in cards
    )
    body += "</div>"
    started = res.get("started", "")
    body += (
        f"<p class='muted'>started {_e(started)} on {_e(res.get('device', '?'))}, torch "
        f"{_e(res.get('torch', '?'))}, python {_e(res.get('python', '?'))}</p>"
    )
    return _section("overview", "Overview", body)


def _config_section(run: dict[str, Any]) -> str:
    cfg = run["config"]
    parts = []
    for part in ("data", "model", "train"):
        rows = [(k, v) for k, v in cfg.get(part, {}).items() if v not in (None, {}, [])]
        parts.append(f"<div><h3>{part}</h3>{_kv_table(rows)}</div>")
    arch = cfg.get("resolved", {}).get("arch")
    note = f"<p class='muted'>model built as {_e(json.dumps(arch))}</p>" if arch else ""
    return _section("config", "Configuration", f'<div class="cols">{"".join(parts)}</div>{note}')


def _data_section(learn: Learner, run: dict[str, Any], out: Path) -> str:
    data = learn.data
    summary = data.summary()
    splits = summary["splits"]
    head = "".join(f"<th>{_e(s)}</th>" for s in splits)
    rows = "".join(
        f"<tr><td>{_e(name)}</td>"
        + "".join(f"<td>{summary['class_counts'][s][c]:,}</td>" for s in splits)
        + "</tr>"
        for c, name in enumerate(data.classes)
    )
    total = "".join(f"<td><b>{n:,}</b></td>" for n in splits.values())
    table = f"<table><tr><th>class</th>{head}</tr>{rows}<tr><td><b>all</b></td>{total}</tr></table>"
    prep = learn.preprocess
    facts = _kv_table(
        [
            ("dataset", data.name),
            ("image size", f"{prep.size[0]}×{prep.size[1]}, {prep.channels} channel(s)"),
            ("mean (train)", ", ".join(f"{m:.4f}" for m in prep.mean)),
            ("std (train)", ", ".join(f"{s:.4f}" for s in prep.std)),
            ("resize policy", prep.resize),
        ]
    )
    notes = "".join(f"<li>{_e(n)}</li>" for n in data.notes)
    grid = plots.sample_grid(data.train, out / "samples.png", per_class=8, title="train samples")
    body = (
        f'<div class="cols"><div>{facts}</div><div>{table}</div></div>'
        + (f"<ul class='muted'>{notes}</ul>" if notes else "")
        + _img(grid, "random training images, one row per class")
    )
    return _section("data", "Data", body)


def _training_section(run: dict[str, Any], interp: Interpretation, out: Path, run_dir: Path) -> str:
    history, batches = run["history"], run["batches"]
    if not history:
        return _section("training", "Training", "<p>No epoch finished.</p>")
    k = len(interp.classes)
    curves = plots.curves_plot(
        history,
        out / "curves.png",
        batch_losses=batches.get("loss", ()),
        batch_lrs=batches.get("lr", ()),
        per_epoch=batches.get("per_epoch", 0),
        chance_bits=math.log2(k) if k > 1 else None,
        events=run["events"],
    )
    cols = ("epoch", "train_loss", "valid_loss", "valid_bits", "accuracy", "lr", "seconds")
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in history
    )
    body = _img(curves, "loss, accuracy, learning rate and loss in bits against chance")
    body += f"<table><tr>{head}</tr>{rows}</table>"
    if run["events"]:
        items = "".join(
            f"<li>{_e(', '.join(f'{k}={_fmt(v)}' for k, v in ev.items() if k != 'event'))}</li>"
            for ev in run["events"]
        )
        body += f"<h3>Divergence guard</h3><ul>{items}</ul>"
    lr_png = run_dir / "lr_find.png"
    if lr_png.is_file():
        rec = run["lr_find"]
        chosen = rec.get("chosen")
        caption = "LR finder: loss against learning rate"
        if chosen:
            caption += f"; the run used {float(chosen):.2e}"
        body += "<h3>LR finder</h3>" + _img(lr_png, caption, name=lr_png.name)
    return _section("training", "Training", body)


def _results_section(interp: Interpretation, summary: dict[str, Any]) -> str:
    head = "<tr><th>class</th><th>support</th><th>predicted</th><th>precision</th>"
    head += "<th>recall</th><th>F1</th></tr>"
    rows = "".join(
        f"<tr><td>{_e(r['class'])}</td><td>{r['support']:,}</td><td>{r['predicted']:,}</td>"
        f"<td>{_pct(r['precision'])}</td><td>{_pct(r['recall'])}</td><td>{_pct(r['f1'])}</td></tr>"
        for r in summary["per_class"]
    )
    m = summary["macro"]
    rows += (
        f"<tr><td><b>macro average</b></td><td></td><td></td><td>{_pct(m['precision'])}</td>"
        f"<td>{_pct(m['recall'])}</td><td>{_pct(m['f1'])}</td></tr>"
    )
    pairs = summary["most_confused"][:10]
    confused = (
        "<table><tr><th>true</th><th>predicted as</th><th>count</th></tr>"
        + "".join(f"<tr><td>{_e(t)}</td><td>{_e(p)}</td><td>{n}</td></tr>" for t, p, n in pairs)
        + "</table>"
        if pairs
        else "<p>No mistakes.</p>"
    )
    body = (
        f'<div class="cols"><div><h3>Per class ({_e(interp.split)})</h3><table>{head}{rows}'
        f"</table></div><div><h3>Most confused pairs</h3>{confused}</div></div>"
        + "<h3>Confusion matrix</h3><p class='muted'>Rows are true classes, columns "
        "predictions; the shade is the row's share. Click a cell for its pictures (also as a "
        "figure: plots/confusion.png).</p>" + confusion_table(interp)
    )
    return _section("results", "Results", body)


# Grids drawn by the page (filterable by class) rather than embedded as figures.
FILTERED = {"top_losses": "losses", "uncertain": "uncertain"}


def _pictures_section(written: dict[str, Path], classes: list[str]) -> str:
    body = "".join(
        filtered_grid(FILTERED[stem], title, caption, classes)
        if stem in FILTERED
        else f"<h3>{_e(title)}</h3>" + _img(written[stem], caption)
        for stem, title, caption in plots.GRIDS
    )
    body += "<p class='muted'>Titles: predicted / true class, probability of the prediction, "
    body += "loss in nats; green is right, red wrong.</p>"
    return _section("pictures", "Pictures", body)


def _check_layer(model: torch.nn.Module, layer: str) -> None:
    from deepstart.interpret.vision import VisionError, conv_layers

    names = conv_layers(model)
    if layer not in names:
        raise VisionError(
            f"no conv layer {layer!r} in this model; its conv layers: {', '.join(names) or 'none'}"
        )


def _vision_section(
    learn: Learner, interp: Interpretation, out: Path, layer: str | None = None
) -> str:
    from deepstart.interpret import vision, vision_plots

    model, prep = learn.model, learn.preprocess
    body = ""
    weights = vision.first_layer_weights(model)
    body += "<h3>First-layer weights</h3>" + _img(
        vision_plots.kernel_grid(weights, out / "kernels.png", title="first layer"),
        "each kernel (or, for a dense net, each unit's weights over the image) scaled to its "
        "own range",
    )
    examples = _examples(interp)
    first = interp.images.images[examples[0]]
    body += "<h3>What a convolution does</h3>" + _img(
        vision_plots.hand_kernels_figure(
            first, vision.apply_kernels(first), out / "hand_kernels.png"
        ),
        "hand-made 3×3 kernels applied to one test image",
    )
    x = vision.normalise(interp.images.images[examples], prep.mean, prep.std).to(learn.device)
    layers = vision.conv_layers(model)
    if layers:
        shown = layer or layers[0]
        maps = vision.feature_maps(model, x[:1], shown)
        body += f"<h3>Feature maps of {_e(_layer_name(model, shown))}</h3>" + _img(
            vision_plots.feature_map_grid(maps, out / "feature_maps.png", title=shown),
            f"the output channels of layer {shown} for the first image above",
        )
        which = "the chosen" if layer else "the last"
        layer = layer or layers[-1]
        n_filters = min(16, _channels_of(model, layer))
        filters = vision.visualise_filters(
            model,
            layer,
            list(range(n_filters)),
            # At most 64 px a side: a filter's pattern shows as well, and each of the 48
            # ascent steps costs a forward and backward pass (30 s for EfficientNet-Lite0 at
            # 224 px on 2 cores, 2 s at 64 px).
            size=(min(prep.size[0], FILTER_SIDE), min(prep.size[1], FILTER_SIDE)),
            in_channels=prep.channels,
            mean=prep.mean,
            std=prep.std,
        )
        body += f"<h3>Filters of {_e(_layer_name(model, layer))}</h3>" + _img(
            vision_plots.filter_grid(filters, out / "filters.png", title=layer),
            f"activation maximisation: inputs optimised to excite each of the first "
            f"{n_filters} channels of {which} conv layer (gradient ascent with jitter)",
        )
    images = interp.images.images[examples]
    maps = {"saliency": vision.saliency(model, x), "SmoothGrad": vision.smoothgrad(model, x)}
    skipped = ""
    try:
        maps["Grad-CAM"] = vision.grad_cam(model, x)
    except vision.VisionError as e:
        skipped = f"<p class='muted'>Grad-CAM skipped: {_e(str(e))}</p>"
    titles = [f"{it['true']} → {it['pred']}" for it in map(interp.item, examples)]
    path = vision_plots.heatmap_grid(images, maps, out / "attribution.png", titles=titles)
    body += "<h3>Where the model looks: " + ", ".join(maps) + "</h3>" + skipped
    body += _img(
        path,
        "heat maps for the predicted class: confidently right pictures, then the top losses "
        "(title: true → predicted)",
    )
    return _section("vision", "What the network sees", body)


def _examples(interp: Interpretation) -> list[int]:
    """Pictures for the heat maps: the most confident correct picture of up to half of
    ``SALIENCY_IMAGES`` classes, then top losses (where did it look when it was wrong?)."""
    right = [int(v[0]) for v in interp.most_confident(correct=True).values() if len(v)]
    picked = right[: SALIENCY_IMAGES // 2]
    for i in interp.top_losses(SALIENCY_IMAGES).tolist():
        if len(picked) < SALIENCY_IMAGES and i not in picked:
            picked.append(i)
    return picked or [0]


def _channels_of(model: torch.nn.Module, layer: str) -> int:
    return int(dict(model.named_modules())[layer].out_channels)


def _layer_name(model: torch.nn.Module, layer: str) -> str:
    """``body.4`` -> ``body.4 (conv 16→32, 3×3)``: which layer a picture is of."""
    conv = dict(model.named_modules())[layer]
    k = "×".join(str(v) for v in conv.kernel_size)
    return f"{layer} (conv {conv.in_channels}→{conv.out_channels}, {k})"


# -- HTML -------------------------------------------------------------------------------------


def _page(title: str, sections: list[str]) -> str:
    nav = "".join(
        f'<a href="#{key}">{label}</a>'
        for key, label in (
            ("overview", "Overview"),
            ("config", "Config"),
            ("data", "Data"),
            ("training", "Training"),
            ("results", "Results"),
            ("pictures", "Pictures"),
            ("vision", "What the network sees"),
        )
    )
    made = time.strftime("%Y-%m-%d %H:%M")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>deepstart report: {_e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p>deepstart run report, made {made}</p></header>"
        f"<nav>{nav}</nav><main>{''.join(sections)}</main></body></html>\n"
    )


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_e(title)}</h2>{body}</section>'


def _img(path: Path, caption: str, name: str | None = None) -> str:
    """An embedded PNG; ``data-file`` says where the same file is, relative to the run dir."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    name = name or f"plots/{Path(path).name}"
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}" '
        f'data-file="{_e(name)}"><figcaption>{_e(caption)}</figcaption></figure>'
    )


def _kv_table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.3g}" if abs(v) < 1e-3 or abs(v) >= 1e5 else f"{v:.4g}"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return str(v)


def _pct(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{v * 100:.2f}%"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _finite(obj: Any) -> Any:
    """NaN (an undefined precision, say) becomes null: strict JSON has no NaN."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
