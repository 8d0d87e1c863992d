"""--normalize unit: pixels only divided by 255 (mean 0, std 1 in Preprocess terms), as the
Keras notes scale them; the run, its saved model and the bundle all apply it unchanged."""

from __future__ import annotations

import json

import pytest
import torch

from deepstart.cli import main
from deepstart.config.run import DataConfig
from deepstart.data.catalog import load_dataset
from deepstart.data.dataset import Batches, DataError, make_dataset
from deepstart.errors import ConfigError
from deepstart.run.build import load_data
from deepstart.ship.bundle import load_bundle
from tests.conftest import bars


def test_unit_sets_mean_0_std_1_and_batches_are_pixels_over_255():
    data = make_dataset("bars", bars(60), None, valid_pct=0.2, normalize="unit")
    assert data.mean == [0.0] and data.std == [1.0]
    assert data.preprocess.mean == (0.0,) and data.preprocess.std == (1.0,)
    assert any("normalize: unit" in n for n in data.notes)
    x, _ = next(iter(Batches(data.train, 8, mean=data.mean, std=data.std)))
    torch.testing.assert_close(x, data.train.images[:8].float() / 255)
    standard = make_dataset("bars", bars(60), None, valid_pct=0.2)
    assert standard.std[0] < 0.5 and standard.mean[0] > 0.1  # the default: the data's own
    with pytest.raises(DataError, match="standardize or unit"):
        make_dataset("bars", bars(60), None, normalize="minmax")


def test_the_option_reaches_the_data_from_a_config():
    with pytest.raises(ConfigError, match="standardize or unit"):
        DataConfig(normalize="minmax")
    cfg = DataConfig(name="shapes", normalize="unit", options={"n_train": 30, "n_test": 9})
    data = load_data(cfg, seed=0)
    assert data.mean == [0.0] * data.channels and data.std == [1.0] * data.channels
    assert load_dataset("shapes", n_train=30, n_test=9).std != data.std


def test_a_unit_run_saves_it_and_the_bundle_reproduces_it(tmp_path):
    args = ["train", "--data", "shapes", "--data-opt", "n_train=60", "--data-opt", "n_test=15",
            "--size", "16", "--model", "logreg", "--epochs", "1", "--normalize", "unit",
            "--out", str(tmp_path), "--progress", "none", "--no-report"]  # fmt: skip
    assert main(args) == 0
    (run,) = tmp_path.iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["normalize"] == "unit"
    prep = json.loads((run / "model.json").read_text())["preprocess"]
    assert set(prep["mean"]) == {0.0} and set(prep["std"]) == {1.0}
    bundle = load_bundle(run)
    x = torch.randint(0, 256, (4, bundle.preprocess.channels, 16, 16), dtype=torch.uint8)
    # The bundle feeds the model x / 255 and nothing else.
    with torch.no_grad():
        want = bundle.model(x.float() / 255).softmax(1)
    torch.testing.assert_close(bundle.probabilities(x), want)
