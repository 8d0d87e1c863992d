"""Hostile inputs (issue 22 items 4, 5 and the folder part of 10): symlink loops, links in
archives, zip/tar/gzip bombs, too many members, images declaring too many pixels, a
one-class folder. Each must end in a one-line deepstart error (or a skip with a note) and
leave nothing broken in the cache.

Every bomb here is small: the limits are lowered through their environment variables, or
the payload is a few MB of zeros (beyond the ratio check's floor, far below any real harm).
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

from deepstart.data import limits
from deepstart.data.archive import extract_archive
from deepstart.data.decode import MAX_PIXELS_ENV, decode_image, max_pixels
from deepstart.data.folder import load_folder
from deepstart.data.mnist import read_idx
from deepstart.errors import ConfigError, DataError, DeepstartError

ZEROS = 12 * 2**20  # bytes of a bomb's payload: over the ratio check's floor (limits.FLOOR)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPSTART_CACHE", str(cache))
    for name in (*limits.ENV, MAX_PIXELS_ENV):
        monkeypatch.delenv(name, raising=False)
    return cache


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert isinstance(e.value, DeepstartError) and "\n" not in message
    return message


def _png(path: Path, value: int = 60, size=(10, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def _tree(root: Path, classes=("a", "b"), n: int = 3) -> Path:
    for c, name in enumerate(classes):
        for i in range(n):
            _png(root / name / f"{i}.png", 60 + 40 * c + i)
    return root


def _nothing_extracted(cache: Path) -> bool:
    """True when no extraction, finished or partial, is left in the cache."""
    return not (cache / "extracted").exists() or not any((cache / "extracted").iterdir())


# --- symlink loops in folders (item 4) --------------------------------------------------


def test_symlink_loop_inside_a_class_is_skipped_with_a_note(tmp_path):
    root = _tree(tmp_path / "ds")
    os.symlink(".", root / "a" / "sub")  # a/sub/sub/sub/... -> a
    os.symlink("..", root / "b" / "up")  # b/up -> ds, which holds b
    os.symlink("self", root / "b" / "self")  # a link to itself: ELOOP on every stat
    data = load_folder(root, quiet=True)
    assert data.classes == ["a", "b"] and data.train.class_counts() == [3, 3]
    assert any("a/sub" in n and "loop" in n for n in data.notes), data.notes


def test_mutual_symlink_loop_ends(tmp_path):
    root = _tree(tmp_path / "ds")
    os.symlink("../b", root / "a" / "to_b")
    os.symlink("../a", root / "b" / "to_a")  # a -> b -> a -> ...
    data = load_folder(root, quiet=True)
    assert data.train.class_counts() == [6, 3]  # a holds b's images through its link: once


def test_class_folder_linking_to_its_parent_is_refused_in_one_line(tmp_path):
    root = _tree(tmp_path / "ds")
    os.symlink(".", root / "c")  # class c would be ds itself, which holds c
    with pytest.raises(DataError) as e:
        load_folder(root, quiet=True)
    assert "symlink" in _one_line(e) and str(root / "c") in str(e.value)


def test_lone_top_folder_linking_to_itself_does_not_descend_forever(tmp_path):
    top = tmp_path / "top"
    top.mkdir()
    os.symlink(".", top / "again")
    with pytest.raises(DataError) as e:
        load_folder(top, quiet=True)
    _one_line(e)


# --- links in archives (item 4) -----------------------------------------------------------


def _tar_with_loop(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for c in ("a", "b"):
            for i in range(2):
                png = io.BytesIO()
                Image.new("L", (4, 4), 50 * i).save(png, format="PNG")
                info = tarfile.TarInfo(f"ds/{c}/{i}.png")
                info.size = len(png.getvalue())
                tar.addfile(info, io.BytesIO(png.getvalue()))
        link = tarfile.TarInfo("ds/a/sub")
        link.type, link.linkname = tarfile.SYMTYPE, "."  # inside the tree, yet a loop
        tar.addfile(link)
    return path


def test_tar_with_an_in_tree_symlink_is_refused_and_nothing_is_cached(tmp_path, _cache):
    packed = _tar_with_loop(tmp_path / "loop.tar.gz")
    for _ in range(2):  # a retry meets the same clear refusal, not a cached broken tree
        with pytest.raises(DataError) as e:
            load_folder(packed, quiet=True)
        assert "ds/a/sub" in _one_line(e) and "link" in str(e.value)
        assert _nothing_extracted(_cache)


# --- extraction limits (item 5) -----------------------------------------------------------


def _zip_of_zeros(path: Path, n_bytes: int, members: int = 1) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(members):
            zf.writestr(f"ds/a/{i}.png", bytes(n_bytes))
    return path


def test_zip_bomb_is_refused_by_its_ratio(tmp_path, _cache):
    packed = _zip_of_zeros(tmp_path / "bomb.zip", ZEROS)  # ~1000:1
    with pytest.raises(DataError) as e:
        load_folder(packed, quiet=True)
    assert limits.RATIO_ENV in _one_line(e) and str(packed) in str(e.value)
    assert _nothing_extracted(_cache)


def test_tar_gz_bomb_is_refused_by_its_ratio(tmp_path, _cache):
    packed = tmp_path / "bomb.tar.gz"
    with tarfile.open(packed, "w:gz") as tar:
        info = tarfile.TarInfo("ds/a/0.png")
        info.size = ZEROS
        tar.addfile(info, io.BytesIO(bytes(ZEROS)))
    with pytest.raises(DataError) as e:
        load_folder(packed, quiet=True)
    assert limits.RATIO_ENV in _one_line(e)
    assert _nothing_extracted(_cache)


def test_total_size_limit_is_checked_while_writing(tmp_path, _cache, monkeypatch):
    monkeypatch.setenv(limits.GB_ENV, "0.001")  # 1 MB
    packed = tmp_path / "big.tar"  # uncompressed: the ratio check cannot catch it
    with tarfile.open(packed, "w") as tar:
        for i in range(3):
            data = os.urandom(400_000)
            info = tarfile.TarInfo(f"ds/a/{i}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError) as e:
        extract_archive(packed, quiet=True)
    assert limits.GB_ENV in _one_line(e) and "ds/a/2.png" in str(e.value)
    assert _nothing_extracted(_cache)
    monkeypatch.setenv(limits.GB_ENV, "0.01")  # raised by the user: now it fits
    assert len(list(extract_archive(packed, quiet=True).rglob("*.png"))) == 3


def test_member_count_limit(tmp_path, _cache, monkeypatch):
    monkeypatch.setenv(limits.FILES_ENV, "5")
    packed = _zip_of_zeros(tmp_path / "many.zip", 10, members=8)
    with pytest.raises(DataError) as e:
        load_folder(packed, quiet=True)
    assert limits.FILES_ENV in _one_line(e)
    assert _nothing_extracted(_cache)


def test_a_bad_limit_setting_is_a_one_line_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv(limits.GB_ENV, "lots")
    with pytest.raises(ConfigError) as e:
        extract_archive(_zip_of_zeros(tmp_path / "x.zip", 10), quiet=True)
    assert limits.GB_ENV in _one_line(e)


# --- gzip bombs against the IDX reader (item 5) ------------------------------------------


def _idx_header(*dims: int) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)


def test_idx_gzip_bomb_is_refused_before_it_is_unpacked(tmp_path, monkeypatch):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_header(3000, 64, 64) + bytes(3000 * 64 * 64)))
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as e:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert limits.RATIO_ENV in _one_line(e) and str(path) in str(e.value)
    assert peak < 2**20  # the 12 MB were never decompressed
    monkeypatch.setenv(limits.RATIO_ENV, "100000")  # the user trusts the file
    assert read_idx(path).shape == (3000, 64, 64)


def test_idx_extra_bytes_are_refused_without_reading_them_all(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_header(60) + bytes(60) + bytes(64 * 2**20)))
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as e:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "extra bytes" in _one_line(e)
    assert peak < 4 * 2**20  # the 64 MB tail was never held in memory


def test_idx_header_declaring_absurd_dims_is_refused(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(_idx_header(2**31, 2**31, 2**31) + bytes(16))
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert "truncated IDX file" in _one_line(e)


# --- images declaring too many pixels (item 10) ------------------------------------------


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says ``width`` x ``height`` (8-bit grey) and holds no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def test_huge_declared_png_is_a_one_line_error(tmp_path):
    path = _png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(DataError) as e:
        decode_image(path, size=32)
    assert MAX_PIXELS_ENV in _one_line(e) and str(path) in str(e.value)


def test_folder_skips_an_image_over_the_pixel_limit(tmp_path, _cache):
    root = _tree(tmp_path / "ds")
    _png_header_only(root / "a" / "huge.png", 100_000, 100_000)
    data = load_folder(root, quiet=True)
    assert data.train.class_counts() == [3, 3]
    (reason,) = [why for f, why in data.skipped if f == "a/huge.png"]
    assert MAX_PIXELS_ENV in reason


def test_folder_predict_and_serve_share_one_pixel_limit(tmp_path, monkeypatch):
    from deepstart.data.dataset import Preprocess
    from deepstart.serve.engine import UploadError, check_pixels
    from deepstart.ship.predict import read_image, refuse_bombs

    monkeypatch.setenv(MAX_PIXELS_ENV, "300")
    assert max_pixels() == 300  # the 10x12 images fit
    root = _tree(tmp_path / "ds")
    _png(root / "a" / "big.png", size=(20, 20))  # 400 pixels: a real image, over the limit
    data = load_folder(root, quiet=True)
    assert [f for f, _ in data.skipped] == ["a/big.png"]
    prep = Preprocess(size=(8, 8), channels=1, resize="squish", mean=(0.5,), std=(0.5,))
    with refuse_bombs(), pytest.raises(DataError, match=MAX_PIXELS_ENV):
        read_image(root / "a" / "big.png", prep)
    with pytest.raises(UploadError) as e:
        check_pixels((root / "a" / "big.png").read_bytes())
    assert e.value.status == 413


# --- one-class folders (item 10) ----------------------------------------------------------


def test_single_class_folder_is_refused_at_load(tmp_path, _cache):
    root = _tree(tmp_path / "ds", classes=("cat",))
    with pytest.raises(DataError) as e:
        load_folder(root, quiet=True)
    assert "at least 2 classes" in _one_line(e) and str(root) in str(e.value)
    assert not (_cache / "folders").exists()


def test_cifar10_member_larger_than_a_batch_is_refused_before_reading(tmp_path):
    from deepstart.data import cifar10

    packed = tmp_path / "cifar10" / cifar10.ARCHIVE
    packed.parent.mkdir()
    n_bytes = 12_000 * cifar10.RECORD  # 37 MB of zeros, ~40 kB gzipped
    with tarfile.open(packed, "w:gz") as tar:
        info = tarfile.TarInfo(f"{cifar10.FOLDER}/{cifar10.TRAIN_BATCHES[0]}")
        info.size = n_bytes
        tar.addfile(info, io.BytesIO(bytes(n_bytes)))
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as e:
            cifar10.load_cifar10(data_dir=tmp_path, download=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "more than a CIFAR-10 batch" in _one_line(e)
    assert peak < 8 * 2**20  # the 37 MB were never read into memory


def test_raising_the_pixel_limit_raises_pillows_too(tmp_path, monkeypatch):
    from deepstart.ship.predict import refuse_bombs

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # restored after the test
    path = _png(tmp_path / "x.png", size=(12, 12))  # 144 pixels
    with refuse_bombs(), pytest.raises(DataError, match="144 pixels"):
        decode_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "150")
    with refuse_bombs():  # Pillow's own warning would refuse it, had it not followed
        assert decode_image(path).shape == (12, 12, 1)
    monkeypatch.setenv(MAX_PIXELS_ENV, "many")
    with pytest.raises(ConfigError) as e:
        decode_image(path)
    assert MAX_PIXELS_ENV in _one_line(e)
