"""``deepstart clean RUN_DIR``: rank a run's training and validation pictures for a human.

:func:`rank_run` scores the train and valid splits with the run's saved model (eval mode, no
augmentation), ranks them by the loss of their label, finds look-alike pictures, and ties
every item to where it came from: its file for a class-folder dataset (matched by its exact
pixels and class, so the run's random valid split needs no replaying), its index in the
source's own numbering (``train[59214]`` is the 59,215th image of MNIST's training file) for
a built-in one. :func:`write_clean` writes ``clean.html`` (pictures, keep / relabel / delete
buttons, "export plan") and ``suspects.json`` into the run directory. The plan is applied by
:mod:`deepstart.run.clean_plan`, through :func:`apply_run_plan` and :func:`undo_run` here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepstart.config import DataConfig
from deepstart.data.catalog import DATASETS, load_dataset
from deepstart.data.dataset import Dataset
from deepstart.data.folder import load_folder
from deepstart.data.layout import descend
from deepstart.errors import DataError, DeepstartError
from deepstart.interpret.clean_page import clean_page
from deepstart.interpret.duplicates import pixel_digest
from deepstart.interpret.suspects import Suspects, suspects_from_learner
from deepstart.run.clean_plan import apply_plan, newest_undo, read_plan, undo_clean
from deepstart.run.rundir import RunDir, load_run_learner

PAGE = "clean.html"
SUSPECTS = "suspects.json"
TOP = 200  # rows on the page and in suspects.json by default


@dataclass
class RunSuspects:
    """A run's ranked pictures and where each one is.

    Attributes:
        suspects: the ranking (:class:`~deepstart.interpret.suspects.Suspects`).
        files: per row, its file relative to ``root`` (None: built-in data, or gone).
        root: the folder the class layout is in (None for a built-in dataset).
        folder: the folder the run names (``root`` or a folder above it); None if built-in.
        editable: whether a plan can be applied (a folder, not an archive or a built-in).
        run_dir: the run directory.
    """

    suspects: Suspects
    files: list[str | None]
    root: Path | None
    folder: Path | None
    editable: bool
    run_dir: Path


def data_folder(cfg: DataConfig) -> str | None:
    """The folder (or archive) a run's data config names; None for a built-in dataset."""
    if cfg.name == "folder":
        return str(cfg.options.get("path") or cfg.data_dir or "") or None
    if cfg.name not in DATASETS:
        return cfg.name
    return None


def run_folder(run_dir: str | Path, data_dir: str | None = None) -> tuple[Path, Path]:
    """``(folder, root)`` of a run's class-folder data (``data_dir`` overrides where it is),
    or a one-line DataError for a built-in dataset, an archive or a folder that moved."""
    cfg = RunDir.open(run_dir).config().data
    named = data_dir or data_folder(cfg)
    if named is None:
        raise DataError(
            f"{cfg.name} is a built-in dataset: there are no files to move; "
            f"{Path(run_dir) / SUSPECTS} lists the suspect indices"
        )
    folder = Path(named).expanduser()
    if not folder.exists():
        raise DataError(
            f"the run's data {named} is not there (a relative path is taken from where you "
            "run deepstart); pass --data DIR"
        )
    if folder.is_file():
        raise DataError(
            f"{folder} is an archive: cleaning moves files in a folder; extract it, train on "
            "the folder, then clean"
        )
    return folder.resolve(), descend(folder.resolve())


