"""Applying a cleaning plan to a class-folder dataset, and undoing it: files move, never vanish.

A plan (JSON, exported by ``clean.html`` or written by hand) lists files of the folder, each
with an action: ``keep``, ``relabel`` (to another class) or ``delete``::

    {"deepstart": "clean-plan", "root": "/data/pets",
     "actions": [{"file": "train/cat/003.jpg", "action": "relabel", "to": "dog"},
                 {"file": "train/dog/117.jpg", "action": "delete"}]}

:func:`apply_plan` moves a relabelled file into its new class folder (same split) and a
deleted one into ``<folder>-removed/`` beside the data (same path inside it), and writes an
undo log there first; :func:`undo_clean` replays the log backwards. Both hold a lock file
(``.deepstart-clean.lock`` in the folder, created with O_CREAT|O_EXCL) so two cleans of one
folder never interleave. Everything is checked before the first move (read-only folders,
files gone since the ranking, a class folder the plan would empty); a move that fails midway
puts back the ones before it. The decoded cache is keyed by file names, sizes and mtimes, so
the next ``deepstart train`` on the folder decodes the cleaned tree afresh.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from deepstart.cache import atomic_write
from deepstart.data.layout import find_layout, list_split
from deepstart.errors import DataError

PLAN_KIND = "clean-plan"
UNDO_KIND = "clean-undo"
LOCK = ".deepstart-clean.lock"  # hidden: the folder loader never reads it as data
ACTIONS = ("keep", "relabel", "delete")


def removed_dir(folder: Path) -> Path:
    """``<folder>-removed``: beside the data, never inside it (it would be read as a class)."""
    folder = Path(folder)
    return folder.with_name(f"{folder.name}-removed")


@contextmanager
def folder_lock(root: Path):
    """Hold ``root/.deepstart-clean.lock`` for the block; one line if another clean has it."""
    lock = Path(root) / LOCK
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            who = json.loads(lock.read_text())
            held = f" (pid {who.get('pid')}, since {who.get('since')})"
        except (OSError, ValueError):
            held = ""
        raise DataError(
            f"another deepstart clean is changing {root}{held}: wait for it, or delete {lock} "
            "if none is running"
        ) from None
    except OSError as e:  # EACCES, EROFS: nothing can move here
        raise DataError(f"cannot change {root}: {e.strerror}; nothing was moved") from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def read_plan(path: str | Path) -> dict[str, Any]:
    """A plan file, checked for its shape (one line for anything else)."""
    plan = _read_json(path, "plan")
    if plan.get("deepstart") != PLAN_KIND or not isinstance(plan.get("actions"), list):
        raise DataError(f"{path}: not a deepstart clean plan (export one from clean.html)")
    return plan


def plan_moves(
    plan: dict[str, Any], root: Path, folder: Path, notes: list[str]
) -> list[tuple[str, str]]:
    """The ``(from, to)`` moves of ``plan``, as absolute paths, checked against the folder.

    ``root`` is where the layout is (the files are relative to it); ``folder`` is the folder
    the user named (``root`` or above it), beside which ``<folder>-removed`` goes. Files gone
    since the ranking are left out with a note each; anything that would lose or damage
    data (a path leaving the folder, an unknown class, a class folder left empty) raises.
    """
    root, folder = Path(root).resolve(), Path(folder).resolve()
    if Path(str(plan.get("root", ""))).resolve() != root:
        raise DataError(
            f"this plan is for the folder {plan.get('root')}, not for {root} (the run's data)"
        )
    splits, classes = find_layout(root, [])
    where = {s: d.relative_to(root).as_posix() for s, d in splits.items()}
    counts = Counter()  # (split, class) -> images now
    for s, d in splits.items():
        for _rel, label, _ in list_split(root, d, classes, []):
            counts[(s, classes[label])] += 1
    seen: set[str] = set()
    moves, taken = [], set()
    for act in plan["actions"]:
        rel, kind = str(act.get("file", "")), act.get("action")
        if kind not in ACTIONS:
            raise DataError(f"plan: {rel}: unknown action {kind!r}; use {', '.join(ACTIONS)}")
        if rel in seen:
            raise DataError(f"plan: {rel} is listed twice")
        seen.add(rel)
        if kind == "keep":
            continue
        split, cls, rest = _place(rel, where, classes)
        src = root / rel
        if not src.is_file():
            notes.append(f"{rel}: gone since the ranking; skipped")
            continue
        if kind == "relabel":
            to = act.get("to")
            if to not in classes:
                raise DataError(f"plan: {rel}: no class {to!r}; the classes are {classes}")
            if to == cls:
                continue
            dst = root / PurePosixPath(where[split], to, *rest)
            counts[(split, to)] += 1
        else:
            dst = removed_dir(folder) / root.relative_to(folder) / rel
        counts[(split, cls)] -= 1
        dst = _free(dst, taken)
        taken.add(dst)
        moves.append((str(src), str(dst)))
    for (split, cls), n in sorted(counts.items()):
        if n <= 0:
            raise DataError(
                f"the plan empties the class folder {PurePosixPath(where[split], cls)}; keep "
                "at least one image there (a class with no images cannot be trained)"
            )
    return moves


def apply_plan(
    plan: dict[str, Any],
    root: Path,
    folder: Path,
    *,
    run: str = "",
    log: Callable[[str], None] = print,
) -> Path | None:
    """Carry out ``plan`` on the folder; return the undo log (None when nothing moved)."""
    root, folder = Path(root).resolve(), Path(folder).resolve()
    notes: list[str] = []
    with folder_lock(root):
        moves = plan_moves(plan, root, folder, notes)
        for note in notes:
            log(f"  {note}")
        if not moves:
            log("nothing to move")
            return None
        _check_writable(moves)
        undo = removed_dir(folder) / f"undo-{time.strftime('%Y%m%d-%H%M%S')}.json"
        record = {
            "deepstart": UNDO_KIND,
            "root": str(root),
            "run": run,
            "made": time.strftime("%Y-%m-%d %H:%M:%S"),
            "moves": [{"from": a, "to": b} for a, b in moves],
        }
        try:
            undo.parent.mkdir(parents=True, exist_ok=True)
            undo = _free(undo, set())
            _write(undo, record)  # before the first move: a killed apply can still be undone
        except OSError as e:
            msg = f"cannot write the undo log {undo}: {e.strerror}; nothing was moved"
            raise DataError(msg) from None
        done: list[tuple[str, str]] = []
        try:
            for src, dst in moves:
                _move(src, dst)
                done.append((src, dst))
        except OSError as e:
            failed = src
            back = _move_back(done)
            if back:
                raise DataError(
                    f"moving {failed} failed ({e.strerror or e}); {len(done) - len(back)} moves "
                    f"put back, {len(back)} could not be: replay {undo} with --undo"
                ) from None
            undo.unlink(missing_ok=True)
            raise DataError(
                f"moving {failed} failed ({e.strerror or e}); the {len(done)} moves before it "
                "were put back: nothing changed"
            ) from None
    relabelled = sum(not Path(b).is_relative_to(removed_dir(folder)) for _, b in moves)
    log(
        f"moved {len(moves)} files: {relabelled} to another class, "
        f"{len(moves) - relabelled} to {removed_dir(folder)}"
    )
    return undo


def undo_clean(undo: str | Path, root: Path, *, log: Callable[[str], None] = print) -> int:
    """Move back every file an undo log moved (newest first); return how many came back."""
    root = Path(root).resolve()
    record = _read_json(undo, "undo log")
    if record.get("deepstart") != UNDO_KIND or not isinstance(record.get("moves"), list):
        raise DataError(f"{undo}: not a deepstart clean undo log")
    if Path(str(record.get("root", ""))).resolve() != root:
        raise DataError(f"{undo} is the undo log of {record.get('root')}, not of {root}")
    if record.get("undone"):
        raise DataError(f"{undo} was already undone on {record['undone']}")
    back = 0
    with folder_lock(root):
        for move in reversed(record["moves"]):
            src, dst = Path(move["from"]), Path(move["to"])
            if src.exists() and not dst.exists():
                continue  # never moved (an apply stopped before it)
            if not dst.exists():
                log(f"  {dst}: no longer there (moved or deleted since); skipped")
            elif src.exists():
                log(f"  {src} exists again; left {dst} where it is")
            else:
                try:
                    _move(str(dst), str(src))
                    back += 1
                    # a folder the apply made (a class new to valid/, a path in -removed)
                    # would be read as an empty class: remove it once it is empty again
                    _prune(dst.parent, root if dst.is_relative_to(root) else Path(undo).parent)
                except OSError as e:
                    log(f"  {dst}: could not move back ({e.strerror or e}); left there")
        _write(Path(undo), {**record, "undone": time.strftime("%Y-%m-%d %H:%M:%S")})
    log(f"moved {back} of {len(record['moves'])} files back into {root}")
    return back


def newest_undo(folder: Path) -> Path:
    """The newest undo log beside ``folder`` that was not undone yet."""
    logs = sorted(
        removed_dir(folder).glob("undo-*.json"), key=lambda p: (p.stat().st_mtime_ns, p.name)
    )[::-1]
    for path in logs:
        try:
            if not json.loads(path.read_text()).get("undone"):
                return path
        except (OSError, ValueError):
            continue
    raise DataError(f"no undo log to replay in {removed_dir(folder)}")


# -- helpers ----------------------------------------------------------------------------------
def _place(rel: str, where: dict[str, str], classes: list[str]) -> tuple[str, str, list[str]]:
    """``train/cat/x.jpg`` -> ("train", "cat", ["x.jpg"]); refuses paths outside the folder."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise DataError(f"plan: {rel!r} is not a file inside the folder")
    for split, prefix in sorted(where.items(), key=lambda kv: -len(kv[1])):
        head = PurePosixPath(prefix).parts if prefix != "." else ()
        inside = parts[: len(head)] == head and len(parts) > len(head) + 1
        if inside and parts[len(head)] in classes:
            return split, parts[len(head)], list(parts[len(head) + 1 :])
    raise DataError(f"plan: {rel} is not in a class folder of the data")


