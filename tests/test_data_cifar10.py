"""CIFAR-10 binary reader, on tiny archives in the official layout written here."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from deepstart.cache import sha256_file
from deepstart.data import cifar10
from deepstart.data.cifar10 import load_cifar10
from deepstart.data.dataset import DataError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSTART_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DEEPSTART_DATA", raising=False)
    monkeypatch.setattr(cifar10, "MIRRORS", ["http://127.0.0.1:9/unreachable/"])


def records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The official record layout: label byte, then R, G and B planes of 32x32 bytes."""
    flat = images.reshape(len(images), 3 * 32 * 32)  # (N, 3, 32, 32) -> planes in C order
    return np.concatenate([labels[:, None].astype(np.uint8), flat], axis=1).tobytes()


def tiny_files(seed: int = 0, per_batch: int = 3) -> tuple[dict[str, bytes], dict]:
    """Batch files and meta of a tiny CIFAR-10; also the arrays they hold."""
    rng = np.random.default_rng(seed)
    files, arrays = {}, {}
    for name in [*cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH]:
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch, dtype=np.uint8)
        files[name], arrays[name] = records(images, labels), (images, labels)
    # The official meta file ends in blank lines.
    files[cifar10.META] = ("\n".join(CLASSES) + "\n\n").encode()
    return files, arrays


def write_archive(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{cifar10.FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_round_trip_exact(tmp_path):
    files, arrays = tiny_files()
    write_archive(tmp_path / "cifar10" / cifar10.ARCHIVE, files)
    train, test = load_cifar10(data_dir=tmp_path, download=False)
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.images.dtype == torch.uint8
    want_images = np.concatenate([arrays[b][0] for b in cifar10.TRAIN_BATCHES])
    want_labels = np.concatenate([arrays[b][1] for b in cifar10.TRAIN_BATCHES])
    np.testing.assert_array_equal(train.images.numpy(), want_images)
    np.testing.assert_array_equal(train.labels.numpy(), want_labels)
    np.testing.assert_array_equal(test.images.numpy(), arrays[cifar10.TEST_BATCH][0])
    np.testing.assert_array_equal(test.labels.numpy(), arrays[cifar10.TEST_BATCH][1])
    assert train.classes == CLASSES and test.classes == CLASSES


def test_channel_order_and_row_major_pixels(tmp_path):
    # One hand-built record: label 7; R plane counts 0, 1, 2, ... row by row; G is 100; B is 200.
    record = bytes([7]) + bytes(i % 256 for i in range(1024)) + bytes([100] * 1024)
    record += bytes([200] * 1024)
    files, _ = tiny_files()
    files[cifar10.TEST_BATCH] = record
    write_archive(tmp_path / cifar10.ARCHIVE, files)
    _, test = load_cifar10(data_dir=tmp_path, download=False)
    image = test.images[0]  # (3, 32, 32)
    assert test.labels.tolist() == [7]
    assert int(image[0, 0, 1]) == 1 and int(image[0, 1, 0]) == 32 and int(image[0, 2, 3]) == 67
    assert bool((image[1] == 100).all()) and bool((image[2] == 200).all())


def test_extracted_folder_and_plain_tar(tmp_path):
    files, arrays = tiny_files(seed=1)
    folder = tmp_path / "x" / cifar10.FOLDER
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    for data_dir in [tmp_path / "x", folder]:  # the parent, or the folder itself
        _, test = load_cifar10(data_dir=data_dir, download=False)
        np.testing.assert_array_equal(test.images.numpy(), arrays[cifar10.TEST_BATCH][0])
    # An uncompressed tar under the official name is read too (compression is detected).
    write_archive(tmp_path / "y" / cifar10.ARCHIVE, files, mode="w")
    train, _ = load_cifar10(data_dir=tmp_path / "y", download=False)
    np.testing.assert_array_equal(train.labels[:3].numpy(), arrays["data_batch_1.bin"][1])


def one_line_error(data_dir: Path) -> str:
    with pytest.raises(DataError) as info:
        load_cifar10(data_dir=data_dir, download=False)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_batch_of_wrong_size(tmp_path):
    files, _ = tiny_files()
    files["data_batch_3.bin"] = bytes(1000)
    write_archive(tmp_path / cifar10.ARCHIVE, files)
    message = one_line_error(tmp_path)
    assert "data_batch_3.bin: 1000 bytes is not a whole number of 3073-byte records" in message
    assert cifar10.ARCHIVE in message


def test_wrong_size_in_extracted_folder(tmp_path):
    files, _ = tiny_files()
    files[cifar10.TEST_BATCH] = files[cifar10.TEST_BATCH][:-1]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    message = one_line_error(tmp_path)
    assert f"{tmp_path / cifar10.TEST_BATCH}: 9218 bytes is not a whole number" in message


def test_not_a_tar(tmp_path):
    (tmp_path / cifar10.ARCHIVE).write_bytes(b"<html>404 not found</html>" * 40)
    message = one_line_error(tmp_path)
    assert message.startswith(f"{tmp_path / cifar10.ARCHIVE}: not a (gzipped) tar archive")


def test_truncated_archive(tmp_path):
    files, _ = tiny_files()
    path = write_archive(tmp_path / cifar10.ARCHIVE, files)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = one_line_error(tmp_path)
    assert str(path) in message and "archive" in message


def test_missing_member(tmp_path):
    files, _ = tiny_files()
    del files["data_batch_4.bin"]
    write_archive(tmp_path / cifar10.ARCHIVE, files)
    assert "no member cifar-10-batches-bin/data_batch_4.bin" in one_line_error(tmp_path)


def test_label_out_of_range(tmp_path):
    files, arrays = tiny_files()
    images = arrays["data_batch_2.bin"][0]
    files["data_batch_2.bin"] = records(images, np.array([0, 10, 3], dtype=np.uint8))
    write_archive(tmp_path / cifar10.ARCHIVE, files)
    assert "data_batch_2.bin: label 10 found, expected 0..9" in one_line_error(tmp_path)


def test_not_found_without_download_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSTART_DATA", str(tmp_path / "env"))
    message = one_line_error(tmp_path / "flag")
    for place in ["flag", "flag/cifar10", "env", "env/CIFAR10", "cache/cifar-10"]:
        assert str(tmp_path / place) in message
    assert "--data-dir" in message and "$DEEPSTART_DATA" in message


def test_download_checks_hash(tmp_path, monkeypatch):
    files, arrays = tiny_files()
    served = write_archive(tmp_path / "mirror" / cifar10.ARCHIVE, files)
    # urllib reads file:// URLs, so the mirror can be a local folder.
    monkeypatch.setattr(cifar10, "MIRRORS", [(tmp_path / "mirror").as_uri() + "/"])
    monkeypatch.setattr(cifar10, "SHA256", "0" * 64)
    with pytest.raises(DataError, match="expected 0000"):
        load_cifar10()
    assert not (tmp_path / "cache" / "cifar10" / cifar10.ARCHIVE).exists()

    monkeypatch.setattr(cifar10, "SHA256", sha256_file(served))
    _, test = load_cifar10()
    np.testing.assert_array_equal(test.labels.numpy(), arrays[cifar10.TEST_BATCH][1])
    assert (tmp_path / "cache" / "cifar10" / cifar10.ARCHIVE).is_file()


def test_official_hash_is_recorded():
    assert cifar10.SHA256 == "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