def rank_run(
    run_dir: str | Path,
    *,
    splits: Sequence[str] = ("train", "valid"),
    data_dir: str | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> RunSuspects:
    """Score and rank a run's pictures (see the module docstring).

    Example:
        >>> ranked = rank_run("runs/20261205-101500-pets-resnet18")
        >>> ranked.files[0], ranked.suspects.rows(1)[0]["pred"]
        ('train/cat/cat_117.jpg', 'dog')
    """
    run = RunDir.open(run_dir)
    cfg = run.config()
    data_cfg = cfg.data
    if data_dir is not None:  # the folder moved: the same settings, read from there
        options = {k: v for k, v in cfg.data.options.items() if k != "path"}
        data_cfg = dataclasses.replace(cfg.data, name="folder", data_dir=data_dir, options=options)
    unknown = sorted(set(splits) - {"train", "valid", "test"})
    if unknown:
        raise DataError(f"no split {unknown[0]!r}; use train, valid or test")
    learn = load_run_learner(
        run.path, data=None if data_dir is None else data_cfg, device=device, log=log
    )
    log(f"scoring {', '.join(splits)} with the run's model (eval mode, no augmentation)")
    sus = suspects_from_learner(learn, splits)
    named = data_folder(data_cfg)
    if named is not None:
        fd = load_folder(
            named, size=data_cfg.size, channels=data_cfg.channels, resize=data_cfg.resize,
            quiet=True,
        )  # fmt: skip
        source = {s: (getattr(fd, s), fd.files.get(s)) for s in ("train", "valid", "test")}
        files = _locate(sus, learn.data, source, fd.classes)
        sus.names = [f or f"{n} (file gone)" for f, n in zip(files, sus.names)]
        folder = Path(named).expanduser().resolve()
        editable = folder.is_dir()
        return RunSuspects(sus, files, fd.root.resolve(), folder, editable, run.path)
    source = _builtin_source(data_cfg, cfg.train.seed)
    if source:
        names = _locate(sus, learn.data, source, sus.classes)
        sus.names = [n or f"{old} (run's split)" for n, old in zip(names, sus.names)]
    return RunSuspects(sus, [None] * len(sus), None, None, False, run.path)


def write_clean(ranked: RunSuspects, *, top: int = TOP) -> tuple[Path, Path]:
    """Write ``clean.html`` and ``suspects.json`` into the run directory; return both."""
    run = RunDir(ranked.run_dir)
    sus = ranked.suspects
    rows = sus.rows(top)
    for r in rows:
        r["file"] = ranked.files[r["rank"]]
    summary = sus.summary(top=0)
    summary.pop("top")
    for d in summary["duplicates"]:
        d["files"] = [ranked.files[r] for r in d["rows"]]
    record = {
        "run": str(run.path),
        "root": str(ranked.root) if ranked.root else None,
        "editable": ranked.editable,
        **summary,
        "top": rows,
    }
    json_path = run.write_json(SUSPECTS, record)
    page = clean_page(
        sus,
        top=top,
        files=ranked.files if ranked.editable else None,
        root=str(ranked.root) if ranked.root else None,
        run=str(run.path),
        title=_title(run),
    )
    page_path = run.file(PAGE)
    page_path.write_text(page)
    return page_path, json_path


def clean_run(
    run_dir: str | Path,
    *,
    top: int = TOP,
    splits: Sequence[str] = ("train", "valid"),
    data_dir: str | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> RunSuspects:
    """Rank, write the page and the JSON, and say what to do next."""
    ranked = rank_run(run_dir, splits=splits, data_dir=data_dir, device=device, log=log)
    page, table = write_clean(ranked, top=top)
    sus = ranked.suspects
    groups = sus.duplicates()
    disagree = sum(g["labels_disagree"] for g in groups)
    log(
        f"{len(sus)} pictures ranked by loss; {len(groups)} groups of look-alikes"
        + (f", {disagree} of them labelled differently" if disagree else "")
    )
    for r in sus.rows(min(top, 10)):
        log(f"  {r['loss']:6.2f}  {r['name']}: labelled {r['label']}, predicted {r['pred']} "
            f"({r['prob']:.0%})")  # fmt: skip
    log(f"page: {page}\ntable: {table}")
    if ranked.editable:
        log(
            f"choose in the page, export the plan, then: deepstart clean {ranked.run_dir} "
            "--apply clean-plan.json"
        )
    return ranked


def apply_run_plan(
    run_dir: str | Path,
    plan: str | Path,
    *,
    data_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> Path | None:
    """Apply a plan exported from the run's ``clean.html`` to its folder; the undo log."""
    spec = read_plan(plan)
    folder, root = run_folder(run_dir, data_dir)
    undo = apply_plan(spec, root, folder, run=str(Path(run_dir).resolve()), log=log)
    if undo is not None:
        log(f"undo: deepstart clean {run_dir} --undo {undo}")
        log("the next deepstart train on the folder decodes the cleaned files (cache keys follow)")
    return undo


def undo_run(
    run_dir: str | Path,
    undo: str | Path | None = None,
    *,
    data_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Replay an undo log (the newest beside the run's folder by default)."""
    folder, root = run_folder(run_dir, data_dir)
    return undo_clean(undo or newest_undo(folder), root, log=log)


# -- where each item came from ------------------------------------------------------------------
def _locate(
    sus: Suspects, data: Dataset, source: dict[str, tuple[Any, list[str] | None]], classes
) -> list[str | None]:
    """Per row, the name of the source item with the same pixels and class: its file (when
    ``source`` has files) or ``split[i]``; None when none is left (a file gone, say).

    Pictures identical in pixels and class are handed out in order, one item each.
    """
    pool: dict[tuple[bytes, str], list[str]] = {}
    for split, (images, files) in source.items():
        if images is None:
            continue
        names = files if files is not None else [f"{split}[{i}]" for i in range(len(images))]
        for d, lab, name in zip(pixel_digest(images.images), images.labels.tolist(), names):
            pool.setdefault((d, classes[lab]), []).append(name)
    for names in pool.values():
        names.reverse()  # pop() hands them out in source order
    digests = {s: pixel_digest(getattr(data, s).images) for s in set(sus.split)}
    out: list[str | None] = []
    for split, i, lab in zip(sus.split, sus.index.tolist(), sus.label.tolist()):
        names = pool.get((digests[split][i], sus.classes[lab]))
        out.append(names.pop() if names else None)
    return out


def _builtin_source(cfg: DataConfig, seed: int) -> dict[str, tuple[Any, None]]:
    """A built-in dataset's own splits (none held out), to number items as its files do."""
    try:
        ds = load_dataset(
            cfg.name, data_dir=cfg.data_dir, valid_pct=0.0, seed=seed, size=cfg.size,
            channels=cfg.channels, resize=cfg.resize, download=False, **cfg.options,
        )  # fmt: skip
    except DeepstartError:
        return {}
    out: dict[str, tuple[Any, None]] = {"train": (ds.train, None)}
    if ds.test is not None:
        out["test"] = (ds.test, None)
    if ds.valid is not ds.test:  # the source's own valid split (affnist)
        out["valid"] = (ds.valid, None)
    return out


def _title(run: RunDir) -> str:
    cfg = run.read_json("config.json")
    return f"{cfg.get('data', {}).get('name', '?')} · {cfg.get('model', {}).get('name', '?')}"
