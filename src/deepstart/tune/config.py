"""The settings of a study (:class:`TuneConfig`) and the metrics it can optimise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepstart.config import RunConfig
from deepstart.errors import ConfigError
from deepstart.tune.space import SearchSpace

METRICS = {
    "valid_loss": "minimize",
    "valid_bits": "minimize",
    "accuracy": "maximize",
    "train_loss": "minimize",
}
PRUNERS = ("median", "none")


@dataclass(frozen=True)
class TuneConfig:
    """A study: what to train, what to search, how long, and where it is kept.

    Attributes:
        base: the run every trial starts from (data, model, training); the space's values
            are put into it. None when resuming: the study's own is used.
        space: what to search (None when resuming: the study's own).
        trials: trials to run in this call (a resumed study adds this many).
        metric: the validation number to optimise, from its last epoch: ``valid_loss``
            (default), ``valid_bits``, ``accuracy`` or ``train_loss``.
        direction: "minimize" or "maximize"; None follows the metric.
        max_time: seconds for this call: no trial starts after it, and the running trial
            stops at its next epoch end (recorded as PRUNED, with ``stopped: max_time``).
        out: parent of the study directory ``<out>/<study_name>``.
        study_name: default ``<data>-<model>``.
        storage: an SQL URL (``sqlite:///x.db``, ``postgresql://...``); default SQLite in
            the study directory.
        resume: continue an existing study (it must exist); without it the study must not.
        seed: seeds the sampler and every trial's training (the same seed for all trials,
            so they differ by their hyperparameters only).
        pruner: "median" (Optuna's MedianPruner) or "none".
        prune_startup: finished trials before any pruning.
        prune_warmup: epochs a trial runs before it can be pruned.
        enqueue: parameter sets to try first, in order (e.g. a known good config).
        trial_reports: write report.html in every trial's run directory (slow); the best
            trial gets one anyway when ``best_report``.
        plots: draw the study's plots and the HTML page.
        verbose: show every trial's training output.
    """

    base: RunConfig | None = None
    space: SearchSpace | None = None
    trials: int = 20
    metric: str | None = None
    direction: str | None = None
    max_time: float | None = None
    out: str = "runs/studies"
    study_name: str | None = None
    storage: str | None = None
    resume: bool = False
    seed: int = 0
    pruner: str = "median"
    prune_startup: int = 5
    prune_warmup: int = 1
    enqueue: tuple[dict[str, Any], ...] = ()
    trial_reports: bool = False
    best_report: bool = True
    plots: bool = True
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"trials must be at least 1, got {self.trials}")
        if self.metric is not None and self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.direction not in (None, "minimize", "maximize"):
            raise ConfigError(f"direction must be minimize or maximize, got {self.direction!r}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        if self.max_time is not None and self.max_time <= 0:
            raise ConfigError(f"max_time must be positive, got {self.max_time}")
        if not self.resume and (self.base is None or self.space is None):
            raise ConfigError("a new study needs a base run config and a search space")
        if (self.base is None) != (self.space is None):
            raise ConfigError("give both the base config and the space, or neither (resume)")