def _free(path: Path, taken: set[Path]) -> Path:
    """``path``, or ``name-1.ext``, ``name-2.ext``... if a file (or an earlier move) has it."""
    path, i = Path(path), 0
    candidate = path
    while candidate.exists() or candidate in taken:
        i += 1
        candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
    return candidate


def _check_writable(moves: list[tuple[str, str]]) -> None:
    """Every folder a file leaves, and the nearest existing folder of every destination."""
    dirs = {Path(a).parent for a, _ in moves}
    for _, b in moves:
        d = Path(b).parent
        while not d.exists():
            d = d.parent
        dirs.add(d)
    for d in sorted(dirs):
        if not os.access(d, os.W_OK | os.X_OK):
            raise DataError(f"{d} is read-only; nothing was moved")


def _move(src: str, dst: str) -> None:
    if os.path.exists(dst):  # never overwrite: a file there would be lost
        raise FileExistsError(0, "destination exists", dst)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(src, dst)  # a rename on one file system; copy + delete across two


def _move_back(done: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Undo ``done`` newest first; return the moves that could not be undone."""
    stuck = []
    for src, dst in reversed(done):
        try:
            _move(dst, src)
        except OSError:
            stuck.append((src, dst))
    return stuck


def _prune(d: Path, stop: Path) -> None:
    """Remove ``d`` and the folders above it, up to ``stop`` (kept), while they are empty."""
    stop = stop.resolve()
    d = d.resolve()
    while d != stop and d.is_relative_to(stop):
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable {what} ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a deepstart {what}")
    return obj


def _write(path: Path, obj: dict[str, Any]) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
