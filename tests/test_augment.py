import math

import pytest
import torch
from PIL import Image

from deepstart.augment import (
    PRESETS,
    Augmentation,
    View,
    adjust_lighting,
    apply_view,
    flip,
    lighting,
    list_augments,
    make_augment,
    random_resized_crop,
    rotate,
    rotation_matrix,
    scale_matrix,
    warp,
    zoom,
)
from deepstart.data.dataset import Batches, ImageSet
from deepstart.errors import ConfigError
from deepstart.interpret.show_batch import show_batch
from deepstart.models.registry import create_model
from deepstart.train.learner import Learner
from deepstart.train.tta import tta

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _pixels(n=4, c=3, h=8, w=8, seed=0, lo=0, hi=256):
    return torch.randint(lo, hi, (n, c, h, w), generator=_gen(seed), dtype=torch.uint8)


def _normalised(px, mean=MEAN, std=STD):
    """uint8 (N, C, H, W) -> normalised float, as Batches does."""
    c = px.shape[1]
    m, s = torch.tensor(mean).view(1, c, 1, 1), torch.tensor(std).view(1, c, 1, 1)
    return (px.float() / 255 - m) / s


def _to_pixels(x, mean=MEAN, std=STD):
    c = x.shape[1]
    return x * torch.tensor(std).view(1, c, 1, 1) + torch.tensor(mean).view(1, c, 1, 1)


def _ones(n):
    return torch.ones(n)


def _zeros(n):
    return torch.zeros(n)


# -- exact geometry --------------------------------------------------------------------------


def test_identity_parameters_give_the_identity():
    x = _normalised(_pixels())
    n = len(x)
    theta = rotation_matrix(torch.zeros(n), 8, 8) @ scale_matrix(
        _ones(n), _ones(n), _zeros(n), _zeros(n)
    )
    torch.testing.assert_close(warp(x, theta), x, atol=1e-4, rtol=0)
    torch.testing.assert_close(warp(x, theta, mode="nearest"), x)
    same = adjust_lighting(x, _zeros(n), _ones(n), mean=MEAN, std=STD)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    assert Augmentation()(x, _gen()) is x  # an empty spec does nothing at all


def test_flip_mirrors_exactly_and_twice_is_identity():
    x = _normalised(_pixels())
    assert torch.equal(flip(x, _gen(), p=1.0), x.flip(3))
    assert torch.equal(flip(x, _gen(), p=0.0), x)
    assert torch.equal(flip(flip(x, _gen(), p=1.0), _gen(), p=1.0), x)
    # as a matrix (how Augmentation folds it into a warp) it is the same mirror
    n = len(x)
    mirror = scale_matrix(-_ones(n), _ones(n), _zeros(n), _zeros(n))
    assert torch.equal(warp(x, mirror, mode="nearest"), x.flip(3))
    torch.testing.assert_close(warp(x, mirror), x.flip(3), atol=1e-4, rtol=0)


