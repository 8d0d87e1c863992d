"""Gradient accumulation (``accumulate``): the option that shows a new training option is one
config field and one use in the Learner (config/training.py, train/learner.py) plus this test."""

from __future__ import annotations

import json

import pytest
import torch

from deepstart.cli import main
from deepstart.config import TrainConfig
from deepstart.data.dataset import make_dataset
from deepstart.errors import ConfigError
from deepstart.models.registry import create_model
from deepstart.train.events import Callback
from deepstart.train.learner import Learner
from tests.conftest import bars


class CountSteps(Callback):
    def before_fit(self):
        self.steps = 0

    def after_step(self):
        self.steps += 1


def _learner(batch_size: int, accumulate: int, **kw) -> Learner:
    data = make_dataset("bars", bars(32, seed=0, size=8), bars(9, seed=1, size=8), valid_pct=0.0)
    torch.manual_seed(0)
    model = create_model("logreg", in_channels=1, num_classes=3, input_size=(8, 8))
    return Learner(
        data,
        model,
        opt="sgd",
        momentum=0.0,
        wd=0.0,
        batch_size=batch_size,
        accumulate=accumulate,
        guard=False,
        precision="fp32",
        log=lambda m: None,
        **kw,
    )


def test_four_batches_of_8_accumulated_step_like_one_batch_of_32():
    whole, parts = _learner(32, 1), _learner(8, 4)
    for learn in (whole, parts):
        learn.add_callbacks([CountSteps()])
        learn.fit(2, 0.5)  # constant LR: every step is the same rule
    assert whole.get_callback(CountSteps).steps == parts.get_callback(CountSteps).steps == 2
    for a, b in zip(whole.model.parameters(), parts.model.parameters(), strict=True):
        # the mean gradient of 32 items, summed in another order: equal up to rounding
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert parts.train_iter == 2 * 4  # the schedule still counts every batch


def test_a_last_short_group_still_steps_on_its_own_mean():
    learn = _learner(8, 3)  # 4 batches per epoch: a group of 3, then one of 1
    learn.add_callbacks([CountSteps()])
    learn.fit(1, 0.1)
    assert learn.get_callback(CountSteps).steps == 2
    assert all(p.grad is None for p in learn.model.parameters())  # nothing left pending


def test_accumulation_differs_from_stepping_every_batch():
    every, grouped = _learner(8, 1), _learner(8, 4)
    every.fit(1, 0.5)
    grouped.fit(1, 0.5)
    w1, w2 = (next(m.model.parameters()) for m in (every, grouped))
    assert not torch.allclose(w1, w2)  # the option does something


def test_the_config_checks_it_and_the_cli_offers_it(tmp_path):
    with pytest.raises(ConfigError, match="accumulate"):
        TrainConfig(accumulate=0)
    out = tmp_path / "runs"
    argv = ["train", "--data", "shapes", "--data-opt", "n_train=64", "--data-opt", "n_test=30"]
    argv += ["--size", "16", "--model", "logreg", "--epochs", "1", "--batch-size", "16"]
    argv += ["--accumulate", "2", "--no-report", "--progress", "none", "--out", str(out)]
    assert main(argv) == 0
    (run,) = out.iterdir()
    assert json.loads((run / "config.json").read_text())["train"]["accumulate"] == 2
