"""Safe, one-time extraction of dataset archives (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``).

An archive is extracted once into ``cache_root()/"extracted"``, under a name derived from its
path, size and mtime, so the next load finds the folder and extracts nothing. Every member is
checked first: absolute paths, ``..``, links (even inside the tree, ``a/sub -> .`` loops) and
device files are refused (:class:`DataError`, nothing kept). Every member is streamed to disk
by hand, its bytes counted against :mod:`deepstart.data.limits` (total size, member count,
compression ratio) as they are written. The extraction fills a temp folder renamed into place
at the end (:func:`deepstart.cache.atomic_dir`), so a refused or interrupted one is never
mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import IO

from deepstart.cache import atomic_dir, cache_root
from deepstart.data.limits import Budget
from deepstart.errors import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_CHUNK = 1 << 20  # bytes copied at a time: the limits are checked after every chunk


def extract_archive(archive: str | os.PathLike, *, quiet: bool = False) -> Path:
    """Extract a ``.zip``/``.tar``/``.tar.gz``/``.tgz`` safely into the cache, once.

    Members with absolute paths or ``..``, links and device files are refused, and so is an
    archive unpacking past a limit of :mod:`deepstart.data.limits` (:class:`DataError`, nothing
    kept). The extraction goes to a temp folder renamed into place at the end, so an
    interrupted one is never mistaken for a complete one.

    Returns:
        ``cache_root()/"extracted"/<stem>-<hash of path, size, mtime>``.

    Example:
        >>> extract_archive("pets.tar.gz").name
        'pets-3f2a9c0d1e4b'
    """
    archive = Path(archive).expanduser()
    name = archive.name.lower()
    suffix = next((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise DataError(f"{archive} is neither a folder nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    st = archive.stat()
    ident = f"{archive.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    stem = archive.name[: -len(suffix)]
    dest = cache_root() / "extracted" / f"{stem}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"
    if dest.is_dir():
        return dest
    if not quiet:
        print(f"extracting {archive} -> {dest}")
    try:
        with atomic_dir(dest) as tmp:
            if suffix == ".zip":
                _extract_zip(archive, tmp)
            else:
                _extract_tar(archive, tmp)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise DataError(f"cannot extract {archive}: {e}") from e
    return dest


def _check_member(archive: Path, name: str) -> list[str]:
    """The member's path parts under the extraction folder, or a refusal of an unsafe name."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise DataError(f"{archive}: refusing unsafe member {name!r} (absolute path or '..')")
    return [p for p in parts if p not in ("", ".")]


def _refuse_link(archive: Path, name: str, target: str) -> DataError:
    # Even a link inside the tree can loop (a/sub -> .), so none is ever extracted.
    return DataError(
        f"{archive}: refusing link member {name!r} -> {target!r} (links are never extracted); "
        "re-create the archive with the files themselves (tar --dereference, zip without -y)"
    )


def _extract_tar(archive: Path, dest: Path) -> None:
    budget = Budget(archive, compressed=archive.stat().st_size)
    with tarfile.open(archive) as tar:
        for m in tar:
            budget.member(m.name)
            parts = _check_member(archive, m.name)
            if m.issym() or m.islnk():
                raise _refuse_link(archive, m.name, m.linkname)
            if m.isdir():
                dest.joinpath(*parts).mkdir(parents=True, exist_ok=True)
            elif m.isfile():
                src = tar.extractfile(m)  # never None for a regular file
                _copy(src, dest.joinpath(*parts), budget, m.name)
                os.utime(dest.joinpath(*parts), (m.mtime, m.mtime))
            else:
                raise DataError(
                    f"{archive}: refusing device, fifo or other special member {m.name!r}"
                )


def _extract_zip(archive: Path, dest: Path) -> None:
    budget = Budget(archive, compressed=archive.stat().st_size)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        budget.declared(sum(i.file_size for i in infos), len(infos))
        for info in infos:
            budget.member(info.filename)
            parts = _check_member(archive, info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no type
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise DataError(
                    f"{archive}: refusing link or special member {info.filename!r} (links are "
                    "never extracted); re-create the archive with the files themselves"
                )
            out = dest.joinpath(*parts)
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:
                _copy(src, out, budget, info.filename, info.compress_size)
            # Keep the archived mtime, so a re-extraction maps to the same decoded cache.
            t = time.mktime((*info.date_time, 0, 0, -1))
            os.utime(out, (t, t))


def _copy(src: IO[bytes], out: Path, budget: Budget, name: str, compressed: int = 0) -> None:
    """Stream one member to ``out``, counting every chunk against the limits as it is written
    (a header's size may lie; the bytes cannot)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out, "wb") as f:
        while block := src.read(_CHUNK):
            f.write(block)
            written += len(block)
            budget.wrote(len(block), name, written, compressed)
