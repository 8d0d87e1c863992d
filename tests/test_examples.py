"""The example notebooks (examples/*.ipynb) run in a real Jupyter kernel, small
(DEEPSTART_QUICK=1), and show what a learner should see: progress that updates in place,
pictures inline (image/png), and accuracies in the expected range — not only that they ran."""

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import CIFAR_ARCHIVE, SHARED_DATA
from tests.nbkernel import execute_notebook, mime_types

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CIFAR = CIFAR_ARCHIVE

# notebook -> (needs, {printed name: (low, high)} accuracy ranges of the small run,
#              fewest inline pictures, fits that show progress)
CASES = {
    "01_shapes_vgg": (None, {"test accuracy": (0.9, 1.0)}, 5, 3),
    "02_mnist_journey": (
        SHARED_DATA / "mnist",
        {"logreg test accuracy": (0.80, 0.95), "mnist_cnn test accuracy": (0.80, 1.0)},
        2,
        2,
    ),
    "03_keras_cifar_cnn": (CIFAR, {"test accuracy": (0.15, 0.6)}, 4, 1),
    "04_photos_pretrained": (CIFAR, {"valid accuracy": (0.55, 1.0)}, 3, 3),
    "05_fit_sin": (None, {}, 2, 2),
}


def _text(out) -> str:
    """What one output printed or showed as plain text."""
    return out.get("text", "") or out.get("data", {}).get("text/plain", "")


def _accuracies(text: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"^([a-z_ ]*accuracy) (\d\.\d+)", text, re.M)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_example_notebook_runs_and_shows_its_results(name, tmp_path, monkeypatch, request):
    needs, ranges, pictures, fits = CASES[name]
    if needs is not None and not needs.exists():
        pytest.skip(f"needs {needs}")
    if needs == CIFAR:  # decoded once for every test that reads it (the kernel inherits env)
        monkeypatch.setenv("DEEPSTART_CACHE", str(request.getfixturevalue("cifar_cache")[0]))
    book = tmp_path / f"{name}.ipynb"
    shutil.copy(EXAMPLES / book.name, book)  # it writes beside itself (catdog/, a bundle)
    monkeypatch.setenv("DEEPSTART_QUICK", "1")
    monkeypatch.setenv("DEEPSTART_DATA", str(SHARED_DATA))
    nb = execute_notebook(book, tmp_path, monkeypatch, timeout=600)
    code = [c for c in nb.cells if c.cell_type == "code"]
    mimes = [m for c in code for m in mime_types(c)]
    assert mimes.count("image/png") >= pictures, mimes
    # each fit's live bar and table: HTML displays (updated in place: nbclient folds each
    # update into the display it names, so one output per display remains)
    progress = [
        out
        for c in code
        for out in c.outputs
        if out.output_type == "display_data"
        and "<progress" in out.get("data", {}).get("text/html", "")
    ]
    assert len(progress) >= fits, f"{len(progress)} progress bars"
    printed = "\n".join(_text(out) for c in code for out in c.outputs)
    # a figure shows as a picture (its text/plain alternative aside), never as a repr alone
    alone = [_text(o) for c in code for o in c.outputs if "image/png" not in o.get("data", {})]
    assert not [t for t in alone if "Figure size" in t], alone
    assert "ipywidgets" not in printed
    got = _accuracies(printed)
    for label, (low, high) in ranges.items():
        assert label in got, printed[-2000:]
        assert low <= got[label] <= high, (label, got[label])
