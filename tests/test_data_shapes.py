"""Synthetic shapes: determinism, balance, every kind drawable, and the PNG folder export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deepstart.data.dataset import DataError
from deepstart.data.folder import load_folder
from deepstart.data.shapes import (
    DEFAULT_CLASSES,
    SHAPES,
    draw_shape,
    load_shapes,
    make_shapes,
    write_shapes_folder,
)


def test_same_seed_same_bytes_other_seed_other_images():
    a = make_shapes(60, size=16, seed=3)
    b = make_shapes(60, size=16, seed=3)
    c = make_shapes(60, size=16, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_shape_dtype_and_classes():
    data = make_shapes(30, size=20)
    assert data.images.shape == (30, 1, 20, 20) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64
    assert data.classes == list(DEFAULT_CLASSES) == ["circle", "square", "triangle"]
    colour = make_shapes(12, size=20, channels=3, classes=("star", "cross"))
    assert colour.images.shape == (12, 3, 20, 20) and colour.classes == ["star", "cross"]
    # Colour shapes really are coloured: channels differ somewhere in most images.
    differs = (colour.images[:, 0] != colour.images[:, 1]).flatten(1).any(1)
    assert differs.float().mean() > 0.9


def test_labels_are_balanced_and_shuffled():
    data = make_shapes(300, size=16)
    assert data.class_counts() == [100, 100, 100]
    assert data.labels[:100].tolist() != [0] * 100  # shuffled, not in class order
    assert make_shapes(10, size=16).class_counts() == [4, 3, 3]  # remainder to the first


@pytest.mark.parametrize("kind", SHAPES)
def test_every_kind_draws_a_bright_shape_on_a_darker_background(kind):
    rng = np.random.default_rng(0)
    for _ in range(5):
        img = draw_shape(kind, 32, rng, noise=0.0)
        assert img.shape == (32, 32) and img.dtype == np.uint8
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        bright = (img >= 128).mean()
        # A filled shape covers a sizeable part of the frame, but not all of it.
        assert 0.05 < bright < 0.7, (kind, bright)
        assert img.max() >= 128 and np.median(border) < img.max() - 60
    rgb = draw_shape(kind, 24, rng, channels=3)
    assert rgb.shape == (24, 24, 3) and rgb.dtype == np.uint8


def test_kinds_differ_from_each_other():
    # Same random stream for each kind: same position/size, so masks differ only by kind.
    masks = {k: draw_shape(k, 32, np.random.default_rng(5), noise=0.0) > 100 for k in SHAPES}
    for i, a in enumerate(SHAPES):
        for b in SHAPES[i + 1 :]:
            assert (masks[a] != masks[b]).sum() > 5, (a, b)


def test_noise_and_intensity_stay_in_range():
    clean = make_shapes(90, size=16, noise=0.0, seed=1).images
    noisy = make_shapes(90, size=16, noise=0.3, seed=1).images
    assert clean.dtype == noisy.dtype == torch.uint8  # clipped, never wrapped around
    assert int(clean.max()) <= 255 and int(clean.min()) >= 0
    assert (noisy.float() - clean.float()).std() > 30  # 0.3 * 255 before clipping
    # Noise saturates at 0 and 255 instead of wrapping around.
    assert (noisy[clean >= 235] == 255).float().mean() > 0.3
    assert (noisy[clean <= 20] == 0).float().mean() > 0.3
    # Foreground 128-255: every clean image has a bright shape.
    assert (clean.flatten(1).max(1).values >= 120).all()


def test_unknown_kind_and_bad_arguments():
    with pytest.raises(DataError, match=r"unknown shape kind 'blob'.*circle, square"):
        make_shapes(10, classes=("circle", "blob"))
    with pytest.raises(DataError, match="unknown shape kind"):
        draw_shape("blob", 32, np.random.default_rng(0))
    with pytest.raises(DataError, match="channels"):
        make_shapes(10, channels=2)
    with pytest.raises(DataError, match="distinct"):
        make_shapes(10, classes=("circle", "circle"))


def test_train_and_test_differ():
    train, test = load_shapes(n_train=30, n_test=30, size=16, seed=0)
    assert len(train) == 30 and len(test) == 30 and train.classes == test.classes
    seen = {bytes(img.numpy()) for img in train.images}
    assert not any(bytes(img.numpy()) in seen for img in test.images)
    # Seed s's test split is not seed s+1's train split either.
    next_train, _ = load_shapes(n_train=30, n_test=30, size=16, seed=1)
    assert not torch.equal(test.images, next_train.images)
    again, _ = load_shapes(n_train=30, n_test=30, size=16, seed=0)
    assert torch.equal(again.images, train.images)


@pytest.mark.parametrize("channels", [1, 3])
def test_write_shapes_folder_round_trips_through_load_folder(tmp_path, monkeypatch, channels):
    monkeypatch.setenv("DEEPSTART_CACHE", str(tmp_path / "cache"))
    classes = ("circle", "star", "hexagon")
    root = write_shapes_folder(
        tmp_path / "png", n_train=30, n_test=12, size=16, classes=classes, seed=2,
        channels=channels,
    )  # fmt: skip
    assert root == tmp_path / "png"
    for split, per_class in (("train", 10), ("test", 4)):
        for name in classes:
            files = sorted((root / split / name).glob("*.png"))
            assert [f.name for f in files] == [f"{i:05d}.png" for i in range(per_class)]
            with Image.open(files[0]) as im:
                assert im.size == (16, 16) and im.mode == ("L" if channels == 1 else "RGB")

    loaded = load_folder(root, quiet=True)
    train, test = load_shapes(
        n_train=30, n_test=12, size=16, classes=classes, seed=2, channels=channels
    )
    assert loaded.classes == sorted(classes)  # folders sort by name
    assert loaded.test is not None and loaded.skipped == []
    for original, back in ((train, loaded.train), (test, loaded.test)):
        for c, name in enumerate(original.classes):
            want = original.images[original.labels == c]
            got = back.images[back.labels == loaded.classes.index(name)]
            assert torch.equal(got, want)  # PNG is lossless


def test_write_refuses_a_non_empty_folder(tmp_path):
    write_shapes_folder(tmp_path / "png", n_train=6, n_test=3, size=16)
    with pytest.raises(DataError, match="not empty"):
        write_shapes_folder(tmp_path / "png", n_train=6, n_test=3, size=16)


def test_batched_polygon_fill_is_skimages_pixel_for_pixel():
    """Shapes fill their polygons in batches; the pixels must be those scikit-image's
    ``draw.polygon`` sets (the datasets' bytes did not change when the fill did), for convex
    and concave outlines and polygons reaching past the border. (A pixel centre exactly on
    an edge, which skimage counts as inside, is left to the even-odd rule: random float
    vertices do not put one there.)"""
    from skimage import draw

    from deepstart.data.shapes import _fill_polygons, _outline

    rng = np.random.default_rng(0)
    big = 64
    for kind in ("triangle", "square", "pentagon", "hexagon", "star", "cross"):
        outlines = []
        for _ in range(40):
            xy = _outline(kind, rng.uniform(3, 40), rng.uniform(0, 2 * np.pi), rng)
            outlines.append(
                (rng.uniform(-10, big + 10) + xy[:, 1], rng.uniform(-10, 74) + xy[:, 0])
            )
        rows = np.stack([r for r, _ in outlines])
        cols = np.stack([c for _, c in outlines])
        got = _fill_polygons(rows, cols, big)
        for n, (r, c) in enumerate(outlines):
            want = np.zeros((big, big), dtype=bool)
            want[draw.polygon(r, c, shape=(big, big))] = True
            assert np.array_equal(got[n], want), (kind, n)
        assert got.any(axis=(1, 2)).sum() > 20  # most of them show on the image
