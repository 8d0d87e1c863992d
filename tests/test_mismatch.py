"""The preprocessing-mismatch check: the summary, each kind of warning, no false alarms, and
the wiring into training runs, evaluation and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deepstart.cli import main
from deepstart.data import mnist
from deepstart.data.dataset import ImageSet, make_dataset
from deepstart.data.mismatch import check_inputs, input_stats
from deepstart.models.registry import create_model
from deepstart.train.learner import Learner
from tests.test_affnist import write_mnist

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def blobs(n: int, seed: int, size: int = 28, jitter: int = 2, shift: tuple[int, int] = (0, 0)):
    """``(n, 1, size, size)`` uint8: a bright bar (random length, brightness) on black, near the
    middle (± ``jitter`` px), moved by ``shift`` (dx, dy)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    mid = size // 2
    for i in range(n):
        dx, dy = (
            torch.randint(-jitter, jitter + 1, (2,), generator=g) + torch.tensor(shift)
        ).tolist()
        h, w = torch.randint(3, 9, (2,), generator=g).tolist()
        v = int(torch.randint(150, 256, (1,), generator=g))
        top, left = mid - h // 2 + dy, mid - w // 2 + dx
        x[i, 0, top : top + h, left : left + w] = v
    return x


@pytest.fixture(scope="module")
def train_stats():
    return input_stats(blobs(1500, seed=0))


# --- the summary ----------------------------------------------------------------------------


def test_input_stats_is_json_and_measures_where_content_sits():
    x = torch.zeros(3, 1, 10, 12, dtype=torch.uint8)
    x[:, 0, 3, 5] = 200  # one bright pixel at column 5, row 3
    s = input_stats(x)
    assert json.loads(json.dumps(s)) == s
    assert s["size"] == [10, 12] and s["channels"] == 1 and s["n"] == 3
    assert s["centre"] == [5.0, 3.0] and s["centre_spread"] == [0.0, 0.0]
    assert s["radius"] == 0.0 and s["background"] == [0.0] and s["blank"] == 0.0
    assert s["mean"] == [pytest.approx(200 / 255 / 120, abs=1e-6)]


