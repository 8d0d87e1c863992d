"""Safe, one-time extraction of dataset archives (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``).

An archive is extracted once into ``cache_root()/"extracted"``, under a name derived from its
path, size and mtime, so the next load finds the folder and extracts nothing. Every member is
checked first: absolute paths, ``..``, links leaving the archive and device files are refused
(:class:`DataError`, nothing kept). The extraction fills a temp folder renamed into place at
the end (:func:`deepstart.cache.atomic_dir`), so an interrupted one is never mistaken
for a complete one.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from deepstart.cache import atomic_dir, cache_root
from deepstart.errors import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def extract_archive(archive: str | os.PathLike, *, quiet: bool = False) -> Path:
    """Extract a ``.zip``/``.tar``/``.tar.gz``/``.tgz`` safely into the cache, once.

    Members with absolute paths or ``..``, links leaving the archive and device files are
    refused (:class:`DataError`, nothing kept). The extraction goes to a temp folder renamed
    into place at the end, so an interrupted one is never mistaken for a complete one.

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


def _check_member(archive: Path, name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise DataError(f"{archive}: refusing unsafe member {name!r} (absolute path or '..')")


def _safe_tar_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    for m in tar:
        _check_member(archive, m.name)
        if m.isdev():
            raise DataError(f"{archive}: refusing device or fifo member {m.name!r}")
        if m.issym() or m.islnk():
            # Symlinks resolve from their own folder, hard links from the archive root.
            base = posixpath.dirname(m.name) if m.issym() else ""
            target = posixpath.normpath(posixpath.join(base, m.linkname))
            if m.linkname.startswith("/") or target == ".." or target.startswith("../"):
                raise DataError(f"{archive}: refusing link {m.name!r} -> {m.linkname!r}")
        yield m


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        members = _safe_tar_members(tar, archive)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: a second line of defence
            tar.extractall(dest, members=members, filter="data")
        else:
            tar.extractall(dest, members=members)


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_member(archive, info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no type
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise DataError(f"{archive}: refusing link or special member {info.filename!r}")
            out = zf.extract(info, dest)
            if not info.is_dir():
                # Keep the archived mtime, so a re-extraction maps to the same decoded cache.
                t = time.mktime((*info.date_time, 0, 0, -1))
                os.utime(out, (t, t))
