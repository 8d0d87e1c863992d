"""Image-folder datasets: layouts, modes, resize policies, archives, and the decoded cache.

Unsafe archives and interrupted extractions: test_data_archive.py; decode_image on its own:
test_data_decode.py.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepstart.data import folder
from deepstart.data.dataset import DataError
from deepstart.data.folder import load_folder

from .conftest import CIFAR_ARCHIVE


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEEPSTART_CACHE", str(cache))
    return cache


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _grey(h: int, w: int, value: int, seed: int = 0) -> Image.Image:
    # A little texture so JPEG has something to encode, but every pixel near `value`.
    rng = np.random.default_rng(seed)
    return Image.fromarray((value + rng.integers(-3, 4, (h, w))).astype(np.uint8))


def _tree(root: Path, classes=("a", "b"), n: int = 3, size=(12, 10)) -> Path:
    for c, name in enumerate(classes):
        for i in range(n):
            _save(root / name / f"{i}.png", _grey(*size, 60 + 40 * c + i, seed=i))
    return root


def _with_twin_class(root: Path) -> Path:
    """Copy class a into a class b: a tree needs 2 classes, and a's images stay first."""
    shutil.copytree(root / "a", root / "b")
    return root


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = folder.decode_image

    def counted(path, **kwargs):
        calls.append(Path(path))
        return real(path, **kwargs)

    monkeypatch.setattr(folder, "decode_image", counted)
    return calls


