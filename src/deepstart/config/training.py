"""How to train: one frozen dataclass per concern, and :class:`TrainConfig`, all of them flat.

Each concern (optimiser, schedule, regularisation, output, devices, debugging) holds its
fields and checks them, and can be built alone. :class:`TrainConfig` inherits every concern,
so its users see one flat set of fields (``TrainConfig(lr=3e-3, epochs=2)``, ``tc.lr``,
``dataclasses.replace``, the ``train`` section of config.json) and it runs every check.

Every field is an :func:`~deepstart.config.option.option`: its help, flag and parser live
beside it, and ``deepstart train`` offers it as a flag from that alone. A new training option
is one field here and one use where it takes effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from deepstart.config.option import (
    option,
    parse_batch_size,
    parse_class_weights,
    parse_duration,
    parse_lr,
    parse_off,
)
from deepstart.errors import ConfigError

# The optimizers a run can name; deepstart.train.optim.OPTIMIZER_NAMES adds lbfgs (Python
# only). A test keeps this a subset of those.
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("one_cycle", "constant", "step", "cosine", "triangle")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PROGRESS_MODES = ("auto", "rich", "plain", "none")
REPORT_PANELS = ("auto", "all", "core")  # deepstart.report.budget.PANELS; a test keeps them equal
# The names of deepstart.augment.PRESETS, in its order ("none": no augmentation). Spelt out
# here because the config layer imports nothing above it; a test keeps the two equal.
AUGMENT_PRESETS = ("none", "flip", "cifar", "cifar-alt", "photo", "digits")


def _check_range(name: str, value: float, low: float, high: float, *, closed: bool) -> None:
    """``value`` in [low, high) (``closed``: [low, high]), finite; a ConfigError if not."""
    ok = math.isfinite(value) and low <= value and (value <= high if closed else value < high)
    if not ok:
        bracket = "]" if closed else ")"
        raise ConfigError(f"{name} must be in [{low:g}, {high:g}{bracket}, got {value}")


def _check_positive(name: str, value: float | None) -> None:
    """None, or a positive finite number: a ConfigError if not."""
    if value is not None and not 0 < value < math.inf:
        raise ConfigError(f"{name} must be a positive number, got {value}")


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser, its learning rate, batch size, weight decay and momentum."""

    opt: str = option(
        "adamw",
        help="optimizer; wd is decoupled for adamw, L2 otherwise; rmsprop has Keras's rho "
        "0.9, eps 1e-7",
        choices=OPTIMIZERS,
    )
    lr: float | str = option(
        1e-3,
        help="peak LR: one_cycle's lr_max, the constant LR otherwise; 'auto' runs the LR "
        "finder first and uses its valley, or keeps the usual LR (the recipe's or model's) "
        "when the valley is within 3x of it, or lower while the sweep's loss still fell "
        "past the usual LR",
        metavar="auto|LR",
        parse=parse_lr,
    )
    batch_size: int | str = option(
        128,
        help="items per step; 'auto' finds the largest that fits the accelerator",
        metavar="auto|N",
        parse=parse_batch_size,
    )
    wd: float = option(0.01, help="weight decay")
    momentum: float = option(0.9, help="SGD and RMSprop momentum / Adam beta1")
    nesterov: bool = option(False, help="Nesterov momentum for sgd")
    # airbench trains BatchNorm shifts 64x faster with SGD; their L2 is divided by the
    # multiplier, so their decay per step stays lr * wd.
    norm_bias_lr: float = option(
        1.0, help="LR multiplier of BatchNorm shifts; airbench's SGD uses 64", metavar="MULT"
    )
    # A batch that does not fit in memory, in N passes: gradients of N batches are averaged
    # before one optimizer step, so the step sees batch_size * N items.
    accumulate: int = option(
        1,
        help="gradient accumulation: one optimizer step every N batches, on their averaged "
        "gradients (an effective batch of batch_size x N when it does not fit in memory)",
        metavar="N",
    )

    def __post_init__(self) -> None:
        if self.lr != "auto" and not (
            isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf
        ):  # inf would "halve" to inf in the divergence guard, which then advised --lr inf
            raise ConfigError(f"lr must be a positive number or 'auto', got {self.lr!r}")
        # Every number is checked when the config is built, so a bad value fails in one
        # line, not as a PyTorch traceback once training starts.
        _check_range("wd", self.wd, 0.0, math.inf, closed=False)
        # momentum is SGD's momentum and Adam's beta1: both must be in [0, 1)
        _check_range("momentum", self.momentum, 0.0, 1.0, closed=False)
        if self.batch_size != "auto" and not (
            isinstance(self.batch_size, int) and self.batch_size >= 1
        ):
            raise ConfigError(f"batch_size must be at least 1 or 'auto', got {self.batch_size!r}")
        if not (isinstance(self.accumulate, int) and self.accumulate >= 1):
            raise ConfigError(f"accumulate must be a whole number >= 1, got {self.accumulate!r}")
        if not self.norm_bias_lr > 0:
            raise ConfigError(f"norm_bias_lr must be positive, got {self.norm_bias_lr}")
        if self.opt not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.opt!r}; use one of {OPTIMIZERS}")


