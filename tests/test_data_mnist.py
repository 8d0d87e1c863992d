"""IDX parsing and MNIST-family loading, on tiny files written here (real data: slow tests)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from deepstart.data import mnist
from deepstart.data.dataset import DataError
from deepstart.data.mnist import content_sha256, load_mnist, read_idx

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``: magic, big-endian uint32 dims, big-endian data."""
    code = IDX_CODES[array.dtype.str[1:]]
    header = bytes([0, 0, code, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_mnist_dir(folder: Path, n_train=5, n_test=3, seed=0, gz=True) -> dict[str, np.ndarray]:
    """Write the four files of a tiny MNIST-shaped set into ``folder``; return the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        mnist.TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        mnist.TRAIN_LABELS: rng.integers(0, 10, n_train, dtype=np.uint8),
        mnist.TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        mnist.TEST_LABELS: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write(folder / (name if gz else name[:-3]), idx_bytes(array), gz)
    return arrays


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Nothing outside tmp_path is searched or written, and nothing is downloaded."""
    monkeypatch.setenv("DEEPSTART_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DEEPSTART_DATA", raising=False)
    for name in mnist.MIRRORS:
        monkeypatch.setitem(mnist.MIRRORS, name, ["http://127.0.0.1:9/unreachable/"])


# --- read_idx -------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_read_idx_round_trips_every_type(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write(tmp_path / "x.idx", idx_bytes(array), gz)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


def test_read_idx_knows_gzip_by_magic_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_named_raw = write(tmp_path / "a-idx2-ubyte", idx_bytes(array), gz=True)
    raw_named_gz = write(tmp_path / "b-idx2-ubyte.gz", idx_bytes(array), gz=False)
    np.testing.assert_array_equal(read_idx(gz_named_raw), array)
    np.testing.assert_array_equal(read_idx(raw_named_gz), array)


def test_read_idx_one_dimensional_labels(tmp_path):
    labels = np.array([7, 2, 1, 0, 4], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "l", idx_bytes(labels), True)), labels)


GOOD = idx_bytes(np.zeros((3, 4, 5), dtype=np.uint8))  # 16-byte header + 60 bytes of data


@pytest.mark.parametrize(
    ("data", "gz", "expected"),
    [
        (GOOD[:-1], False, "truncated IDX file: header says 3x4x5 = 60 bytes of data, found 59"),
        (GOOD[:-1], True, "truncated IDX file: header says 3x4x5 = 60 bytes of data, found 59"),
        (GOOD + b"\0", False, "extra bytes after the IDX data: header says 3x4x5 = 60 bytes"),
        (GOOD[:3], False, "truncated IDX file: 3 bytes"),
        (GOOD[:10], False, "truncated IDX header: 3 dimensions need 16 header bytes, found 10"),
        (b"\x08\x03" + GOOD[2:], False, "not an IDX file: magic number 0x08030803"),
        (b"PK\x03\x04" + GOOD[4:], False, "not an IDX file"),
        (GOOD[:2] + b"\x0a" + GOOD[3:], False, "unknown IDX type code 0x0a, expected one of"),
        (gzip.compress(GOOD)[:-12], None, "truncated or corrupt gzip stream"),
        (b"\x1f\x8b" + b"not really gzip" * 4, None, "truncated or corrupt gzip stream"),
    ],
)
def test_read_idx_bad_input_is_one_line_data_error(tmp_path, data, gz, expected):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(data if gz is None else (gzip.compress(data) if gz else data))
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": ")
    assert expected in message
    assert "\n" not in message


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.gz: cannot read file"):
        read_idx(tmp_path / "nothere.gz")


# --- load_mnist -----------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_exact_pixels_and_labels(tmp_path, gz):
    arrays = make_mnist_dir(tmp_path / "data", gz=gz)
    train, test = load_mnist("mnist", data_dir=tmp_path / "data", download=False)
    assert train.images.shape == (5, 1, 28, 28) and test.images.shape == (3, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    np.testing.assert_array_equal(train.images[:, 0].numpy(), arrays[mnist.TRAIN_IMAGES])
    np.testing.assert_array_equal(train.labels.numpy(), arrays[mnist.TRAIN_LABELS])
    np.testing.assert_array_equal(test.images[:, 0].numpy(), arrays[mnist.TEST_IMAGES])
    np.testing.assert_array_equal(test.labels.numpy(), arrays[mnist.TEST_LABELS])
    assert train.classes == [str(d) for d in range(10)]


def test_class_names_and_subfolders(tmp_path):
    make_mnist_dir(tmp_path / "fashion-mnist")
    make_mnist_dir(tmp_path / "KMNIST")
    fashion, _ = load_mnist("fashion_mnist", data_dir=tmp_path, download=False)
    kmnist, _ = load_mnist("kmnist", data_dir=tmp_path, download=False)
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot"
    assert len(fashion.classes) == 10
    assert kmnist.classes == ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]


