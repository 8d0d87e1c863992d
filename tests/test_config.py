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
