"""Hyperparameter search with Optuna: every trial is an ordinary ``train_run``.

A study samples a :class:`~deepstart.tune.space.SearchSpace` with Optuna's TPE sampler
(seeded), trains one run directory per trial (bundle, metrics, config: each can be evaluated,
reported or shipped like any run), and scores it by a validation metric of its last epoch. A
callback reports that metric after every epoch, so Optuna's median pruner can stop a trial
that is worse than the median of earlier trials at the same epoch.

The study lives in a database through Optuna's RDB storage: SQLite under the study directory
unless ``storage`` names another SQL URL. Interrupting (Ctrl-C) or a crashing trial marks that
trial FAIL; a trial left RUNNING by a killed process is marked FAIL when the study is resumed,
so the study only ever holds finished trials plus the ones running now.

Study directory ``<out>/<study_name>/``:
    study.db        the Optuna database (unless --storage says otherwise)
    trials/NNNN/    each trial's run directory
    plots/*.png     optimisation history, parameter importances, slice plot
    study.html      the study on one page; study.json the trials as data
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepstart.config import RunConfig
from deepstart.errors import DeepstartError
from deepstart.train.callbacks import Callback, CancelFit
from deepstart.tune.config import TuneConfig
from deepstart.tune.space import SearchSpace, apply_values
from deepstart.tune.storage import open_study, optuna_module, storage_url


@dataclass
class TrialRow:
    """One trial as the results table shows it."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    seconds: float | None
    epochs: int | None
    run_dir: str | None
    note: str = ""


@dataclass
class StudyResult:
    """What a study call leaves: its rows, the best trial and the files written."""

    name: str
    storage: str
    directory: Path
    metric: str
    direction: str
    space: SearchSpace
    base: RunConfig
    rows: list[TrialRow]
    best: TrialRow | None
    interrupted: bool = False
    html: Path | None = None
    plots: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class TrialPruning(Callback):
    """Reports ``metric`` to an Optuna trial after every epoch; stops the fit (``CancelFit``)
    when the pruner says so, or when the study's time is up. Runs after the recorder,
    progress and checkpoint (``order`` 50), so the epoch is recorded first."""

    order = 50

    def __init__(
        self, trial: Any, metric: str, *, prune: bool = True, deadline: float | None = None
    ) -> None:
        self.trial, self.metric, self.prune, self.deadline = trial, metric, prune, deadline
        self.pruned_at: int | None = None
        self.out_of_time = False

    def after_epoch(self) -> None:
        learn = self.learn
        step = int(learn.recorder.history[-1]["epoch"])  # 1-based, over every fit
        self.trial.report(float(learn.metrics[self.metric]), step)
        if learn.epoch + 1 >= learn.n_epochs:
            return  # the last epoch: the trial is complete anyway
        if self.prune and self.trial.should_prune():
            self.pruned_at = step
            raise CancelFit
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.out_of_time = True
            raise CancelFit


def tune(
    cfg: TuneConfig,
    *,
    callbacks: list[Callback] | None = None,
    log: Callable[[str], None] = print,
) -> StudyResult:
    """Run (or continue) a study; returns its trials, the best one and the page written.

    ``callbacks`` are added to every trial's training (besides the pruning one).

    Example:
        >>> base = RunConfig(data=DataConfig("shapes", size=(16, 16)),
        ...                  model=ModelConfig("conv{width}-pool-gap"))
        >>> res = tune(TuneConfig(base, parse_space("lr=log(1e-3,1e-2) width=int(8,32) "
        ...                                         "epochs=2"), trials=3, out="runs/studies"))
        >>> res.best.run_dir
    """
    optuna = optuna_module()
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # we print a line per trial ourselves
    try:
        return _tune(cfg, list(callbacks or []), log)
    finally:
        optuna.logging.set_verbosity(level)


