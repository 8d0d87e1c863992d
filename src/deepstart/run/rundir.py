"""A run directory, and the one module that knows its files.

``deepstart train`` writes ``runs/<time>-<data>-<model>/``:

    config.json       the RunConfig as resolved ("auto" settled), plus ``resolved``: dataset
                      summary, model arch, parameters, preprocessing, device, versions
    metrics.jsonl     one JSON row per epoch (epoch, train_loss, valid_loss, accuracy, lr,
                      seconds); divergence-guard events as rows with an ``event`` key
    batches.json      per-batch loss and LR (the report's curves)
    lr_find.json/png  the LR finder's sweep, when ``lr="auto"`` chose the LR
    checkpoints/      last.pt and best.pt (tensors only: torch.load(weights_only=True))
    model.safetensors + model.json   the final model, its classes and preprocessing
    results.json      final scores (test; valid when there is no test split; *_tta)
    report.html, plots/, interpretation.json, tensorboard/   written by their owners into
                      the paths this module names

Everything else reads and writes a run through :class:`RunDir`, so the format lives here.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepstart.cache import atomic_write, json_safe
from deepstart.config import DataConfig, RunConfig
from deepstart.errors import DataError

if TYPE_CHECKING:
    from deepstart.train.learner import Learner

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
BATCHES = "batches.json"
LR_FIND = "lr_find.json"


class RunDir:
    """One run directory: its paths, and reading and writing its JSON files atomically.

    Example:
        >>> run = RunDir.create("runs", "mnist", "mnist_cnn")
        >>> run.write_json("results.json", {"test": None})
        >>> RunDir.open(run.path).results()
        {'test': None}
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def create(cls, out: str | Path, data_name: str, model_name: str) -> RunDir:
        """A fresh ``<out>/<YYYYmmdd-HHMMSS>-<data>-<model>`` directory (suffixed if taken)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(out) / f"{stamp}-{Path(data_name).name}-{model_name}"
        path, i = base, 1
        if Path(out).exists() and not Path(out).is_dir():
            raise DataError(f"--out {out}: is a file, not a folder for run directories")
        while True:
            try:
                path.mkdir(parents=True)  # exist_ok=False: two runs started in one second
                return cls(path)
            except FileExistsError:
                i += 1
                path = base.with_name(f"{base.name}-{i}")
            except (NotADirectoryError, PermissionError) as e:
                msg = f"--out {out}: cannot create {path.name} there ({e.strerror})"
                raise DataError(msg) from None

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run directory (one with a config.json), or a one-line DataError."""
        run = cls(path)
        if not (run.path / CONFIG).is_file():
            raise DataError(f"{run.path}: no config.json (is it a run directory?)")
        return run

    # -- paths others write into --------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def file(self, name: str) -> Path:
        """The path of ``name`` inside the run (lr_find.png, report.html, plots/...)."""
        return self.path / name

    def has_progress(self) -> bool:
        """Whether the run wrote anything beyond its setup (config.json, the LR finder's
        files, an empty metrics.jsonl or checkpoints/): an epoch, a checkpoint, a model..."""
        setup = (CONFIG, LR_FIND, "lr_find.png", METRICS, "checkpoints")
        return any(
            p.name not in setup or (any(p.iterdir()) if p.is_dir() else p.stat().st_size > 0)
            for p in self.path.iterdir()
            if p.name not in setup[:3]
        )

    # -- JSON files ----------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> Path:
        return write_json(self.path / name, obj)

    def read_json(self, name: str, default: Any = None) -> Any:
        path = self.path / name
        if not path.is_file():
            return {} if default is None else default
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not valid JSON ({e}); the run directory is damaged") from e

    def write_config(self, cfg: RunConfig, resolved: dict[str, Any]) -> None:
        self.write_json(CONFIG, {**cfg.to_dict(), "resolved": resolved})

    def config(self) -> RunConfig:
        """The RunConfig the run was started with (its config.json)."""
        raw = RunDir.open(self.path).read_json(CONFIG)
        try:
            return RunConfig.from_dict({k: v for k, v in raw.items() if k in RUN_KEYS})
        except (TypeError, AttributeError) as e:
            raise DataError(f"{self.path / CONFIG}: not a deepstart run config ({e})") from e

    def resolved(self) -> dict[str, Any]:
        return self.read_json(CONFIG).get("resolved", {})

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl with ``rows`` (a resumed run drops rows after its checkpoint)."""
        with atomic_write(self.metrics_path, "w") as f:
            f.writelines(_strict_json(row) + "\n" for row in rows)

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def results(self) -> dict[str, Any]:
        return self.read_json(RESULTS)

    def update_results(self, **entries: Any) -> None:
        """Add or replace top-level entries of results.json (e.g. ``test_tta``)."""
        self.write_json(RESULTS, {**self.results(), **entries})

    def read(self) -> dict[str, Any]:
        """Everything the report shows: config, results, epoch rows, divergence events,
        per-batch curves and the LR finder's record (absent files are empty)."""
        RunDir.open(self.path)
        rows = self.metrics()
        return {
            "config": self.read_json(CONFIG),
            "results": self.results(),
            "history": [r for r in rows if "event" not in r],
            "events": [r for r in rows if "event" in r],
            "batches": self.read_json(BATCHES),
            "lr_find": self.read_json(LR_FIND),
        }