@dataclass(frozen=True)
class ScheduleConfig:
    """How long to train, the LR over time, and which layers train when."""

    epochs: int = option(5, help="epochs to train; with fine_tune, the unfrozen ones")
    schedule: str = option(
        "one_cycle",
        help="LR schedule: one_cycle (fastai's), constant, step (x0.1 at 50% and 75%), "
        "cosine, or triangle, airbench's: from 0.2 lr up to lr at pct_start, then down to "
        "0.07 lr",
        choices=SCHEDULES,
    )
    pct_start: float = option(
        0.25, help="where one_cycle and triangle peak, as a share of training"
    )
    fine_tune: bool = option(
        False,
        help="fastai's fine_tune: freeze_epochs with the body frozen, then all layers with "
        "lower LRs for early ones",
    )
    freeze_epochs: int = option(
        1,
        help="epochs with the body frozen before fine_tune unfreezes it; cheap with precompute",
        metavar="N",
    )
    keep_frozen: int = option(
        0,
        help="layer groups fine_tune leaves frozen, BatchNorm statistics too, when it unfreezes",
        metavar="N",
    )
    keep_better: bool = option(
        False,
        help="fine_tune: keep the frozen phase's weights if unfreezing ends with a higher "
        "validation loss",
    )
    freeze: bool = option(
        False, help="train only the head; the body stays as it is, e.g. pretrained"
    )
    precompute: bool = option(
        False,
        help="while the body is frozen and nothing is augmented: compute its features once and "
        "train the head on them; BatchNorm stays fixed",
    )
    stem_epochs: int | None = option(
        None,
        help="the model's stem (fast_cifar: its whitening) learns in the first N epochs only; "
        "then the backward pass stops at the first block, skipping its costliest convolution "
        "(airbench's trick)",
        metavar="N",
    )
    small_epochs: int | None = option(
        None,
        help="progressive resizing (fastai's): the first N epochs train on images scaled to "
        "small_scale of their side, at about small_scale squared of the cost; the last epochs, "
        "validation and prediction see the full size (with fine_tune: of the unfrozen epochs). "
        "Nets with global pooling only",
        metavar="N",
    )
    small_scale: float = option(0.75, help="the side of small_epochs' images, as a share")

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        _check_range("pct_start", self.pct_start, 0.0, 1.0, closed=True)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")
        if self.keep_frozen < 0:
            raise ConfigError(f"keep_frozen must be >= 0, got {self.keep_frozen}")
        if self.freeze_epochs < 0:
            raise ConfigError(f"freeze_epochs must be >= 0, got {self.freeze_epochs}")
        if self.stem_epochs is not None and self.stem_epochs < 0:
            raise ConfigError(f"stem_epochs must be >= 0, got {self.stem_epochs}")
        if self.small_epochs is not None and self.small_epochs < 0:
            raise ConfigError(f"small_epochs must be >= 0, got {self.small_epochs}")
        if self.small_epochs and self.small_epochs >= self.epochs:
            raise ConfigError(
                f"small_epochs ({self.small_epochs}) must leave epochs at the full size "
                f"(epochs {self.epochs}): the net must end at the size it will see"
            )
        if not 0 < self.small_scale < 1:
            raise ConfigError(f"small_scale must be in (0, 1), got {self.small_scale}")
        if self.fine_tune and self.freeze:
            raise ConfigError("choose one of fine_tune (head, then all) and freeze (head only)")


