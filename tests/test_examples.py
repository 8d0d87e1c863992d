"""The example notebooks (examples/*.ipynb) run in a real Jupyter kernel, small
(DEEPSTART_QUICK=1), and show what a learner should see: progress that updates in place,
pictures inline (image/png), and accuracies in the expected range — not only that they ran."""

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tests.nbkernel import execute_notebook, mime_types, texts

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CIFAR = SHARED_DATA / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"

# notebook -> (needs, {printed name: (low, high)} accuracy ranges of the small run,
#              fewest inline pictures, fits that show progress)
CASES = {
    "01_shapes_vgg": (None, {"test accuracy": (0.9, 1.0)}, 5, 3),
    "02_mnist_journey": (
        SHARED_DATA / "mnist",
        {"logreg test accuracy": (0.80, 0.95), "mnist_cnn test accuracy": (0.90, 1.0)},
        2,
        2,
    ),
    "03_keras_cifar_cnn": (CIFAR, {"test accuracy": (0.15, 0.6)}, 4, 1),
    "04_photos_pretrained": (CIFAR, {"valid accuracy": (0.55, 1.0)}, 3, 3),
    "05_fit_sin": (None, {}, 2, 2),
}


def _accuracies(text: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"^(.*accuracy) (\d\.\d+)", text, re.M)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_example_notebook_runs_and_shows_its_results(name, tmp_path, monkeypatch):
    needs, ranges, pictures, fits = CASES[name]
    if needs is not None and not needs.exists():
        pytest.skip(f"needs {needs}")
    book = tmp_path / f"{name}.ipynb"
    shutil.copy(EXAMPLES / book.name, book)  # it writes beside itself (catdog/, a bundle)
    monkeypatch.setenv("DEEPSTART_QUICK", "1")
    monkeypatch.setenv("DEEPSTART_DATA", str(SHARED_DATA))
    nb = execute_notebook(book, tmp_path, monkeypatch, timeout=600)
    code = [c for c in nb.cells if c.cell_type == "code"]
    mimes = [m for c in code for m in mime_types(c)]
    assert mimes.count("image/png") >= pictures, mimes
    # each fit's live table: an HTML display updated in place
    html = [
        out
        for c in code
        for out in c.outputs
        if out.output_type in ("display_data", "update_display_data")
        and "epoch" in out.get("data", {}).get("text/html", "")
    ]
    shown = {out.get("transient", {}).get("display_id") for out in html}
    assert len(shown) >= fits, f"{len(shown)} progress displays"
    printed = "".join(texts(c) for c in code)
    assert "<Figure size" not in printed  # a figure shows as a picture, never as its repr
    assert "ipywidgets" not in printed
    got = _accuracies(printed)
    for label, (low, high) in ranges.items():
        assert label in got, printed[-2000:]
        assert low <= got[label] <= high, (label, got[label])
