"""The affNIST generator: padding, geometry, determinism, splits and cache, on tiny IDX files
written here (the real MNIST only in slow tests)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from deepstart.data import affnist, mnist
from deepstart.data.affnist import (
    AffineRanges,
    load_affnist,
    pad_digits,
    sample_transforms,
    transform_digits,
)
from deepstart.data.catalog import load_dataset
from deepstart.data.dataset import DataError
from deepstart.data.mismatch import check_inputs, input_stats
from tests.test_data_mnist import idx_bytes

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def fake_digits(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 28, 28)`` uint8 'digits': a few bright strokes inside the central 20×20, as in
    MNIST (ink never closer than 4 pixels to the edge)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        for _ in range(rng.integers(2, 4)):
            if rng.random() < 0.5:  # a horizontal stroke
                r, c0 = rng.integers(4, 21), rng.integers(4, 14)
                out[i, r : r + 3, c0 : c0 + rng.integers(6, 24 - c0 + 1)] = rng.integers(150, 256)
            else:  # a vertical one
                c, r0 = rng.integers(4, 21), rng.integers(4, 14)
                out[i, r0 : r0 + rng.integers(6, 24 - r0 + 1), c : c + 3] = rng.integers(150, 256)
    return out


def write_mnist(folder: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> None:
    """The four MNIST files of a tiny digit-like set, labels 0..9 in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        mnist.TRAIN_IMAGES: fake_digits(n_train, seed),
        mnist.TRAIN_LABELS: (np.arange(n_train) % 10).astype(np.uint8),
        mnist.TEST_IMAGES: fake_digits(n_test, seed + 1),
        mnist.TEST_LABELS: (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, array in arrays.items():
        (folder / name).write_bytes(gzip.compress(idx_bytes(array)))


@pytest.fixture(autouse=True)
def no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSTART_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DEEPSTART_DATA", raising=False)
    monkeypatch.setitem(mnist.MIRRORS, "mnist", ["http://127.0.0.1:9/unreachable/"])


def digits_tensor(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(fake_digits(n, seed))[:, None]  # (N, 1, 28, 28)


def centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` (x, y) centre of mass in pixel indices."""
    w = x[:, 0].double()
    h, wd = w.shape[1:]
    ys = torch.arange(h, dtype=torch.float64).view(1, h, 1)
    xs = torch.arange(wd, dtype=torch.float64).view(1, 1, wd)
    m = w.sum((1, 2))
    return torch.stack([(w * xs).sum((1, 2)) / m, (w * ys).sum((1, 2)) / m], 1)


# --- padding --------------------------------------------------------------------------------


def test_centred_pad_puts_the_centre_of_mass_in_the_middle():
    # A digit whose centre of mass is the middle of its 28×28 field lands in the middle of 40×40.
    d = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    d[0, 0, 10:18, 12:16] = 200  # centre (13.5, 13.5): the middle of 0..27
    out = pad_digits(d)
    assert out.shape == (1, 1, 40, 40)
    assert centre_of_mass(out).tolist() == [[19.5, 19.5]]  # the middle of 0..39
    assert int(out.sum()) == int(d.sum())  # padding adds only black


def test_off_centre_pads_move_the_digit_by_the_whole_pad():
    d = digits_tensor(5)
    centred = centre_of_mass(pad_digits(d, where="centre"))
    corner = centre_of_mass(pad_digits(d, where="corner"))
    assert torch.allclose(corner, centred - 6)
    assert torch.allclose(centre_of_mass(pad_digits(d, where="bottom_right")), centred + 6)
    br = pad_digits(d, where="top_right")
    assert torch.equal(br[:, :, :28, 12:], d)


def test_pad_value_fills_the_frame():
    out = pad_digits(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), value=33)
    assert int(out[0, 0, 0, 0]) == 33 and int(out[0, 0, 20, 20]) == 0


def test_pad_rejects_what_it_cannot_do():
    with pytest.raises(DataError, match="unknown pad"):
        pad_digits(digits_tensor(1), where="middle")
    with pytest.raises(DataError, match="cannot pad"):
        pad_digits(torch.zeros(1, 1, 50, 50, dtype=torch.uint8))


# --- transforms -----------------------------------------------------------------------------


def test_transform_is_deterministic_by_seed_and_counts_copies():
    d = digits_tensor(7)
    a, idx = transform_digits(d, copies=3, seed=5)
    b, _ = transform_digits(d, copies=3, seed=5)
    c, _ = transform_digits(d, copies=3, seed=6)
    assert a.shape == (21, 1, 40, 40) and a.dtype == torch.uint8
    assert idx.tolist() == list(range(7)) * 3  # copy-major
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Each copy of a digit is a different transform of it.
    assert not torch.equal(a[0], a[7]) and not torch.equal(a[7], a[14])


def test_sampled_transforms_stay_in_their_ranges_and_keep_boxes_inside():
    n = 4000
    boxes = torch.tensor([[-10.0, -10.0, 10.0, 10.0]]).repeat(n, 1)  # MNIST's 20×20, centred
    ranges = AffineRanges()
    linear, shift = sample_transforms(boxes, torch.Generator().manual_seed(0), ranges)
    corners = torch.tensor([[-10.0, -10.0], [10.0, -10.0], [-10.0, 10.0], [10.0, 10.0]])
    moved = corners.double() @ linear.transpose(1, 2) + shift[:, None, :]  # (N, 4, 2)
    assert moved.abs().max() <= 20 - ranges.margin + 1e-9
    det = torch.linalg.det(linear)  # = sx * sy: rotation and shear keep area
    assert det.min() >= 0.8**2 - 1e-9 and det.max() <= 1.2**2 + 1e-9
    # Translations are "significant": they use most of the room the frame leaves.
    assert shift.abs().max() > 7 and shift.std(0).min() > 2.5


def test_every_digit_keeps_all_its_ink_inside_the_frame():
    d = digits_tensor(64, seed=3)
    out, idx = transform_digits(d, copies=2, seed=11)
    # Redraw the same transforms: mass must scale by exactly the area factor |det| (up to
    # interpolation rounding); ink pushed out of the frame would lower it.
    padded = pad_digits(d)
    gen = torch.Generator().manual_seed(11)
    boxes = affnist._bounding_boxes(padded)
    dets = torch.cat(
        [torch.linalg.det(sample_transforms(boxes, gen, AffineRanges())[0]) for _ in range(2)]
    )
    mass_in = d.double().sum((1, 2, 3))[idx]
    ratio = out.double().sum((1, 2, 3)) / (mass_in * dets)
    assert ratio.min() > 0.97 and ratio.max() < 1.03
    ring = torch.cat([out[:, 0, 0], out[:, 0, -1], out[:, 0, :, 0], out[:, 0, :, -1]], 1)
    assert int(ring.max()) <= 8  # at most interpolation spill into the outermost pixels


def test_without_translation_digits_stay_centred():
    d = digits_tensor(64, seed=4)
    moved, _ = transform_digits(d, copies=1, seed=2)
    still, _ = transform_digits(d, copies=1, seed=2, ranges=AffineRanges(translate=False))
    centred = centre_of_mass(pad_digits(d))
    # Rotation, shear and scale about the frame's centre move a centre of mass a little;
    # the translations of affNIST move it a lot.
    assert (centre_of_mass(still) - centred).abs().max() < 3
    assert (centre_of_mass(moved) - centred).abs().max() > 6
    assert int(still[:, 0, 0].max()) <= 8 and int(still[:, 0, -1].max()) <= 8


def test_ranges_are_checked():
    with pytest.raises(DataError):
        AffineRanges(scale=(1.2, 0.8))
    with pytest.raises(DataError, match="copies"):
        transform_digits(digits_tensor(1), copies=0)


# --- splits, catalogue, cache ---------------------------------------------------------------


def test_load_affnist_splits_originals_and_pads_the_test(tmp_path):
    write_mnist(tmp_path / "mnist", n_train=100, n_test=20)
    train, valid, test = load_affnist(tmp_path / "mnist", copies=2, valid_pct=0.2, download=False)
    assert len(train) == 80 * 2 and len(valid) == 20 * 2 and len(test) == 20
    assert train.size == valid.size == test.size == (40, 40)
    # Whole originals are held out (valid_pct of each class), each with all its copies.
    assert train.class_counts() == [16] * 10 and valid.class_counts() == [4] * 10
    raw = torch.from_numpy(fake_digits(20, 1))[:, None]
    assert torch.equal(test.images, pad_digits(raw))
    assert test.labels.tolist() == [i % 10 for i in range(20)]
    _, _, corner = load_affnist(tmp_path / "mnist", copies=1, test_pad="corner", download=False)
    assert torch.equal(corner.images, pad_digits(raw, where="corner"))


def test_catalogue_serves_affnist_with_options(tmp_path):
    write_mnist(tmp_path / "mnist")
    data = load_dataset("affnist", data_dir=tmp_path / "mnist", valid_pct=0.1, copies=3)
    assert data.size == (40, 40) and data.channels == 1 and data.num_classes == 10
    # 6 originals per class, 10% held out rounds to 1 per class, with its 3 copies.
    assert len(data.train) == 50 * 3 and len(data.valid) == 10 * 3 and len(data.test) == 20
    whole = load_dataset("affnist", data_dir=tmp_path / "mnist", valid_pct=0, copies=1)
    assert len(whole.train) == 60 and whole.valid is whole.test


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    write_mnist(tmp_path / "mnist")
    first, _, _ = load_affnist(tmp_path / "mnist", copies=2, valid_pct=0, download=False)
    assert any((tmp_path / "cache" / "affnist").iterdir())

    def fail(*args, **kwargs):
        raise AssertionError("generated again instead of reading the cache")

    monkeypatch.setattr(affnist, "transform_digits", fail)
    second, _, _ = load_affnist(tmp_path / "mnist", copies=2, valid_pct=0, download=False)
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    with pytest.raises(AssertionError, match="generated again"):  # other settings: new key
        load_affnist(tmp_path / "mnist", copies=2, valid_pct=0, seed=1, download=False)


# --- the real thing -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="needs ../shared/data/mnist")
def test_real_affnist_train_matches_centred_test_but_not_corner():
    train, _, test = load_affnist(SHARED_MNIST, copies=1, valid_pct=0, download=False)
    stats = input_stats(train.images)
    assert check_inputs(stats, test.images, what="test images") == []
    _, _, corner = load_affnist(
        SHARED_MNIST, copies=1, valid_pct=0, test_pad="corner", download=False
    )
    (warning,) = check_inputs(stats, corner.images, what="test images")
    assert warning.startswith("test images are centred at (14.0, 14.0) of 40×40")
