"""Frozen configuration dataclasses, one per concern, with JSON round trips.

The CLI maps its flags onto these fields; the resolved config is written beside every
checkpoint and model so a run can be understood and repeated from its directory alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepstart.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("one_cycle", "constant", "step", "cosine", "triangle")


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
    """A registry model and its options (e.g. ``{"hidden": [512, 256]}`` for ``mlp``).

    ``pretrained`` is a state dict to start from: a ``.safetensors``/``.pth`` file, an
    http(s) URL (downloaded into the cache, checked against ``pretrained_sha256``), or a
    deepstart run or bundle directory. Its head is replaced when the classes differ, and the
    normalisation becomes the one the weights were trained with.
    """

    name: str = "vgg_small"
    options: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    pretrained_sha256: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        lr: the peak learning rate (``lr_max`` of one-cycle; the constant LR otherwise), or
            "auto": run the LR finder first and use its valley suggestion.
        batch_size: items per step, or "auto": the largest that fits the accelerator.
        schedule: "one_cycle" (fastai's), "constant", "step" (x0.1 at 50% and 75%),
            "cosine" or "triangle" (airbench's: linear from 0.2 lr up to lr at
            ``pct_start``, then down to 0.07 lr; momentum constant).
        pct_start: where one_cycle and triangle peak (a share of training).
        opt: "sgd", "adam" or "adamw"; ``wd`` is decoupled for adamw, L2 otherwise.
        device: "auto" picks CUDA, then MPS, then CPU.
        precision: "auto" (bf16/fp16 autocast on CUDA, bf16 on CPUs with native bf16, fp32
            elsewhere), "fp32", "bf16", "fp16".
        guard: the divergence guard (restore + halve the LR when the loss blows up).
        early_stop: patience in epochs of early stopping on ``monitor`` (None: off).
        grad_clip: clip the gradient norm to this (None: off).
        label_smoothing, class_weights: the loss ("balanced" or a weight per class).
        ema: decay of an exponential moving average of the weights (None: off).
        lookahead: airbench's lookahead (:class:`deepstart.train.extras.Lookahead`): from
            30% of training on, every 5 steps the weights move to a slow average of
            themselves, which they end each epoch at.
        norm_bias_lr: multiplies the LR of BatchNorm shifts (airbench trains them 64x faster
            with SGD); their L2 is divided by it, so their decay per step stays ``lr * wd``.
        max_time: stop cleanly after this many seconds of training (None: no limit).
        fast_dev_run: one training batch and one validation batch, to catch bugs; saves nothing.
        overfit_batches: train (and validate) on this many fixed batches: a model that cannot
            overfit them has a bug.
        augment: augmentation preset of the training batches ("flip", "cifar", "photo",
            "digits"; None: none).
        tta: also score the test split with test-time augmentation (``augment``, else flip).
        fine_tune: fastai's fine_tune for a pretrained model: ``freeze_epochs`` with the body
            frozen, then ``epochs`` with everything trainable and lower LRs for earlier layers.
        freeze_epochs: the frozen epochs of ``fine_tune`` (fastai's default 1; cheap with
            ``precompute``, where they train the head on cached features).
        keep_frozen: layer groups ``fine_tune`` leaves frozen (BatchNorm statistics too) when
            it unfreezes; 0 trains them all.
        keep_better: ``fine_tune`` keeps the frozen phase's weights when the unfrozen phase
            ends with a higher validation loss.
        freeze: train only the head (the body stays as it is, e.g. pretrained).
        precompute: while the body is frozen (``freeze``, fine_tune's first epoch) and nothing
            is augmented, compute the body's features once and train the head on them.
        report: write ``report.html`` (plots, interpretation, what the network sees) at the end.
        tensorboard: also log to ``tensorboard/`` in the run directory (needs the extra
            ``deepstart[tensorboard]``).
        devices: processes to train in (DistributedDataParallel through torchrun); the
            batch size is per process, so the global batch is ``batch_size * devices``.
        sync_bn: synchronise BatchNorm statistics over processes (CUDA only).
        dist_timeout: seconds a process waits for the others in a collective before the run
            fails (a rank that died or hangs ends the run instead of blocking it).
        recipe: the name of the recipe these settings came from (:mod:`deepstart.recipes`),
            recorded so a run directory says what was used; None when none was.
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
    lookahead: bool = False
    norm_bias_lr: float = 1.0
    max_time: float | None = None
    fast_dev_run: bool = False
    overfit_batches: int = 0
    augment: str | None = None
    tta: bool = False
    fine_tune: bool = False
    freeze_epochs: int = 1
    keep_frozen: int = 0
    keep_better: bool = False
    freeze: bool = False
    precompute: bool = False
    report: bool = True
    tensorboard: bool = False
    devices: int = 1
    sync_bn: bool = False
    dist_timeout: float = 300.0
    recipe: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.lr != "auto" and not (
            isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf
        ):  # inf would "halve" to inf in the divergence guard, which then advised --lr inf
            raise ConfigError(f"lr must be a positive number or 'auto', got {self.lr!r}")
        # Every other number is checked here too, so a bad value fails in one line when the
        # config is built, not as a PyTorch traceback once training starts.
        for name, value, low, high in (
            ("wd", self.wd, 0.0, math.inf),
            # momentum is SGD's momentum and Adam's beta1: both must be in [0, 1)
            ("momentum", self.momentum, 0.0, 1.0),
            ("pct_start", self.pct_start, 0.0, 1.0),
            ("label_smoothing", self.label_smoothing, 0.0, 1.0),
        ):
            closed_high = name in ("pct_start",)
            ok = (
                math.isfinite(value)
                and low <= value
                and (value <= high if closed_high else value < high)
            )
            if not ok:
                bracket = "]" if closed_high else ")"
                raise ConfigError(f"{name} must be in [{low:g}, {high:g}{bracket}, got {value}")
        for name, value in (
            ("grad_clip", self.grad_clip),
            ("max_time", self.max_time),
            ("checkpoint_minutes", self.checkpoint_minutes),
        ):
            if value is not None and not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a positive number, got {value}")
        if self.batch_size != "auto" and not (
            isinstance(self.batch_size, int) and self.batch_size >= 1
        ):
            raise ConfigError(f"batch_size must be at least 1 or 'auto', got {self.batch_size!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16: {self.precision!r}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ConfigError(f"ema decay must be in (0, 1), got {self.ema}")
        if not self.norm_bias_lr > 0:
            raise ConfigError(f"norm_bias_lr must be positive, got {self.norm_bias_lr}")
        if self.early_stop is not None and self.early_stop < 1:
            raise ConfigError(f"early_stop patience must be at least 1, got {self.early_stop}")
        if self.overfit_batches < 0:
            raise ConfigError(f"overfit_batches must be >= 0, got {self.overfit_batches}")
        if self.opt not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.opt!r}; use one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")
        if self.keep_frozen < 0:
            raise ConfigError(f"keep_frozen must be >= 0, got {self.keep_frozen}")
        if self.freeze_epochs < 0:
            raise ConfigError(f"freeze_epochs must be >= 0, got {self.freeze_epochs}")
        if self.fine_tune and self.freeze:
            raise ConfigError("choose one of fine_tune (head, then all) and freeze (head only)")
        if self.devices < 1:
            raise ConfigError(f"devices must be at least 1, got {self.devices}")
        if not self.dist_timeout > 0:
            raise ConfigError(f"dist_timeout must be positive, got {self.dist_timeout}")
        if self.augment is not None:
            from deepstart.augment import PRESETS

            if self.augment not in PRESETS:
                raise ConfigError(
                    f"unknown augmentation {self.augment!r}; use one of {', '.join(PRESETS)}"
                )
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


FIT_OPTIMIZERS = ("adam", "adamw", "sgd", "lbfgs")
FIT_ACTIVATIONS = ("relu", "tanh", "silu", "sine")
# The variants --compare and --compare-opt train by default ("notes": the beginner's ReLU).
FIT_COMPARE = "notes,relu,tanh,silu,sine"
FIT_COMPARE_OPT = "notes,sgd,adam,lbfgs,adam+lbfgs"


@dataclass(frozen=True)
class FitConfig:
    """How ``deepstart fit-function`` learns a function ``y = f(x)``.

    The defaults fit ``sin`` on [-2 pi, 2 pi] to a max error below 1e-3 in a few seconds on
    a CPU: a SIREN-style MLP (sine activations), Adam with one-cycle, then an LBFGS polish.

    Attributes:
        expression: the formula of x (``"sin"``, ``"sin(3*x)+0.3*x"``), parsed safely by
            :func:`deepstart.fitting.expression.parse_expression`; ignored with ``csv``.
        csv: a CSV of (x, y) rows to fit instead of a formula.
        domain: (lo, hi) of x for a formula.
        samples: training points; ``sampling`` places them ("chebyshev": packed toward the
            ends, "uniform", "random"); ``noise``: std of Gaussian noise added to their y.
        model: a regression model of the registry (``deepstart models``); ``activation``,
            ``width``, ``depth``, ``fourier`` (Fourier features per input, 0: none) and ``w0``
            (frequency scale of the sine activation) are its options.
        opt: "adam", "adamw", "sgd" or "lbfgs"; ``lr`` its (peak) learning rate, None for
            the optimizer's and activation's default (see :attr:`peak_lr`); ``schedule``
            the LR schedule ("one_cycle", "constant", ...; lbfgs always runs constant);
            ``steps`` optimizer steps; ``batch_size`` points per step, None for all (full
            batch).
        polish: LBFGS steps after the main optimizer (0: none; each runs up to 5 iterations).
        loss: "mse" or "mae".
        device: where to train; tiny fits are faster on the CPU than on a GPU.
        threads: torch CPU threads while training (restored after; None: leave them). One
            is as fast for these tiny models, and does not stall when another process holds
            a core: two threads then wait on it at every step (20x slower measured on 2 cores).
        progress: "auto", "rich", "plain" or "none", as for ``deepstart train``.
        pictures: draw fit_progress.png/.gif, loss.png and error.png into the run directory.
    """

    expression: str = "sin"
    csv: str | None = None
    domain: tuple[float, float] = (-2 * math.pi, 2 * math.pi)
    samples: int = 1000
    sampling: str = "chebyshev"
    noise: float = 0.0
    model: str = "fit_mlp"
    activation: str = "sine"
    width: int = 64
    depth: int = 3
    fourier: int = 0
    w0: float = 30.0
    opt: str = "adam"
    lr: float | None = None
    schedule: str = "one_cycle"
    steps: int = 300
    batch_size: int | None = None
    polish: int = 100
    loss: str = "mse"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = 1
    out: str = "runs"
    progress: str = "auto"
    pictures: bool = True

    def __post_init__(self) -> None:
        if len(self.domain) != 2 or not float(self.domain[0]) < float(self.domain[1]):
            raise ConfigError(f"domain must be (lo, hi) with lo < hi, got {self.domain}")
        if self.samples < 2:
            raise ConfigError(f"samples must be at least 2, got {self.samples}")
        if self.sampling not in ("chebyshev", "uniform", "random"):
            raise ConfigError(f"sampling must be chebyshev, uniform or random: {self.sampling!r}")
        if not self.noise >= 0:
            raise ConfigError(f"noise must be >= 0, got {self.noise}")
        if self.activation not in FIT_ACTIVATIONS:
            raise ConfigError(f"activation must be one of {FIT_ACTIVATIONS}: {self.activation!r}")
        if self.width < 1 or self.depth < 0 or self.fourier < 0:
            raise ConfigError("width must be >= 1, depth >= 0 and fourier >= 0")
        if self.opt not in FIT_OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.opt!r}; use one of {FIT_OPTIMIZERS}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; use one of {SCHEDULES}")
        if self.steps < 1 or self.polish < 0:
            raise ConfigError(f"steps must be >= 1 and polish >= 0: {self.steps}, {self.polish}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1 (or None), got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1 (or None), got {self.threads}")
        if self.loss not in ("mse", "mae"):
            raise ConfigError(f"loss must be mse or mae, got {self.loss!r}")
        if self.progress not in ("auto", "rich", "plain", "none"):
            raise ConfigError(f"progress must be auto, rich, plain or none: {self.progress!r}")

    @property
    def peak_lr(self) -> float:
        """``lr``, or the default: 1 for lbfgs (its first trial step); for adam and adamw
        1e-3 with the sine activation (w0 = 30 already scales its gradients up) and 1e-2
        with the others; ten times that for sgd."""
        if self.lr is not None:
            return float(self.lr)
        if self.opt == "lbfgs":
            return 1.0
        base = 1e-3 if self.activation == "sine" else 1e-2
        return base * 10 if self.opt == "sgd" else base

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitConfig:
        d = dict(d)
        if "domain" in d:
            d["domain"] = tuple(d["domain"])
        return _build(cls, d)


def _build(kind: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    d = dict(d)
    if d.get("size") is not None:
        d["size"] = tuple(d["size"])
    return kind(**d)
