"""A Keras-like ``Sequential`` for Python users: layers in a list, shapes worked out for you.

Each layer object stands for one token of a layer spec (:mod:`deepstart.models.spec`), and
``Sequential`` builds the same model the spec would, through the same builder: the model is a
:class:`~deepstart.models.basic.Net` whose ``arch`` is the registry model ``spec``, so it
trains, saves, loads, predicts and exports like any registry model.

Example:
    >>> model = Sequential(
    ...     [Conv(32), Conv(32), Pool(), Dropout(0.25), Flatten(), Dense(256), Dropout(0.5)],
    ...     input_shape=(1, 28, 28), num_classes=10)
    >>> model.spec
    'conv32-conv32-pool-drop0.25-flat-dense256-drop0.5'
    >>> print(model.summary())  # the layer table of `deepstart models show`
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deepstart.models.basic import Net
from deepstart.models.registry import ModelError, create_model
from deepstart.models.spec import ACTIVATIONS


class Layer:
    """A layer of a :class:`Sequential`; ``token`` is how the layer spec writes it."""

    @property
    def token(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Conv(Layer):
    """2-D convolution with ``filters`` outputs, then the default activation.

    ``padding=None`` is 'same' (``kernel // 2``); ``0`` is Keras' 'valid'.
    """

    filters: int
    kernel: int = 3
    stride: int = 1
    padding: int | None = None

    @property
    def token(self) -> str:
        opts = "" if self.kernel == 3 else f"k{self.kernel}"
        opts += "" if self.stride == 1 else f"s{self.stride}"
        opts += "" if self.padding is None else f"p{self.padding}"
        return f"conv{self.filters}{opts}"


@dataclass(frozen=True)
class Residual(Layer):
    """A ResNet basic block with ``filters`` outputs (``stride=2`` halves the map)."""

    filters: int
    stride: int = 1

    @property
    def token(self) -> str:
        return f"res{self.filters}" + ("" if self.stride == 1 else f"s{self.stride}")


@dataclass(frozen=True)
class Pool(Layer):
    """Max pooling over ``size`` x ``size`` windows (stride defaults to ``size``)."""

    size: int = 2
    stride: int | None = None

    kind = "pool"

    @property
    def token(self) -> str:
        text = self.kind + ("" if self.size == 2 else str(self.size))
        if self.stride is not None and self.stride != self.size:
            text += f"s{self.stride}"
        return text


@dataclass(frozen=True)
class AvgPool(Pool):
    """Average pooling over ``size`` x ``size`` windows."""

    kind = "avgpool"


@dataclass(frozen=True)
class Dropout(Layer):
    """Zero each value with probability ``rate`` while training."""

    rate: float

    @property
    def token(self) -> str:
        return f"drop{self.rate:g}"


@dataclass(frozen=True)
class Flatten(Layer):
    """``(N, C, H, W) -> (N, C*H*W)``; the classifier starts here."""

    @property
    def token(self) -> str:
        return "flat"


@dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """``(N, C, H, W) -> (N, C)``: each channel's mean; the classifier starts here."""

    @property
    def token(self) -> str:
        return "gap"


@dataclass(frozen=True)
class Dense(Layer):
    """A linear layer with ``units`` outputs, then the default activation."""

    units: int

    @property
    def token(self) -> str:
        return f"dense{self.units}"


@dataclass(frozen=True)
class BatchNorm(Layer):
    """BatchNorm over channels (feature maps) or features (vectors)."""

    @property
    def token(self) -> str:
        return "bn"


@dataclass(frozen=True)
class Activation(Layer):
    """``relu``, ``gelu``, ``silu``, ``tanh`` or ``linear``; right after a Conv or Dense (or
    its BatchNorm) it replaces the default activation."""

    name: str

    @property
    def token(self) -> str:
        if self.name not in ACTIVATIONS:
            raise ModelError(f"activation must be one of {', '.join(ACTIVATIONS)}: {self.name!r}")
        return self.name


# Keras' names for the same layers.
Conv2D = Conv
MaxPooling2D = Pool
AveragePooling2D = AvgPool
BatchNormalization = BatchNorm
GlobalAveragePooling2D = GlobalAvgPool


def to_spec(layers: Sequence[Layer]) -> str:
    """The layer spec of a list of layers.

    Example:
        >>> to_spec([Conv(16, kernel=5, padding=0), Pool(), GlobalAvgPool()])
        'conv16k5p0-pool-gap'
    """
    bad = [repr(layer) for layer in layers if not isinstance(layer, Layer)]
    if bad:
        raise ModelError(f"Sequential takes deepstart layers (Conv, Dense, ...), got {bad[0]}")
    return "-".join(layer.token for layer in layers)


class Sequential(Net):
    """A classifier from a list of layers; a last ``Linear`` to ``num_classes`` is appended.

    Args:
        layers: the layers, input to output; a :class:`Flatten` or :class:`GlobalAvgPool`
            has to come before the first :class:`Dense`.
        input_shape: ``(C, H, W)`` of one image (PyTorch's order, not Keras' ``(H, W, C)``).
        num_classes: outputs of the appended last layer.
        activation: the default activation after each Conv and Dense layer.

    Example:
        >>> model = Sequential([Conv(8), Pool(), Flatten()], input_shape=(1, 16, 16),
        ...                    num_classes=3)
        >>> model(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        activation: str = "relu",
    ) -> None:
        if len(input_shape) != 3:
            raise ModelError(f"input_shape is (C, H, W), got {tuple(input_shape)}")
        c, h, w = (int(v) for v in input_shape)
        self.spec = to_spec(layers)
        # Built by the registry, so arch, checks and initialisation are the spec model's.
        built = create_model(
            "spec",
            in_channels=c,
            num_classes=num_classes,
            input_size=(h, w),
            spec=self.spec,
            activation=activation,
        )
        super().__init__(built.body, built.classifier)
        self.arch: dict[str, Any] = built.arch
        self.input_shape = (c, h, w)

    def summary(self) -> Any:
        """The layer table: output shape, parameters and FLOPs per layer (a
        :class:`~deepstart.models.summary.ModelSummary`; ``print`` it)."""
        from deepstart.models.summary import summarize

        return summarize(self, self.input_shape)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}"


__all__ = [
    "Activation",
    "AveragePooling2D",
    "AvgPool",
    "BatchNorm",
    "BatchNormalization",
    "Conv",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAveragePooling2D",
    "GlobalAvgPool",
    "Layer",
    "MaxPooling2D",
    "Pool",
    "Residual",
    "Sequential",
    "to_spec",
]
