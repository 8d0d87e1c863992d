"""Contract tests for every registered model, and tests of the registry itself.

The contract tests are parametrised over ``list_models()``, so a model registered later is
covered without touching this file.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from deepstart.models import registry
from deepstart.models.registry import (
    ModelError,
    count_parameters,
    create_model,
    create_model_from_arch,
    get_model_info,
    list_models,
    register_model,
)

MODELS = [info.name for info in list_models()]
NUM_CLASSES = 5  # not the registered 10, so a head that ignores num_classes fails
OPTIONAL_SIZE = (16, 16)  # smaller than some architectures may allow; those skip it
MAX_SIDE = 64  # the contract's cap on a model's registered input size, see _contract_size


def _contract_size(info) -> tuple[int, int]:
    """The registered input size, each side capped at MAX_SIDE.

    Models registered for large inputs (the ImageNet ResNets: 224x224) are checked at 64x64:
    their builders take the size and they end in a global pool, so they have the same layers and
    parameters at 64x64 and every check (shapes, gradients, round trips) still covers all of
    them, at a twelfth of the cost.
    """
    h, w = info.input_size
    return min(int(h), MAX_SIDE), min(int(w), MAX_SIDE)


def _cases() -> list:
    cases = []
    for info in list_models():
        sizes = dict.fromkeys([_contract_size(info), (28, 28), (32, 32), OPTIONAL_SIZE])
        for channels in (1, 3):
            for size in sizes:
                tag = f"{info.name}-{channels}x{size[0]}x{size[1]}"
                cases.append(pytest.param(info.name, channels, size, id=tag))
    return cases


def _build(name: str, channels: int, size: tuple[int, int]) -> nn.Module:
    torch.manual_seed(0)
    try:
        return create_model(name, in_channels=channels, num_classes=NUM_CLASSES, input_size=size)
    except ModelError as e:
        if size == OPTIONAL_SIZE and size != _contract_size(get_model_info(name)):
            pytest.skip(f"{name} does not take {size}: {e}")
        raise


def _batch(channels: int, size: tuple[int, int], n: int = 4) -> torch.Tensor:
    # (n, C, H, W) float, roughly normalised like real inputs.
    return torch.randn(n, channels, *size, generator=torch.Generator().manual_seed(1))


def _last_linear(module: nn.Module) -> nn.Linear:
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


# --- the contract every model keeps -------------------------------------------------------


@pytest.mark.parametrize(("name", "channels", "size"), _cases())
def test_forward_shape_and_features_head_split(name, channels, size):
    model = _build(name, channels, size).eval()
    x = _batch(channels, size)
    with torch.no_grad():
        out = model(x)
        f = model.features(x)
        split = model.head(f)
    assert out.shape == (4, NUM_CLASSES)
    assert torch.isfinite(out).all()
    # Conv nets give a feature map (N, C, h, w), dense nets a vector (N, D).
    assert f.ndim in (2, 4) and f.shape[0] == 4
    assert torch.equal(split, out)


@pytest.mark.parametrize(("name", "channels", "size"), _cases())
def test_every_parameter_gets_a_gradient(name, channels, size):
    model = _build(name, channels, size).train()
    x = _batch(channels, size)
    y = torch.arange(4) % NUM_CLASSES
    nn.functional.cross_entropy(model(x), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        # Per tensor, not per element: dropout can zero a whole unit for a small batch.
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", MODELS)
def test_reset_head_changes_outputs_and_keeps_body(name):
    info = get_model_info(name)
    size = _contract_size(info)
    model = _build(name, info.in_channels, size)

    def body_state() -> dict:
        # Everything outside the head module (`classifier` for Net, `fc` for ResNet).
        return {k: v for k, v in model.state_dict().items() if not k.startswith(f"{info.head}.")}

    body_before = {k: v.clone() for k, v in body_state().items()}
    model.reset_head(7)
    model.eval()
    with torch.no_grad():
        out = model(_batch(info.in_channels, size))
    assert out.shape == (4, 7)
    assert _last_linear(getattr(model, info.head)).out_features == 7
    assert model.arch["num_classes"] == 7
    body_after = body_state()
    assert body_before.keys() == body_after.keys()
    for k, v in body_before.items():
        assert torch.equal(v, body_after[k]), f"reset_head changed body weight {k}"


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", MODELS)
def test_arch_round_trip_gives_identical_outputs(name, channels):
    model = _build(name, channels, (28, 28)).eval()
    # The bundle stores arch as JSON, so go through JSON here too.
    arch = json.loads(json.dumps(model.arch))
    assert arch["in_channels"] == channels and arch["input_size"] == [28, 28]
    torch.manual_seed(123)  # different init, so equal outputs come from the loaded weights
    rebuilt = create_model_from_arch(arch).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = _batch(channels, (28, 28))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_safetensors_round_trip_gives_identical_outputs(name, tmp_path):
    info = get_model_info(name)
    size = _contract_size(info)
    model = _build(name, info.in_channels, size)
    # A training step first, so BatchNorm running stats are not their initial values.
    model.train()
    nn.functional.cross_entropy(model(_batch(info.in_channels, size)), torch.arange(4)).backward()
    model.eval()
    path = tmp_path / "weights.safetensors"
    save_file(model.state_dict(), str(path))
    torch.manual_seed(123)
    rebuilt = create_model_from_arch(model.arch).eval()
    rebuilt.load_state_dict(load_file(str(path)))
    x = _batch(info.in_channels, size)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize("name", MODELS)
def test_batch_of_one_in_eval_mode(name):
    info = get_model_info(name)
    size = _contract_size(info)
    model = _build(name, info.in_channels, size).eval()
    x = _batch(info.in_channels, size)
    with torch.no_grad():
        one = model(x[:1])
        four = model(x)
    assert one.shape == (1, NUM_CLASSES)
    # In eval mode BatchNorm uses running stats, so a sample's output is batch-independent.
    torch.testing.assert_close(one, four[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_non_square_input(name):
    model = _build(name, 1, (28, 20)).eval()
    with torch.no_grad():
        assert model(_batch(1, (28, 20))).shape == (4, NUM_CLASSES)


@pytest.mark.parametrize("name", MODELS)
def test_layer_groups_hold_every_parameter_once(name):
    model = _build(name, 3, (32, 32))
    groups = model.layer_groups()
    assert len(groups) >= 2
    seen = [id(p) for group in groups for m in group for p in m.parameters()]
    assert len(seen) == len(set(seen)), "a parameter is in two layer groups"
    assert set(seen) == {id(p) for p in model.parameters()}
    # The last group is the head, so freezing all but it trains only the head.
    head = getattr(model, get_model_info(name).head)
    assert {id(p) for m in groups[-1] for p in m.parameters()} == {id(p) for p in head.parameters()}


@pytest.mark.parametrize("name", MODELS)
def test_unknown_option_is_a_model_error(name):
    with pytest.raises(ModelError, match=name):
        create_model(name, no_such_option=1)


# --- the registry ---------------------------------------------------------------------------


def test_unknown_name_lists_known_models():
    with pytest.raises(ModelError) as e:
        create_model("no_such_model")
    for name in MODELS:
        assert name in str(e.value)


def test_registering_a_name_twice_raises(monkeypatch):
    # Work on a copy so the test's registrations do not leak into other tests.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def tiny(*, in_channels, num_classes, input_size):
        return nn.Linear(1, 1)

    with pytest.raises(ModelError, match="logreg"):
        register_model("logreg")(tiny)
    register_model("test_tiny")(tiny)
    with pytest.raises(ModelError, match="test_tiny"):
        register_model("test_tiny")(tiny)


def test_list_models_is_sorted_and_has_the_core_models():
    names = [info.name for info in list_models()]
    assert names == sorted(names)
    assert {"logreg", "mlp", "mnist_cnn", "keras_cifar_cnn", "vgg_small"} <= set(names)
    for info in list_models():
        assert info.description, f"{info.name} has no description"


@pytest.mark.parametrize(
    ("name", "too_small", "smallest"),
    [
        ("mnist_cnn", (5, 5), (6, 6)),
        ("mnist_cnn", (28, 5), (28, 6)),
        ("keras_cifar_cnn", (9, 9), (10, 10)),
        ("vgg_small", (3, 3), (4, 4)),
        ("logreg", (0, 28), (1, 1)),
        ("mlp", (28, 0), (1, 1)),
    ],
)
def test_too_small_input_is_a_model_error(name, too_small, smallest):
    with pytest.raises(ModelError, match=rf"{name} needs .*got {too_small[0]}x{too_small[1]}"):
        create_model(name, input_size=too_small)
    model = create_model(name, input_size=smallest).eval()
    channels = get_model_info(name).in_channels
    with torch.no_grad():
        assert model(torch.zeros(1, channels, *smallest)).shape == (1, 10)


def _conv(c_in: int, c_out: int, k: int = 3) -> int:
    return c_in * c_out * k * k + c_out


def _dense(d_in: int, d_out: int) -> int:
    return d_in * d_out + d_out


def test_parameter_counts_match_the_references():
    # Keras mnist_cnn summary: 1,199,882; 28 -> 26 -> 24 -> pool 12.
    mnist_cnn = _conv(1, 32) + _conv(32, 64) + _dense(12 * 12 * 64, 128) + _dense(128, 10)
    assert mnist_cnn == 1_199_882
    assert count_parameters(create_model("mnist_cnn")) == mnist_cnn
    assert count_parameters(create_model("logreg")) == _dense(784, 10) == 7_850
    mlp = _dense(784, 512) + _dense(512, 256) + _dense(256, 10)
    assert count_parameters(create_model("mlp")) == mlp
    # keras_cifar_cnn on 3x32x32: 32 -> 32 -> 30 -> 15 -> 15 -> 13 -> 6; the Keras
    # cifar10_cnn example's summary: 1,250,858.
    cifar = _conv(3, 32) + _conv(32, 32) + _conv(32, 64) + _conv(64, 64)
    cifar += _dense(6 * 6 * 64, 512) + _dense(512, 10)
    assert cifar == 1_250_858
    assert count_parameters(create_model("keras_cifar_cnn")) == cifar


def test_vgg_small_drops_blocks_for_small_inputs():
    def features(size):
        model = create_model("vgg_small", input_size=size).eval()
        with torch.no_grad():
            return model.features(torch.zeros(1, 1, *size)).shape

    assert features((32, 32)) == (1, 64, 4, 4)
    assert features((28, 28)) == (1, 64, 3, 3)
    assert features((8, 8)) == (1, 32, 2, 2)
    assert features((4, 4)) == (1, 16, 2, 2)
    # Without BatchNorm the convs keep their biases; the model still runs.
    model = create_model("vgg_small", bn=False, width=8, blocks=2).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_options_round_trip_through_json():
    model = create_model("mlp", hidden=(32, 16), dropout=0.1)
    arch = json.loads(json.dumps(model.arch))
    assert arch["kwargs"] == {"hidden": [32, 16], "dropout": 0.1}
    rebuilt = create_model_from_arch(arch)
    rebuilt.load_state_dict(model.state_dict())
    assert [m.out_features for m in rebuilt.modules() if isinstance(m, nn.Linear)] == [32, 16, 10]


# --- regression models (task="regression"): floats (N, D) -> (N, E) --------------------------

REGRESSION = [info.name for info in list_models("regression")]


def test_list_models_is_scoped_by_task():
    # The default is the image classifiers: everything image-shaped iterates over it.
    assert all(info.task == "classification" for info in list_models())
    assert REGRESSION == ["fit_mlp"]
    everything = {info.name for info in list_models(None)}
    assert everything == set(MODELS) | set(REGRESSION)


@pytest.mark.parametrize("name", REGRESSION)
def test_regression_contract(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, in_features=2, out_features=3)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    out = model(x)
    assert out.shape == (5, 3) and torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{pname} got no gradient"
    arch = json.loads(json.dumps(model.arch))
    assert arch["task"] == "regression" and "in_channels" not in arch
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.manual_seed(123)
    rebuilt = create_model_from_arch(arch)
    rebuilt.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    with pytest.raises(ModelError, match="regression model: it has no num_classes"):
        create_model(name, num_classes=3)
    with pytest.raises(ModelError, match=name):
        create_model(name, no_such_option=1)


@pytest.mark.parametrize(
    "options",
    [
        {"activation": "relu"},
        {"activation": "tanh", "fourier": 4},
        {"activation": "silu", "depth": 0},
        {"activation": "sine", "fourier": 2, "w0": 10.0},
    ],
)
def test_fit_mlp_options_and_scaling(options):
    torch.manual_seed(0)
    model = create_model("fit_mlp", x_range=(-6.0, 2.0), y_range=(10.0, 30.0), **options)
    assert model(torch.linspace(-6, 2, 7)[:, None]).shape == (7, 1)
    # The output layer's [-1, 1] is mapped onto y_range: zero weights give its middle.
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()
        assert torch.equal(model(torch.zeros(3, 1)), torch.full((3, 1), 20.0))
    with pytest.raises(ModelError, match="activation"):
        create_model("fit_mlp", activation="gelu")
    with pytest.raises(ModelError, match="x_range"):
        create_model("fit_mlp", x_range=(1.0, 1.0))


def test_create_model_takes_a_square_side_alone():
    a = create_model("vgg_small", in_channels=1, num_classes=3, input_size=32)
    b = create_model("vgg_small", in_channels=1, num_classes=3, input_size=(32, 32))
    assert a.arch == b.arch
