"""Frozen configuration dataclasses, one per concern, with JSON round trips.

The CLI maps its flags onto these fields; the resolved config is written beside every
checkpoint and model so a run can be understood and repeated from its directory alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepstart.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("one_cycle", "constant", "step", "cosine")


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
        options: source-specific settings, e.g. shapes' ``n_train``, ``classes``.
    """

    name: str = "shapes"
    data_dir: str | None = None
    valid_pct: float = 0.1
    size: tuple[int, int] | None = None
    channels: int | None = None
    resize: str = "squish"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.valid_pct < 1:
            raise ConfigError(f"valid_pct must be in [0, 1), got {self.valid_pct}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if self.resize not in ("squish", "crop", "pad"):
            raise ConfigError(f"resize must be squish, crop or pad, got {self.resize!r}")


@dataclass(frozen=True)
class ModelConfig:
    """A registry model and its options (e.g. ``{"hidden": [512, 256]}`` for ``mlp``)."""

    name: str = "vgg_small"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        lr: the peak learning rate (``lr_max`` of one-cycle; the constant LR otherwise), or
            "auto": run the LR finder first and use its valley suggestion.
        batch_size: items per step, or "auto": the largest that fits the accelerator.
        schedule: "one_cycle" (fastai's), "constant", "step" (x0.1 at 50% and 75%) or
            "cosine".
        opt: "sgd", "adam" or "adamw"; ``wd`` is decoupled for adamw, L2 otherwise.
        device: "auto" picks CUDA, then MPS, then CPU.
        precision: "auto" (bf16/fp16 autocast on CUDA, fp32 elsewhere), "fp32", "bf16", "fp16".
        guard: the divergence guard (restore + halve the LR when the loss blows up).
        early_stop: patience in epochs of early stopping on ``monitor`` (None: off).
        grad_clip: clip the gradient norm to this (None: off).
        label_smoothing, class_weights: the loss ("balanced" or a weight per class).
        ema: decay of an exponential moving average of the weights (None: off).
        max_time: stop cleanly after this many seconds of training (None: no limit).
        fast_dev_run: one training batch and one validation batch, to catch bugs; saves nothing.
        overfit_batches: train (and validate) on this many fixed batches: a model that cannot
            overfit them has a bug.
        report: write ``report.html`` (plots, interpretation, what the network sees) at the end.
        tensorboard: also log to ``tensorboard/`` in the run directory (needs the extra
            ``deepstart[tensorboard]``).
    """

    epochs: int = 5
    lr: float | str = 1e-3
    batch_size: int | str = 128
    opt: str = "adamw"
    wd: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "one_cycle"
    pct_start: float = 0.25
    seed: int = 0
    device: str = "auto"
    out: str = "runs"
    checkpoint: bool = True
    checkpoint_minutes: float | None = None
    progress: str = "auto"
    precision: str = "auto"
    guard: bool = True
    guard_tries: int = 5
    early_stop: int | None = None
    monitor: str = "valid_loss"
    min_delta: float = 0.0
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    class_weights: str | list[float] | None = None
    ema: float | None = None
    max_time: float | None = None
    fast_dev_run: bool = False
    overfit_batches: int = 0
    report: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.lr != "auto" and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"lr must be positive or 'auto', got {self.lr!r}")
        if self.batch_size != "auto" and not (
            isinstance(self.batch_size, int) and self.batch_size >= 1
        ):
            raise ConfigError(f"batch_size must be at least 1 or 'auto', got {self.batch_size!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16: {self.precision!r}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ConfigError(f"ema decay must be in (0, 1), got {self.ema}")
        if self.early_stop is not None and self.early_stop < 1:
            raise ConfigError(f"early_stop patience must be at least 1, got {self.early_stop}")
        if self.overfit_batches < 0:
            raise ConfigError(f"overfit_batches must be >= 0, got {self.overfit_batches}")
        if self.opt not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.opt!r}; use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")
        if self.progress not in ("auto", "rich", "plain", "none"):
            raise ConfigError(f"progress must be auto, rich, plain or none: {self.progress!r}")


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
            data=_build(DataConfig, d.get("data", {})),
            model=_build(ModelConfig, d.get("model", {})),
            train=_build(TrainConfig, d.get("train", {})),
        )

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _build(kind: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    d = dict(d)
    if d.get("size") is not None:
        d["size"] = tuple(d["size"])
    return kind(**d)
