"""The report of a run, `deepstart interpret` and `deepstart report`, and `--tensorboard`:
each plot exists, opens and agrees with the numbers behind it."""

import base64
import io
import json
import math
import re

import pytest
from PIL import Image

from deepstart.cli import main
from tests.browser import find_chromium, render_page
from tests.conftest import SHARED_DATA

TINY = ["--data-opt", "n_train=300", "--data-opt", "n_test=90", "--size", "16"]

# Every picture a conv-net run's report shows (plots/<name>.png).
CONV_PLOTS = {
    "samples", "curves", "confusion", "top_losses", "confident_wrong", "confident_right",
    "uncertain", "kernels", "hand_kernels", "feature_maps", "filters", "attribution",
}  # fmt: skip


def _train(tmp_path, model="vgg_small", *extra, data=("--data", "shapes", *TINY)):
    out = tmp_path / "runs"
    assert not out.exists()
    args = ["train", *data, "--model", model, "--epochs", "2", "--lr", "3e-3"]
    # every panel, whatever this machine's speed ("auto" draws what fits 10% of training)
    args += ["--batch-size", "32", "--out", str(out), "--progress", "plain"]
    args += ["--report-panels", "all", *extra]
    assert main(args) == 0
    (run_dir,) = out.iterdir()
    return run_dir


def _images(page: str) -> list[tuple[str, Image.Image]]:
    """(data-file, decoded image) of every <img> of the page."""
    found = []
    for src, name in re.findall(
        r'<img src="data:image/png;base64,([^"]+)"[^>]*data-file="([^"]+)"', page
    ):
        im = Image.open(io.BytesIO(base64.b64decode(src)))
        im.load()
        found.append((name, im))
    return found


# Figures the page draws itself (a clickable confusion matrix, grids filtered by class, SVG
# curves, thumbnails of the training samples); their PNGs are still written to plots/.
DRAWN = {"confusion", "top_losses", "uncertain", "curves", "samples"}


