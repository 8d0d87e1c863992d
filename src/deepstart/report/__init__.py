"""A run directory -> ``report.html``: everything about one run on one page.

The page is self-contained: every picture is embedded as a data URI (figures also kept in
``plots/`` beside it), the training curves are inline SVG, the little script that makes the
confusion matrix clickable and the grids filterable is inline
(:mod:`deepstart.interpret.explorer`), and nothing comes from a CDN, so it opens offline and
can be mailed. The numbers behind the pictures go to ``interpretation.json``.

What it costs: the core sections (:mod:`.sections`) take well under a second; the slow
panels (:mod:`.panels`) are drawn within a budget (:mod:`.budget`): after ``deepstart
train`` at most 10% of the training time by default (``--report-panels``), everything when
asked for with ``deepstart report RUN_DIR``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepstart.data.dataset import conform_images
from deepstart.interpret.analysis import Interpretation
from deepstart.interpret.explorer import explorer_assets
from deepstart.report import sections
from deepstart.report.budget import SHARE, Budget
from deepstart.report.page import esc, page, section
from deepstart.report.panels import TOP_LOSSES, Panels, vision_section
from deepstart.run.rundir import RunDir, load_run_learner
from deepstart.train.learner import Learner

__all__ = ["build_report", "read_run"]


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
    panels: str = "all",
) -> Path:
    """Write ``report.html``, ``interpretation.json`` and the figures (``plots/*.png``) of a
    run.

    ``learn`` is a Learner holding the trained model and its data (``train`` passes its own);
    without it the run's saved model and dataset are loaded. ``layer`` names the conv layer
    whose feature maps and filters are shown (default: maps of the first, filters of the last).
    ``scored`` is ``learn.evaluate(split)``'s result when the caller has it (``train`` has):
    its probabilities are used as they are, so the report shows the very numbers the run
    printed and the split is not predicted twice. ``panels``: "all" draws every panel,
    "core" none of the slow ones, "auto" those that keep the report within 10% of the run's
    training time (what ``deepstart train`` does); ``log`` hears what was drawn and left out.

    Example:
        >>> build_report("runs/20261123-101500-mnist-mnist_cnn")
        PosixPath('runs/20261123-101500-mnist-mnist_cnn/report.html')
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    # the budget counts from here: the core sections spend it first, the slow panels the rest
    budget = Budget.for_run(panels, run["results"].get("train_seconds"), log=log)
    if budget.seconds is not None:
        log(f"report: writing (budget {budget.seconds:.1f}s, {SHARE:.0%} of the training time)")
    if learn is None:
        learn = load_run_learner(run_dir, device=device)
    if layer is not None:
        _check_layer(learn.model, layer)
    if scored is not None and scored.get("split") in (split, "valid") and "probs" in scored:
        images = conform_images(learn._split(scored["split"]), learn.preprocess)
        interp = Interpretation(images, scored["probs"], scored["split"])
    else:
        interp = Interpretation.from_learner(learn, split)
    summary = interp.summary(top=TOP_LOSSES)
    RunDir(run_dir).write_json("interpretation.json", summary)  # strict JSON, atomic
    core = [
        sections.overview(run, interp),
        sections.config(run),
        sections.data(learn),
        sections.training(run, interp, run_dir),
        sections.results(interp, summary),
    ]
    log(f"report: core sections {time.perf_counter() - start:.1f}s")
    drawn = Panels(learn, interp, run_dir / "plots", budget, run, layer).draw_all()
    left_out = _left_out(budget, run_dir)
    body = [
        *core,
        sections.pictures(drawn.written, interp.classes, left_out if budget.skipped else ""),
        _section_vision(drawn, left_out),
        explorer_assets(interp, TOP_LOSSES),  # the pictures and script of the grids above
    ]
    path = run_dir / "report.html"
    path.write_text(page(_title(run), body))
    if budget.skipped:
        log(f"report: {budget.summary()}; deepstart report {run_dir} draws everything")
    log(f"report: {path} ({time.perf_counter() - start:.1f}s)")
    return path


def _section_vision(drawn: Any, left_out: str) -> str:
    return section("vision", "What the network sees", vision_section(drawn, left_out))


def _left_out(budget: Budget, run_dir: Path) -> str:
    """A note naming the panels left out, with the command that draws them."""
    if not budget.skipped:
        return ""
    names = ", ".join(name for name, _ in budget.skipped)
    return (
        f"<p class='muted'>Left out to keep this report within {SHARE:.0%} of the training "
        f"time: {esc(names)}. <code>deepstart report {esc(str(run_dir))}</code> draws "
        "everything.</p>"
    )


def _title(run: dict[str, Any]) -> str:
    cfg = run["config"]
    return f"{cfg.get('data', {}).get('name', '?')} · {cfg.get('model', {}).get('name', '?')}"


def _check_layer(model: Any, layer: str) -> None:
    from deepstart.interpret.vision import VisionError, conv_layers

    names = conv_layers(model)
    if layer not in names:
        raise VisionError(
            f"no conv layer {layer!r} in this model; its conv layers: {', '.join(names) or 'none'}"
        )
