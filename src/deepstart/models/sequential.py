"""A Keras-like ``Sequential`` for Python users: layers in a list, shapes worked out for you.

Each layer object (:mod:`deepstart.models.sequential_layers`) stands for one or two tokens of
a layer spec (:mod:`deepstart.models.spec`), and ``Sequential`` builds the same model the spec
would, through the same builder: the model is a :class:`~deepstart.models.spec.SpecNet` whose
``arch`` is the registry model ``spec``, so it trains, saves, loads, predicts and exports like
any registry model.

The layers take Keras's arguments (``kernel_size=(3, 3)``, ``strides=``, ``padding="same"``
or ``"valid"``, ``activation=``, ``pool_size=``, ``input_shape=`` on the first layer) and
Keras's names (``Conv2D``, ``MaxPooling2D``, ``GlobalAveragePooling2D``...). Where deepstart
differs from Keras, it says so instead of guessing:

- shapes are PyTorch's channels-first ``(C, H, W)``; a Keras-order ``(H, W, C)`` such as
  ``(32, 32, 3)`` is refused with the fix in the message;
- a layer without ``activation=`` gets the Sequential's default activation (``relu``);
  ``activation=None`` (or ``"linear"``) means none, as in Keras;
- the model outputs logits: a last ``Dense(K, activation="softmax")`` is the output layer and
  its softmax is left to the loss and the predictions (``learn.predict``, ``bundle.predict``
  give probabilities), so softmax is never applied twice.

Every error names the layer the user wrote (``layers[2], Dense(4)``), never a spec string.

Example:
    >>> model = Sequential(
    ...     [Conv2D(32, (3, 3), activation="relu", input_shape=(1, 28, 28)), MaxPooling2D(),
    ...      Flatten(), Dense(128, activation="relu"), Dropout(0.5),
    ...      Dense(10, activation="softmax")])
    >>> model.spec
    'conv32p0-relu-pool-flat-dense128-relu-drop0.5-dense10-softmax'
    >>> print(model.summary())  # the layer table of `deepstart models show`
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from deepstart.models.registry import ModelError, create_model
from deepstart.models.sequential_layers import (
    DEFAULT,
    Activation,
    AveragePooling2D,
    AvgPool,
    AvgPool2D,
    BatchNorm,
    BatchNormalization,
    Conv,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    GlobalAvgPool,
    GlobalAvgPool2D,
    Layer,
    MaxPool2D,
    MaxPooling2D,
    Pool,
    Residual,
)
from deepstart.models.spec import SpecError, SpecNet, Words, build_spec


class LayerError(SpecError):
    """A :class:`Sequential` that cannot be built; the message names the layer as written.

    Attributes:
        index: the bad layer's position in the list (``None``: after the last one).
        layer: that layer (``None`` likewise).
    """

    def __init__(self, index: int | None, layer: Layer | None, reason: str, spec: str) -> None:
        self.index, self.layer, self.reason = index, layer, reason
        self.spec, self.start, self.length = spec, 0, 0
        ModelError.__init__(self, f"bad Sequential: {reason}")


def to_spec(layers: Sequence[Layer]) -> str:
    """The layer spec of a list of layers.

    Example:
        >>> to_spec([Conv(16, kernel_size=5, padding=0), Pool(), GlobalAvgPool()])
        'conv16k5p0-pool-gap'
    """
    return "-".join(_spans(layers)[0])


def _spans(layers: Sequence[Layer]) -> tuple[list[str], list[int]]:
    """Each layer's tokens, and which layer each character offset of the spec came from."""
    bad = [repr(layer) for layer in layers if not isinstance(layer, Layer)]
    if bad:
        raise ModelError(f"Sequential takes deepstart layers (Conv2D, Dense, ...), got {bad[0]}")
    texts, owner = [], []
    for i, layer in enumerate(layers):
        text = layer.token
        texts.append(text)
        owner += [i] * (len(text) + 1)  # the joining "-" belongs to the layer before it
    return texts, owner


def _input_shape(value: Any) -> tuple[int, int, int]:
    """``(C, H, W)`` from ``(C, H, W)`` or ``(H, W)``; Keras's ``(H, W, C)`` is refused."""
    shape = tuple(value)
    if len(shape) == 2:
        shape = (1, *shape)  # (H, W): one grey channel, as Keras's Flatten(input_shape=(28, 28))
    if len(shape) != 3 or not all(isinstance(v, int) and v >= 1 for v in shape):
        raise ModelError(f"input_shape is (channels, height, width), got {tuple(value)!r}")
    h, w, c = shape
    if c in (1, 3, 4) and h not in (1, 3, 4):
        raise ModelError(
            f"input_shape={shape!r} looks like Keras's (height, width, channels), but "
            f"deepstart is channels-first: input_shape=({c}, {h}, {w})"
        )
    return shape


