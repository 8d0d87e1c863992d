"""Recipes (selection, overrides, the `recipes` table) and `--precision auto`'s decision."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from deepstart import device
from deepstart.cli import main
from deepstart.config import DataConfig, TrainConfig
from deepstart.data.catalog import DATASETS
from deepstart.device import cpu_flags, cpu_has_native_bf16, resolve_precision
from deepstart.errors import ConfigError
from deepstart.models.registry import create_model, get_model_info, training_defaults
from deepstart.recipes import (
    DEFAULTS,
    RECIPES,
    Recipe,
    choose_recipe,
    default_recipe,
    get_recipe,
    list_recipes,
    recipe_for,
    recipe_rows,
    run_config,
)
from deepstart.recipes.results import RESULTS, read_runs, summarise
from deepstart.train import learner

CPU, CUDA = torch.device("cpu"), torch.device("cuda")

# --- --precision auto ------------------------------------------------------------------------

ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: avx512f amx_tile amx_bf16 amx_int8\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_cpu_flags_are_read_from_cpuinfo_text():
    assert {"avx512_bf16", "avx512f", "avx2"} <= cpu_flags(ZEN4)
    assert "avx512_bf16" not in cpu_flags(SKYLAKE)
    assert cpu_flags(ARM) == set()  # no x86 "flags" line
    assert cpu_flags("") == set()


@pytest.mark.parametrize(
    ("cpuinfo", "mkldnn", "native"),
    [
        (ZEN4, True, True),
        (SAPPHIRE, True, True),
        (SKYLAKE, True, False),  # AVX512 without bf16 dot products only emulates bf16
        (ARM, True, False),
        (ZEN4, False, False),  # no oneDNN: nothing to run native bf16 kernels
    ],
)
def test_native_bf16_needs_the_cpu_flag_and_onednn(monkeypatch, cpuinfo, mkldnn, native):
    monkeypatch.setattr(device, "_NATIVE_BF16", None)  # forget this machine's answer
    monkeypatch.setattr(device, "cpu_flags", lambda: cpu_flags(cpuinfo))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: mkldnn)
    assert cpu_has_native_bf16() is native
    assert (resolve_precision("auto", CPU) == torch.bfloat16) is native


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_capability_and_names_override_it(monkeypatch, native):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", CPU) == (torch.bfloat16 if native else None)
    # a named precision is used as it is, whatever the CPU can do
    assert resolve_precision("fp32", CPU) is None
    assert resolve_precision("bf16", CPU) == torch.bfloat16
    # regression is judged on errors of 1e-3 and below: auto keeps it in fp32
    assert resolve_precision("auto", CPU, task="regression") is None
    assert resolve_precision("bf16", CPU, task="regression") == torch.bfloat16
    assert resolve_precision("auto", torch.device("mps")) is None


@pytest.mark.parametrize(("bf16_ok", "dtype"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_is_unchanged(monkeypatch, bf16_ok, dtype):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_ok)
    assert resolve_precision("auto", CUDA) == dtype


def test_learner_uses_the_decision(monkeypatch, toy_data):
    for native, dtype in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(device, "cpu_has_native_bf16", lambda n=native: n)
        model = create_model("logreg", in_channels=1, num_classes=3, input_size=(16, 16))
        learn = learner.Learner(toy_data, model, device="cpu", log=lambda m: None)
        assert learn.amp_dtype == dtype
        fixed = learner.Learner(toy_data, model, device="cpu", precision="fp32")
        assert fixed.amp_dtype is None


# --- the recipes themselves --------------------------------------------------------------------


@pytest.mark.parametrize("recipe", list_recipes(), ids=lambda r: r.name)
def test_every_recipe_is_a_valid_run_config_with_a_buildable_model(recipe):
    cfg = run_config(DataConfig(recipe.dataset), recipe=recipe)
    assert cfg.train.recipe == recipe.name
    assert cfg.model.name == recipe.model and cfg.model.options == dict(recipe.model_options)
    assert recipe.dataset in DATASETS
    assert recipe.description and recipe.target is not None and 0 < recipe.target < 1
    info = get_model_info(recipe.model)
    model = create_model(recipe.model, input_size=info.input_size, **recipe.model_options)
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, info.in_channels, *info.input_size))
    assert out.shape == (2, info.num_classes)
    # every setting it names is a TrainConfig field, and it lands in the config
    for key, value in recipe.train.items():
        assert getattr(cfg.train, key) == value
    assert recipe.summary().startswith(recipe.model)


def test_each_dataset_default_is_a_recipe_for_that_dataset():
    assert set(DEFAULTS) == {"shapes", "mnist", "fashion_mnist", "cifar10"}
    for data, name in DEFAULTS.items():
        assert RECIPES[name].dataset == data
        assert default_recipe(data).name == name


def _folder(root, size, mode="RGB", n=4):
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new(mode, size[::-1], color=40 * i).save(root / c / f"{i}.png")
    return str(root)


@pytest.mark.parametrize(
    ("size", "mode", "expected", "why"),
    [
        ((375, 500), "RGB", "photos", "the images are photos (median 375x500 px"),
        ((96, 96), "L", "photos", "the images are photos (median 96x96 px"),
        ((32, 32), "RGB", "cifar10-fast", "small colour pictures (median 32x32 px"),
        ((28, 28), "L", None, "small grey pictures (median 28x28 px"),
    ],
)
def test_a_folder_gets_its_recipe_from_its_images(tmp_path, size, mode, expected, why):
    # The folder's name says nothing: "cifar10" in a path of photos does not make them CIFAR.
    path = _folder(tmp_path / "cifar10", size, mode)
    for data, data_dir in (("folder", path), (path, None)):
        r, reason = recipe_for(data, data_dir)
        assert (r.name if r else None) == expected and reason.startswith(why)
        assert "over 8 of 8 training images" in reason


@pytest.mark.parametrize(("data", "data_dir"), [("kmnist", None), ("nosuch", None)])
def test_datasets_without_a_default_recipe(data, data_dir):
    assert default_recipe(data, data_dir) is None


def test_choose_recipe_by_name_model_or_dataset():
    assert choose_recipe(None, "mnist").name == "mnist-fast"
    assert choose_recipe("mnist-995", "mnist").name == "mnist-995"
    # a model given without --recipe trains with the plain defaults
    assert choose_recipe(None, "mnist", model="mnist_cnn") is None
    # a recipe given by name wins, even for another dataset and with a model
    assert choose_recipe("cifar10-fast", "shapes", model="vgg_small").name == "cifar10-fast"
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'.*mnist-fast"):
        get_recipe("nope")


def test_explicit_values_override_the_recipe():
    recipe = get_recipe("fashion-fast")
    cfg = run_config(
        DataConfig("fashion_mnist"),
        recipe=recipe,
        model_options={"act": "gelu"},
        train={"epochs": 2, "tta": False, "augment": None, "seed": 7},
    )
    assert cfg.train.epochs == 2 and cfg.train.tta is False and cfg.train.augment is None
    assert cfg.train.seed == 7
    assert cfg.train.lr == recipe.train["lr"]  # not given: the recipe's
    assert cfg.train.label_smoothing == recipe.train["label_smoothing"]
    # options of the recipe's own model merge; the given one wins
    assert cfg.model.options == {**recipe.model_options, "act": "gelu"}
    assert cfg.train.recipe == "fashion-fast"


def test_another_model_drops_the_recipes_model_options():
    recipe = get_recipe("cifar10-fast")
    cfg = run_config(DataConfig("cifar10"), recipe=recipe, model="resnet20")
    assert cfg.model.name == "resnet20" and cfg.model.options == {}
    assert cfg.train.epochs == recipe.train["epochs"]  # the training settings still apply


def test_no_recipe_and_no_model_means_the_fallback_models_own_settings():
    cfg = run_config(DataConfig("shapes"), train={"epochs": 3})
    assert cfg.model.name == "vgg_small" and cfg.model.options == {}
    assert cfg.train.recipe is None
    assert cfg.train == TrainConfig(epochs=3, lr=2e-2)  # vgg_small's own LR, the rest plain


def test_a_recipe_with_an_unknown_setting_fails_when_defined():
    with pytest.raises(ConfigError, match="epoks"):
        Recipe("bad", "mnist", "typo", "fast_mnist", train={"epoks": 3})


def test_recipe_rows_quote_the_slowest_cpus_runs_from_results():
    runs = read_runs(RESULTS)
    rows = {r["name"]: r for r in recipe_rows()}
    assert set(rows) == set(RECIPES)
    for name, row in rows.items():
        assert row["default"] == (name in DEFAULTS.values())
        mine = summarise(runs, name, RECIPES[name].fingerprint())
        auto = [x for x in mine if x.precision == "auto"]
        if not auto:  # never measured: nothing quoted
            assert row["accuracy"] is None and row["date"] is None and row["cpu"] is None
            continue
        slowest = max(auto, key=lambda x: x.median_seconds)
        assert row["cpu"] == slowest.cpu and row["seeds"] == slowest.seeds
        assert row["seconds"] == slowest.median_seconds and len(row["date"]) == 10
        now = (name, row["cpu"], "auto")
        fingerprints = ("", RECIPES[name].fingerprint())  # "": runs from before fingerprints
        seeds = sorted(
            x.accuracy
            for x in runs
            if (x.recipe, x.cpu, x.precision) == now and x.settings in fingerprints
        )
        assert row["accuracy"] == seeds[(len(seeds) - 1) // 2]  # a seed's, the lower middle


# --- the command line -------------------------------------------------------------------------

TINY = ["--data-opt", "n_train=120", "--data-opt", "n_test=30", "--size", "16"]
QUIET = ["--progress", "plain", "--no-report", "--no-checkpoint", "--batch-size", "32"]


def _train(tmp_path, *args):
    out = tmp_path / "runs"
    assert main(["train", "--data", "shapes", *TINY, *QUIET, "--out", str(out), *args]) == 0
    (run_dir,) = out.iterdir()
    return json.loads((run_dir / "config.json").read_text()), run_dir


def test_train_without_a_model_uses_the_datasets_recipe(tmp_path, capsys):
    cfg, run_dir = _train(tmp_path, "--epochs", "1")
    out = capsys.readouterr().out
    # the recipe's own net, not --model fast_mnist's: its options are named
    assert out.startswith("recipe shapes-fast: fast_mnist (widths 16-32-64-64), 5 epochs, ")
    assert "(overridden: batch_size, epochs)" in out
    assert cfg["train"]["recipe"] == "shapes-fast"
    assert cfg["model"]["name"] == "fast_mnist"
    assert cfg["model"]["options"] == dict(get_recipe("shapes-fast").model_options)
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["batch_size"] == 32  # typed: they win
    assert cfg["train"]["lr"] == get_recipe("shapes-fast").train["lr"]  # not typed: the recipe's
    assert run_dir.name.endswith("-shapes-fast_mnist")


def test_train_with_a_named_recipe_and_overrides(tmp_path, capsys):
    args = ["--recipe", "fashion-fast", "--epochs", "1", "--no-tta", "--augment", "none"]
    cfg, _ = _train(tmp_path, *args, "--lr", "1e-3", "--model-opt", "widths=8,8,16,16")
    out = capsys.readouterr().out
    assert "recipe fashion-fast:" in out and "augment, batch_size, epochs, lr, tta" in out
    t = cfg["train"]
    assert t["recipe"] == "fashion-fast" and t["epochs"] == 1 and t["lr"] == 1e-3
    assert t["tta"] is False and t["augment"] is None
    assert t["label_smoothing"] == get_recipe("fashion-fast").train["label_smoothing"]
    assert cfg["model"]["name"] == "fast_mnist"
    assert cfg["model"]["options"] == {"widths": [8, 8, 16, 16]}  # merged over the recipe's


def test_airbench_settings_from_the_recipe_and_the_command_line(tmp_path, capsys):
    # cifar10-90's optimiser, net options and augmentation run end to end (on tiny shapes).
    args = ["--recipe", "cifar10-90", "--epochs", "2", "--no-tta", "--valid-pct", "0.2"]
    cfg, run_dir = _train(tmp_path / "a", *args, "--model-opt", "widths=8,8,16,16")
    out = capsys.readouterr().out
    assert "sgd nesterov lr 1.5 triangle" in out and "BN shifts at 64x lr" in out
    assert "lookahead" in out and "augment cifar-alt" in out
    t = cfg["train"]
    assert (t["opt"], t["schedule"], t["norm_bias_lr"], t["lookahead"]) == (
        "sgd",
        "triangle",
        64.0,
        True,
    )
    assert cfg["model"]["options"]["bn_scale"] is False and cfg["model"]["options"]["dirac"]
    assert json.loads((run_dir / "results.json").read_text())["test"]["accuracy"] > 0
    # ... and as flags on another recipe
    flags = ["--lookahead", "--norm-bias-lr", "8", "--schedule", "triangle", "--pct-start", "0.3"]
    cfg, _ = _train(
        tmp_path / "b", "--epochs", "1", "--opt", "sgd", "--augment", "cifar-alt", *flags
    )
    t = cfg["train"]
    assert (t["lookahead"], t["norm_bias_lr"], t["schedule"], t["pct_start"]) == (
        True,
        8.0,
        "triangle",
        0.3,
    )
    assert t["augment"] == "cifar-alt"


def test_train_with_a_model_and_no_recipe_takes_the_models_settings(tmp_path, capsys):
    cfg, _ = _train(tmp_path, "--model", "logreg", "--epochs", "1")
    assert "no recipe (--model given): training logreg with " in capsys.readouterr().out
    assert cfg["train"]["recipe"] is None and cfg["model"]["name"] == "logreg"
    # the model's own settings, then the plain defaults (tests/test_model_training.py)
    expected = TrainConfig(**{**training_defaults("logreg"), "epochs": 1})
    for key in ("lr", "opt", "wd", "schedule", "label_smoothing", "precision", "tta", "augment"):
        assert cfg["train"][key] == getattr(expected, key), key


@pytest.mark.parametrize(
    ("model", "recipe"),
    [("mnist_cnn", None), ("logreg", None), ("mlp", None), ("conv8-pool-flat-dense10", None),
     ("mnist_cnn", "mnist-fast"), ("logreg", "cifar10-fast"), ("vgg_small", "photos"),
     ("vgg_small", None), (None, None)],
)  # fmt: skip
def test_usual_lr_is_the_lr_run_config_gives_without_lr(model, recipe):
    # what --lr auto is measured against and may keep (run/resolve.py): the recipe's LR, the
    # model's own without a recipe, else the default, exactly as a run without --lr gets it
    from deepstart.recipes.choose import usual_lr

    r = get_recipe(recipe) if recipe else None
    lr = run_config(DataConfig("shapes"), recipe=r, model=model).train.lr
    got, whose = usual_lr(model, recipe)
    assert got == lr
    if recipe is not None and "lr" in r.train:
        assert whose == f"recipe {recipe}'s"
    elif recipe is None and "lr" in training_defaults(model or "vgg_small"):
        assert whose == f"{model or 'vgg_small'}'s own"  # no model: the fallback's
    else:
        assert whose == "the default"


def test_recipes_command_lists_every_recipe(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for header in ("recipe", "data", "model", "epochs", "target", "reached", "time", "measured"):
        assert header in out
    for r in list_recipes():
        assert r.name in out and r.model in out
    assert "shapes *" in out and "mnist *" in out  # the defaults are marked
    assert "bench/recipes.py" in out


def test_a_recipes_valid_pct_applies_unless_typed(tmp_path, capsys, monkeypatch):
    every_image = dataclasses.replace(get_recipe("shapes-fast"), name="all-in", valid_pct=0.0)
    monkeypatch.setitem(RECIPES, "all-in", every_image)
    cfg, _ = _train(tmp_path / "a", "--recipe", "all-in", "--epochs", "1")
    out = capsys.readouterr().out
    assert "all training images (no valid split)" in out
    assert cfg["data"]["valid_pct"] == 0.0
    cfg, _ = _train(tmp_path / "b", "--recipe", "all-in", "--epochs", "1", "--valid-pct", "0.2")
    assert "valid_pct" in capsys.readouterr().out.split("overridden:")[1]
    assert cfg["data"]["valid_pct"] == 0.2
    cfg, _ = _train(tmp_path / "c", "--epochs", "1")  # shapes-fast sets none: the default
    assert cfg["data"]["valid_pct"] == 0.1


def test_typed_epochs_keep_the_recipes_small_epochs_to_their_share(tmp_path, capsys):
    from deepstart.recipes.choose import small_epochs_for

    recipe = get_recipe("cifar10-fast")
    small, epochs = recipe.train["small_epochs"], recipe.train["epochs"]
    assert 0 < small < epochs
    assert small_epochs_for(recipe, {}) == small
    assert small_epochs_for(recipe, {"epochs": epochs * 2}) == small * 2
    assert small_epochs_for(recipe, {"epochs": 2}) == 1  # the last epoch stays full size
    assert small_epochs_for(recipe, {"epochs": 1}) == 0
    assert small_epochs_for(recipe, {"epochs": 2, "small_epochs": 0}) == 0  # typed: it wins
    assert small_epochs_for(get_recipe("shapes-fast"), {"epochs": 2}) is None
    # a short trial of the recipe on the command line: one small epoch, one full, and it says so
    cfg, _ = _train(tmp_path, "--recipe", "cifar10-fast", "--epochs", "2", "--no-tta")
    assert cfg["train"]["small_epochs"] == 1 and cfg["train"]["epochs"] == 2
    assert "small_epochs -> 1" in capsys.readouterr().out.split("overridden:")[1]