@dataclass(frozen=True)
class RegularisationConfig:
    """The loss, augmentation, weight averages and early stopping (regularisation)."""

    label_smoothing: float = option(0.0, help="label smoothing of the loss")
    # option() returns a dataclasses.field, which ruff cannot see; the default is None.
    class_weights: str | list[float] | None = option(  # noqa: RUF009
        None,
        help="weight the loss per class, 'balanced' or one weight a class, e.g. for imbalanced "
        "data",
        metavar="balanced|W1,W2,...",
        parse=parse_class_weights,
    )
    augment: str | None = option(
        None,
        help="augment training batches on the device: flip, cifar (flip+shift), cifar-alt "
        "(cifar, each image mirrored every other epoch), photo (crop, flip, rotate, "
        "lighting), digits (no flip), none",
        choices=AUGMENT_PRESETS,
        parse=parse_off,
    )
    tta: bool = option(
        False, help="also score the test split with test-time augmentation: augment's, else flips"
    )
    ema: float | None = option(
        None, help="decay of a moving average of the weights, e.g. 0.999", metavar="DECAY"
    )
    # deepstart.train.extras.Lookahead: from 30% of training on, every 5 steps the weights
    # move to a slow average of themselves, which they end each epoch at.
    lookahead: bool = option(
        False, help="airbench's lookahead: pull the weights to a slow average every 5 steps"
    )
    grad_clip: float | None = option(None, help="clip the gradient norm to NORM", metavar="NORM")
    early_stop: int | None = option(
        None,
        help="stop after PATIENCE epochs without improvement of monitor; keep the best weights",
        metavar="PATIENCE",
    )
    monitor: str = option("valid_loss", help="metric for early stopping")
    min_delta: float = option(0.0, help="smallest change of monitor that counts")

    def __post_init__(self) -> None:
        _check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, closed=False)
        _check_positive("grad_clip", self.grad_clip)
        if self.ema is not None and not 0 < self.ema < 1:
            raise ConfigError(f"ema decay must be in (0, 1), got {self.ema}")
        if self.early_stop is not None and self.early_stop < 1:
            raise ConfigError(f"early_stop patience must be at least 1, got {self.early_stop}")
        if self.augment is not None and self.augment not in AUGMENT_PRESETS:
            raise ConfigError(
                f"unknown augmentation {self.augment!r}; use one of {', '.join(AUGMENT_PRESETS)}"
            )


@dataclass(frozen=True)
class OutputConfig:
    """Where the run directory goes and what is written into it."""

    out: str = option("runs", help="parent of the run directory", metavar="DIR")
    checkpoint: bool = option(True, help="write checkpoints: the last and the best")
    checkpoint_minutes: float | None = option(
        None, help="also checkpoint every MIN minutes", flag="--checkpoint-every", metavar="MIN"
    )
    progress: str = option(
        "auto",
        help="live bar (rich), lines only (plain), nothing (none); auto picks by terminal",
        choices=PROGRESS_MODES,
    )
    report: bool = option(True, help="write report.html (curves, interpretation) at the end")
    report_panels: str = option(
        "auto",
        help="the report's slow panels (figures, what the network sees): auto draws those that "
        "keep the report within 10% of the training time, all draws every one, core none",
        choices=REPORT_PANELS,
    )
    tensorboard: bool = option(
        False, help="also log to RUN_DIR/tensorboard; needs pip install 'deepstart[tensorboard]'"
    )

    def __post_init__(self) -> None:
        _check_positive("checkpoint_minutes", self.checkpoint_minutes)
        if self.progress not in PROGRESS_MODES:
            raise ConfigError(f"progress must be auto, rich, plain or none: {self.progress!r}")
        if self.report_panels not in REPORT_PANELS:
            raise ConfigError(f"report_panels must be auto, all or core: {self.report_panels!r}")