def test_image_and_label_counts_must_agree(tmp_path):
    make_mnist_dir(tmp_path, n_train=5)
    write(tmp_path / mnist.TRAIN_LABELS, idx_bytes(np.zeros(4, dtype=np.uint8)), gz=True)
    with pytest.raises(DataError) as info:
        load_mnist("mnist", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz has 5 images but" in message
    assert "train-labels-idx1-ubyte.gz has 4 labels" in message
    assert "\n" not in message


def test_labels_must_be_below_ten(tmp_path):
    make_mnist_dir(tmp_path)
    write(tmp_path / mnist.TEST_LABELS, idx_bytes(np.array([1, 10, 2], dtype=np.uint8)), True)
    with pytest.raises(
        DataError, match=r"t10k-labels-idx1-ubyte\.gz: label 10 found, expected 0\.\.9"
    ):
        load_mnist("mnist", data_dir=tmp_path, download=False)


def test_images_must_be_28x28(tmp_path):
    make_mnist_dir(tmp_path)
    write(tmp_path / mnist.TEST_IMAGES, idx_bytes(np.zeros((3, 32, 32), dtype=np.uint8)), True)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: images are uint8 3x32x32"):
        load_mnist("mnist", data_dir=tmp_path, download=False)


def test_lookup_order_flag_then_env_then_cache(tmp_path, monkeypatch):
    # Each place holds a set told apart by its size.
    make_mnist_dir(tmp_path / "flag", n_train=2)
    make_mnist_dir(tmp_path / "env" / "mnist", n_train=3)
    make_mnist_dir(tmp_path / "cache" / "MNIST", n_train=4)
    monkeypatch.setenv("DEEPSTART_DATA", str(tmp_path / "env"))
    assert len(load_mnist("mnist", data_dir=tmp_path / "flag", download=False)[0]) == 2
    assert len(load_mnist("mnist", download=False)[0]) == 3
    monkeypatch.delenv("DEEPSTART_DATA")
    assert len(load_mnist("mnist", download=False)[0]) == 4


def test_missing_files_without_download_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSTART_DATA", str(tmp_path / "env"))
    make_mnist_dir(tmp_path / "flag" / "mnist")
    (tmp_path / "flag" / "mnist" / mnist.TEST_LABELS).unlink()  # 3 of 4 is not enough
    with pytest.raises(DataError) as info:
        load_mnist("mnist", data_dir=tmp_path / "flag", download=False)
    message = str(info.value)
    for place in ["flag", "flag/mnist", "env", "env/MNIST", "cache"]:
        assert str(tmp_path / place) in message
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert "--data-dir" in message and "$DEEPSTART_DATA" in message


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="unknown IDX dataset 'emnist'"):
        load_mnist("emnist", download=False)


def test_hash_tables_cover_every_file():
    for name in mnist.SUBDIRS:
        assert set(mnist.SHA256[name]) == set(mnist.FILES)
        assert mnist.HASH_OF[name] in ("content", "file")
        assert all(len(h) == 64 for h in mnist.SHA256[name].values())
        assert len(mnist.CLASSES[name]) == 10


# --- the real files (../shared/data) ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "mnist"), ("fashion_mnist", "fashion-mnist")]
)
def test_real_files(name, folder):
    folder = SHARED_DATA / folder
    if not all((folder / f).is_file() for f in mnist.FILES):
        pytest.skip(f"real data not found in {folder}")
    train, test = load_mnist(name, data_dir=folder, download=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape[1:] == (1, 28, 28) and test.images.shape[1:] == (1, 28, 28)
    assert sum(train.class_counts()) == 60000 and sum(test.class_counts()) == 10000
    assert min(train.class_counts()) > 5000
    for fname in mnist.FILES:
        assert content_sha256(folder / fname) == mnist.SHA256[name][fname], fname