def check_report(run_dir, plots: set[str]) -> dict:
    """What every report must satisfy; returns interpretation.json."""
    page = (run_dir / "report.html").read_text()
    assert page.count("data-file=") == len(plots - DRAWN)
    assert page.count('<svg class="chart"') == 4  # loss, accuracy, LR, bits
    embedded = _images(page)
    where = {p: "lr_find.png" if p == "lr_find" else f"plots/{p}.png" for p in plots}
    assert {name for name, _ in embedded} == {where[p] for p in plots - DRAWN}
    for name, im in embedded:
        assert im.width >= 100 and im.height >= 60, name
    assert all((run_dir / name).is_file() for name in where.values())
    # self-contained: nothing is fetched from anywhere, the scripts are inline
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script src" not in page

    interp = json.loads((run_dir / "interpretation.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    n = results["test"]["n"]
    cm = interp["confusion"]
    assert sum(map(sum, cm)) == n == interp["n"]
    assert sum(cm[i][i] for i in range(len(cm))) / n == pytest.approx(results["test"]["accuracy"])
    assert interp["accuracy"] == pytest.approx(results["test"]["accuracy"])
    losses = [t["loss"] for t in interp["top_losses"]]
    assert losses == sorted(losses, reverse=True)
    probs = [t["prob"] for t in interp["most_uncertain"]]
    assert probs == sorted(probs)
    for row, counts in zip(interp["per_class"], cm):
        assert row["support"] == sum(counts)
    assert f"{results['test']['accuracy'] * 100:.2f}%" in page
    return interp


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory):
    """One small conv-net run with its report, shared by the tests that only read it."""
    return _train(tmp_path_factory.mktemp("conv"))


def test_train_writes_a_report(conv_run):
    check_report(conv_run, CONV_PLOTS)
    page = (conv_run / "report.html").read_text()
    for heading in ("Configuration", "Data", "Training", "Results", "Grad-CAM", "SmoothGrad"):
        assert heading in page
    history = [json.loads(x) for x in (conv_run / "metrics.jsonl").read_text().splitlines()]
    batches = json.loads((conv_run / "batches.json").read_text())
    assert len(batches["loss"]) == len(batches["lr"]) == len(history) * batches["per_epoch"]
    assert max(batches["lr"]) == pytest.approx(3e-3, rel=1e-3)  # one-cycle peaks at --lr


def render_report(run_dir, tmp_path):
    """Render report.html in headless Chromium: every image loads, the page is long."""
    if find_chromium() is None:
        pytest.skip("headless Chromium not found (apt-get install chromium); .ci/run installs it")
    check = render_page(run_dir / "report.html", tmp_path / "report.png")
    # the figures, and the pictures the page's script put in the two filtered grids
    assert check.images > (run_dir / "report.html").read_text().count("<img")
    assert check.broken == []
    assert check.errors == []
    assert check.height > 4000  # a dozen figures and tables, not a collapsed page
    with Image.open(check.screenshot) as im:
        assert im.size == (1280, check.height)
        # not blank: the header bar is dark, the body mostly white
        assert im.getpixel((5, 5))[:3] != im.getpixel((640, check.height // 2))[:3]
    return check


@pytest.mark.browser
def test_report_renders_in_chromium(conv_run, tmp_path):
    check = render_report(conv_run, tmp_path)
    assert check.title.startswith("deepstart report: shapes")


def test_dense_model_report_says_why_grad_cam_is_missing(tmp_path):
    run_dir = _train(tmp_path, "mlp")
    dense = CONV_PLOTS - {"feature_maps", "filters"}
    check_report(run_dir, dense)
    assert "Grad-CAM skipped" in (run_dir / "report.html").read_text()


def test_report_and_interpret_commands(conv_run, capsys):
    run_dir = conv_run
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert "report.html" in capsys.readouterr().out
    check_report(run_dir, CONV_PLOTS)

    out = run_dir / "interp"
    assert main(["interpret", str(run_dir), "--out", str(out), "--top", "4"]) == 0
    text = capsys.readouterr().out
    assert "precision" in text and "macro average" in text
    for name in ("circle", "square", "triangle"):
        assert name in text
    assert {p.stem for p in out.iterdir()} == {
        "confusion", "top_losses", "confident_wrong", "confident_right", "uncertain",
    }  # fmt: skip

    assert main(["interpret", str(run_dir), "--json", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sum(map(sum, summary["confusion"])) == summary["n"] == 90


def test_report_layer_option(conv_run, capsys):
    assert main(["report", str(conv_run), "--layer", "body.3"]) == 0
    page = (conv_run / "report.html").read_text()
    assert "Feature maps of body.3 (conv" in page and "Filters of body.3 (conv" in page
    capsys.readouterr()
    assert main(["report", str(conv_run), "--layer", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "no conv layer 'nosuch'" in err and "body.0" in err


def test_lr_auto_run_report_shows_the_lr_finder(tmp_path, monkeypatch):
    from deepstart.run import resolve

    monkeypatch.setattr(resolve, "KEEP_WITHIN", 1e9)  # the valley counts as near: LR kept
    run_dir = _train(tmp_path, "vgg_small", "--lr", "auto")
    check_report(run_dir, CONV_PLOTS | {"lr_find"})
    page = (run_dir / "report.html").read_text()
    rec = json.loads((run_dir / "lr_find.json").read_text())
    assert "LR finder" in page and f"the run used {rec['chosen']:.2e}" in page
    valley = rec["suggestions"]["valley"]
    assert f"vgg_small&#x27;s own LR (valley {valley:.2e}; the valley is within 1e+09x" in page


def test_report_of_a_non_run_directory_is_a_clean_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_tensorboard_flag_writes_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = _train(tmp_path, "vgg_small", "--no-report", "--tensorboard")
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    got = [e.value for e in acc.Scalars("epoch/accuracy")]
    assert got == pytest.approx([r["accuracy"] for r in history], abs=1e-6)
    assert [e.step for e in acc.Scalars("epoch/accuracy")] == [1, 2]
    assert acc.Scalars("epoch/chance_bits")[0].value == pytest.approx(math.log2(3))


MNIST = pytest.mark.skipif(
    not (SHARED_DATA / "mnist").is_dir(), reason="needs ../shared/data/mnist"
)


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """The acceptance run: one epoch of mnist_cnn on all 60k real MNIST digits."""
    return _train(
        tmp_path_factory.mktemp("mnist"),
        "mnist_cnn",
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--precision",
        "bf16",
        data=("--data", "mnist", "--data-dir", str(SHARED_DATA)),
    )


@pytest.mark.slow
@MNIST
def test_mnist_run_report(mnist_run):
    interp = check_report(mnist_run, CONV_PLOTS)
    assert interp["n"] == 10_000
    assert interp["accuracy"] > 0.97
    assert interp["classes"] == [str(d) for d in range(10)]


@pytest.mark.slow
@pytest.mark.browser
@MNIST
def test_mnist_report_renders_in_chromium(mnist_run, tmp_path):
    check = render_report(mnist_run, tmp_path)
    assert check.title.startswith("deepstart report: mnist")
