"""Frozen configuration dataclasses, one per concern, with JSON round trips.

The CLI builds these from its flags (training flags are generated from the fields of
:class:`TrainConfig`'s concerns); the resolved config is written beside every checkpoint and
model so a run can be understood and repeated from its directory alone.

- :mod:`~deepstart.config.option`: a field that is also a command-line option;
- :mod:`~deepstart.config.training`: how to train, one dataclass a concern, and TrainConfig;
- :mod:`~deepstart.config.run`: DataConfig, ModelConfig and RunConfig (config.json);
- :mod:`~deepstart.config.fit`: FitConfig of ``deepstart fit-function``.
"""

from deepstart.config.fit import (
    FIT_ACTIVATIONS,
    FIT_COMPARE,
    FIT_COMPARE_OPT,
    FIT_OPTIMIZERS,
    FitConfig,
)
from deepstart.config.option import Option, default_of, option, option_of
from deepstart.config.run import RESIZE_MODES, DataConfig, ModelConfig, RunConfig
from deepstart.config.training import (
    AUGMENT_PRESETS,
    CONCERNS,
    OPTIMIZERS,
    PRECISIONS,
    PROGRESS_MODES,
    SCHEDULES,
    DebugConfig,
    DistributedConfig,
    OptimConfig,
    OutputConfig,
    RegularisationConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = [
    "AUGMENT_PRESETS",
    "CONCERNS",
    "FIT_ACTIVATIONS",
    "FIT_COMPARE",
    "FIT_COMPARE_OPT",
    "FIT_OPTIMIZERS",
    "OPTIMIZERS",
    "PRECISIONS",
    "PROGRESS_MODES",
    "RESIZE_MODES",
    "SCHEDULES",
    "DataConfig",
    "DebugConfig",
    "DistributedConfig",
    "FitConfig",
    "ModelConfig",
    "OptimConfig",
    "Option",
    "OutputConfig",
    "RegularisationConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "default_of",
    "option",
    "option_of",
]
