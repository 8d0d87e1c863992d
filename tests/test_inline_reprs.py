"""Notebook displays: short reprs (never a tensor dump), HTML tables with the right numbers,
and figures that show inline by themselves (``_repr_png_``) without pyplot's global state.
The last test runs a real Jupyter kernel."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from deepstart.data.dataset import DataError, ImageSet
from deepstart.figures import InlineFigure
from deepstart.interpret.analysis import Interpretation
from deepstart.models.registry import create_model
from deepstart.models.summary import summarize
from deepstart.train.callbacks import Recorder
from deepstart.train.display import History
from deepstart.train.learner import Learner
from deepstart.train.lr_finder import LRFindResult
from tests.nbkernel import SRC, mime_types, run_notebook, texts

PNG = b"\x89PNG"


def n_images(fig) -> int:
    return sum(len(ax.images) for ax in fig.axes if ax.get_visible())


def short(text: str) -> None:
    assert len(text) < 300 and "tensor(" not in text and "\n" not in text, text


@pytest.fixture
def learn(toy_data):
    model = create_model("logreg", in_channels=1, num_classes=3, input_size=(16, 16))
    learn = Learner(toy_data, model, batch_size=64, device="cpu", log=lambda _: None)
    learn.fit_one_cycle(1, lr_max=3e-3)
    return learn


def hand_interp() -> Interpretation:
    """4 pictures of 2 classes: true a, a, b, b; predicted a, b, b, b."""
    images = ImageSet(
        torch.arange(4 * 16, dtype=torch.uint8).view(4, 1, 4, 4),
        torch.tensor([0, 0, 1, 1]),
        ["a", "b"],
    )
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8]])
    return Interpretation(images, probs, "valid")


# -- LR finder --------------------------------------------------------------------------------


def lr_result(**kw) -> LRFindResult:
    lrs = [10 ** (k / 4 - 7) for k in range(33)]  # 1e-7 .. 10
    losses = [2.0 - 0.05 * k if k < 25 else 0.8 + 0.5 * (k - 25) for k in range(33)]
    d = dict(lrs=lrs, losses=losses, smoothed=losses, suggestions={"valley": 3e-3, "steep": 1e-3})
    return LRFindResult(**{**d, **kw})


def test_lr_find_result_repr_is_one_line_and_its_png_is_the_plot():
    r = lr_result()
    short(repr(r))
    assert repr(r) == "LRFindResult(suggestion=3.0e-03 (valley), 33 points from 1e-07 to 10)"
    stopped = lr_result(suggestions={"valley": math.nan}, stop_reason="diverged")
    assert "none (valley" in repr(stopped) and "stopped: diverged" in repr(stopped)
    assert r._repr_png_()[:4] == PNG
    fig = r.figure()
    assert isinstance(fig, InlineFigure) and fig._repr_png_()[:4] == PNG


# -- data ------------------------------------------------------------------------------------


def test_dataset_repr_names_sizes_and_no_pixels(toy_data):
    text = repr(toy_data)
    short(text)
    n_train, n_valid, n_test = len(toy_data.train), len(toy_data.valid), len(toy_data.test)
    assert text == (
        f"Dataset('bars', 3 classes: class0, class1, class2; train {n_train}, valid {n_valid}, "
        f"test {n_test}; images 1x16x16 uint8)"
    )
    assert str(toy_data) == text
    assert repr(toy_data.train) == f"ImageSet({n_train} images 1x16x16 uint8, 3 classes)"


def test_dataset_html_has_the_counts_and_a_picture_per_class(toy_data):
    page = toy_data._repr_html_()
    counts = toy_data.train.class_counts()
    for c, name in enumerate(toy_data.classes):
        assert f"<td>{name}</td><td>{counts[c]}</td>" in page
    assert f"<td>all</td><td>{len(toy_data.train)}</td><td>{len(toy_data.valid)}</td>" in page
    assert page.count("data:image/png;base64,") == 3
    assert "tensor(" not in page


def test_dataset_show_batch_is_an_inline_figure_of_labelled_pictures(toy_data):
    fig = toy_data.show_batch(6, ncols=3)
    assert isinstance(fig, InlineFigure) and n_images(fig) == 6
    titles = {ax.get_title() for ax in fig.axes if ax.images}
    assert titles <= set(toy_data.classes)
    assert fig._repr_png_()[:4] == PNG
    assert n_images(toy_data.show_batch(50, split="valid")) == len(toy_data.valid)
    with pytest.raises(DataError, match="no 'nope' split"):
        toy_data.show_batch(split="nope")


def test_show_batch_with_an_augment_shows_augmented_pixels(toy_data):
    from deepstart.augment import make_augment

    aug = make_augment("digits", toy_data.mean, toy_data.std)
    plain = toy_data.show_batch(4, seed=1)
    moved = toy_data.show_batch(4, seed=1, augment=aug)
    a = [ax.images[0].get_array() for ax in plain.axes if ax.images]
    b = [ax.images[0].get_array() for ax in moved.axes if ax.images]
    assert len(a) == len(b) == 4 and any((x != y).any() for x, y in zip(a, b))
    assert "augmented" in moved._suptitle.get_text()


# -- training --------------------------------------------------------------------------------


def test_history_is_a_list_that_shows_as_a_table():
    rows = [
        {"epoch": 1, "train_loss": 0.5, "accuracy": 0.75},
        {"epoch": 2, "train_loss": 0.25, "accuracy": 0.875},
    ]
    h = History(rows)
    assert h == rows and json.loads(json.dumps(h)) == rows and h[-1]["epoch"] == 2
    assert h[:1] == rows[:1] and list(h) == rows
    page = h._repr_html_()
    assert "<th>accuracy</th>" in page and "<td>0.8750</td>" in page and "<td>0.2500</td>" in page
    assert h.text().splitlines()[0].split() == ["epoch", "train_loss", "accuracy"]
    assert "no epochs" in History()._repr_html_()
    long = History({"epoch": i} for i in range(1, 201))
    shown = long._repr_html_()
    assert "<td>1</td>" in shown and "<td>200</td>" in shown and "<td>100</td>" not in shown


def test_recorder_history_stays_a_history_through_a_checkpoint_state():
    rec = Recorder()
    rec.load_state(
        {
            "history": [{"epoch": 1}],
            "batch_losses": [],
            "batch_lrs": [],
            "epoch_losses": [],
            "epoch_sizes": [],
            "epoch_lrs": [],
        }
    )
    assert isinstance(rec.history, History) and rec.table() == [{"epoch": 1}]
    assert type(rec.state()["history"]) is list  # torch.load(weights_only=True) takes plain lists


def test_learner_repr_html_and_figures(learn):
    text = repr(learn)
    short(text)
    assert text.startswith("Learner(logreg (771 parameters); data 'bars'") and "1 epoch;" in text
    best = max(r["accuracy"] for r in learn.recorder.history)
    assert f"best accuracy {best:.4g} (epoch 1)" in text
    page = learn._repr_html_()
    assert "logreg" in page and "adamw, lr 3.0e-03" in page and "tensor(" not in page
    assert f"{learn.recorder.history[0]['valid_loss']:.4f}" in learn.recorder._repr_html_()

    fig = learn.recorder.plot_loss()
    assert isinstance(fig, InlineFigure) and len(fig.axes) == 1
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert len(lines["batch"].get_xdata()) == len(learn.recorder.batch_losses)
    assert fig._repr_png_()[:4] == PNG

    shown = learn.show_results(4, ncols=2)
    assert isinstance(shown, InlineFigure) and n_images(shown) == 4
    titles = [ax.get_title() for ax in shown.axes if ax.images]
    assert all(" / " in t for t in titles)
    assert shown._repr_png_()[:4] == PNG


def test_a_half_built_learner_still_has_a_repr():
    assert repr(Learner.__new__(Learner)) == "<Learner, not fully built>"


def test_show_results_refuses_what_is_not_an_image_classifier():
    from deepstart.data.tensors import TensorData, TensorSet
    from deepstart.errors import ConfigError

    x = torch.linspace(-3, 3, 32)
    data = TensorData("sin", TensorSet(x, torch.sin(x)), TensorSet(x, torch.sin(x)))
    learn = Learner(data, create_model("fit_mlp"), device="cpu", log=lambda _: None)
    short(repr(learn))
    with pytest.raises(ConfigError, match="image classifiers"):
        learn.show_results()


# -- interpretation --------------------------------------------------------------------------


def test_interpretation_repr_and_html_hold_its_numbers():
    interp = hand_interp()
    short(repr(interp))
    loss = -(math.log(0.9) + math.log(0.3) + math.log(0.55) + math.log(0.8)) / 4
    assert repr(interp) == (
        f"Interpretation(valid: 4 images, 2 classes, accuracy 0.7500, loss {loss:.4f} nats)"
    )
    page = interp._repr_html_()
    assert "accuracy <b>75.00%</b> on 4 images" in page
    assert "<tr><td>a</td><td><b>1</b></td><td>1</td></tr>" in page  # row a: 1 right, 1 as b
    assert "<tr><td>b</td><td>0</td><td><b>2</b></td></tr>" in page
    assert "<caption>most confused</caption>" in page and "<td>a</td><td>b</td><td>1</td>" in page


def test_interpretation_plots_are_inline_figures():
    interp = hand_interp()
    cm = interp.plot_confusion_matrix()
    assert isinstance(cm, InlineFigure) and n_images(cm) == 1 and len(cm.axes) == 2  # + colour bar
    assert cm.axes[0].images[0].get_array().tolist() == [[1, 1], [0, 2]]
    norm = interp.plot_confusion_matrix(normalise=True)
    assert norm.axes[0].images[0].get_array().tolist() == [[0.5, 0.5], [0.0, 1.0]]
    top = interp.plot_top_losses(3)
    assert n_images(top) == 3
    first = next(ax for ax in top.axes if ax.images).get_title()
    assert first.startswith("b / a") and "loss 1.20" in first  # item 1: p(a) = 0.3
    unsure = interp.plot_most_uncertain(2)
    assert n_images(unsure) == 2
    assert next(ax for ax in unsure.axes if ax.images).get_title().startswith("b / b\np 0.55")
    for fig in (cm, norm, top, unsure):
        assert fig._repr_png_()[:4] == PNG


def test_model_summary_repr_and_html():
    s = summarize(create_model("mnist_cnn"), (1, 28, 28))
    short(repr(s))
    assert repr(s).startswith(f"ModelSummary({len(s.rows)} layers, 1.2 M parameters")
    page = s._repr_html_()
    assert page.count("<tr") == len(s.rows) + 1 and "1,179,776" in page
    assert "border-top" in page  # the line between the features and the head


# -- no pyplot -------------------------------------------------------------------------------


def test_no_figure_goes_through_pyplot():
    """A notebook's inline backend is left alone (no matplotlib.use, no pyplot import), and
    no figure stays open: every picture path, the report's PNGs included."""
    code = """
import sys, torch
from deepstart.data.dataset import make_dataset
from tests.conftest import bars
from deepstart.interpret.analysis import Interpretation
from deepstart.interpret import plots, show_batch
data = make_dataset("bars", bars(60), bars(30, seed=1), valid_pct=0.2)
interp = Interpretation(data.valid, torch.full((len(data.valid), 3), 1 / 3), "valid")
for _ in range(3):
    data.show_batch(4); interp.plot_top_losses(2); interp.plot_confusion_matrix()
plots.write_interpretation_plots(interp, sys.argv[1], top=2, per_class=1)
plots.sample_grid(data.train, sys.argv[1] + "/s.png", per_class=2)
show_batch.show_batch(data.train, "digits", sys.argv[1] + "/a.png", n=4)
import matplotlib
print("pyplot" if "matplotlib.pyplot" in sys.modules else "none", matplotlib.get_backend())
"""
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        env = {
            "PYTHONPATH": f"{SRC}:{SRC.parent}",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "PATH": "",
        }
        done = subprocess.run(
            [sys.executable, "-c", code, out], capture_output=True, text=True, env=env, timeout=300
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["none", "module://matplotlib_inline.backend_inline"]


# -- a real kernel ---------------------------------------------------------------------------


def test_a_notebook_shows_each_picture_once_without_magics(tmp_path, monkeypatch):
    cells = [
        "from deepstart import Learner, create_model, load_dataset\n"
        "from deepstart.interpret.analysis import Interpretation\n"
        "data = load_dataset('shapes', size=16, n_train=150, n_test=30)\n"
        "learn = Learner(data, create_model('vgg_small', in_channels=1, num_classes=3,"
        " input_size=(16, 16)), batch_size=32, device='cpu')\n"
        "learn.fit_one_cycle(1, lr_max=3e-3)",
        "learn.lr_find(num_it=12)",
        "interp = Interpretation.from_learner(learn, 'valid')\ninterp.plot_confusion_matrix()",
        "data.show_batch(8)",
        "learn.recorder.plot_loss()",
        "data",
        "interp",
    ]
    nb = run_notebook(cells, tmp_path, monkeypatch)
    for cell in nb.cells[1:5]:
        assert mime_types(cell).count("image/png") == 1, (cell.source, mime_types(cell))
        assert "<Figure size" not in texts(cell) and "tensor(" not in texts(cell)
    for cell in nb.cells[5:]:
        assert mime_types(cell).count("text/html") == 1 and "image/png" not in mime_types(cell)
        assert "tensor(" not in texts(cell)
    assert "LRFindResult(suggestion=" in texts(nb.cells[1])