def _mixed_tree(root: Path) -> Path:
    """Every mode Pillow hands us, plus files that must be skipped or ignored."""
    a, b = root / "a", root / "b"
    _save(a / "rgb.png", Image.new("RGB", (10, 12), (200, 50, 30)))
    _save(a / "grey.jpg", _grey(12, 10, 90), quality=95)
    palette = Image.new("RGB", (10, 12), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    _save(a / "palette.png", palette)
    _save(a / "rgba.png", Image.new("RGBA", (10, 12), (200, 100, 50, 128)))
    _save(b / "cmyk.jpg", Image.new("RGB", (10, 12), (200, 50, 30)).convert("CMYK"), quality=95)
    _save(b / "big.PNG", Image.new("RGB", (30, 20), (0, 0, 250)))  # upper-case extension
    (b / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(noise).save(png, format="PNG")
    (b / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (b / "notes.txt").write_text("not an image")
    _save(b / ".hidden.png", Image.new("RGB", (10, 12)))
    return root


def test_modes_are_converted_and_unreadable_files_skipped(tmp_path, capsys):
    data = load_folder(_mixed_tree(tmp_path / "mixed"), size=(12, 10))
    assert data.classes == ["a", "b"]
    assert data.train.images.shape == (6, 3, 12, 10)  # colour anywhere -> 3 channels
    assert data.train.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert data.valid is None and data.test is None
    skipped = dict(data.skipped)
    assert set(skipped) == {"b/corrupt.jpg", "b/truncated.png"}  # .txt and hidden: silent
    assert skipped["b/corrupt.jpg"] == "cannot identify image file"
    out = capsys.readouterr().out
    assert "skipped 2 unreadable files in" in out and "b/corrupt.jpg (cannot identify" in out

    # Files sort by name inside a class: grey.jpg, palette.png, rgb.png, rgba.png.
    px = data.train.images[:, :, 6, 5].tolist()  # (N, C) centre pixels
    assert max(abs(v - 90) for v in px[0]) <= 4  # grey repeated into 3 channels
    assert px[1] == [10, 200, 30]
    assert px[2] == [200, 50, 30]
    assert px[3] == [100, 50, 25]  # 50% alpha over black
    assert max(abs(v - w) for v, w in zip(px[4], [0, 0, 250])) <= 1  # big.PNG, squished
    assert max(abs(v - w) for v, w in zip(px[5], [200, 50, 30])) <= 6  # CMYK JPEG


def test_quiet_prints_nothing_but_still_reports(tmp_path, capsys):
    data = load_folder(_mixed_tree(tmp_path / "mixed"), size=8, quiet=True)
    assert capsys.readouterr().out == ""
    assert len(data.skipped) == 2


def test_grey_images_give_one_channel_and_16_bit_is_scaled(tmp_path):
    root = tmp_path / "grey"
    _save(root / "a" / "l.png", Image.new("L", (6, 4), 77))
    _save(root / "a" / "one.png", Image.new("1", (6, 4), 1))
    _save(root / "b" / "i16.png", Image.fromarray(np.full((4, 6), 32768, dtype=np.uint16)))
    _save(root / "b" / "grey_palette.png", Image.new("L", (6, 4), 33).convert("P"))
    data = load_folder(root, quiet=True)
    assert data.train.images.shape == (4, 1, 4, 6)
    assert data.train.images[:, 0, 0, 0].tolist() == [77, 255, 33, 128]
    forced = load_folder(root, channels=3, quiet=True).train.images
    assert forced.shape == (4, 3, 4, 6) and torch.equal(forced[:, 0], forced[:, 2])


def test_colour_to_one_channel_uses_pillow_luma(tmp_path):
    path = _save(tmp_path / "c" / "a" / "x.png", Image.new("RGB", (4, 4), (10, 200, 30)))
    expected = np.asarray(Image.open(path).convert("L"))[0, 0]
    data = load_folder(_with_twin_class(tmp_path / "c"), channels=1, quiet=True)
    assert data.train.images.shape == (2, 1, 4, 4)
    assert int(data.train.images[0, 0, 0, 0]) == expected


def test_exif_orientation_is_applied(tmp_path):
    # Stored 20 wide x 10 tall, left half white; orientation 6 means "rotate 90 degrees
    # clockwise to display", which brings the white left half to the top.
    stored = np.zeros((10, 20), dtype=np.uint8)
    stored[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(tmp_path / "rot" / "a" / "x.jpg", Image.fromarray(stored), exif=exif, quality=95)
    img = load_folder(_with_twin_class(tmp_path / "rot"), quiet=True).train.images[0, 0].float()
    assert img.shape == (20, 10)
    assert img[:10].mean() > 200 and img[10:].mean() < 50


def test_resize_policies(tmp_path):
    root = tmp_path / "wide"
    _save(root / "a" / "x.png", Image.new("L", (40, 20), 200))  # 40 wide, 20 tall
    _with_twin_class(root)
    squish = load_folder(root, size=16, resize="squish", quiet=True).train.images[0, 0]
    crop = load_folder(root, size=16, resize="crop", quiet=True).train.images[0, 0]
    pad = load_folder(root, size=16, resize="pad", quiet=True).train.images[0, 0]
    assert squish.shape == crop.shape == pad.shape == (16, 16)
    assert (squish == 200).all() and (crop == 200).all()  # crop leaves no border
    # pad: 40x20 fits as 16x8, centred, so rows 0-3 and 12-15 are black borders.
    assert (pad[:4] == 0).all() and (pad[12:] == 0).all() and (pad[4:12] == 200).all()
    rect = load_folder(root, size=(8, 12), resize="crop", quiet=True).train.images
    assert rect.shape == (2, 1, 8, 12)
    with pytest.raises(DataError, match="unknown resize policy 'zoom'"):
        load_folder(root, size=16, resize="zoom")


def test_crop_keeps_the_centre(tmp_path):
    stripes = np.zeros((10, 30), dtype=np.uint8)
    stripes[:, 10:20] = 255  # white centre third of a wide image
    _save(tmp_path / "s" / "a" / "x.png", Image.fromarray(stripes))
    img = load_folder(
        _with_twin_class(tmp_path / "s"), size=10, resize="crop", quiet=True
    ).train.images[0, 0]
    assert img.float().mean() > 240


def test_mixed_sizes_use_the_most_common_and_say_so(tmp_path, capsys):
    root = _tree(tmp_path / "m", n=3, size=(12, 10))
    _save(root / "b" / "odd.png", _grey(30, 20, 100))
    data = load_folder(root)
    assert data.train.images.shape == (7, 1, 12, 10)
    assert any("2 sizes" in note and "12x10" in note for note in data.notes)
    assert "most common" in capsys.readouterr().out


def test_train_valid_test_layout(tmp_path):
    root = tmp_path / "splits"
    _tree(root / "train", classes=("cat", "dog"), n=4)
    _tree(root / "val", classes=("cat", "dog"), n=2)
    _tree(root / "test", classes=("dog",), n=3)  # a class missing from test is fine
    (root / "README.txt").write_text("ignored")
    data = load_folder(root, quiet=True)
    assert data.classes == ["cat", "dog"]
    assert len(data.train) == 8 and data.train.class_counts() == [4, 4]
    assert data.valid is not None and data.valid.class_counts() == [2, 2]
    assert data.test is not None and data.test.labels.tolist() == [1, 1, 1]
    assert data.test.classes == ["cat", "dog"]


def test_unlabelled_test_folder_is_ignored_with_a_note(tmp_path):
    root = _tree(tmp_path / "k" / "train")
    _save(root.parent / "test" / "0001.png", _grey(12, 10, 50))
    data = load_folder(root.parent, quiet=True)
    assert data.test is None and any("no class folders" in n for n in data.notes)


def test_layout_errors(tmp_path):
    root = tmp_path / "bad"
    _tree(root / "train", classes=("cat",))
    _tree(root / "test", classes=("cat", "cow"))
    with pytest.raises(DataError, match="'cow'"):
        load_folder(root, quiet=True)
    shutil.rmtree(root / "train")
    with pytest.raises(DataError, match="no train/"):
        load_folder(root, quiet=True)
    both = tmp_path / "both"
    for split in ("train", "val", "valid"):
        _tree(both / split)
    with pytest.raises(DataError, match="both"):
        load_folder(both, quiet=True)


def test_one_tree_layout_descends_into_a_lone_folder(tmp_path):
    _tree(tmp_path / "outer" / "inner" / "shapes", classes=("x", "y", "z"))
    data = load_folder(tmp_path / "outer", quiet=True)
    assert data.root == tmp_path / "outer" / "inner" / "shapes"
    assert data.classes == ["x", "y", "z"] and data.train.class_counts() == [3, 3, 3]


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "nowhere")
    flat = tmp_path / "flat"
    _save(flat / "x.png", _grey(4, 4, 10))
    _save(flat / "y.png", _grey(4, 4, 10))
    with pytest.raises(DataError, match="no class folders"):
        load_folder(flat)
    root = _tree(tmp_path / "e")
    (root / "empty_class").mkdir()
    (root / "empty_class" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"empty_class is empty"):
        load_folder(root)
    unreadable = _tree(tmp_path / "u")
    (unreadable / "broken").mkdir()
    (unreadable / "broken" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken has only unreadable files"):
        load_folder(unreadable, quiet=True)
    notes = tmp_path / "notes.csv"
    notes.write_text("a,b")
    with pytest.raises(DataError, match=r"notes\.csv"):
        load_folder(notes)


def _archive(tree_parent: Path, out: Path, fmt: str) -> Path:
    base = shutil.make_archive(str(out), fmt, root_dir=tree_parent, base_dir="tree")
    return Path(base)


@pytest.mark.parametrize("fmt", ["zip", "gztar", "tar"])
def test_archive_loads_like_the_folder(tmp_path, _cache, fmt, monkeypatch):
    _mixed_tree(tmp_path / "src" / "tree")
    packed_path = _archive(tmp_path / "src", tmp_path / "dataset", fmt)
    direct = load_folder(tmp_path / "src" / "tree", size=8, quiet=True)
    packed = load_folder(packed_path, size=8, quiet=True)
    assert packed.classes == direct.classes and packed.skipped == direct.skipped
    assert torch.equal(packed.train.images, direct.train.images)
    assert torch.equal(packed.train.labels, direct.train.labels)
    assert packed.root.parent.parent == _cache / "extracted"
    assert packed.root.parent.name.startswith("dataset-")

    # A second call reuses the extraction (and here, the decoded cache too).
    def no_extract(*args, **kwargs):
        raise AssertionError("extracted twice")

    monkeypatch.setattr("deepstart.data.archive._extract_zip", no_extract)
    monkeypatch.setattr("deepstart.data.archive._extract_tar", no_extract)
    again = load_folder(packed_path, size=8, quiet=True)
    assert again.from_cache and torch.equal(again.train.images, packed.train.images)
    assert len(list((_cache / "extracted").iterdir())) == 1  # no temp folders left behind


def test_second_load_comes_from_cache_without_decoding(tmp_path, monkeypatch, _cache):
    root = _tree(tmp_path / "t", n=4)
    calls = _counting(monkeypatch)
    first = load_folder(root, quiet=True)
    assert not first.from_cache and len(calls) == 8
    assert len(list((_cache / "folders").iterdir())) == 1

    def refuse(path, **kwargs):
        raise AssertionError(f"decoded {path} on a cached load")

    monkeypatch.setattr(folder, "decode_image", refuse)
    second = load_folder(root, quiet=True)
    assert second.from_cache
    assert torch.equal(second.train.images, first.train.images)
    assert torch.equal(second.train.labels, first.train.labels)
    assert second.classes == first.classes and second.root == first.root


def test_cache_keeps_skipped_files_and_notes(tmp_path, capsys):
    root = _mixed_tree(tmp_path / "mixed")
    first = load_folder(root, quiet=True)
    second = load_folder(root)
    assert second.from_cache and second.skipped == first.skipped and second.notes == first.notes
    assert "skipped 2 unreadable files" in capsys.readouterr().out


def test_changed_file_or_options_invalidate_the_cache(tmp_path, monkeypatch):
    root = _tree(tmp_path / "t", n=4)
    calls = _counting(monkeypatch)
    load_folder(root, quiet=True)
    # Same size, new mtime.
    target = root / "a" / "1.png"
    os.utime(target, ns=(time.time_ns(), target.stat().st_mtime_ns + 5_000_000_000))
    assert not load_folder(root, quiet=True).from_cache
    # New content (and size).
    _save(target, _grey(12, 10, 250, seed=7))
    changed = load_folder(root, quiet=True)
    assert not changed.from_cache and int(changed.train.images[1, 0, 0, 0]) > 240
    assert len(calls) == 24
    assert not load_folder(root, size=6, quiet=True).from_cache
    assert not load_folder(root, channels=3, quiet=True).from_cache
    assert load_folder(root, quiet=True).from_cache


def test_broken_cache_is_rebuilt(tmp_path, _cache):
    root = _tree(tmp_path / "t")
    first = load_folder(root, quiet=True)
    (cache_dir,) = (_cache / "folders").iterdir()
    (cache_dir / "train_images.npy").write_bytes(b"garbage")
    again = load_folder(root, quiet=True)
    assert not again.from_cache and torch.equal(again.train.images, first.train.images)
    assert load_folder(root, quiet=True).from_cache


def test_threaded_decoding_matches_sequential(tmp_path, monkeypatch):
    root = _mixed_tree(tmp_path / "mixed")
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    monkeypatch.setattr(folder, "_CHUNK", 2)  # several chunks, so the pool really runs
    threaded = folder._decode_files(paths, (8, 8), 3, "crop", threads=True)
    sequential = folder._decode_files(paths, (8, 8), 3, "crop", threads=False)
    assert len(threaded) == len(paths)
    for a, b in zip(threaded, sequential):
        assert (a == b) if isinstance(a, str) else np.array_equal(a, b)


@pytest.mark.slow
def test_cifar10_jpeg_archive(monkeypatch, cifar_cache):
    cache, data = cifar_cache  # the archive's first load: extracted and decoded
    assert data.classes == [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
    ]  # fmt: skip
    assert data.train.images.shape == (50000, 3, 32, 32)
    assert data.test is not None and data.test.images.shape == (10000, 3, 32, 32)
    assert data.train.class_counts() == [5000] * 10 and data.test.class_counts() == [1000] * 10
    assert data.skipped == [] and not data.from_cache

    monkeypatch.setenv("DEEPSTART_CACHE", str(cache))
    calls = _counting(monkeypatch)
    again = load_folder(CIFAR_ARCHIVE, quiet=True)
    assert again.from_cache and calls == []
    assert torch.equal(again.test.images, data.test.images)
