"""The layers of a :class:`~deepstart.models.sequential.Sequential`, with Keras's arguments.

Each layer object stands for one or two tokens of a layer spec (:mod:`deepstart.models.spec`):
``Conv2D(32, (3, 3), activation="relu")`` is ``conv32p0-relu``. The arguments are checked
when the layer is made, so a mistake is reported where it was written, in its own words.

Example:
    >>> Conv2D(32, (3, 3), activation="relu").tokens()
    ['conv32p0', 'relu']
    >>> Dense(10, activation="softmax")
    Dense(10, activation='softmax')
"""

from __future__ import annotations

import dataclasses
from dataclasses import KW_ONLY, InitVar, dataclass, field
from typing import Any

from deepstart.models.registry import ModelError
from deepstart.models.spec import ACTIVATIONS

DEFAULT = "default"
"""``activation=DEFAULT``: the Sequential's default activation (``relu`` unless told)."""

# Keras's activation names that deepstart spells differently.
_KERAS_ACTIVATIONS = {"swish": "silu"}


def _activation_tokens(owner: str, activation: Any) -> list[str]:
    """The spec tokens of an ``activation=`` argument (none for the default one)."""
    if activation is None:
        return ["linear"]
    if activation == DEFAULT:
        return []
    name = _KERAS_ACTIVATIONS.get(activation, activation) if isinstance(activation, str) else None
    if name != "softmax" and name not in ACTIVATIONS:
        known = ", ".join([*ACTIVATIONS, "softmax", "swish", "None"])
        raise ModelError(f"{owner}: activation={activation!r} is not one of {known}")
    return [name]


def _square(owner: str, what: str, value: Any) -> int:
    """An int from ``3`` or ``(3, 3)``: deepstart's kernels, strides and pools are square."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ModelError(
                f"{owner}: {what}={tuple(value)!r}: deepstart's layers are square, give one "
                f"number or a pair of equal numbers, e.g. {what}=3 or (3, 3)"
            )
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{owner}: {what} must be a whole number of at least 1, got {value!r}")
    return value


@dataclass(frozen=True, repr=False)
class Layer:
    """A layer of a :class:`Sequential`; ``token`` is how the layer spec writes it.

    ``input_shape=(C, H, W)`` may be given to the first layer, as in Keras."""

    input_shape: tuple[int, ...] | None = field(default=None, kw_only=True)

    def tokens(self) -> list[str]:
        """The layer as spec tokens, e.g. ``["conv32", "relu"]``."""
        raise NotImplementedError(f"{type(self).__name__} does not say its spec tokens")

    @property
    def token(self) -> str:
        return "-".join(self.tokens())

    def __repr__(self) -> str:
        # Only what differs from the defaults, like the call the user wrote: Conv2D(8, padding=0)
        args = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                args.append(repr(value))
            elif value != f.default:
                args.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(args)})"


@dataclass(frozen=True, repr=False)
class Conv(Layer):
    """2-D convolution with ``filters`` outputs, then its activation.

    Args:
        filters: output channels.
        kernel_size: ``3`` or ``(3, 3)`` (square kernels; ``kernel=`` works too).
        strides: ``1`` or ``(2, 2)`` (``stride=`` works too).
        padding: ``"same"`` (``kernel_size // 2``: the map keeps its size at stride 1; odd
            kernels only), ``"valid"`` (none) or a number of pixels.
        activation: the Sequential's default unless given; ``None`` for none.
    """

    filters: int
    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: str | int | None = "same"
    activation: str | None = DEFAULT
    _: KW_ONLY
    kernel: InitVar[int | tuple[int, int] | None] = None
    stride: InitVar[int | tuple[int, int] | None] = None

    def __post_init__(self, kernel: Any, stride: Any) -> None:
        if kernel is not None:
            object.__setattr__(self, "kernel_size", kernel)
        if stride is not None:
            object.__setattr__(self, "strides", stride)
        self.tokens()  # check the arguments now, where the user wrote them

    def tokens(self) -> list[str]:
        owner = type(self).__name__
        f = _square(owner, "filters", self.filters)
        k = _square(owner, "kernel_size", self.kernel_size)
        s = _square(owner, "strides", self.strides)
        if self.padding in ("same", None):
            if k % 2 == 0:
                raise ModelError(
                    f"{owner}({f}, kernel_size={k}): padding='same' needs an odd kernel_size "
                    f"(PyTorch pads both sides alike); use 3 or 5, or padding='valid'"
                )
            pad = ""  # the spec's default, k // 2
        elif self.padding == "valid":
            pad = "p0"
        elif isinstance(self.padding, int) and not isinstance(self.padding, bool):
            if self.padding < 0:
                raise ModelError(f"{owner}: padding must be at least 0, got {self.padding}")
            pad = f"p{self.padding}"
        else:
            raise ModelError(
                f"{owner}: padding={self.padding!r}: use 'same', 'valid' or a number of pixels"
            )
        conv = f"conv{f}" + ("" if k == 3 else f"k{k}") + ("" if s == 1 else f"s{s}") + pad
        return [conv, *_activation_tokens(owner, self.activation)]


@dataclass(frozen=True, repr=False)
class Conv2D(Conv):
    """Keras's ``Conv2D``: :class:`Conv` with Keras's default ``padding="valid"``."""

    padding: str | int | None = "valid"


@dataclass(frozen=True, repr=False)
class Residual(Layer):
    """A ResNet basic block with ``filters`` outputs (``stride=2`` halves the map)."""

    filters: int
    stride: int = 1

    def tokens(self) -> list[str]:
        owner = type(self).__name__
        f, s = _square(owner, "filters", self.filters), _square(owner, "stride", self.stride)
        return [f"res{f}" + ("" if s == 1 else f"s{s}")]


@dataclass(frozen=True, repr=False)
class Pool(Layer):
    """Max pooling over ``pool_size`` x ``pool_size`` windows (``strides`` defaults to
    ``pool_size``; ``size=`` and ``stride=`` work too). Only ``padding="valid"``."""

    pool_size: int | tuple[int, int] = 2
    strides: int | tuple[int, int] | None = None
    padding: str = "valid"
    _: KW_ONLY
    size: InitVar[int | tuple[int, int] | None] = None
    stride: InitVar[int | tuple[int, int] | None] = None

    kind = "pool"

    def __post_init__(self, size: Any, stride: Any) -> None:
        if size is not None:
            object.__setattr__(self, "pool_size", size)
        if stride is not None:
            object.__setattr__(self, "strides", stride)
        self.tokens()

    def tokens(self) -> list[str]:
        owner = type(self).__name__
        k = _square(owner, "pool_size", self.pool_size)
        s = k if self.strides is None else _square(owner, "strides", self.strides)
        if self.padding != "valid":
            raise ModelError(
                f"{owner}: padding={self.padding!r}: deepstart pools without padding "
                f"('valid'); pad the convolution before it instead"
            )
        return [self.kind + ("" if k == 2 else str(k)) + ("" if s == k else f"s{s}")]


@dataclass(frozen=True, repr=False)
class AvgPool(Pool):
    """Average pooling over ``pool_size`` x ``pool_size`` windows."""

    kind = "avgpool"


@dataclass(frozen=True, repr=False)
class Dropout(Layer):
    """Zero each value with probability ``rate`` while training."""

    rate: float

    def __post_init__(self) -> None:
        self.tokens()

    def tokens(self) -> list[str]:
        if not isinstance(self.rate, (int, float)) or not 0 <= self.rate < 1:
            raise ModelError(f"Dropout: rate must be in [0, 1), got {self.rate!r}")
        return ["drop" + (f"{self.rate:.6f}".rstrip("0").rstrip(".") or "0")]


@dataclass(frozen=True, repr=False)
class Flatten(Layer):
    """``(N, C, H, W) -> (N, C*H*W)``; the classifier starts here."""

    def tokens(self) -> list[str]:
        return ["flat"]


@dataclass(frozen=True, repr=False)
class GlobalAvgPool(Layer):
    """``(N, C, H, W) -> (N, C)``: each channel's mean; the classifier starts here."""

    def tokens(self) -> list[str]:
        return ["gap"]


