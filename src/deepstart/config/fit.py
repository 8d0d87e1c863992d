"""How ``deepstart fit-function`` learns a function ``y = f(x)`` (:class:`FitConfig`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from deepstart.config.run import build_dataclass
from deepstart.config.training import PROGRESS_MODES, SCHEDULES
from deepstart.errors import ConfigError

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
        if self.progress not in PROGRESS_MODES:
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
        return build_dataclass(cls, d)
