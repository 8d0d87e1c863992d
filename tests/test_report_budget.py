"""The report's time budget: after training, the slow panels are drawn only while the report
stays within 10% of the training time; the core sections (tables, SVG curves, thumbnails)
always. Deterministic: the budget is set through the run's recorded training time and a
fake clock, never by racing a real one."""

import json
import re
import sys

import pytest

from deepstart.cli import main
from deepstart.config import TrainConfig
from deepstart.errors import ConfigError
from deepstart.report import build_report
from deepstart.report.budget import FIGURE_PRIOR, IMPORT_PRIOR, PANELS, SHARE, Budget
from deepstart.report.svg import Series, line_chart

TINY = ["--data-opt", "n_train=120", "--data-opt", "n_test=30", "--size", "16"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_budget_allows_what_fits_and_remembers_what_not():
    clock = Clock()
    b = Budget(2.0, clock=clock)
    assert b.allows("a", 1.5)
    clock.now += 1.0
    assert not b.allows("b", 1.5)  # 1.0 s left
    assert b.allows("c", 0.9)
    b.skip("d")
    assert b.skipped == [("b", 1.5), ("d", None)]
    assert "b (~2s)" in b.summary() and "d" in b.summary()
    assert Budget(None).allows("anything", 1e9)


def test_figure_estimate_learns_from_drawn_figures():
    clock = Clock()
    b = Budget(None, clock=clock)
    importing = 0.0 if "matplotlib.pyplot" in sys.modules else IMPORT_PRIOR
    assert b.figure_seconds(2) == pytest.approx(importing + 2 * FIGURE_PRIOR)  # the prior
    with b.panel("two figures", figures=2):
        clock.now += 3.0
    assert b.drawn == [("two figures", 3.0)]
    assert b.figure_seconds(4) == pytest.approx(importing + 6.0)  # 1.5 s a figure, measured


def test_for_run_budgets():
    assert Budget.for_run("all", 50.0).seconds is None
    assert Budget.for_run("core", 50.0).seconds == 0.0
    assert Budget.for_run("auto", 50.0).seconds == pytest.approx(SHARE * 50.0)
    assert Budget.for_run("auto", None).seconds is None  # unknown training time: no limit
    with pytest.raises(ValueError):
        Budget.for_run("some", 1.0)


def test_the_option_offers_the_budget_choices():
    from deepstart.config.training import REPORT_PANELS

    assert REPORT_PANELS == PANELS
    with pytest.raises(ConfigError, match="report_panels"):
        TrainConfig(report_panels="half")


def test_svg_chart_draws_each_series_and_skips_bad_points():
    svg = line_chart(
        "Loss",
        [Series("a", [1, 2, 3], [1.0, float("nan"), 0.5], "#123"), Series("b", [1], [2.0], "#456")],
        hline=(1.5, "chance"),
        vlines=[2],
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 2
    assert "chance" in svg and "stroke-dasharray" in svg and 'stroke="#cf222e"' in svg
    log = line_chart("LR", [Series("lr", [1, 2, 3], [1e-4, 1e-3, 0.0], "#789")], log_y=True)
    assert log.count("<polyline") == 1 and "e-04" in log  # the zero is left out of a log axis
    assert "no data" in line_chart("empty", [Series("x", [], [], "#000")])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("budget") / "runs"
    args = ["train", "--data", "shapes", *TINY, "--model", "vgg_small", "--epochs", "1"]
    args += ["--batch-size", "32", "--out", str(out), "--progress", "plain", "--no-report"]
    assert main(args) == 0
    (run,) = out.iterdir()
    return run


def _set_train_seconds(run, seconds):
    path = run / "results.json"
    results = json.loads(path.read_text())
    results["train_seconds"] = seconds
    path.write_text(json.dumps(results))


def _report(run, panels, seconds):
    _set_train_seconds(run, seconds)
    for png in (run / "plots").glob("*.png") if (run / "plots").is_dir() else ():
        png.unlink()
    lines = []
    build_report(run, panels=panels, log=lines.append)
    return (run / "report.html").read_text(), lines


def test_core_report_has_the_essentials_and_names_what_it_left_out(run_dir):
    page, lines = _report(run_dir, "core", 30.0)
    assert page.count('<svg class="chart"') == 4  # curves without matplotlib
    assert page.count('class="strip"') == 3  # training samples, one row per class
    assert "data-file=" not in page  # no figure
    assert not list((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else True
    assert "Left out to keep this report within 10%" in page
    assert f"deepstart report {run_dir}" in page
    for panel in ("first-layer weights", "attribution", "filters", "plot files"):
        assert panel in page
    assert any("left out" in line for line in lines)
    assert re.search(r"report: .*report\.html \(\d+\.\d+s\)", lines[-1])


def test_auto_report_after_a_long_training_draws_everything(run_dir):
    # 10% of a (recorded) 100,000-second training: every panel fits
    page, lines = _report(run_dir, "auto", 1e5)
    assert "Left out" not in page
    assert {"kernels", "feature_maps", "filters", "attribution", "confusion"} <= {
        p.stem for p in (run_dir / "plots").glob("*.png")
    }
    assert lines[0].startswith("report: writing (budget 10000.0s")


def test_auto_report_after_an_instant_training_keeps_the_core(run_dir):
    page, _ = _report(run_dir, "auto", 1e-3)
    assert "Left out" in page and page.count('<svg class="chart"') == 4
    assert "data-file=" not in page