@dataclass(frozen=True, repr=False)
class Dense(Layer):
    """A linear layer with ``units`` outputs, then its activation.

    The last layer of a Sequential, with one unit per class and no activation (or
    ``"softmax"``), is the output layer: its outputs are the logits."""

    units: int
    activation: str | None = DEFAULT

    def __post_init__(self) -> None:
        self.tokens()

    def tokens(self) -> list[str]:
        owner = type(self).__name__
        units = _square(owner, "units", self.units)
        return [f"dense{units}", *_activation_tokens(owner, self.activation)]


@dataclass(frozen=True, repr=False)
class BatchNorm(Layer):
    """BatchNorm over channels (feature maps) or features (vectors)."""

    def tokens(self) -> list[str]:
        return ["bn"]


@dataclass(frozen=True, repr=False)
class Activation(Layer):
    """``"relu"``, ``"gelu"``, ``"silu"`` (``"swish"``), ``"tanh"``, ``"sigmoid"``, ``"elu"``,
    ``"selu"``, ``"softplus"``, ``"linear"`` (or ``None``), or ``"softmax"`` after the output
    Dense; right after a Conv or Dense (or its BatchNorm) it replaces the default activation."""

    name: str | None

    def __post_init__(self) -> None:
        self.tokens()

    def tokens(self) -> list[str]:
        tokens = _activation_tokens("Activation", self.name)
        if not tokens:
            raise ModelError(f"Activation: name={self.name!r} is not an activation, e.g. 'relu'")
        return tokens


# Keras's names for the same layers (Conv2D, above, also takes Keras's default padding).
@dataclass(frozen=True, repr=False)
class MaxPooling2D(Pool):
    """Keras's name for :class:`Pool`."""


@dataclass(frozen=True, repr=False)
class AveragePooling2D(AvgPool):
    """Keras's name for :class:`AvgPool`."""


@dataclass(frozen=True, repr=False)
class BatchNormalization(BatchNorm):
    """Keras's name for :class:`BatchNorm`."""


@dataclass(frozen=True, repr=False)
class GlobalAveragePooling2D(GlobalAvgPool):
    """Keras's name for :class:`GlobalAvgPool`."""


MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D
