"""Where a study lives: its SQL storage, creating or resuming it, and stale trials.

The study is an Optuna study in an RDB storage (SQLite by default). Its setup (the base run
config, the space and the metric) is kept in the study's user attributes, so ``--resume``
continues it with exactly the setup it was started with.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepstart.config import RunConfig
from deepstart.errors import ConfigError, DeepstartError
from deepstart.tune.config import METRICS, TuneConfig
from deepstart.tune.space import SearchSpace, check_setup

SETUP_KEY = "deepstart"  # the study's user attribute holding its setup


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError:
        raise DeepstartError("deepstart tune needs Optuna: pip install 'deepstart[tune]'") from None
    return optuna


def default_study_name(base: RunConfig) -> str:
    """``<data>-<model>``, with ``spec`` for a layer spec or template."""
    from deepstart.models.registry import resolve_spec

    model = base.model.name
    model = "spec" if "{" in model else resolve_spec(model, {})[0]
    return f"{Path(base.data.name).name}-{model}"


def storage_url(directory: Path, storage: str | None) -> str:
    """The SQL URL of the study: ``storage`` as given, or SQLite in ``directory``."""
    if storage:
        return storage
    return f"sqlite:///{(directory / 'study.db').resolve()}"


def open_storage(url: str) -> Any:
    optuna = optuna_module()
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Wait for a lock instead of failing at once when another process writes.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as e:  # SQLAlchemy raises many kinds for a bad URL or server
        raise ConfigError(f"cannot open study storage {url}: {e}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale_trials(study: Any, log: Callable[[str], None] = print) -> list[int]:
    """Mark FAIL the trials a stopped process left RUNNING; returns their numbers.

    A trial whose process is still alive on this machine is left alone; a RUNNING trial from
    another machine is taken as stopped (run one process per study at a time).
    """
    optuna = optuna_module()
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host = t.user_attrs.get("pid"), t.user_attrs.get("host")
        here = host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid()
        if here and _alive(pid):
            log(f"trial {t.number} is still running in process {pid}; left as it is")
            continue
        note = "left RUNNING by a stopped process; marked FAIL when the study was resumed"
        optuna.trial.Trial(study, t._trial_id).set_user_attr("error", note)
        study.tell(t.number, state=TrialState.FAIL)
        failed.append(t.number)
        log(f"trial {t.number}: {note}")
    return failed


def _setup(base: RunConfig, space: SearchSpace, metric: str) -> dict[str, Any]:
    return {"version": 1, "base": base.to_dict(), "space": space.to_dict(), "metric": metric}


def _comparable(base: RunConfig) -> dict[str, Any]:
    d = base.to_dict()
    for key in ("out", "progress", "report"):  # set per trial by the study
        d["train"].pop(key, None)
    return d


def open_study(cfg: TuneConfig, log: Callable[[str], None]) -> tuple[Any, dict[str, Any], Path]:
    """Create or load the study; returns it, its setup and its directory."""
    optuna = optuna_module()
    name = cfg.study_name or (default_study_name(cfg.base) if cfg.base else None)
    if name is None:
        raise ConfigError(
            "say which study to resume (--study-name), or give its --data and --model"
        )
    directory = Path(cfg.out) / name
    url = storage_url(directory, cfg.storage)
    storage = open_storage(url)
    names = optuna.study.get_all_study_names(storage)
    if cfg.resume and name not in names:
        there = ", ".join(names) or "none"
        raise ConfigError(f"no study {name!r} to resume in {url} (studies there: {there})")
    if not cfg.resume and name in names:
        raise ConfigError(
            f"study {name!r} already exists in {url}: add --resume to continue it, or choose "
            f"another --study-name"
        )
    if cfg.resume:
        existing = optuna.load_study(study_name=name, storage=storage)
        n_before = len(existing.trials)
        setup = existing.user_attrs.get(SETUP_KEY)
        if setup is None:
            raise ConfigError(f"study {name!r} was not made by deepstart tune: it has no setup")
        stored_base = RunConfig.from_dict(setup["base"])
        stored_space = SearchSpace.from_dict(setup["space"])
        if cfg.space is not None and cfg.space != stored_space:
            raise ConfigError(
                f"study {name!r} searches {stored_space.describe()!r}; a resumed study keeps its "
                f"space (leave out --space, or start a new study)"
            )
        if cfg.base is not None and _comparable(cfg.base) != _comparable(stored_base):
            raise ConfigError(
                f"study {name!r} was started with other data, model or training settings; "
                f"a resumed study keeps them (leave them out, or start a new study)"
            )
        if cfg.metric is not None and cfg.metric != setup["metric"]:
            raise ConfigError(f"study {name!r} optimises {setup['metric']}, not {cfg.metric}")
    else:
        n_before = 0
        metric = cfg.metric or "valid_loss"
        setup = _setup(cfg.base, cfg.space, metric)  # type: ignore[arg-type]
    # Before the study is created: a setup that cannot work leaves no empty study behind.
    check_setup(RunConfig.from_dict(setup["base"]), SearchSpace.from_dict(setup["space"]))
    sampler = optuna.samplers.TPESampler(seed=cfg.seed + n_before)  # fresh draws on resume
    if cfg.pruner == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=cfg.prune_startup, n_warmup_steps=cfg.prune_warmup
        )
    else:
        pruner = optuna.pruners.NopPruner()
    if cfg.resume:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        if cfg.direction is not None and study.direction.name.lower() != cfg.direction:
            raise ConfigError(f"study {name!r} is to {study.direction.name.lower()}")
        fail_stale_trials(study, log)
    else:
        direction = cfg.direction or METRICS[setup["metric"]]
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, pruner=pruner, direction=direction
        )
        study.set_user_attr(SETUP_KEY, setup)
    directory.mkdir(parents=True, exist_ok=True)
    return study, setup, directory