@dataclass(frozen=True)
class DistributedConfig:
    """Where training runs: the device, the precision, how many processes."""

    device: str = option("auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    precision: str = option(
        "auto",
        help="auto: bf16/fp16 autocast on CUDA, bf16 on CPUs with native bf16 (avx512_bf16, "
        "amx_bf16), else fp32",
        choices=PRECISIONS,
    )
    devices: int = option(
        1,
        help="train in N processes with DistributedDataParallel, launched by torchrun; "
        "batch_size is per process",
        metavar="N",
    )
    sync_bn: bool = option(False, help="synchronise BatchNorm statistics over processes; CUDA only")
    # A rank that died or hangs ends the run instead of blocking the others for ever.
    dist_timeout: float = option(
        300.0,
        help="seconds (or 90s, 5m, 1h) a process waits for the others before the run fails",
        metavar="T",
        parse=parse_duration,
    )

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16: {self.precision!r}")
        if self.devices < 1:
            raise ConfigError(f"devices must be at least 1, got {self.devices}")
        if not self.dist_timeout > 0:
            raise ConfigError(f"dist_timeout must be positive, got {self.dist_timeout}")


@dataclass(frozen=True)
class DebugConfig:
    """Seeds, the divergence guard, time limits and small trial runs (debugging)."""

    seed: int = option(0, help="seed of the weights, the split and the batch order")
    guard: bool = option(
        True, help="the divergence guard: restore and lower the LR when the loss blows up"
    )
    guard_tries: int = option(
        8, help="restores of the guard before it gives up (it halves, then sweeps)", metavar="N"
    )
    sanity: bool = option(
        True,
        help="start-of-training sanity checks: one line per problem the labels and the first "
        "batches show (imbalance, blank inputs, a loss far from ln K, a rising loss)",
    )
    max_time: float | None = option(
        None,
        help="stop cleanly after T seconds (or 90s, 5m, 1h) of training",
        metavar="T",
        parse=parse_duration,
    )
    fast_dev_run: bool = option(
        False, help="one training and one validation batch to catch bugs; saves nothing"
    )
    overfit_batches: int = option(
        0,
        help="train and validate on N fixed batches: a working model overfits them",
        metavar="N",
    )

    def __post_init__(self) -> None:
        _check_positive("max_time", self.max_time)
        if self.overfit_batches < 0:
            raise ConfigError(f"overfit_batches must be >= 0, got {self.overfit_batches}")


# The concerns in the order their fields come in TrainConfig (and in config.json).
CONCERNS = (
    ScheduleConfig,
    OptimConfig,
    RegularisationConfig,
    OutputConfig,
    DistributedConfig,
    DebugConfig,
)


# Bases in the reverse of CONCERNS: a dataclass takes its inherited fields from the last
# base first.
@dataclass(frozen=True)
class TrainConfig(
    DebugConfig,
    DistributedConfig,
    OutputConfig,
    RegularisationConfig,
    OptimConfig,
    ScheduleConfig,
):
    """How to train: the fields of every concern above, flat, and the recipe's name.

    Each field's meaning is its help (``deepstart train --help`` shows them, grouped by
    concern).

    Attributes:
        recipe: the name of the recipe these settings came from (:mod:`deepstart.recipes`),
            recorded so a run directory says what was used; None when none was.
    """

    recipe: str | None = None

    def __post_init__(self) -> None:
        for concern in CONCERNS:
            concern.__post_init__(self)
