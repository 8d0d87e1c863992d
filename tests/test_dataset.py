import pytest
import torch

from deepstart.data.dataset import (
    Batches,
    DataError,
    ImageSet,
    Preprocess,
    conform_images,
    epoch_permutation,
    make_dataset,
    resize_batch,
)


def _set(n=100, k=4, c=1, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % k
    return ImageSet(images, labels, [f"c{i}" for i in range(k)])


def test_imageset_validates():
    with pytest.raises(DataError, match="uint8"):
        ImageSet(torch.zeros(2, 1, 4, 4), torch.zeros(2), ["a"])
    with pytest.raises(DataError, match="3 images but 2 labels"):
        ImageSet(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.zeros(2), ["a"])


def test_split_is_stratified_disjoint_and_seeded():
    s = _set(n=200, k=4)
    tr, va = s.split(0.1, seed=3)
    assert len(tr) + len(va) == 200
    assert va.class_counts() == [5, 5, 5, 5]
    _, va2 = s.split(0.1, seed=3)
    assert torch.equal(va.images, va2.images)
    _, va3 = s.split(0.1, seed=4)
    assert not torch.equal(va.images, va3.images)
    # no item is in both
    flat = {bytes(x.flatten().tolist()) for x in tr.images}
    assert not any(bytes(x.flatten().tolist()) in flat for x in va.images)


def test_mean_std_exact():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    s = ImageSet(images, torch.tensor([0, 1]), ["a", "b"])
    mean, std = s.mean_std()
    assert mean == [0.5]
    assert std == [0.5]


def test_make_dataset_splits_and_notes():
    tr, te = _set(100), _set(20, seed=1)
    d = make_dataset("x", tr, te, valid_pct=0.2)
    assert (len(d.train), len(d.valid), len(d.test)) == (80, 20, 20)
    d0 = make_dataset("x", tr, te, valid_pct=0)
    assert d0.valid is te and "not a clean test" in d0.notes[0]
    # mean/std come from the train split only
    assert d.mean == d.train.mean_std()[0]


def test_batches_normalise_exactly_and_cover_everything():
    s = _set(n=10, k=2)
    b = Batches(s, 4, mean=[0.5], std=[0.25])
    xs = list(b)
    assert [len(x) for x, _ in xs] == [4, 4, 2]
    x = torch.cat([x for x, _ in xs])
    expected = (s.images.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected)
    assert torch.equal(torch.cat([y for _, y in xs]), s.labels)


def test_batches_shuffle_per_epoch_is_seeded():
    s = _set(n=64, k=4)
    b = Batches(s, 16, mean=[0], std=[1], shuffle=True, drop_last=True, seed=5)
    b.set_epoch(0)
    e0 = torch.cat([y for _, y in b])
    b.set_epoch(1)
    e1 = torch.cat([y for _, y in b])
    b.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in b]), e0)
    assert not torch.equal(epoch_permutation(64, 5, 0), epoch_permutation(64, 5, 1))
    assert sorted(e1.tolist()) == sorted(s.labels.tolist())


def test_conform_channels_and_sizes():
    s = _set(n=3, c=1, h=10, w=20)
    rgb = conform_images(s, Preprocess((10, 20), 3, (0, 0, 0), (1, 1, 1)))
    assert rgb.images.shape == (3, 3, 10, 20)
    assert torch.equal(rgb.images[:, 0], s.images[:, 0])
    grey = conform_images(rgb, Preprocess((10, 20), 1, (0,), (1,)))
    assert torch.equal(grey.images, s.images)
    ones = torch.full((1, 1, 10, 20), 200, dtype=torch.uint8)
    padded = resize_batch(ones, (20, 20), "pad")
    assert padded.shape == (1, 1, 20, 20)
    assert padded[0, 0, 0, 0] == 0 and padded[0, 0, 10, 10] == 200
    cropped = resize_batch(ones, (20, 20), "crop")
    assert cropped.shape == (1, 1, 20, 20) and bool((cropped == 200).all())
    squished = resize_batch(ones, (5, 5), "squish")
    assert squished.shape == (1, 1, 5, 5) and bool((squished == 200).all())
