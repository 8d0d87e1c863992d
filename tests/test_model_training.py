"""A registered model's own training settings: what ``deepstart train --model NAME`` trains
with when no recipe sets them (issue 20: the notes' models reach the notes' numbers)."""

import dataclasses
import importlib
import importlib.util
import json
from pathlib import Path

import pytest
from torch import nn

from deepstart.cli import main
from deepstart.config import DataConfig, TrainConfig
from deepstart.models import registry
from deepstart.models.basic import logreg
from deepstart.models.registry import ModelError, register_model, training_defaults
from deepstart.recipes import get_recipe, run_config

TINY = ["--data-opt", "n_train=300", "--data-opt", "n_test=90", "--size", "16"]


@pytest.fixture
def own_model(monkeypatch):
    """A tiny model registered (on a copy of the registry) with settings of its own."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model(in_channels=1, input_size=(16, 16), training={"epochs": 1, "lr": 0.02})
    def test_own(*, in_channels, num_classes, input_size):
        return logreg(in_channels=in_channels, num_classes=num_classes, input_size=input_size)

    return "test_own"


@pytest.mark.parametrize(("name", "epochs"), [("logreg", 5), ("mlp", 10), ("mnist_cnn", 12)])
def test_the_notes_models_carry_their_settings(name, epochs):
    own = training_defaults(name)
    assert own["epochs"] == epochs
    assert TrainConfig(**own).epochs == epochs  # each is a valid config
    cfg = run_config(DataConfig("mnist"), model=name)
    assert cfg.train == TrainConfig(**own)


def test_typed_values_win_and_a_recipe_replaces_the_models_own():
    own = training_defaults("mnist_cnn")
    cfg = run_config(DataConfig("mnist"), model="mnist_cnn", train={"epochs": 2})
    assert cfg.train.epochs == 2 and cfg.train == TrainConfig(**{**own, "epochs": 2})
    # --recipe mnist-fast --model mnist_cnn: the recipe's settings, on the other model
    recipe = get_recipe("mnist-fast")
    cfg = run_config(DataConfig("mnist"), recipe=recipe, model="mnist_cnn")
    assert cfg.train.epochs == recipe.train["epochs"] and cfg.train.recipe == "mnist-fast"


def test_a_model_without_settings_gets_the_plain_defaults():
    assert training_defaults("resnet56") == {}
    assert run_config(DataConfig("shapes"), model="resnet56").train == TrainConfig()
    assert training_defaults("conv8-pool-flat-dense10") == {}  # a layer spec


def test_the_models_tuned_only_for_their_lr_keep_the_other_defaults():
    # vgg_small (trained when nothing is named), fast_mnist, resnet20: AdamW's 1e-3 was far too low
    assert training_defaults("vgg_small") == {"lr": 2e-2}
    assert run_config(DataConfig("shapes")).train == TrainConfig(lr=2e-2)
    assert training_defaults("fast_mnist") == {"lr": 6e-3}
    assert training_defaults("resnet20") == {"lr": 2e-2}


def test_a_bad_setting_fails_at_registration(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def tiny(*, in_channels, num_classes, input_size):
        return nn.Linear(1, 1)

    with pytest.raises(ModelError, match=r"test_bad.*epoch"):
        register_model("test_bad", training={"epoch": 3})(tiny)
    with pytest.raises(ModelError, match=r"test_bad.*lr must be a positive number"):
        register_model("test_bad", training={"lr": -1.0})(tiny)
    assert "test_bad" not in registry._REGISTRY


def test_train_uses_and_names_the_models_own_settings(own_model, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["train", "--data", "shapes", *TINY, "--model", own_model, "--batch-size", "32"]
    assert main([*args, "--out", str(out), "--progress", "plain", "--no-report"]) == 0
    said = capsys.readouterr().out
    assert "no recipe (--model given): training test_own with its own settings (epochs 1, " in said
    (run_dir,) = out.iterdir()
    train = json.loads((run_dir / "config.json").read_text())["train"]
    assert train["epochs"] == 1 and train["lr"] == 0.02
    # a typed flag wins and is not listed as the model's
    assert main([*args, "--lr", "0.01", "--out", str(tmp_path / "b"), "--no-report"]) == 0
    said = capsys.readouterr().out
    assert "its own settings (epochs 1; deepstart models)" in said
    (run_dir,) = (tmp_path / "b").iterdir()
    assert json.loads((run_dir / "config.json").read_text())["train"]["lr"] == 0.01


def test_models_show_prints_the_settings(capsys):
    assert main(["models", "show", "logreg"]) == 0
    assert "trains with (deepstart train --model logreg, flags win): epochs 5" in (
        capsys.readouterr().out
    )


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    ("model", "lr", "epochs"),
    [("logreg", 1e-2, 2), ("conv{w}-pool-flat-dense10", TrainConfig().lr, 2)],
)
def test_a_study_of_a_named_model_starts_from_its_settings(monkeypatch, model, lr, epochs):
    # deepstart.tune, the attribute, is the function; the module is what cmd_tune imports from
    study = importlib.import_module("deepstart.tune")
    seen = []

    def fake_tune(cfg):
        seen.append(cfg)
        raise _Stop

    monkeypatch.setattr(study, "tune", fake_tune)
    args = ["tune", "--data", "shapes", "--model", model, "--space", "w=int(4,8)", "--epochs", "2"]
    with pytest.raises(_Stop):
        main(args)
    (cfg,) = seen
    # the model's own lr, the typed epochs (a template has no settings: the defaults)
    assert cfg.base.train.lr == lr and cfg.base.train.epochs == epochs


def test_the_models_check_reruns_only_what_their_settings_change(tmp_path, monkeypatch, capsys):
    """bench/model_defaults.py: a run stays done while the model's own settings are the ones it
    ran with."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root / "bench"))
    spec = importlib.util.spec_from_file_location(
        "bench_models", root / "bench" / "model_defaults.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []

    def fake_run(what, dataset, seed, shared, out, extra):
        calls.append((what[1], seed, tuple(extra)))
        return {"accuracy": 0.99, "seconds": 1.0, "load": 0.1, "epochs": []}

    monkeypatch.setattr(bench, "run", fake_run)
    state = tmp_path / "state.jsonl"
    argv = ["model_defaults.py", "logreg", "--seeds", "2", "--lr-auto", "--state", str(state)]
    monkeypatch.setattr("sys.argv", argv)
    bench.main()
    auto = ("--lr", "auto")
    assert calls == [("logreg", 0, ()), ("logreg", 0, auto), ("logreg", 1, ()), ("logreg", 1, auto)]
    assert "| logreg | mnist | own | 92.00% | **99.00%**" in capsys.readouterr().out
    calls.clear()
    bench.main()
    assert calls == []  # all done
    monkeypatch.setitem(
        registry._REGISTRY,
        "logreg",
        dataclasses.replace(registry.get_model_info("logreg"), training={"epochs": 7}),
    )
    bench.main()
    assert calls == [("logreg", 0, ()), ("logreg", 0, auto), ("logreg", 1, ()), ("logreg", 1, auto)]
