"""A run's config: which data (:class:`DataConfig`), which model (:class:`ModelConfig`), how
to train (:class:`~deepstart.config.training.TrainConfig`), and their JSON round trip.

The resolved config is written beside every checkpoint and model (config.json) so a run can
be understood and repeated from its directory alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepstart.config.option import option, parse_channels, parse_size
from deepstart.config.training import TrainConfig
from deepstart.errors import ConfigError

# How images of another size reach DataConfig.size: stretch, centre crop or pad.
RESIZE_MODES = ("squish", "crop", "pad")
# How pixels are scaled before the model: by the training split's mean/std, or only / 255.
NORMALIZE_MODES = ("standardize", "unit")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where its files are, and how it is split and shaped.

    Attributes:
        name: a name from ``deepstart data list`` (or a folder path with ``folder``).
        data_dir: directory searched first for the dataset's files.
        valid_pct: share of train held out for validation when the dataset has no valid
            split; 0 scores the test split every epoch instead.
        size: ``(H, W)`` to resize to (None keeps the dataset's own).
        channels: 1 or 3 to convert to (None keeps the dataset's own).
        resize: "squish", "crop" or "pad" when images must change size.
        normalize: "standardize" (training mean/std) or "unit" (pixels / 255, in [0, 1]).
        options: source-specific settings, e.g. shapes' ``n_train``, ``classes``.
    """

    name: str = "shapes"
    data_dir: str | None = option(
        None, help="directory searched first for the dataset's files", metavar="DIR"
    )
    valid_pct: float = option(
        0.1,
        help="share of train held out for validation when the data has no valid split (a "
        "recipe may set its own; 0 scores the test split every epoch)",
    )
    size: tuple[int, int] | None = option(
        None, help="resize images to N or HxW", metavar="N|HxW", parse=parse_size
    )
    channels: int | None = option(
        None, help="convert to 1 or 3 channels", metavar="{1,3}", parse=parse_channels
    )
    resize: str = option(
        "squish",
        help="how images of another size reach --size: stretch (squish), centre crop or pad; "
        "the photos recipe crops",
        choices=RESIZE_MODES,
    )
    normalize: str = option(
        "standardize",
        help="pixel scaling: standardize (the training split's mean/std) or unit (only / 255, "
        "in [0, 1], like the Keras notes: their LRs carry over)",
        choices=NORMALIZE_MODES,
    )
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.valid_pct < 1:
            raise ConfigError(f"valid_pct must be in [0, 1), got {self.valid_pct}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be squish, crop or pad, got {self.resize!r}")
        if self.normalize not in NORMALIZE_MODES:
            raise ConfigError(f"normalize must be standardize or unit, got {self.normalize!r}")


@dataclass(frozen=True)
class ModelConfig:
    """A registry model and its options (e.g. ``{"hidden": [512, 256]}`` for ``mlp``).

    ``pretrained`` is a state dict to start from: a ``.safetensors``/``.pth`` file, an
    http(s) URL (downloaded into the cache, checked against ``pretrained_sha256``), or a
    deepstart run or bundle directory. Its head is replaced when the classes differ, and the
    normalisation becomes the one the weights were trained with.
    """

    name: str = "vgg_small"
    options: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = option(
        None,
        help="start from these weights: a name of deepstart weights (imagenet), a "
        ".safetensors/.pth file, a URL, or a deepstart run directory",
        metavar="NAME|PATH|URL",
    )
    pretrained_sha256: str | None = option(
        None, help="the SHA-256 a downloaded weights file must have", metavar="HEX"
    )


@dataclass(frozen=True)
class RunConfig:
    """Everything a ``deepstart train`` run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return cls(
            data=build_dataclass(DataConfig, d.get("data", {})),
            model=build_dataclass(ModelConfig, d.get("model", {})),
            train=build_dataclass(TrainConfig, d.get("train", {})),
        )

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def build_dataclass(kind: type, d: dict[str, Any]) -> Any:
    """``kind(**d)`` from a config.json section; a field it does not have is named."""
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    d = dict(d)
    if d.get("size") is not None:
        d["size"] = tuple(d["size"])
    return kind(**d)