def _output_units(layers: Sequence[Layer]) -> int | None:
    """The units of a last Dense that is an output layer (no activation, or softmax)."""
    last = layers[-1] if layers else None
    if isinstance(last, Activation) and last.name in ("softmax", "linear", None):
        last = layers[-2] if len(layers) > 1 else None
        return last.units if isinstance(last, Dense) and last.activation == DEFAULT else None
    if isinstance(last, Dense) and last.activation in (DEFAULT, None, "linear", "softmax"):
        return last.units
    return None


class Sequential(SpecNet):
    """A classifier from a list of layers.

    The last layer decides the output: a :class:`Dense` with one unit per class (and no
    activation, or ``"softmax"``) is the output layer; after any other last layer a linear
    layer to ``num_classes`` is appended, with no activation in between that the list does
    not write.

    Args:
        layers: the layers, input to output; a :class:`Flatten` or :class:`GlobalAvgPool`
            has to come before the first :class:`Dense`.
        input_shape: ``(C, H, W)`` of one image, channels first (or ``(H, W)``: one channel);
            may be given to the first layer instead, as in Keras. Default ``(1, 28, 28)``.
        num_classes: the number of classes; by default the units of a last output Dense.
        activation: the default activation after each Conv and Dense layer that does not
            say its own.

    Example:
        >>> model = Sequential([Flatten(), Dense(10)], input_shape=(1, 28, 28))
        >>> model.classifier  # one Linear: the user's Dense(10) is the output layer
        Sequential(
          (0): Linear(in_features=784, out_features=10, bias=True)
        )
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        input_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
        activation: str = "relu",
    ) -> None:
        layers = list(layers)
        if not layers:
            raise ModelError("Sequential needs at least one layer, e.g. [Flatten(), Dense(10)]")
        texts, owner = _spans(layers)
        shape = _sequential_shape(layers, input_shape)
        k = num_classes if num_classes is not None else _output_units(layers)
        if k is None:
            raise ModelError(
                f"Sequential does not know how many classes to output: its last layer is "
                f"{layers[-1]!r}; pass num_classes=data.num_classes, or end with Dense(K)"
            )
        spec = "-".join(texts)
        c, h, w = shape
        _dry_run(layers, owner, spec, shape, int(k), activation)
        # Built by the registry, so arch, checks and initialisation are the spec model's.
        built = create_model(
            "spec",
            in_channels=c,
            num_classes=k,
            input_size=(h, w),
            spec=spec,
            activation=activation,
        )
        super().__init__(built.body, built.classifier, spec=spec, output=built.output_token)
        self.arch: dict[str, Any] = built.arch
        self.input_shape = shape

    def summary(self) -> Any:
        """The layer table: output shape, parameters and FLOPs per layer (a
        :class:`~deepstart.models.summary.ModelSummary`; ``print`` it)."""
        from deepstart.models.summary import summarize

        return summarize(self, self.input_shape)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}"


def _sequential_shape(layers: list[Layer], given: Any) -> tuple[int, int, int]:
    """The input shape from ``Sequential(input_shape=)`` or the first layer's, checked."""
    later = next((i for i, layer in enumerate(layers) if i and layer.input_shape), None)
    if later is not None:
        raise ModelError(
            f"layers[{later}] {layers[later]!r} has an input_shape: only the first layer's "
            f"is read (it is the model's input)"
        )
    first = layers[0].input_shape
    if first is not None and given is not None and _input_shape(first) != _input_shape(given):
        raise ModelError(
            f"input_shape is given twice and differs: {tuple(given)} to Sequential, "
            f"{tuple(first)} to {layers[0]!r}"
        )
    value = first if first is not None else given
    return _input_shape(value if value is not None else (1, 28, 28))


def _dry_run(
    layers: list[Layer],
    owner: list[int],
    spec: str,
    shape: tuple[int, int, int],
    k: int,
    activation: str,
) -> None:
    """Build on PyTorch's meta device (shapes only, no memory, no random numbers drawn) so a
    layer that cannot work is reported as the layer the user wrote."""
    c, h, w = shape

    def name(tok: Any) -> str:
        i = owner[tok.start]
        return f"layers[{i}] {layers[i]!r}"

    words = Words(
        layer=name,
        flat="Flatten()",
        gap="GlobalAvgPool()",
        dense="Dense",
        size="a larger input_shape",
        whole="the model",
    )
    try:
        with torch.device("meta"):
            build_spec(
                spec,
                in_channels=c,
                num_classes=k,
                input_size=(h, w),
                activation=activation,
                words=words,
            )
    except SpecError as e:
        i = owner[e.start] if e.start < len(owner) and e.start < len(spec) else None
        raise LayerError(i, None if i is None else layers[i], e.reason, spec) from None


__all__ = [
    "DEFAULT",
    "Activation",
    "AveragePooling2D",
    "AvgPool",
    "AvgPool2D",
    "BatchNorm",
    "BatchNormalization",
    "Conv",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAveragePooling2D",
    "GlobalAvgPool",
    "GlobalAvgPool2D",
    "Layer",
    "LayerError",
    "MaxPool2D",
    "MaxPooling2D",
    "Pool",
    "Residual",
    "Sequential",
    "to_spec",
]
