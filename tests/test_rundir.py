"""The run directory (run/rundir.py), and the "auto" values a run settles before training."""

from __future__ import annotations

import dataclasses
import json

import pytest

from deepstart.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from deepstart.errors import DataError
from deepstart.run.options import learner_kwargs
from deepstart.run.rundir import RunDir, load_run_config, load_run_learner
from deepstart.run.runner import train_run


def test_create_gives_each_run_its_own_directory(tmp_path):
    a = RunDir.create(tmp_path, "shapes", "vgg_small")
    b = RunDir.create(tmp_path, "shapes", "vgg_small")  # the same second: suffixed
    assert a.path != b.path and a.path.is_dir() and b.path.is_dir()
    assert a.path.name.endswith("-shapes-vgg_small")


def test_open_refuses_what_is_not_a_run_in_one_line(tmp_path):
    with pytest.raises(DataError, match=r"no config\.json"):
        RunDir.open(tmp_path)
    (tmp_path / "config.json").write_text('{"data": {"name": "sha')  # cut short
    with pytest.raises(DataError, match="not valid JSON") as e:
        load_run_config(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "config.json").write_text('{"train": {"epochs": "many"}}')
    with pytest.raises(Exception) as e:  # a ConfigError or DataError, never a TypeError
        load_run_config(tmp_path)
    assert isinstance(e.value, DataError | ValueError) and "\n" not in str(e.value)


def test_json_files_round_trip(tmp_path):
    run = RunDir.create(tmp_path, "d", "m")
    run.write_config(RunConfig(), {"device": "cpu"})
    assert RunDir.open(run.path).config() == RunConfig()
    assert run.resolved() == {"device": "cpu"}
    run.write_metrics([{"epoch": 1, "valid_loss": 0.5}, {"event": "guard"}])
    run.update_results(test={"accuracy": 0.9})
    run.update_results(test_tta={"accuracy": 0.91})
    read = run.read()
    assert read["history"] == [{"epoch": 1, "valid_loss": 0.5}]
    assert read["events"] == [{"event": "guard"}]
    assert read["results"] == {"test": {"accuracy": 0.9}, "test_tta": {"accuracy": 0.91}}
    assert read["lr_find"] == {} and read["batches"] == {}


def test_every_learner_option_is_handed_over_by_name():
    tc = TrainConfig(wd=0.123, momentum=0.8, precision="fp32", augment="flip", nesterov=True)
    kw = learner_kwargs(tc, device="cpu")
    assert kw["wd"] == 0.123 and kw["momentum"] == 0.8 and kw["precision"] == "fp32"
    assert kw["augment"] == "flip" and kw["nesterov"] is True and kw["device"] == "cpu"
    assert "epochs" not in kw  # a fit argument, not the Learner's
    with pytest.raises(TypeError, match="Learner takes no"):
        learner_kwargs(tc, not_a_parameter=1)


def test_auto_values_are_settled_before_training_and_recorded(tmp_path):
    cfg = RunConfig(
        data=DataConfig("shapes", size=(16, 16), options={"n_train": 240, "n_test": 60}),
        model=ModelConfig("vgg_small"),
        train=TrainConfig(
            epochs=1, lr="auto", batch_size="auto", out=str(tmp_path), report=False, progress="none"
        ),
    )
    res = train_run(cfg, quiet=True)
    saved = load_run_config(res.run_dir)
    chosen = json.loads((res.run_dir / "lr_find.json").read_text())["chosen"]
    assert saved.train.lr == pytest.approx(chosen)  # the value, not "auto"
    assert saved.train.batch_size == 128  # the CPU: no device memory to search
    resolved = json.loads((res.run_dir / "config.json").read_text())["resolved"]
    assert resolved["auto"] == {"lr": "auto", "batch_size": "auto"}
    assert resolved["global_batch_size"] == 128
    assert res.learner.batch_size == 128
    assert dataclasses.replace(saved.train, lr="auto", batch_size="auto") == cfg.train


def test_a_later_evaluation_scores_as_the_run_did(tmp_path):
    # (issue 22: a run printed 0.9927 and the report on it 0.9926: another batch size)
    cfg = RunConfig(
        data=DataConfig("shapes", size=(16, 16), options={"n_train": 120, "n_test": 60}),
        model=ModelConfig("logreg"),
        train=TrainConfig(
            epochs=1,
            batch_size=24,
            precision="fp32",
            out=str(tmp_path),
            report=False,
            progress="none",
        ),
    )
    res = train_run(cfg, quiet=True)
    again = load_run_learner(res.run_dir, log=lambda m: None)
    assert again.batch_size == 24 and again.amp_dtype is None
    later = again.evaluate("test")
    assert later["accuracy"] == res.test["accuracy"] and later["loss"] == res.test["loss"]