def _tune(cfg: TuneConfig, extra: list[Callback], log: Callable[[str], None]) -> StudyResult:
    optuna = optuna_module()
    from deepstart.run.runner import Interrupted, train_run

    study, setup, directory = open_study(cfg, log)
    base, space = RunConfig.from_dict(setup["base"]), SearchSpace.from_dict(setup["space"])
    metric = setup["metric"]
    for params in cfg.enqueue:
        study.enqueue_trial(params)
    deadline = time.monotonic() + cfg.max_time if cfg.max_time else None

    def objective(trial: Any) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        out = directory / "trials" / f"{trial.number:04d}"
        start = time.perf_counter()
        pruning = TrialPruning(trial, metric, prune=cfg.pruner != "none", deadline=deadline)
        try:
            run_cfg = apply_values(base, space.sample(trial))
            run_cfg = dataclasses.replace(
                run_cfg,
                train=dataclasses.replace(
                    run_cfg.train,
                    out=str(out),
                    report=cfg.trial_reports,
                    progress=run_cfg.train.progress if cfg.verbose else "none",
                ),
            )
            res = train_run(run_cfg, callbacks=[pruning, *extra], quiet=not cfg.verbose)
        except Interrupted as e:  # Ctrl-C inside training: it stopped after a batch
            trial.set_user_attr("error", "interrupted")
            raise KeyboardInterrupt(str(e)) from e
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted")
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:1000])
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
            runs = sorted(p for p in out.glob("*") if p.is_dir()) if out.is_dir() else []
            if runs:
                trial.set_user_attr("run_dir", str(runs[-1]))
        if not res.history:
            raise DeepstartError("the trial finished no epoch")
        value = float(res.history[-1][metric])
        trial.set_user_attr("epochs", len(res.history))
        if res.test is not None:
            trial.set_user_attr("test_accuracy", float(res.test["accuracy"]))
        if pruning.pruned_at is not None:
            trial.set_user_attr("stopped", "pruned")
            raise optuna.TrialPruned(
                f"{metric} {value:.4g} after epoch {pruning.pruned_at} is worse than the median "
                f"of earlier trials there"
            )
        if pruning.out_of_time:
            trial.set_user_attr("stopped", "max_time")
            raise optuna.TrialPruned("the study's time budget (max_time) ran out")
        return value

    def after_trial(_study: Any, t: Any) -> None:
        log(_trial_line(trial_row(t), metric))

    interrupted = False
    try:
        study.optimize(
            objective,
            n_trials=cfg.trials,
            timeout=cfg.max_time,
            catch=(Exception,),
            callbacks=[after_trial],
            gc_after_trial=False,
        )
    except KeyboardInterrupt:
        interrupted = True
        log(
            f"study stopped; the running trial is marked FAIL. Continue it with --resume "
            f"(study {study.study_name!r} in {storage_url(directory, cfg.storage)})"
        )
    return _results(study, cfg, setup, directory, interrupted, log)


def _results(
    study: Any,
    cfg: TuneConfig,
    setup: dict[str, Any],
    directory: Path,
    interrupted: bool,
    log: Callable[[str], None],
) -> StudyResult:
    """Collect the rows, report the best trial, draw the plots and write the page."""
    base, space = RunConfig.from_dict(setup["base"]), SearchSpace.from_dict(setup["space"])
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    complete = [r for r in rows if r.state == "COMPLETE"]
    best = None
    if complete:
        best_trial = study.best_trial
        best = next(r for r in rows if r.number == best_trial.number)
    result = StudyResult(
        name=study.study_name,
        storage=storage_url(directory, cfg.storage),
        directory=directory,
        metric=setup["metric"],
        direction=study.direction.name.lower(),
        space=space,
        base=base,
        rows=rows,
        best=best,
        interrupted=interrupted,
    )
    if best is not None and best.run_dir and cfg.best_report and not interrupted:
        _best_report(Path(best.run_dir), result, log)
    if cfg.plots:
        from deepstart.tune.page import write_plots, write_study_page

        result.plots, notes = write_plots(study, directory / "plots")
        result.notes.extend(notes)
        result.html = write_study_page(result)
    from deepstart.tune.page import write_study_json

    write_study_json(result)
    return result


def _best_report(run_dir: Path, result: StudyResult, log: Callable[[str], None]) -> None:
    if (run_dir / "report.html").is_file():
        return
    from deepstart.report import build_report

    try:
        build_report(run_dir, log=lambda m: None)
    except DeepstartError as e:  # the study's results stand without the report
        result.notes.append(f"no report for the best trial: {e}")
        log(result.notes[-1])


def trial_row(t: Any) -> TrialRow:
    """A FrozenTrial as a :class:`TrialRow`."""
    a = t.user_attrs
    value = t.value if t.values else None
    if value is None and t.intermediate_values:  # a pruned or stopped trial's last epoch
        value = t.intermediate_values[max(t.intermediate_values)]
    note = a.get("error", "")
    if t.state.name == "PRUNED":
        note = "stopped: time budget" if a.get("stopped") == "max_time" else "pruned"
        if t.intermediate_values:
            note += f" after epoch {max(t.intermediate_values)}"
    return TrialRow(
        number=t.number,
        state=t.state.name,
        value=value,
        params=dict(t.params),
        seconds=a.get("seconds"),
        epochs=a.get("epochs"),
        run_dir=a.get("run_dir"),
        note=note,
    )


def _trial_line(r: TrialRow, metric: str) -> str:
    params = " ".join(f"{k}={_fmt(v)}" for k, v in r.params.items())
    value = f"{metric} {_fmt(r.value)}" if r.value is not None else ""
    secs = f"{r.seconds:.1f}s" if r.seconds is not None else ""
    note = f"  ({r.note})" if r.note else ""
    return f"trial {r.number:>3}  {r.state:<8} {value:<20} {params}  {secs}{note}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