def test_rotation_by_90_degrees_is_rot90():
    x = _normalised(_pixels(h=6, w=6))
    n = len(x)
    ccw = rotation_matrix(torch.full((n,), 90.0), 6, 6)
    cw = rotation_matrix(torch.full((n,), -90.0), 6, 6)
    assert torch.equal(warp(x, ccw, mode="nearest"), torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(warp(x, cw, mode="nearest"), torch.rot90(x, -1, dims=(2, 3)))
    torch.testing.assert_close(warp(x, ccw), torch.rot90(x, 1, dims=(2, 3)), atol=1e-4, rtol=0)
    # a true rotation in pixels on a non-square image too: 180 degrees turns it upside down
    y = _normalised(_pixels(h=5, w=9))
    half_turn = rotation_matrix(torch.full((len(y),), 180.0), 5, 9)
    torch.testing.assert_close(warp(y, half_turn), y.flip(2, 3), atol=1e-4, rtol=0)


def test_crop_matrix_takes_the_asked_part():
    x = _normalised(_pixels(h=8, w=8))
    n = len(x)
    half = torch.full((n,), 0.5)
    # width/height fractions 0.5, centre at (-0.5, -0.5): the top-left quarter, 2x nearest
    top_left = scale_matrix(half, half, -half, -half)
    expected = x[:, :, :4, :4].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.equal(warp(x, top_left, mode="nearest"), expected)


def test_zeros_padding_is_black_in_pixels_and_reflection_stays_in_range():
    x = _normalised(_pixels())
    n = len(x)
    away = scale_matrix(_ones(n), _ones(n), torch.full((n,), 4.0), _zeros(n))  # all outside
    out = warp(x, away, padding="zeros", mean=MEAN, std=STD)
    torch.testing.assert_close(_to_pixels(out), torch.zeros_like(out), atol=1e-6, rtol=0)
    aug = make_augment(Augmentation(degrees=30, zoom=(0.7, 1.3), shift=0.2), MEAN, STD)
    px = _to_pixels(aug(x, _gen()))
    assert px.min() >= -1e-5 and px.max() <= 1 + 1e-5
    # digits: black comes in from outside, so a black image stays black
    black = _normalised(torch.zeros(8, 3, 8, 8, dtype=torch.uint8))
    digits = make_augment("digits", MEAN, STD)
    torch.testing.assert_close(
        _to_pixels(digits(black, _gen())), torch.zeros(8, 3, 8, 8), atol=1e-5, rtol=0
    )


# -- lighting on normalised inputs -------------------------------------------------------------


def test_lighting_changes_pixel_brightness_and_contrast_by_the_asked_amount():
    x = _normalised(_pixels(lo=80, hi=176))  # pixels in [0.31, 0.69]: no clamping below
    n = len(x)
    b = torch.tensor([0.1, -0.1, 0.2, 0.0])
    brighter = adjust_lighting(x, b, _ones(n), mean=MEAN, std=STD)
    delta = _to_pixels(brighter) - _to_pixels(x)  # (N, C, H, W) in pixel units
    torch.testing.assert_close(delta, b.view(-1, 1, 1, 1).expand_as(delta), atol=1e-5, rtol=0)
    c = torch.tensor([1.5, 0.5, 1.0, 1.2])
    contrasted = _to_pixels(adjust_lighting(x, _zeros(n), c, mean=MEAN, std=STD))
    p = _to_pixels(x)
    torch.testing.assert_close(contrasted.mean(dim=(1, 2, 3)), p.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(contrasted.std(dim=(1, 2, 3)), c * p.std(dim=(1, 2, 3)))
    # clamped to valid pixels
    white = _to_pixels(adjust_lighting(x, torch.full((n,), 1.0), _ones(n), mean=MEAN, std=STD))
    torch.testing.assert_close(white, torch.ones_like(white))
    # the random version draws within its range
    out = _to_pixels(lighting(x, _gen(), brightness=0.1, contrast=0.0, mean=MEAN, std=STD)) - p
    shift = out.mean(dim=(1, 2, 3))
    assert bool((shift.abs() <= 0.1 + 1e-5).all()) and shift.unique().numel() == n


# -- randomness --------------------------------------------------------------------------------


def test_seeded_deterministic_and_differs_across_seeds():
    x = _normalised(_pixels(n=8, h=16, w=16))
    aug = make_augment("photo", MEAN, STD)
    assert torch.equal(aug(x, _gen(3)), aug(x, _gen(3)))
    assert not torch.equal(aug(x, _gen(3)), aug(x, _gen(4)))


def test_each_image_gets_its_own_parameters():
    x = _normalised(_pixels(n=1, h=16, w=16)).expand(8, -1, -1, -1).contiguous()
    for name in ("photo", "digits", "cifar"):
        out = make_augment(name, MEAN, STD)(x, _gen())
        flat = out.flatten(1)
        assert all(not torch.equal(flat[0], flat[i]) for i in range(1, 8)), name
    theta = PRESETS["photo"].sample_theta(8, 16, 16, _gen())
    assert theta.shape == (8, 3, 3) and theta[:, :2].flatten(1).unique(dim=0).shape[0] == 8


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_keep_shape_dtype_device_and_memory_format(name):
    x = _normalised(_pixels(n=5, h=12, w=10))
    aug = make_augment(name, MEAN, STD)
    if name == "none":
        assert aug is None
        return
    out = aug(x, _gen())
    assert (out.shape, out.dtype, out.device) == (x.shape, x.dtype, x.device)
    cl = aug(x.contiguous(memory_format=torch.channels_last), _gen())
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, out)


def test_presets_listed_and_digits_never_flips():
    assert set(list_augments()) == set(PRESETS) >= {"none", "flip", "photo", "digits"}
    assert not PRESETS["digits"].flip and PRESETS["digits"].padding == "zeros"
    assert PRESETS["photo"].padding == "reflection"

    # a mirror has a negative determinant; rotations, zooms, shifts and crops do not
    def dets(name):
        theta = PRESETS[name].sample_theta(2000, 28, 28, _gen())
        return torch.linalg.det(theta[:, :2, :2])

    assert bool((dets("digits") > 0).all())
    photo = dets("photo")
    assert 0.4 < float((photo < 0).double().mean()) < 0.6


def test_single_transforms_and_spec_checks():
    x = _normalised(_pixels(n=4, h=16, w=16))
    for out in (
        random_resized_crop(x, _gen(), scale=(0.3, 0.6)),
        rotate(x, _gen(), 20, padding="zeros", mean=MEAN, std=STD),
        zoom(x, _gen(), (1.1, 1.3)),
    ):
        assert out.shape == x.shape and not torch.equal(out, x)
    spec = Augmentation(flip=True, crop_scale=(0.5, 1.0), degrees=5, padding="border")
    assert Augmentation.from_dict(spec.to_dict()) == spec
    assert make_augment(spec.to_dict(), MEAN, STD) is not None
    with pytest.raises(ConfigError, match="unknown augmentation"):
        make_augment("mirror", MEAN, STD)
    with pytest.raises(ConfigError, match="padding"):
        Augmentation(padding="wrap")
    with pytest.raises(ConfigError, match="crop_scale"):
        Augmentation(crop_scale=(0.5, 1.5))


# -- in Batches --------------------------------------------------------------------------------


def _photo_set(n=40, k=4):
    return ImageSet(_pixels(n=n, h=12, w=12, seed=1), torch.arange(n) % k, list("abcd"))


def test_batches_labels_unaffected_and_epochs_differ():
    s = _photo_set()
    kw = dict(mean=MEAN, std=STD, shuffle=True, seed=2)
    plain = Batches(s, 8, **kw)
    aug = Batches(s, 8, augment=make_augment("photo", MEAN, STD), **kw)
    for (xp, yp), (xa, ya) in zip(plain, aug, strict=True):
        assert torch.equal(yp, ya) and not torch.equal(xp, xa)
    aug.set_epoch(0)
    e0 = [x for x, _ in aug]
    aug.set_epoch(1)
    e1 = [x for x, _ in aug]
    assert not torch.equal(e0[0], e1[0])


def _mirrored(batches, images, epoch):
    """{label: mirrored?} for one pass (each image's label is its index)."""
    batches.set_epoch(epoch)
    out = {}
    for x, y in batches:
        plain = batches.normalize(images[y])
        for xi, pi, yi in zip(x, plain, y, strict=True):
            assert torch.equal(xi, pi) or torch.equal(xi, pi.flip(2))
            out[int(yi)] = not torch.equal(xi, pi)
    return out


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    n = 64
    images = _pixels(n=n, h=6, w=6, seed=3)
    s = ImageSet(images, torch.arange(n), [str(i) for i in range(n)])
    aug = make_augment("cifar-alt", MEAN, STD)
    assert aug.alternate_flip and not make_augment("cifar", MEAN, STD).alternate_flip
    flips_only = make_augment(Augmentation(flip=True, alternate_flip=True), MEAN, STD)
    b = Batches(s, 16, mean=MEAN, std=STD, shuffle=True, seed=5, augment=flips_only)
    e0, e1, e2, e3 = (_mirrored(b, images, e) for e in range(4))
    assert 20 <= sum(e0.values()) <= 44  # a random half, fixed by the seed
    assert all(e0[i] != e1[i] for i in range(n))  # every image both ways in two epochs
    assert e0 == e2 and e1 == e3
    other = Batches(s, 16, mean=MEAN, std=STD, shuffle=True, seed=6, augment=flips_only)
    assert _mirrored(other, images, 0) != e0
    # Restarting mid-epoch (a restore) replays the same flips.
    b.set_epoch(1)
    full = list(b)
    b.set_epoch(1, start=2)
    for (x, _), (xf, _) in zip(list(b), full[2:], strict=True):
        assert torch.equal(x, xf)
    # Outside Batches (no flips given) it is a coin per image, as with flip alone.
    x = torch.randn(200, 3, 4, 4)
    out = flips_only(x, _gen(0))
    mirrored = [not torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert 70 <= sum(mirrored) <= 130
    with pytest.raises(ConfigError, match="alternate_flip"):
        Augmentation(alternate_flip=True)


def test_batches_restart_from_batch_k_replays_the_same_augmentations():
    s = _photo_set()
    b = Batches(
        s, 8, mean=MEAN, std=STD, shuffle=True, seed=2, augment=make_augment("photo", MEAN, STD)
    )
    b.set_epoch(3)
    full = list(b)
    for start in (1, 3):
        b.set_epoch(3, start=start)
        rest = list(b)
        assert len(rest) == len(full) - start
        for (x, y), (xf, yf) in zip(rest, full[start:], strict=True):
            assert torch.equal(y, yf)
            assert torch.equal(x, xf)
    assert Batches.augment_seed(0, 1, 2) == Batches.augment_seed(0, 1, 2)
    assert (
        len({Batches.augment_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)})
        == 450
    )


# -- test-time augmentation ----------------------------------------------------------------------


@pytest.fixture
def trained(toy_data):
    torch.manual_seed(0)
    model = create_model("logreg", in_channels=1, num_classes=3, input_size=toy_data.size)
    learn = Learner(toy_data, model, batch_size=32, device="cpu", seed=0, log=lambda m: None)
    learn.fit(2, 1e-2)
    return learn


def test_tta_with_no_copies_is_the_plain_evaluation(trained):
    plain = trained.evaluate("test")
    out = tta(trained, "test", n=0)
    assert out["accuracy"] == plain["accuracy"]
    assert out["per_class"] == plain["per_class"]
    assert out["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert out["n"] == plain["n"] and out["chance_bits"] == plain["chance_bits"]
    assert torch.allclose(tta(trained, "test", n=3, beta=1.0)["probs"], out["probs"], atol=1e-6)


def test_tta_averages_probabilities_and_is_seeded(trained):
    out = tta(trained, "test", n=3, augment="flip", seed=1)
    probs = out["probs"]
    assert probs.shape == (out["n"], 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(probs)))
    assert 0.0 <= out["accuracy"] <= 1.0 and math.isfinite(out["loss"])
    assert torch.equal(tta(trained, "test", n=3, augment="flip", seed=1)["probs"], probs)
    assert not torch.equal(tta(trained, "test", n=3, augment="digits", seed=1)["probs"], probs)
    assert torch.equal(out["pred"], probs.argmax(1))
    trained.model.train()
    tta(trained, "valid", n=1)
    assert trained.model.training  # put back as it was
    with pytest.raises(ConfigError, match="needs an augmentation"):
        tta(trained, n=2, augment="none")


# -- show_batch ------------------------------------------------------------------------------------


def test_show_batch_writes_a_png(tmp_path, toy_data):
    path = show_batch(toy_data.train, "digits", tmp_path / "grey.png", n=6, per_row=3, seed=1)
    with Image.open(path) as im:
        im.verify()
    s = _photo_set()
    path = show_batch(s, "photo", tmp_path / "rgb.png", n=8, mean=MEAN, std=STD, title="photo")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_whole_pixel_shifts_move_pixels_exactly_by_integers():
    """The cifar preset shifts by whole pixels: each augmented image is its original moved
    by an integer (dx, dy) in -2..2 (and maybe mirrored), every pixel value kept exactly."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=g)
    aug = Augmentation(flip=True, shift=0.0625, whole_pixels=True)
    out = aug(x, torch.Generator().manual_seed(1))
    seen = set()
    for a, b in zip(x, out, strict=True):
        found = None
        for img, flipped in ((a, False), (a.flip(2), True)):
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    # Compare the interior, which comes from inside the image for any shift.
                    moved = img[:, 2 - dy : 30 - dy, 2 - dx : 30 - dx]
                    if torch.equal(b[:, 2:30, 2:30], moved):
                        found = (dx, dy, flipped)
        assert found is not None
        seen.add(found)
    assert len({(dx, dy) for dx, dy, _ in seen}) >= 15  # the 25 offsets are all reachable
    assert {f for _, _, f in seen} == {True, False}


def test_whole_pixels_refuses_warps_that_resample():
    with pytest.raises(ConfigError):
        Augmentation(degrees=5, shift=0.1, whole_pixels=True)


# -- fixed test-time views ---------------------------------------------------------------------


def test_fixed_views_exist_only_for_mirrors_and_whole_pixel_shifts():
    flip_views = PRESETS["flip"].views(32, 32)
    assert flip_views == [View(False, 0, 0, 0.5), View(True, 0, 0, 0.5)]
    cifar = PRESETS["cifar"].views(32, 32)
    assert len(cifar) == 6 and math.isclose(sum(v.weight for v in cifar), 1.0)
    # the unshifted pair carries half the weight, one-pixel diagonal shifts the other half
    assert sum(v.weight for v in cifar if (v.dx, v.dy) == (0, 0)) == 0.5
    assert {(v.mirror, v.dx, v.dy) for v in cifar if v.dx} == {
        (m, d, d) for m in (False, True) for d in (1, -1)
    }
    # too small to shift a whole pixel: the mirrors only
    assert PRESETS["cifar"].views(8, 8) == flip_views
    # anything that resamples or relights has no fixed set
    for name in ("digits", "photo"):
        assert PRESETS[name].views(32, 32) is None
    assert Augmentation(shift=0.1).views(32, 32) is None  # sub-pixel shifts
    assert Augmentation(flip=True, brightness=0.1).views(32, 32) is None
    assert Augmentation().views(32, 32) is None  # nothing to vary


def test_apply_view_mirrors_and_shifts_by_whole_pixels():
    x = torch.rand(3, 2, 16, 16, generator=_gen(0))
    assert torch.equal(apply_view(x, View(True, 0, 0, 1.0)), x.flip(3))
    assert torch.equal(apply_view(x, View(False, 0, 0, 1.0)), x)
    a = apply_view(x, View(False, 1, 1, 1.0))
    b = apply_view(x, View(False, -1, -1, 1.0))
    # one view moves the picture by (+1, +1), the other by (-1, -1); interiors exactly
    s = 1 if torch.equal(a[..., 1:15, 1:15], x[..., 2:16, 2:16]) else -1
    assert torch.equal(a[..., 1:15, 1:15], x[..., 1 + s : 15 + s, 1 + s : 15 + s])
    assert torch.equal(b[..., 1:15, 1:15], x[..., 1 - s : 15 - s, 1 - s : 15 - s])
    # the rim is filled by the padding asked for, as in training (reflection: a real pixel)
    m = apply_view(x, View(True, 1, 1, 1.0))
    assert torch.equal(m[..., 1:15, 1:15], x.flip(3)[..., 1 + s : 15 + s, 1 + s : 15 + s])


def test_tta_default_mixes_the_fixed_views(trained):
    out = tta(trained, "test", augment="flip")
    assert out["tta"]["views"] == [[False, 0, 0, 0.5], [True, 0, 0, 0.5]]
    # the same mix by hand: the mean of the plain and mirrored probabilities
    trained.model.eval()
    images = trained.data.test
    with torch.no_grad():
        want = torch.cat(
            [
                (trained.model(x).softmax(1) + trained.model(x.flip(3)).softmax(1)) / 2
                for x, _ in trained.batches(images)
            ]
        )
    torch.testing.assert_close(out["probs"], want, atol=1e-5, rtol=1e-5)
    assert out["accuracy"] == float((want.argmax(1) == images.labels).double().mean())
    # the plain view's probabilities, passed in, stand for a pass over the plain images
    plain = trained.evaluate("test", probs=True)["probs"]
    reused = tta(trained, "test", augment="cifar", plain=plain)
    torch.testing.assert_close(reused["probs"], tta(trained, "test", augment="cifar")["probs"])
    with pytest.raises(ConfigError, match="plain has shape"):
        tta(trained, "test", augment="flip", plain=plain[:3])
    # an augmentation without fixed views falls back to fastai's random copies
    digits = tta(trained, "test", augment="digits")
    assert digits["tta"]["views"] == "random" and digits["tta"]["n"] == 4
    assert torch.equal(digits["probs"], tta(trained, "test", n=4, augment="digits")["probs"])
    # n given: random copies even where fixed views exist
    assert tta(trained, "test", n=2, augment="flip")["tta"]["views"] == "random"
