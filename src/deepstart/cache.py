"""Where data is looked for, downloads into the cache with SHA-256 checks, atomic writes.

Lookup order for a dataset's files: an explicit ``data_dir``, then ``$DEEPSTART_DATA``, then
the user cache (``$DEEPSTART_CACHE``, else ``$XDG_CACHE_HOME/deepstart``, else
``~/.cache/deepstart``). Only the cache is ever written to, and always through a temp file or
folder renamed into place, so a killed process never leaves a half-written one under the
final name (and the temp file it does leave is removed by the next write of that name).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from deepstart.errors import DataError


def cache_root() -> Path:
    """The user cache directory of deepstart (not created here)."""
    if os.environ.get("DEEPSTART_CACHE"):
        return Path(os.environ["DEEPSTART_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "deepstart"


def search_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for dataset files, in order."""
    roots: list[Path] = []
    if data_dir:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get("DEEPSTART_DATA"):
        roots.append(Path(os.environ["DEEPSTART_DATA"]).expanduser())
    roots.append(cache_root())
    return roots


def looked_in(subdirs: Sequence[str], data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for a dataset's files, in order.

    Each of :func:`search_roots` as it is, then with each of ``subdirs`` appended, so both
    ``--data-dir ../shared/data/mnist`` and ``DEEPSTART_DATA=../shared/data`` work.

    Example:
        >>> looked_in(["mnist"], "data")  # with $DEEPSTART_DATA unset
        [PosixPath('data'), PosixPath('data/mnist'), PosixPath('~/.cache/deepstart'), ...]
    """
    return [d for root in search_roots(data_dir) for d in [root, *(root / s for s in subdirs)]]


def find_files(
    names: Sequence[str], subdirs: Sequence[str], data_dir: str | os.PathLike | None = None
) -> Path | None:
    """First of :func:`looked_in` holding every file in ``names`` (each also accepted
    without ``.gz``)."""
    for d in looked_in(subdirs, data_dir):
        if all(_present(d, n) for n in names):
            return d
    return None


def _present(d: Path, name: str) -> bool:
    return (d / name).is_file() or (name.endswith(".gz") and (d / name[:-3]).is_file())


def resolve(d: Path, name: str) -> Path:
    """``d/name``, or ``d/name`` without its ``.gz`` when only the raw file is there."""
    p = d / name
    if not p.is_file() and name.endswith(".gz") and (d / name[:-3]).is_file():
        return d / name[:-3]
    return p


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Write to a temp file beside ``path`` and rename it into place only on success, so a
    reader never sees a half-written file (a killed process leaves only the temp file)."""
    with _temp_file(Path(path)) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


# When this process began using deepstart: a temp file last written before then cannot be
# one this process is writing, and a writer that is alive keeps its file's time moving.
_STARTED = time.time()
# What follows ".<target name>" in a temp file's name: mkstemp's 8 random characters.
_TEMP_TAIL = re.compile(r"\.[a-z0-9_]{8}\.tmp")


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files a killed writer of ``path`` left beside it (exactly
    ``.<name>.XXXXXXXX.tmp``, last written before this process started); returns them.

    Example:
        >>> remove_stale_temps("runs/x/checkpoints/last.pt")  # after a kill mid-save
        [PosixPath('runs/x/checkpoints/.last.pt.k3j_9xq2.tmp')]
    """
    path = Path(path)
    prefix = f".{path.name}"
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:  # no folder yet: nothing was left in it
        return []
    for entry in entries:
        if not entry.name.startswith(prefix) or not _TEMP_TAIL.fullmatch(entry.name[len(prefix) :]):
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < _STARTED:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (in nested dicts, lists and tuples) as None,
    so ``json.dumps(..., allow_nan=False)`` writes strict JSON: a bare ``NaN`` is not JSON,
    and other readers (browsers, jq, pandas' strict mode) refuse the whole file."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


@contextlib.contextmanager
def _temp_file(path: Path) -> Iterator[Path]:
    """An empty temp file beside ``path``, replacing ``path`` on success, removed on failure
    (and the temp files an earlier, killed writer of ``path`` left are removed first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Fill a temp folder beside ``path`` and rename it into place only on success.

    On an exception the temp folder is removed; a killed process leaves only a hidden
    ``.<name>.*`` folder, never a partial ``path``. The temp folder is on the same filesystem,
    so the final rename is atomic.

    Args:
        path: the folder to create.
        replace: remove an existing ``path`` first (say, a broken leftover). When False and
            ``path`` appears meanwhile (another process finished the same work first), that
            one is kept and the new folder dropped.

    Example:
        >>> with atomic_dir(cache_root() / "extracted" / "pets") as tmp:
        ...     (tmp / "readme.txt").write_text("complete or absent")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if replace and path.exists():
            shutil.rmtree(path)
        try:
            os.rename(tmp, path)
        except OSError:
            if replace or not path.is_dir():
                raise
            shutil.rmtree(tmp)  # another process finished the same folder first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


OFFLINE_ENV = "DEEPSTART_OFFLINE"


def offline() -> bool:
    """True when ``$DEEPSTART_OFFLINE`` says never to download (any value but 0/false/no)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def download(
    urls: Sequence[str],
    dest: str | os.PathLike,
    sha256: str | None,
    *,
    verify: Callable[[Path], str | None] | None = None,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """Fetch the first of ``urls`` that answers with a good file into ``dest``.

    Mirrors are tried in order. Each download goes to a temp file beside ``dest``, is checked
    against ``sha256`` (when given) and then by ``verify`` (when given), and only then renamed
    into place; a file that fails either check is discarded and the next mirror tried.

    Args:
        urls: mirrors of the same file, tried in order.
        dest: where the file goes.
        sha256: hex digest of the file as downloaded, or None not to check it.
        verify: called with the temp file's path; a returned message rejects that mirror
            (None accepts it), e.g. a check of the decompressed content.
        timeout: seconds to wait for each server.
        quiet: print nothing.

    Raises:
        DataError: naming every URL tried, each with its reason, when none gives a good file.

    Example:
        >>> download(["https://a/x.gz", "https://b/x.gz"], cache_root() / "x.gz", "9f86d0...")
        PosixPath('/home/me/.cache/deepstart/x.gz')
    """
    dest = Path(dest)
    if offline():
        raise DataError(
            f"not downloading {dest.name}: {OFFLINE_ENV} is set (tried to fetch {urls[0]})"
        )
    errors: list[str] = []
    for url in urls:
        if not quiet:
            print(f"downloading {url} -> {dest}", file=sys.stderr)
        try:
            with _temp_file(dest) as tmp:
                h = hashlib.sha256()
                with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                    meter = _Meter(resp.headers.get("Content-Length"), quiet)
                    while block := resp.read(1 << 20):
                        h.update(block)
                        out.write(block)
                        meter.add(len(block))
                    meter.done()
                    out.flush()
                    os.fsync(out.fileno())
                if sha256 is not None and h.hexdigest() != sha256:
                    raise _Rejected(f"sha256 {h.hexdigest()}, expected {sha256}")
                if verify is not None and (problem := verify(tmp)) is not None:
                    raise _Rejected(problem)
            return dest
        except _Rejected as e:
            errors.append(f"{url}: {e}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
    raise DataError(f"could not download {dest.name}: " + "; ".join(errors))


class _Meter:
    """Download progress on stderr: one line redrawn in a terminal, a line per quarter in a
    log (a log must still show that a long download moves)."""

    def __init__(self, length: str | None, quiet: bool) -> None:
        self.total = int(length) if length and length.isdigit() else None
        self.quiet, self.got, self.shown = quiet, 0, 0
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()

    def add(self, n: int) -> None:
        self.got += n
        if self.quiet:
            return
        if self.tty:
            print(f"\r  {self._text()}", end="", file=sys.stderr, flush=True)
        elif self.total and self.got * 4 // self.total > self.shown:
            self.shown = self.got * 4 // self.total
            print(f"  {self._text()}", file=sys.stderr, flush=True)

    def _text(self) -> str:
        mb = self.got / 2**20
        rate = mb / max(time.perf_counter() - self.start, 1e-6)
        if self.total:
            return f"{self.got / self.total:4.0%} of {self.total / 2**20:.1f} MB, {rate:.1f} MB/s"
        return f"{mb:.1f} MB, {rate:.1f} MB/s"

    def done(self) -> None:
        if self.tty and not self.quiet and self.got:
            print(file=sys.stderr, flush=True)


class _Rejected(Exception):
    """A downloaded file failed its hash or ``verify`` check."""


def copy_into_cache(src: Path, dest: Path) -> Path:
    with open(src, "rb") as f, atomic_write(dest) as out:
        shutil.copyfileobj(f, out)
    return dest
