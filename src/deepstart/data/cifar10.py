"""CIFAR-10 from the official binary archive, ``cifar-10-binary.tar.gz``.

The binary version is used, not the Python one, because the Python one is pickled and we never
unpickle. Each batch file is a run of 3073-byte records: one label byte, then the 32x32 red
plane, green plane and blue plane (row-major). Members are read straight out of the archive;
an already-extracted ``cifar-10-batches-bin/`` folder works too.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from deepstart import cache
from deepstart.data.dataset import DataError, ImageSet, to_uint8_nchw

ARCHIVE = "cifar-10-binary.tar.gz"
FOLDER = "cifar-10-batches-bin"  # the archive's top folder
TRAIN_BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_BATCH = "test_batch.bin"
META = "batches.meta.txt"  # class names, one a line
SUBDIRS = ["cifar10", "cifar-10", "CIFAR10"]

# Base URLs tried in order; the archive's URL is base + ARCHIVE.
MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
# sha256 of the official archive (170052171 bytes, md5 c32a1d4ab5d03f1284b67883e8d87530), from
# tensorflow/datasets url_checksums/cifar10.txt.
SHA256: str | None = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"

RECORD = 1 + 3 * 32 * 32  # label byte + R, G, B planes of 32x32 bytes
# Bytes of the largest member read: a batch is 10000 records (the class names are far less).
# A larger one is not the official archive, and may be a bomb: it is refused before reading.
_MAX_MEMBER = 10_000 * RECORD


def load_cifar10(
    data_dir: str | os.PathLike | None = None, download: bool = True
) -> tuple[ImageSet, ImageSet]:
    """Load the train and test splits of CIFAR-10 from the official binary files.

    Args:
        data_dir: a directory holding ``cifar-10-binary.tar.gz`` or ``cifar-10-batches-bin/``
            (directly or in a ``cifar10/`` subfolder), or that folder itself; searched before
            ``$DEEPSTART_DATA`` and the cache.
        download: fetch the archive into the cache when it is not found (checked by SHA-256).

    Returns:
        ``(train, test)`` ImageSets of ``(N, 3, 32, 32)`` uint8 RGB images: 50000 and 10000,
        with the class names of ``batches.meta.txt``.

    Example:
        >>> train, test = load_cifar10()
        >>> train.images.shape, train.classes[0]
        (torch.Size([50000, 3, 32, 32]), 'airplane')
    """
    source = find_cifar10(data_dir)
    if source is None:
        if not download:
            raise DataError(_not_found(data_dir))
        source = download_cifar10()
    files = _read_members(source)
    where = {name: _describe(source, name) for name in files}
    classes = [line.strip() for line in files[META].decode("utf-8").splitlines() if line.strip()]
    if len(classes) != 10:
        raise DataError(f"{where[META]}: {len(classes)} class names, expected 10")
    train = _to_imageset([_parse_batch(files[b], where[b]) for b in TRAIN_BATCHES], classes)
    test = _to_imageset([_parse_batch(files[TEST_BATCH], where[TEST_BATCH])], classes)
    return train, test


def find_cifar10(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first extracted folder or archive found in the search roots, else None."""
    for d in cache.looked_in(SUBDIRS, data_dir):
        if (d / TRAIN_BATCHES[0]).is_file():
            return d  # d is the extracted folder itself
        if (d / FOLDER / TRAIN_BATCHES[0]).is_file():
            return d / FOLDER
        if (d / ARCHIVE).is_file():
            return d / ARCHIVE
    return None


def download_cifar10(root: str | os.PathLike | None = None) -> Path:
    """Download the official archive into ``root`` (default ``cache_root()/cifar10``).

    Returns:
        The path of the archive, checked against :data:`SHA256`.
    """
    root = Path(root) if root is not None else cache.cache_root() / SUBDIRS[0]
    return cache.download([base + ARCHIVE for base in MIRRORS], root / ARCHIVE, SHA256)


def _read_members(source: Path) -> dict[str, bytes]:
    """Bytes of the batch files and META, by base name, from a folder or a tar archive."""
    wanted = [*TRAIN_BATCHES, TEST_BATCH, META]
    if source.is_dir():
        missing = [n for n in wanted if not (source / n).is_file()]
        if missing:
            raise DataError(f"{source}: missing {', '.join(missing)}")
        return {n: (source / n).read_bytes() for n in wanted}
    files: dict[str, bytes] = {}
    problem = "not a (gzipped) tar archive"
    try:
        with tarfile.open(source, "r:*") as tar:
            problem = "truncated or corrupt archive"  # it opened, so the damage is further in
            # One pass in archive order: a .tar.gz cannot seek back cheaply.
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in wanted and name not in files:
                    if member.size > _MAX_MEMBER:
                        raise DataError(
                            f"{source}: member {member.name!r} is {member.size:,} bytes, more "
                            f"than a CIFAR-10 batch ({_MAX_MEMBER:,}); not the official archive"
                        )
                    files[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        # tarfile's "r:*" errors list every method tried on several lines; keep the message
        # to one line.
        detail = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{source}: {problem} ({detail})") from None
    missing = [f"{FOLDER}/{n}" for n in wanted if n not in files]
    if missing:
        raise DataError(f"{source}: archive has no member {', '.join(missing)}")
    return files


def _describe(source: Path, name: str) -> str:
    """How a member is named in errors: the file, or archive:member."""
    return str(source / name) if source.is_dir() else f"{source}:{FOLDER}/{name}"


def _parse_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> ``(N, 3, 32, 32)`` uint8 images and ``(N,)`` uint8 labels."""
    if len(raw) == 0 or len(raw) % RECORD:
        raise DataError(f"{where}: {len(raw)} bytes is not a whole number of {RECORD}-byte records")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0]
    if int(labels.max()) >= 10:
        raise DataError(f"{where}: label {int(labels.max())} found, expected 0..9")
    # The planes come in C, H, W order already, so no transpose is needed.
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _to_imageset(batches: list[tuple[np.ndarray, np.ndarray]], classes: list[str]) -> ImageSet:
    # concatenate copies out of the read-only bytes buffers, giving writable arrays for torch.
    images = np.concatenate([b[0] for b in batches])  # (N, 3, 32, 32) uint8
    labels = np.concatenate([b[1] for b in batches]).astype(np.int64)  # (N,)
    return ImageSet(to_uint8_nchw(images), torch.from_numpy(labels), classes)


def _not_found(data_dir: str | os.PathLike | None) -> str:
    looked = ", ".join(str(d) for d in cache.looked_in(SUBDIRS, data_dir))
    return (
        f"cifar10: neither {ARCHIVE} nor {FOLDER}/ found; looked in {looked}; point "
        "at a folder holding one with --data-dir DIR or $DEEPSTART_DATA, or allow downloading"
    )
