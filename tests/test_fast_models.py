"""The speed-tuned models (fast_mnist, fast_cifar) beyond the registry contract tests.

tests/test_models.py runs the shared contract over every registered model, these included;
here: patch whitening, options, sizes, channels_last, and a convergence smoke test.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from deepstart.models.fast import FastNet, PatchWhitening
from deepstart.models.registry import ModelError, create_model, create_model_from_arch
from deepstart.models.summary import summarize
from deepstart.train.learner import Learner


def _correlated_images(n: int = 64, size: int = 16, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) images whose channels and neighbouring pixels are correlated."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, size + 1, size + 1, generator=g)
    smooth = (base[..., 1:, 1:] + base[..., :-1, :-1] + base[..., 1:, :-1]) / 3
    mix = torch.tensor([1.0, 0.8, 0.5]).view(1, 3, 1, 1)
    return smooth * mix + 0.1 * torch.randn(n, 3, size, size, generator=g)


def test_whitening_decorrelates_the_patches_it_was_fitted_on():
    x = _correlated_images()
    white = PatchWhitening(3, eps=1e-6)
    assert white.out_channels == 24 and not bool(white.fitted)
    white.train()
    y = white(x)  # the first training batch fits it
    assert bool(white.fitted) and y.shape == (64, 24, 15, 15)
    # The first 12 channels are the whitened patch coordinates: covariance ~ identity.
    z = y[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(z.T)
    torch.testing.assert_close(cov, torch.eye(12), atol=2e-3, rtol=0)
    # ... and the other 12 are their negatives
    torch.testing.assert_close(y[:, 12:], -y[:, :12])
    # fitted once: a second batch does not refit it
    before = white.weight.clone()
    white(_correlated_images(seed=1))
    assert torch.equal(white.weight, before)


def test_whitening_is_not_fitted_in_eval_mode_and_is_saved(tmp_path):
    white = PatchWhitening(1).eval()
    white(torch.randn(4, 1, 8, 8))
    assert not bool(white.fitted) and white.weight.abs().sum() == 0
    # Its filters are buffers (fitted, not learned); only the bias is a parameter.
    assert [n for n, _ in white.named_parameters()] == ["bias"]
    assert {"weight", "fitted"} <= set(white.state_dict())


def test_fitted_whitening_round_trips_through_safetensors(tmp_path):
    torch.manual_seed(0)
    model = create_model("fast_cifar", in_channels=3, num_classes=10, input_size=(32, 32))
    model.train()(_correlated_images(8, 32))
    model.eval()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    rebuilt = create_model_from_arch(json.loads(json.dumps(model.arch))).eval()
    rebuilt.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    white = rebuilt.body[0][0]
    assert isinstance(white, PatchWhitening) and bool(white.fitted)
    x = _correlated_images(4, 32, seed=2)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_whitening_fits_in_fp32_under_bf16_autocast():
    white = PatchWhitening(3).train()
    x = _correlated_images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        white(x)
    reference = PatchWhitening(3).train()
    reference(x)
    torch.testing.assert_close(white.weight, reference.weight)


@pytest.mark.parametrize(
    ("name", "channels", "size", "features"),
    [
        ("fast_mnist", 1, (28, 28), (128, 3, 3)),
        ("fast_mnist", 1, (32, 32), (128, 4, 4)),
        ("fast_cifar", 3, (32, 32), (256, 3, 3)),  # whitening 2x2 takes a pixel: 31, 15, 7, 3
        ("fast_cifar", 3, (28, 28), (256, 3, 3)),
    ],
)
def test_feature_map_sizes(name, channels, size, features):
    model = create_model(name, in_channels=channels, input_size=size).eval()
    with torch.no_grad():
        assert model.features(torch.zeros(2, channels, *size)).shape == (2, *features)


@pytest.mark.parametrize(
    ("name", "too_small", "smallest"),
    [("fast_mnist", (7, 7), (8, 8)), ("fast_cifar", (8, 8), (9, 9))],
)
def test_too_small_input_is_a_model_error(name, too_small, smallest):
    with pytest.raises(ModelError, match=rf"{name} needs input at least"):
        create_model(name, input_size=too_small)
    model = create_model(name, input_size=smallest).eval()
    channels = model.arch["in_channels"]
    with torch.no_grad():
        assert model(torch.zeros(1, channels, *smallest)).shape == (1, 10)


def test_options_shape_the_net():
    lean = create_model("fast_cifar", widths=[8, 16, 32, 64], extra=0, whiten=False, act="relu")
    convs = [m for m in lean.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64]
    assert not any(isinstance(m, (PatchWhitening, nn.GELU)) for m in lean.modules())
    deep = create_model("fast_cifar", extra=1)
    assert len([m for m in deep.modules() if isinstance(m, nn.Conv2d)]) == 6  # 3 blocks x 2
    with pytest.raises(ModelError, match="act"):
        create_model("fast_mnist", act="tanh")
    with pytest.raises(ModelError, match="widths"):
        create_model("fast_mnist", widths=[32])
    # mult-adds fall with the widths: what the recipes trade for speed
    macs = summarize(create_model("fast_mnist"), (1, 28, 28)).macs
    narrow = create_model("fast_mnist", widths=[8, 16, 32, 64])
    assert summarize(narrow, (1, 28, 28)).macs < macs / 3


def test_channels_last_gives_the_same_function():
    torch.manual_seed(0)
    plain = create_model("fast_mnist", widths=[8, 16, 16, 32], channels_last=False).eval()
    torch.manual_seed(0)
    nhwc = create_model("fast_mnist", widths=[8, 16, 16, 32], channels_last=True).eval()
    nhwc.load_state_dict(plain.state_dict())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        f = nhwc.features(x)
        assert f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous()
        assert plain.features(x).is_contiguous()
        torch.testing.assert_close(nhwc(x), plain(x), rtol=1e-4, atol=1e-5)


def test_space_to_depth_folds_pixels_into_channels():
    torch.manual_seed(0)
    model = create_model("fast_mnist", widths=[8, 16, 16, 32], space_to_depth=2).eval()
    stem = model.body[0][0]
    assert (stem.in_channels, stem.out_channels) == (4, 8)  # 1 channel x 2 x 2
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        f = model.features(x)
        assert f.shape == (3, 32, 1, 1)  # 28 -> 14, then three pools: 7, 3, 1
        # the stem sees each 2x2 patch as 4 channels: the same as convolving the folded input
        folded = F.pixel_unshuffle(x, 2)
        assert folded[0, :, 0, 0].tolist() == x[0, 0, :2, :2].flatten().tolist()
        unfolded = create_model("fast_mnist", in_channels=4, input_size=(14, 14),
                                widths=[8, 16, 16, 32]).eval()  # fmt: skip
        unfolded.load_state_dict(model.state_dict())  # the same weights, the same keys
        torch.testing.assert_close(unfolded(folded), model(x))
    # no layer runs at 28x28: the mult-adds fall by more than the folded stem adds
    macs = summarize(create_model("fast_mnist", widths=[8, 16, 16, 32]), (1, 28, 28)).macs
    assert summarize(model, (1, 28, 28)).macs < macs / 3
    with pytest.raises(ModelError, match="must divide the input size"):
        create_model("fast_mnist", space_to_depth=3)  # 28 is not a multiple of 3
    with pytest.raises(ModelError, match="at least 16x16"):
        create_model("fast_mnist", space_to_depth=2, input_size=(14, 14))
    with pytest.raises(ModelError, match="whole number"):
        create_model("fast_mnist", space_to_depth=0)


def test_logits_are_scaled():
    torch.manual_seed(0)
    one = create_model("fast_mnist", logit_scale=1.0).eval()
    torch.manual_seed(0)
    ninth = create_model("fast_mnist", logit_scale=1 / 9).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ninth(x), one(x) / 9)
    assert isinstance(ninth, FastNet) and isinstance(ninth.classifier[2], nn.Linear)


def test_dirac_convs_start_as_the_identity_on_their_input_channels():
    torch.manual_seed(0)
    model = create_model("fast_cifar", widths=[8, 16, 32, 32], extra=1, dirac=True)
    convs = [m for m in model.body.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (24, 16),
        (16, 16),
        (16, 32),
        (32, 32),
        (32, 32),
        (32, 32),
    ]
    for conv in convs:
        w = conv.weight.detach()
        k = min(conv.in_channels, conv.out_channels)
        identity = torch.zeros(k, conv.in_channels, 3, 3)
        identity[range(k), range(k), 1, 1] = 1.0
        assert torch.equal(w[:k], identity)  # filter i passes channel i through unchanged
        if conv.out_channels > k:  # the rest keep their random (Kaiming) start
            assert w[k:].std() > 0.01
        x = torch.randn(2, conv.in_channels, 5, 5)
        torch.testing.assert_close(F.conv2d(x, w, padding=1)[:, :k], x[:, :k])
    torch.manual_seed(0)  # off by default
    plain = create_model("fast_cifar", widths=[8, 16, 32, 32], extra=1)
    assert (plain.body[2][0].weight[:16, :, 1, 1] == torch.eye(16)).float().mean() < 0.5


def test_batchnorm_without_a_scale_and_with_its_own_momentum():
    torch.manual_seed(0)
    model = create_model("fast_cifar", widths=[8, 16, 16, 16], bn_scale=False, bn_momentum=0.4)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6 and all(m.weight is None and m.momentum == 0.4 for m in norms)
    assert not any(k.endswith(".weight") and "body.1.2" in k for k in model.state_dict())
    x = torch.randn(4, 16, 5, 5) * 3 + 1
    bn = norms[1]
    out = bn.train()(x)  # normalised, shifted by the bias, not scaled
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), bn.bias.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(bn.running_mean, 0.4 * x.mean(dim=(0, 2, 3)))
    with pytest.raises(ModelError, match="bn_momentum"):
        create_model("fast_cifar", bn_momentum=0.0)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("fast_mnist", {"widths": [8, 16, 16, 32]}),
        ("fast_cifar", {"widths": [8, 16, 16, 32], "extra": 0}),
        ("fast_cifar", {"widths": [8, 16, 16, 32], "extra": 1, "dirac": True, "bn_scale": False}),
    ],
)
def test_converges_on_tiny_data(toy_data, name, options):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=3, input_size=(16, 16), **options)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    learn = Learner(toy_data, model, batch_size=32, lr=5e-3, seed=0, log=lambda m: None)
    learn.fit_one_cycle(4)
    losses = [row["train_loss"] for row in learn.recorder.history]
    assert losses[-1] < losses[0] * 0.6
    assert learn.evaluate()["accuracy"] >= 0.9
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, start[k])]
    assert any("classifier" in k for k in changed) and any("body" in k for k in changed)
    with torch.no_grad():
        x = torch.randn(2, 1, 16, 16)
        assert torch.isfinite(F.softmax(model.eval()(x), dim=1)).all()
