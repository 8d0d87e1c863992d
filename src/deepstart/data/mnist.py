"""MNIST, Fashion-MNIST and KMNIST from their IDX files.

The four files of each dataset (``train-images-idx3-ubyte.gz`` and friends) are looked for in
the search roots of :mod:`deepstart.cache`, gzipped or raw, and downloaded into the cache
when missing. Downloads are checked against SHA-256 hashes; for MNIST and Fashion-MNIST the
hash is of the *decompressed* IDX bytes, so a mirror that re-compressed the files (as Debian's
Fashion-MNIST package did) still passes while any change to a pixel does not.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import warnings
import zlib
from pathlib import Path
from typing import IO

import numpy as np
import torch

from deepstart import cache
from deepstart.data.dataset import DataError, ImageSet, to_uint8_nchw
from deepstart.data.limits import Budget

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# Folder names tried under each search root; the first is where downloads go.
SUBDIRS = {
    "mnist": ["mnist", "MNIST"],
    "fashion_mnist": ["fashion-mnist", "fashion_mnist", "FashionMNIST"],
    "kmnist": ["kmnist", "KMNIST"],
}

CLASSES = {
    "mnist": [str(d) for d in range(10)],
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
}

# Base URLs tried in order; a file's URL is base + file name. (yann.lecun.com is left out: it
# now often answers 403.)
MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "fashion_mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
    "kmnist": [
        "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        "https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    ],
}

# What each dataset's hashes are of: "content" is the decompressed IDX bytes (so re-compressed
# mirrors pass), "file" the downloaded file as it is. The MNIST and Fashion-MNIST content hashes
# were computed from the official files (MNIST's .gz hashes match tensorflow/datasets
# url_checksums/mnist.txt). For KMNIST only hashes of the .gz files are published
# (tensorflow/datasets url_checksums/kmnist.txt, pytorch/vision prototype mnist.py), so those
# files are checked as they are.
HASH_OF = {"mnist": "content", "fashion_mnist": "content", "kmnist": "file"}

# name -> file -> sha256 hex; None would download with a warning that the file is unverified.
SHA256: dict[str, dict[str, str | None]] = {
    "mnist": {
        TRAIN_IMAGES: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        TRAIN_LABELS: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        TEST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        TEST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        TRAIN_IMAGES: "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        TRAIN_LABELS: "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        TEST_IMAGES: "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        TEST_LABELS: "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    "kmnist": {
        TRAIN_IMAGES: "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
        TRAIN_LABELS: "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
        TEST_IMAGES: "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
        TEST_LABELS: "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
    },
}

# IDX type codes (third byte of the magic number); the data is big-endian.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


_CHUNK = 1 << 20  # bytes decompressed at a time


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a native-endian numpy array.

    The header is read first and the data then streamed into an array of exactly the size
    it promises, so a gzip bomb is refused before it is unpacked: a promise past
    :mod:`deepstart.data.limits` (size, or ratio to the ``.gz`` file) is refused at once, and
    bytes beyond it are refused after reading one.

    Args:
        path: the file; gzip is recognised by its magic bytes, not by the name.

    Returns:
        An array with the shape and dtype the IDX header declares, e.g. ``(60000, 28, 28)``
        uint8 for MNIST's training images.

    Raises:
        DataError: one line naming the file and what was expected versus found, for a
            truncated file or gzip stream, a wrong magic number, an unknown type code,
            bytes left over after the data, or a size past a limit.

    Example:
        >>> images = read_idx("mnist/t10k-images-idx3-ubyte.gz")  # (10000, 28, 28) uint8
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            is_gzip = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if not is_gzip:
                return _read_stream(path, raw, size)
            with gzip.GzipFile(fileobj=raw) as f:
                return _read_stream(path, f, None, Budget(path, compressed=size))
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: truncated or corrupt gzip stream ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None


def _read_stream(
    path: Path, f: IO[bytes], size: int | None, budget: Budget | None = None
) -> np.ndarray:
    """The IDX array from ``f``; ``size`` is the file's when raw (so its data length is known
    without reading), None when decompressing (``budget`` then limits the promise)."""
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated IDX file: {len(head)} bytes, expected a 4-byte magic")
    zero1, zero2, code, ndim = head
    if zero1 != 0 or zero2 != 0:
        raise DataError(
            f"{path}: not an IDX file: magic number 0x{head.hex()}, "
            "expected 0x0000 followed by a type code and the number of dimensions"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02x} ({d.name})" for c, d in IDX_DTYPES.items())
        raise DataError(f"{path}: unknown IDX type code 0x{code:02x}, expected one of {known}")
    header = 4 + 4 * ndim
    dim_bytes = f.read(4 * ndim)
    if len(dim_bytes) < 4 * ndim:
        raise DataError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header} header bytes, "
            f"found {4 + len(dim_bytes)}"
        )
    dims = [int.from_bytes(dim_bytes[4 * i : 4 * i + 4], "big") for i in range(ndim)]
    dtype = IDX_DTYPES[code]
    want = math.prod(dims) * dtype.itemsize  # Python ints: 3 dims of 2^31 do not overflow
    shape = "x".join(str(d) for d in dims)
    says = f"header says {shape} = {want} bytes of data"
    if size is not None and size - header != want:
        problem = "truncated IDX file" if size - header < want else "extra bytes after the IDX data"
        raise DataError(f"{path}: {problem}: {says}, found {size - header}")
    if budget is not None:
        budget.promised(want, f"its IDX header ({shape})")
    data = np.empty(want, dtype=np.uint8)
    view, got = memoryview(data), 0
    while got < want and (n := f.readinto(view[got : got + _CHUNK])):
        got += n
    if got < want:
        raise DataError(f"{path}: truncated IDX file: {says}, found {got}")
    if f.read(1):  # one byte is enough to know: the rest of a bomb is never unpacked
        raise DataError(f"{path}: extra bytes after the IDX data: {says}, found more")
    # view + astype copies: the result is writable and native-endian (torch wants both).
    return data.view(dtype).reshape(dims).astype(dtype.newbyteorder("="))


def load_mnist(
    name: str = "mnist", data_dir: str | os.PathLike | None = None, download: bool = True
) -> tuple[ImageSet, ImageSet]:
    """Load the train and test splits of MNIST, Fashion-MNIST or KMNIST.

    Args:
        name: "mnist", "fashion_mnist" or "kmnist".
        data_dir: a directory holding the four IDX files (or a parent with a ``mnist/``-style
            subfolder); searched before ``$DEEPSTART_DATA`` and the cache.
        download: fetch missing files into the cache (checked by SHA-256).

    Returns:
        ``(train, test)`` ImageSets of ``(N, 1, 28, 28)`` uint8 images: 60000 and 10000.

    Example:
        >>> train, test = load_mnist("fashion_mnist", data_dir="../shared/data")
        >>> train.images.shape
        torch.Size([60000, 1, 28, 28])
    """
    _check_name(name)
    folder = cache.find_files(FILES, SUBDIRS[name], data_dir)
    if folder is None:
        if not download:
            raise DataError(_not_found(name, data_dir))
        folder = download_mnist(name)
    classes = CLASSES[name]
    train = _load_split(folder, TRAIN_IMAGES, TRAIN_LABELS, classes)
    test = _load_split(folder, TEST_IMAGES, TEST_LABELS, classes)
    return train, test


def _load_split(folder: Path, images_name: str, labels_name: str, classes: list[str]) -> ImageSet:
    images_path = cache.resolve(folder, images_name)
    labels_path = cache.resolve(folder, labels_name)
    images = read_idx(images_path)  # (N, 28, 28) uint8
    labels = read_idx(labels_path)  # (N,) uint8
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{images_path}: images are {images.dtype} {'x'.join(map(str, images.shape))}, "
            "expected uint8 Nx28x28"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(
            f"{labels_path}: labels are {labels.dtype} {'x'.join(map(str, labels.shape))}, "
            "expected uint8 N"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path.name} has "
            f"{len(labels)} labels"
        )
    if len(labels) and int(labels.max()) >= len(classes):
        raise DataError(
            f"{labels_path}: label {int(labels.max())} found, expected 0..{len(classes) - 1}"
        )
    return ImageSet(to_uint8_nchw(images), torch.from_numpy(labels.astype(np.int64)), classes)


def download_mnist(name: str, root: str | os.PathLike | None = None) -> Path:
    """Download the missing IDX files of ``name`` into ``root`` and check their hashes.

    Args:
        name: "mnist", "fashion_mnist" or "kmnist".
        root: target directory; default ``cache_root()/<first subdir>``, e.g.
            ``~/.cache/deepstart/mnist``.

    Returns:
        The directory holding the four files.

    Raises:
        DataError: when no mirror gives a file with the right hash.
    """
    _check_name(name)
    root = Path(root) if root is not None else cache.cache_root() / SUBDIRS[name][0]
    root.mkdir(parents=True, exist_ok=True)
    for fname in FILES:
        if not (root / fname).is_file():
            _download_file(name, fname, root / fname)
    return root


def _download_file(name: str, fname: str, dest: Path) -> None:
    kind, expected = HASH_OF[name], SHA256[name][fname]
    if expected is None:
        warnings.warn(f"{name} {fname}: no known sha256, the download is unverified", stacklevel=3)

    def content_matches(tmp: Path) -> str | None:
        found = content_sha256(tmp)
        return None if found == expected else f"decompressed sha256 {found}, expected {expected}"

    check_content = kind == "content" and expected is not None
    try:
        cache.download(
            [base + fname for base in MIRRORS[name]],
            dest,
            expected if kind == "file" else None,
            verify=content_matches if check_content else None,
        )
    except DataError as e:
        raise DataError(
            f"{name}: {e}; without a network, put the files in {dest.parent} or point "
            "--data-dir at a folder holding them"
        ) from None


def content_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's decompressed bytes (of the bytes as they are if not gzipped).

    A cut-short or corrupt gzip stream gives ``"invalid gzip stream"``, never equal to a hash.

    Example:
        >>> content_sha256("mnist/t10k-labels-idx1-ubyte.gz") == SHA256["mnist"][TEST_LABELS]
        True
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        is_gzip = f.read(2) == _GZIP_MAGIC
    try:
        with gzip.open(path, "rb") if is_gzip else open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except (EOFError, zlib.error, gzip.BadGzipFile):
        return "invalid gzip stream"
    return h.hexdigest()


def _check_name(name: str) -> None:
    if name not in SUBDIRS:
        raise DataError(f"unknown IDX dataset {name!r}, expected one of {sorted(SUBDIRS)}")


def _not_found(name: str, data_dir: str | os.PathLike | None) -> str:
    looked = ", ".join(str(d) for d in cache.looked_in(SUBDIRS[name], data_dir))
    return (
        f"{name}: files {', '.join(FILES)} (or the same without .gz) not found; looked in "
        f"{looked}; point at a folder holding them with --data-dir DIR or $DEEPSTART_DATA, or "
        "allow downloading"
    )
