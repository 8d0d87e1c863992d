"""deepstart: train, understand and ship an image classifier on your own data.

Example:
    >>> from deepstart import Learner, create_model, load_dataset
    >>> data = load_dataset("shapes")
    >>> model = create_model("vgg_small", in_channels=data.channels,
    ...                      num_classes=data.num_classes, input_size=data.size)
    >>> learn = Learner(data, model)
    >>> learn.fit_one_cycle(5, lr_max=3e-3)
    >>> learn.evaluate()["accuracy"]
"""

from deepstart.config import DataConfig, FitConfig, ModelConfig, RunConfig, TrainConfig
from deepstart.data.catalog import list_datasets, load_dataset
from deepstart.data.dataset import Batches, DataError, Dataset, ImageSet, Preprocess
from deepstart.data.mismatch import check_inputs, input_stats
from deepstart.data.tensors import TensorData, TensorSet
from deepstart.device import seed_everything
from deepstart.errors import ConfigError, DeepstartError
from deepstart.fitting.compare import compare_fits
from deepstart.fitting.data import csv_data, function_data
from deepstart.fitting.expression import parse_expression
from deepstart.fitting.fit import fit_function
from deepstart.interpret.analysis import Interpretation
from deepstart.models.registry import (
    ModelError,
    ModelInfo,
    create_model,
    list_models,
    register_model,
    training_defaults,
)
from deepstart.models.sequential import (
    Activation,
    AveragePooling2D,
    AvgPool,
    BatchNorm,
    BatchNormalization,
    Conv,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    GlobalAvgPool,
    MaxPooling2D,
    Pool,
    Residual,
    Sequential,
)
from deepstart.models.summary import summarize
from deepstart.models.weights import list_weights, load_weights
from deepstart.report import build_report
from deepstart.run.runner import evaluate_run, train_run
from deepstart.ship.bundle import (
    Bundle,
    BundleError,
    SavedModel,
    export_bundle,
    load_bundle,
    load_model,
    save_model,
)
from deepstart.ship.predict import Prediction
from deepstart.train.callbacks import (
    Callback,
    CancelBatch,
    CancelEpoch,
    CancelFit,
    Checkpoint,
    GracefulInterrupt,
    Progress,
    Recorder,
)
from deepstart.train.extras import EMA, EarlyStopping, GradientClip, MaxTime
from deepstart.train.guard import DivergenceGuard
from deepstart.train.learner import Learner
from deepstart.train.losses import make_loss
from deepstart.train.lr_finder import LRFindResult, lr_find
from deepstart.train.task import Classification, Regression, Task
from deepstart.train.tensorboard import TensorBoardLogger
from deepstart.train.transfer import vision_learner
from deepstart.tune import TuneConfig, parse_space, tune

__version__ = "0.1.0"

__all__ = [
    "EMA",
    "Activation",
    "AveragePooling2D",
    "AvgPool",
    "BatchNorm",
    "BatchNormalization",
    "Batches",
    "Bundle",
    "BundleError",
    "Callback",
    "CancelBatch",
    "CancelEpoch",
    "CancelFit",
    "Checkpoint",
    "Classification",
    "ConfigError",
    "Conv",
    "Conv2D",
    "DataConfig",
    "DataError",
    "Dataset",
    "DeepstartError",
    "Dense",
    "DivergenceGuard",
    "Dropout",
    "EarlyStopping",
    "FitConfig",
    "Flatten",
    "GlobalAveragePooling2D",
    "GlobalAvgPool",
    "GracefulInterrupt",
    "GradientClip",
    "ImageSet",
    "Interpretation",
    "LRFindResult",
    "Learner",
    "MaxPooling2D",
    "MaxTime",
    "ModelConfig",
    "ModelError",
    "ModelInfo",
    "Pool",
    "Prediction",
    "Preprocess",
    "Progress",
    "Recorder",
    "Regression",
    "Residual",
    "RunConfig",
    "SavedModel",
    "Sequential",
    "Task",
    "TensorBoardLogger",
    "TensorData",
    "TensorSet",
    "TrainConfig",
    "TuneConfig",
    "__version__",
    "build_report",
    "check_inputs",
    "compare_fits",
    "create_model",
    "csv_data",
    "evaluate_run",
    "export_bundle",
    "fit_function",
    "function_data",
    "input_stats",
    "list_datasets",
    "list_models",
    "list_weights",
    "load_bundle",
    "load_dataset",
    "load_model",
    "load_weights",
    "lr_find",
    "make_loss",
    "parse_expression",
    "parse_space",
    "register_model",
    "save_model",
    "seed_everything",
    "summarize",
    "train_run",
    "training_defaults",
    "tune",
    "vision_learner",
]