def test_input_stats_of_dark_ink_on_white_and_of_blank_images():
    x = torch.full((4, 3, 16, 16), 255, dtype=torch.uint8)
    x[:, :, 8:12, 2:4] = 0  # dark ink: content is what differs from the border, either way
    s = input_stats(x)
    assert s["background"] == [1.0, 1.0, 1.0]
    assert s["centre"] == [2.5, 9.5]
    blank = input_stats(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    assert blank["centre"] is None and blank["blank"] == 1.0


def test_input_stats_samples_large_sets():
    s = input_stats(blobs(50, seed=1), max_images=20)
    assert s["n"] == 20 and s["n_total"] == 50


def test_input_stats_wants_uint8_nchw():
    with pytest.raises(ValueError, match="uint8"):
        input_stats(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="N, C, H, W"):
        input_stats(torch.zeros(8, 8, dtype=torch.uint8))


# --- no false alarms ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 300, 1500])
def test_same_preparation_gives_no_warning(train_stats, n):
    assert check_inputs(train_stats, blobs(n, seed=7), what="test images") == []


def test_no_training_stats_no_warning():
    assert check_inputs(None, blobs(5, seed=1)) == []


# --- each mismatch --------------------------------------------------------------------------


def test_off_centre_content_warns_with_both_centres(train_stats):
    (w,) = check_inputs(train_stats, blobs(300, seed=2, shift=(-6, -5)), what="test images")
    assert w.startswith("test images are centred at (")
    assert "of 28×28; training images at (" in w and "px apart" in w
    new_x = float(w.split("centred at (")[1].split(",")[0])
    train_x = float(w.split("training images at (")[1].split(",")[0])
    assert new_x == pytest.approx(train_x - 6, abs=0.3)


def test_a_small_shift_needs_many_images_to_count(train_stats):
    # 2 px (training content varies by ±1.4 px) is beyond the noise of 1500 images, within
    # that of 2.
    shifted = blobs(1500, seed=3, shift=(2, 0))
    assert any("centred at" in w for w in check_inputs(train_stats, shifted))
    assert check_inputs(train_stats, shifted[:2]) == []


def test_different_size_warns(train_stats):
    x = torch.nn.functional.pad(blobs(200, seed=4), (6, 6, 6, 6))  # centred 40×40
    ws = check_inputs(train_stats, x, what="test images")
    assert ws[0] == (
        "test images are 40×40 pixels; training images were 28×28 (the model sees them "
        "resized, which moves and scales the content)"
    )
    # Centred, so in fractions of the frame the content sits where it did; it is smaller.
    assert not any("centred at" in w for w in ws)
    assert any("content spread" in w for w in ws)


def test_inverted_images_warn_and_say_so(train_stats):
    ws = check_inputs(train_stats, 255 - blobs(200, seed=5), what="test images")
    assert any("background level of 255/255; training images 0/255" in w for w in ws)
    assert any("inverted" in w for w in ws)
    assert not any("centred at" in w for w in ws)  # ink is found either way round


def test_other_normalisation_warns(train_stats):
    x = blobs(200, seed=6)
    halved = check_inputs(train_stats, x // 2, what="test images")  # 0..127, not 0..255
    assert any("mean intensity" in w for w in halved) or any("contrast" in w for w in halved)
    assert not any("background" in w for w in halved)
    lifted = (x.int() + 40).clamp(max=255).to(torch.uint8)  # a grey background
    ws = check_inputs(train_stats, lifted, what="test images")
    assert any("background level of 40/255; training images 0/255" in w for w in ws)


def test_channel_mismatch_warns(train_stats):
    rgb = blobs(100, seed=8).expand(-1, 3, -1, -1).contiguous()
    ws = check_inputs(train_stats, rgb, what="photos")
    assert ws == ["photos have 3 channels (RGB); training images had 1 channel (grey)"]


# --- wiring ---------------------------------------------------------------------------------


def test_learner_evaluate_logs_warnings_for_a_shifted_split():
    train = ImageSet(blobs(200, seed=0), torch.arange(200) % 2, ["a", "b"])
    test = ImageSet(blobs(60, seed=1), torch.arange(60) % 2, ["a", "b"])
    data = make_dataset("blobs", train, test, valid_pct=0.2)
    model = create_model("logreg", in_channels=1, num_classes=2, input_size=(28, 28))
    said: list[str] = []
    learn = Learner(data, model, log=said.append, device="cpu")
    res = learn.evaluate("test")
    assert res["input_warnings"] == [] and said == []
    assert learn.train_stats["n"] == len(data.train)
    moved = ImageSet(blobs(60, seed=1, shift=(5, 5)), test.labels, ["a", "b"])
    res = learn.evaluate(moved)
    assert len(res["input_warnings"]) == 1 and said == [f"warning: {res['input_warnings'][0]}"]
    assert said[0].startswith("warning: these images are centred at")


@pytest.fixture(autouse=True)
def no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSTART_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(mnist.MIRRORS, "mnist", ["http://127.0.0.1:9/unreachable/"])


def test_run_saves_stats_and_evaluate_warns_only_on_off_centre_data(tmp_path, capsys):
    write_mnist(tmp_path / "mnist", n_train=200, n_test=200)
    data = ["--data", "affnist", "--data-dir", str(tmp_path / "mnist")]
    data += ["--data-opt", "copies=2"]
    args = ["train", *data, "--model", "logreg", "--epochs", "1", "--batch-size", "32"]
    assert main([*args, "--out", str(tmp_path / "runs"), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "warning:" not in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    stats = json.loads((run_dir / "model.json").read_text())["input_stats"]
    assert stats["size"] == [40, 40] and stats["n"] == 360 and stats["centre_spread"][0] > 2

    assert main(["evaluate", str(run_dir), *data]) == 0
    assert "warning:" not in capsys.readouterr().out

    assert main(["evaluate", str(run_dir), *data, "--data-opt", "test_pad=corner"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("warning:"))
    assert line.startswith("warning: test images are centred at (")
    assert "of 40×40; training images at (" in line

    # --json keeps stdout one JSON document; the warning goes to stderr and into the JSON.
    assert main(["evaluate", str(run_dir), *data, "--data-opt", "test_pad=corner", "--json"]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out)
    assert len(res["input_warnings"]) == 1 and "centred at" in captured.err


# --- the real thing -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="needs ../shared/data/mnist")
def test_real_mnist_test_split_looks_like_its_train_split():
    train, test = mnist.load_mnist("mnist", data_dir=SHARED_MNIST, download=False)
    stats = input_stats(train.images)
    assert check_inputs(stats, test.images, what="test images") == []
    ws = check_inputs(stats, torch.roll(test.images, (3, 3), dims=(2, 3)), what="test images")
    assert len(ws) == 1 and "centred at" in ws[0]
