import pytest

from deepstart.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from deepstart.errors import ConfigError


def test_json_round_trip(tmp_path):
    cfg = RunConfig(
        DataConfig("mnist", data_dir="/x", size=(32, 32), options={"n_train": 5}),
        ModelConfig("mlp", {"hidden": [64]}),
        TrainConfig(epochs=2, lr=0.01, opt="sgd", nesterov=True),
    )
    cfg.to_json(tmp_path / "c.json")
    assert RunConfig.from_json(tmp_path / "c.json") == cfg


@pytest.mark.parametrize(
    "make",
    [
        lambda: TrainConfig(epochs=0),
        lambda: TrainConfig(lr=-1),
        lambda: TrainConfig(opt="rmsprob"),
        lambda: DataConfig(normalize="minmax"),
        lambda: TrainConfig(schedule="warp"),
        lambda: DataConfig(valid_pct=1.0),
        lambda: DataConfig(channels=2),
    ],
)
def test_bad_settings_are_config_errors(make):
    with pytest.raises(ConfigError):
        make()


def test_unknown_field_is_named():
    with pytest.raises(ConfigError, match="epoks"):
        RunConfig.from_dict({"train": {"epoks": 3}})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr", float("inf"), "lr must be a positive number or 'auto', got inf"),
        ("lr", float("nan"), "lr must be a positive number"),
        ("pct_start", 2.0, "pct_start must be in [0, 1], got 2.0"),
        ("momentum", 5.0, "momentum must be in [0, 1), got 5.0"),
        ("momentum", 1.0, "momentum must be in [0, 1), got 1.0"),
        ("wd", -5.0, "wd must be in [0, inf), got -5.0"),
        ("label_smoothing", 1.0, "label_smoothing must be in [0, 1), got 1.0"),
        ("grad_clip", 0.0, "grad_clip must be a positive number, got 0.0"),
        ("max_time", float("inf"), "max_time must be a positive number, got inf"),
    ],
)
def test_every_numeric_training_option_is_checked_when_the_config_is_built(field, value, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{field: value})
    assert str(e.value).startswith(message)


def test_bad_numbers_on_the_command_line_fail_in_one_line(capsys):
    from deepstart.cli import main

    for flags, message in (
        (["--lr", "inf"], "lr must be a positive number"),
        (["--momentum", "5", "--opt", "adam"], "momentum must be in [0, 1)"),
        (["--pct-start", "2"], "pct_start must be in [0, 1]"),
        (["--wd", "-5"], "wd must be in [0, inf)"),
    ):
        assert main(["train", "--data", "shapes", "--model", "vgg_small", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("deepstart: error: ") and message in err and "\n" not in err


# --- one dataclass a concern, TrainConfig flat over them ---------------------------------------


def test_augment_preset_names_are_the_augment_modules():
    from deepstart.augment import PRESETS
    from deepstart.config import AUGMENT_PRESETS

    assert set(AUGMENT_PRESETS) == set(PRESETS)


def test_train_config_is_every_concern_flat():
    import dataclasses

    from deepstart.config import CONCERNS

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    concern_names = [f.name for c in CONCERNS for f in dataclasses.fields(c)]
    assert names == [*concern_names, "recipe"]  # each field once, in concern order
    tc = TrainConfig(lr=3e-3, epochs=2, augment="flip", devices=2)
    assert all(isinstance(tc, c) for c in CONCERNS)
    assert (tc.lr, tc.epochs, tc.augment, tc.devices) == (3e-3, 2, "flip", 2)
    assert dataclasses.replace(tc, opt="sgd").opt == "sgd"


def test_each_concern_stands_alone_and_checks_its_own_fields():
    from deepstart.config import (
        DebugConfig,
        DistributedConfig,
        OptimConfig,
        OutputConfig,
        RegularisationConfig,
        ScheduleConfig,
    )

    assert OptimConfig(lr="auto").lr == "auto" and ScheduleConfig(epochs=3).epochs == 3
    for make, message in (
        (lambda: OptimConfig(momentum=1.0), "momentum must be in [0, 1)"),
        (lambda: ScheduleConfig(fine_tune=True, freeze=True), "choose one of fine_tune"),
        (lambda: RegularisationConfig(augment="nosuch"), "unknown augmentation 'nosuch'"),
        (lambda: OutputConfig(checkpoint_minutes=0), "checkpoint_minutes must be a positive"),
        (lambda: DistributedConfig(precision="fp8"), "precision must be auto, fp32"),
        (lambda: DebugConfig(overfit_batches=-1), "overfit_batches must be >= 0"),
    ):
        with pytest.raises(ConfigError) as e:
            make()
        assert str(e.value).startswith(message)


def test_every_training_field_is_an_option_with_help():
    import dataclasses

    from deepstart.config import option_of

    for f in dataclasses.fields(TrainConfig):
        if f.name != "recipe":  # --recipe chooses a recipe; the field records which
            assert option_of(TrainConfig, f.name).help, f.name


def test_an_old_run_directorys_train_section_still_loads():
    # config.json of a run from before the split: the same keys, in the old order
    old = {
        "epochs": 2, "lr": 0.003, "batch_size": 32, "opt": "adamw", "wd": 0.01, "momentum": 0.9,
        "nesterov": False, "schedule": "one_cycle", "pct_start": 0.25, "seed": 0,
        "device": "auto", "out": "runs", "checkpoint": True, "checkpoint_minutes": None,
        "progress": "plain", "precision": "auto", "guard": True, "guard_tries": 8,
        "early_stop": None, "monitor": "valid_loss", "min_delta": 0.0, "grad_clip": None,
        "label_smoothing": 0.1, "class_weights": [1.0, 2.0, 1.0], "ema": None,
        "lookahead": False, "norm_bias_lr": 1.0, "max_time": None, "fast_dev_run": False,
        "overfit_batches": 0, "augment": "flip", "tta": False, "fine_tune": False,
        "freeze_epochs": 1, "keep_frozen": 0, "keep_better": False, "freeze": False,
        "precompute": False, "report": True, "tensorboard": False, "devices": 1,
        "sync_bn": False, "dist_timeout": 300.0, "recipe": "shapes-fast",
    }  # fmt: skip
    cfg = RunConfig.from_dict({"train": old})
    assert cfg.train == TrainConfig(**old)
    saved = cfg.to_dict()["train"]
    assert {k: v for k, v in saved.items() if k in old} == old
    added = {k: v for k, v in saved.items() if k not in old}
    since = {
        "accumulate": 1, "report_panels": "auto", "sanity": True, "stem_epochs": None,
        "small_epochs": None, "small_scale": 0.75,
    }  # fmt: skip
    assert added == since
