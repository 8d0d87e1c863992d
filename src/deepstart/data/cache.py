"""Where data is looked for, and downloads into the cache with SHA-256 checks.

Lookup order for a dataset's files: an explicit ``data_dir``, then ``$DEEPSTART_DATA``, then
the user cache (``$DEEPSTART_CACHE``, else ``$XDG_CACHE_HOME/deepstart``, else
``~/.cache/deepstart``). Only the cache is ever written to.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from deepstart.data.dataset import DataError


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


def find_files(
    names: Sequence[str], subdirs: Sequence[str], data_dir: str | os.PathLike | None = None
) -> Path | None:
    """First directory holding every file in ``names`` (each also accepted without ``.gz``).

    Each root is tried as it is and with each of ``subdirs`` appended, so both
    ``--data-dir ../shared/data/mnist`` and ``DEEPSTART_DATA=../shared/data`` work.
    """
    for root in search_roots(data_dir):
        for d in [root, *(root / s for s in subdirs)]:
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def download(
    urls: Sequence[str],
    dest: str | os.PathLike,
    sha256: str | None,
    *,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """Fetch the first of ``urls`` that answers into ``dest``, checked against ``sha256``.

    Mirrors are tried in order; a file whose hash is wrong is discarded and the next mirror
    tried. Raises :class:`DataError` naming every URL tried when none gives the right file.
    """
    dest = Path(dest)
    errors: list[str] = []
    for url in urls:
        if not quiet:
            print(f"downloading {url} -> {dest}")
        try:
            h = hashlib.sha256()
            with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_write(dest) as out:
                while block := resp.read(1 << 20):
                    h.update(block)
                    out.write(block)
                if sha256 is not None and h.hexdigest() != sha256:
                    raise _HashMismatch(f"sha256 {h.hexdigest()}, expected {sha256}")
            return dest
        except _HashMismatch as e:
            errors.append(f"{url}: {e}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
    raise DataError(f"could not download {dest.name}: " + "; ".join(errors))


class _HashMismatch(Exception):
    pass


def copy_into_cache(src: Path, dest: Path) -> Path:
    with open(src, "rb") as f, atomic_write(dest) as out:
        shutil.copyfileobj(f, out)
    return dest
