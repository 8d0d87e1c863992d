"""The end of a spec or Sequential decides the output (a last dense with one unit per class is
the output layer), and Sequential's layers take Keras's arguments and names, refuse Keras's
channels-last shapes, and report errors in terms of the layers the user wrote."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import deepstart
from deepstart import Learner, load_dataset
from deepstart.models.registry import ModelError, create_model, create_model_from_arch
from deepstart.models.sequential import (
    Activation,
    AveragePooling2D,
    BatchNormalization,
    Conv,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    LayerError,
    MaxPooling2D,
    Pool,
    Sequential,
)
from deepstart.models.spec import SpecError


def _types(module: nn.Module) -> list[str]:
    return [type(m).__name__ for m in module]


def _linears(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


# --- the last layer decides the output ----------------------------------------------------

ISSUE_SPEC = "conv16-bn-relu-pool-conv32-bn-relu-pool-gap-dense3"


def test_a_last_dense_with_one_unit_per_class_is_the_output_layer():
    net = create_model(ISSUE_SPEC, in_channels=1, num_classes=3, input_size=(32, 32))
    # Before: Linear 32->3, ReLU, Linear 3->3 (a ReLU on the logits and a second head).
    assert _types(net.classifier) == ["AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert _linears(net) == [(32, 3)]
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    assert net.output_token is not None and net.output_token.text == "dense3"


def test_a_last_dense_of_another_width_gets_the_head_with_no_activation_added():
    net = create_model(ISSUE_SPEC, in_channels=1, num_classes=10, input_size=(32, 32))
    assert _types(net.classifier) == ["AdaptiveAvgPool2d", "Flatten", "Linear", "Linear"]
    assert _linears(net) == [(32, 3), (3, 10)]
    # An activation the spec writes is kept: dense3-relu is a hidden layer with its ReLU.
    net = create_model(ISSUE_SPEC + "-relu", num_classes=3, input_size=(32, 32))
    assert _types(net.classifier)[2:] == ["Linear", "ReLU", "Linear"]


@pytest.mark.parametrize("end", ["dense4", "dense4-linear", "dense4-softmax"])
def test_a_dense_only_spec_ending_on_the_output_layer_has_one_linear(end):
    net = create_model(f"flat-{end}", num_classes=4, input_size=(8, 8))
    assert _types(net.body) == ["Flatten"] and _types(net.classifier) == ["Linear"]
    assert not any(isinstance(m, nn.Softmax) for m in net.modules())
    assert net.features(torch.zeros(1, 1, 8, 8)).shape == (1, 64)


@pytest.mark.parametrize(
    ("spec", "marked", "message"),
    [
        ("flat-dense4-softmax", "dense4-softmax", "there are 3 classes, this layer has 4 units"),
        ("flat-softmax-dense3", "softmax", "softmax can only end the model"),
        ("conv8-gap-softmax", "softmax", "right after the output dense"),
    ],
)
def test_softmax_anywhere_but_after_the_output_dense_is_refused(spec, marked, message):
    with pytest.raises(SpecError, match=message) as e:
        create_model(spec, num_classes=3, input_size=(8, 8))
    assert e.value.spec[e.value.start : e.value.start + e.value.length] == marked


def test_reset_head_rewrites_the_output_dense_and_refuses_an_ambiguous_spec():
    net = create_model("conv8-gap-dense3", num_classes=3, input_size=(8, 8))
    net.reset_head(5)
    assert net.arch["kwargs"]["spec"] == net.spec == "conv8-gap-dense5"
    assert _linears(create_model_from_arch(net.arch)) == _linears(net) == [(8, 5)]
    # dense3 as a hidden layer with a 10-way head cannot become "3 classes": the spec
    # "...-dense3" for 3 classes means dense3 is the output, another model.
    hidden = create_model("conv8-gap-dense3", num_classes=10, input_size=(8, 8))
    with pytest.raises(ModelError, match="build the spec for 3 classes"):
        hidden.reset_head(3)


# --- Sequential: what the user wrote --------------------------------------------------------


def test_flatten_dense10_on_mnist_is_one_linear_layer():
    model = Sequential([Flatten(), Dense(10)], input_shape=(1, 28, 28))
    assert _linears(model) == [(784, 10)]
    assert not any(isinstance(m, (nn.ReLU, nn.Softmax)) for m in model.modules())
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_keras_mnist_mlp_with_softmax_is_understood():
    model = Sequential(
        [
            Flatten(input_shape=(28, 28)),  # Keras's (H, W): one channel
            Dense(128, activation="relu"),
            Dropout(0.2),
            Dense(10, activation="softmax"),
        ]
    )
    assert model.input_shape == (1, 28, 28) and model.arch["num_classes"] == 10
    assert _types(model.body) == ["Flatten", "Linear", "ReLU", "Dropout"]
    assert _types(model.classifier) == ["Linear"]  # Dense(10): the output layer
    assert not any(isinstance(m, nn.Softmax) for m in model.modules())


def test_probabilities_of_a_softmax_output_are_softmaxed_once():
    data = load_dataset("shapes", size=(16, 16), n_train=30, n_test=9)
    model = Sequential(
        [Conv2D(4, 3), GlobalAveragePooling2D(), Dense(3, activation="softmax")],
        input_shape=(1, 16, 16),
    )
    out = model.classifier[-1]
    with torch.no_grad():  # logits (20, 0, 0) for every image
        out.weight.zero_()
        out.bias.copy_(torch.tensor([20.0, 0.0, 0.0]))
    learn = Learner(data, model, batch_size=16, log=lambda s: None, device="cpu")
    probs = learn.evaluate("test", probs=True)["probs"]
    # One softmax: ~(1, 0, 0). A second one would give (0.58, 0.21, 0.21).
    assert probs.shape == (9, 3)
    assert torch.allclose(probs, torch.tensor([1.0, 0.0, 0.0]).expand(9, 3), atol=1e-6)


@pytest.mark.parametrize(
    ("layer", "conv"),
    [
        (Conv2D(8, (3, 3), padding="valid"), "Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1))"),
        (Conv2D(8, 3), "Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1))"),  # Keras: valid
        (Conv(8, 3), "Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"),
        (
            Conv2D(8, kernel_size=(5, 5), strides=(2, 2), padding="same"),
            "Conv2d(1, 8, kernel_size=(5, 5), stride=(2, 2), padding=(2, 2))",
        ),
        (
            Conv(8, kernel=5, stride=2, padding=1),  # deepstart's own names still work
            "Conv2d(1, 8, kernel_size=(5, 5), stride=(2, 2), padding=(1, 1))",
        ),
    ],
)
def test_conv_takes_keras_arguments(layer, conv):
    model = Sequential([layer, Flatten()], input_shape=(1, 12, 12), num_classes=2)
    assert str(model.body[0]) == conv


@pytest.mark.parametrize(
    ("activation", "after"),
    [("gelu", "GELU"), ("swish", "SiLU"), ("sigmoid", "Sigmoid"), (None, None), ("linear", None)],
)
def test_activation_argument_replaces_the_default(activation, after):
    model = Sequential(
        [Conv2D(4, 3, padding="same", activation=activation), GlobalAveragePooling2D()],
        input_shape=(1, 8, 8),
        num_classes=2,
    )
    assert _types(model.body) == ["Conv2d"] + ([after] if after else [])


def test_keras_order_conv_relu_batchnorm_is_kept():
    model = Sequential(
        [Conv2D(4, 3, activation="relu"), BatchNormalization(), GlobalAveragePooling2D()],
        input_shape=(1, 8, 8),
        num_classes=2,
    )
    assert _types(model.body) == ["Conv2d", "ReLU", "BatchNorm2d"]
    assert model.body[0].bias is not None  # the ReLU comes between, so the bias counts


def test_pooling_takes_pool_size_and_strides():
    model = Sequential(
        [
            MaxPooling2D(pool_size=(3, 3), strides=(1, 1)),
            AveragePooling2D(pool_size=2),
            Pool(size=2, stride=1),
            Flatten(),
        ],
        input_shape=(1, 12, 12),
        num_classes=2,
    )
    assert [(m.kernel_size, m.stride) for m in model.body] == [(3, 1), (2, 2), (2, 1)]
    with pytest.raises(ModelError, match="pools without padding"):
        MaxPooling2D(padding="same")


@pytest.mark.parametrize(
    ("given", "fix"), [((32, 32, 3), "(3, 32, 32)"), ((28, 28, 1), "(1, 28, 28)")]
)
def test_channels_last_input_shape_is_refused_with_the_fix(given, fix):
    layers = [Conv2D(8, 3), Flatten(), Dense(10)]
    with pytest.raises(
        ModelError, match=re.escape(f"deepstart is channels-first: input_shape={fix}")
    ):
        Sequential(layers, input_shape=given)
    with pytest.raises(ModelError, match=re.escape(f"input_shape={fix}")):
        Sequential([Conv2D(8, 3, input_shape=given), Flatten(), Dense(10)])
    ok = Sequential([Conv2D(8, 3, input_shape=eval(fix)), Flatten(), Dense(10)])
    assert ok.input_shape == eval(fix)


def test_input_shape_only_on_the_first_layer_and_given_once():
    with pytest.raises(ModelError, match=r"layers\[1\].*only the first layer's"):
        Sequential([Flatten(), Dense(3, input_shape=(1, 8, 8))])
    with pytest.raises(ModelError, match="given twice and differs"):
        Sequential([Flatten(input_shape=(1, 8, 8)), Dense(3)], input_shape=(1, 9, 9))


def test_num_classes_comes_from_the_output_dense_or_must_be_given():
    assert Sequential([Flatten(), Dense(7)], input_shape=(1, 4, 4)).arch["num_classes"] == 7
    with pytest.raises(ModelError, match=r"pass num_classes=data\.num_classes"):
        Sequential([Conv(4), GlobalAveragePooling2D()], input_shape=(1, 4, 4))


BAD_ARGS = [
    (lambda: Dense(10, activation="softmaxx"), "Dense: activation='softmaxx' is not one of"),
    (lambda: Conv2D(8, (3, 5)), r"Conv2D: kernel_size=\(3, 5\): deepstart's layers are square"),
    (lambda: Conv2D(8, 4, padding="same"), "padding='same' needs an odd kernel_size"),
    (lambda: Conv2D(8, 3, padding="full"), "padding='full': use 'same', 'valid'"),
    (lambda: Conv2D(0, 3), "filters must be a whole number of at least 1"),
    (lambda: Dropout(1.5), r"Dropout: rate must be in \[0, 1\)"),
    (lambda: Activation("swishy"), "Activation: activation='swishy'"),
]


@pytest.mark.parametrize(("make", "message"), BAD_ARGS)
def test_bad_arguments_are_refused_where_written(make, message):
    with pytest.raises(ModelError, match=message) as e:
        make()
    assert "^" not in str(e.value)


BAD_MODELS = [
    ([Conv2D(8, 3), Dense(4)], 1, "layers[1] Dense(4) needs a vector", "put Flatten()"),
    ([Conv2D(8, 9), Flatten(), Dense(3)], 0, "layers[0] Conv2D(8, kernel_size=9) turns", "0x0"),
    ([Flatten(), Conv2D(4, 3), Dense(3)], 1, "layers[1] Conv2D(4) needs a feature map", ""),
    (
        [Flatten(), Dense(4, activation="softmax")],
        1,
        "layers[1] Dense(4, activation='softmax'): softmax",
        "there are 3 classes",
    ),
    ([Flatten(), Activation("softmax"), Dense(3)], 1, "layers[1] Activation('softmax')", ""),
    ([Conv2D(4, 3)], None, "the model ends on a 4x6x6 feature map", "end it with Flatten()"),
]


@pytest.mark.parametrize(("layers", "index", "names", "more"), BAD_MODELS)
def test_build_errors_name_the_layer_as_written(layers, index, names, more):
    with pytest.raises(LayerError) as e:
        Sequential(layers, input_shape=(1, 8, 8), num_classes=3)
    text = str(e.value)
    assert e.value.index == index and names in text and more in text
    # never the internal spec string, its tokens or a caret under them
    assert e.value.spec not in text and "^" not in text
    assert not any(t in text for t in ("conv8p0", "conv4p0", "dense4-softmax", "flat-"))


def test_keras_names_are_exported_and_build_the_keras_cifar_net():
    for name in ("Conv2D", "MaxPooling2D", "GlobalAveragePooling2D", "Dense", "Activation"):
        assert name in deepstart.__all__ and hasattr(deepstart, name)
    model = deepstart.Sequential(
        [
            Conv2D(32, (3, 3), padding="same", input_shape=(3, 32, 32)),
            Activation("relu"),
            Conv2D(32, (3, 3)),
            Activation("relu"),
            MaxPooling2D(pool_size=(2, 2)),
            Dropout(0.25),
            Flatten(),
            Dense(512),
            Activation("relu"),
            Dropout(0.5),
            Dense(10),
            Activation("softmax"),
        ]
    )
    # Keras's parameter count for this model (keras/examples/cifar10_cnn, first block).
    assert sum(p.numel() for p in model.parameters()) == 896 + 9248 + 7200 * 512 + 512 + 5130
    assert model.summary().output_shape == (10,)
