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
        lambda: TrainConfig(opt="rmsprop"),
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