RUN_KEYS = ("data", "model", "train")


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The RunConfig a run directory was started with (its config.json)."""
    return RunDir(run_dir).config()


def load_run_learner(
    run_dir: str | Path,
    *,
    data: DataConfig | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> Learner:
    """A Learner holding a run's saved model and a dataset to use it on, with the model's
    own preprocessing (the training normalisation, size and channels), not the new data's.

    ``data`` defaults to the dataset the run trained on (same seed, so the same split).
    Evaluations compare each split with the training images' ``input_stats`` saved in
    ``model.json`` and warn through ``log`` when it looks prepared differently.
    """
    from deepstart.run.build import load_data
    from deepstart.ship.bundle import load_model
    from deepstart.train.learner import Learner

    run = RunDir(run_dir)
    saved = load_model(run.path, device="cpu")
    seed, cfg_data, same = 0, None, {}
    if (run.path / CONFIG).is_file():
        cfg = run.config()
        seed, cfg_data = cfg.train.seed, cfg.data
        # Evaluate as the run did: the evaluation batch follows the training batch size, and
        # another batch size or precision can round a borderline image the other way, so a
        # later score would differ from the one the run printed.
        bs = cfg.train.batch_size
        same = {"precision": cfg.train.precision, **({"batch_size": bs} if bs != "auto" else {})}
    data_cfg = data or cfg_data
    if data_cfg is None:
        raise DataError(f"{run.path}: no config.json; say which data to use (--data)")
    dataset = load_data(data_cfg, seed)
    if dataset.classes != saved.classes:
        raise DataError(
            f"dataset classes {dataset.classes} differ from the model's {saved.classes}"
        )
    stats = saved.meta.get("input_stats")
    return Learner(
        dataset,
        saved.model,
        device=device,
        preprocess=saved.preprocess,
        seed=seed,
        guard=False,
        log=log,
        train_stats=stats,
        # Without saved stats, data.train stands for the training images only when it is
        # the run's own dataset.
        input_check=stats is not None or data is None,
        **same,
    )


def evaluate_run(
    run_dir: str | Path,
    *,
    data: DataConfig | None = None,
    split: str = "test",
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score a run's saved model on a split of a dataset (see :func:`load_run_learner`)."""
    return load_run_learner(run_dir, data=data, device=device, log=log).evaluate(split)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (a reader never sees half a file)."""
    path = Path(path)
    with atomic_write(path, "w") as f:
        f.write(_strict_json(obj, indent=2) + "\n")
    return path


def _strict_json(obj: Any, indent: int | None = None) -> str:
    """JSON that every parser reads: NaN and infinities become null (json_safe)."""
    return json.dumps(json_safe(obj), indent=indent, default=_json_default, allow_nan=False)


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} to JSON")
