"""Your own net in one line: a layer spec such as ``conv32-conv32-pool-drop.25-flat-dense256``.

The spec is a list of layer tokens joined by ``-``, read left to right like a Keras
``Sequential``. The builder tracks the shape as it goes, so every size is computed (no
``in_features`` to work out by hand) and a spec that cannot work fails at build time with a
:class:`SpecError` that points at the bad token::

    conv32-pool-dense64-flat
                ^^^^^^^
    dense needs a vector, but the input here is a 32x14x14 feature map: put flat or gap before it

=================  ===========================================================================
token              layer
=================  ===========================================================================
``conv32``         3x3 conv with 32 filters, stride 1, 'same' padding (k // 2), then the
                   default activation. Options follow the width, each a letter and a number:
                   ``k`` kernel, ``s`` stride, ``p`` padding: ``conv32k5s2p0``.
``res32``          residual block: conv3x3-BN-act-conv3x3-BN plus a shortcut, then act
                   (``res64s2``: stride 2; the shortcut is a 1x1 conv + BN when the shape changes)
``pool``           2x2 max pool, stride 2; ``pool3`` 3x3 (stride 3), ``pool3s2`` stride 2
``avgpool``        the same, averaging
``bn``             BatchNorm (2-D on feature maps, 1-D on vectors)
``relu`` ``gelu``  an activation; right after a conv or dense (or its bn) it replaces the
``silu`` ``tanh``  default one; ``linear`` means none there (also ``sigmoid``, ``elu``,
                   ``selu``, ``softplus``)
``softmax``        only at the very end, after the output dense: dropped, because the loss
                   and the predictions apply softmax to the logits themselves
``drop.25``        dropout with p = 0.25 (also ``drop0.25``)
``flat``           flatten the feature map to a vector
``gap``            global average pool: each channel's mean, a vector of C
``dense256``       linear layer with 256 outputs, then the default activation
=================  ===========================================================================

The default activation (option ``activation``, ``relu`` unless told) follows every conv and
dense layer, after its ``bn`` if one comes next (and then the conv or dense layer has no bias:
the BatchNorm's mean would cancel it) -- except a dense that ends the spec: nothing is added
after the last layer that the spec does not say. The end of the spec decides the output:

- it ends on a dense with as many units as there are classes (``...-gap-dense3`` on 3 classes,
  optionally followed by ``linear`` or ``softmax``): that dense **is** the output layer, its
  outputs are the logits;
- otherwise a linear layer to ``num_classes`` is appended after the last layer (after a
  last ``dense64`` with no activation in between, unless the spec writes one: ``dense64-relu``).

The model is an ordinary :class:`~deepstart.models.basic.Net`: the body runs up to
the first ``flat``/``gap`` and ends at the last feature map (what Grad-CAM looks at), the
classifier starts there; a spec that starts with ``flat`` is a dense net whose body ends at its
last hidden layer, like ``mlp``. Weights start from PyTorch's default initialisation.

``create_model("conv32-pool-flat-dense64")`` and ``deepstart train --model SPEC`` build the
registry model ``spec`` with the option ``spec=...``, so the run directory and the bundle
record ``{"name": "spec", "kwargs": {"spec": ...}}`` and rebuild it like any other model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from deepstart.models.basic import Net
from deepstart.models.layers import Dropout, Flatten
from deepstart.models.registry import ModelError, register_model

# Activations by token; None ("linear") is no layer at all.
ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "softplus": nn.Softplus,
    "linear": None,
}
LAYERS = (
    *("conv", "res", "pool", "avgpool", "bn", *ACTIVATIONS, "softmax"),
    *("drop", "flat", "gap", "dense"),
)
EXAMPLES = {
    "conv": "conv32, conv32k5s2p0",
    "res": "res64, res64s2",
    "pool": "pool, pool3, pool3s2",
    "maxpool": "pool, pool3, pool3s2",
    "avgpool": "avgpool, avgpool3s2",
    "drop": "drop.25, drop0.5",
    "dense": "dense128",
}
DEFAULT_SPEC = "conv32-conv32-pool-drop.25-conv64-conv64-pool-drop.25-flat-dense256-drop.5"


class SpecError(ModelError):
    """A layer spec that cannot be read or built; the message shows where, with a caret.

    Attributes:
        spec: the whole spec as given.
        start: character offset of the bad token (``len(spec)`` for "something is missing
            at the end").
        length: the bad token's length.
    """

    def __init__(self, spec: str, start: int, length: int, message: str) -> None:
        self.spec, self.start, self.length = spec, start, length
        self.reason = message  # the message without the spec and caret lines
        marker = " " * start + "^" * max(length, 1)
        super().__init__(f"bad layer spec: {message}\n  {spec}\n  {marker}")


@dataclass(frozen=True)
class Token:
    """One layer of a spec: its ``kind`` (``conv``, ``pool``, ``act``, ...), the text as
    written, where it starts in the spec, and its numbers (``width``, ``kernel``, ``p``...)."""

    kind: str
    text: str
    start: int
    args: dict[str, Any] = field(default_factory=dict)


_CONV = re.compile(r"conv(\d+)((?:[a-z]\d*)*)")
_RES = re.compile(r"res(\d+)(?:s(\d+))?")
_POOL = re.compile(r"(avgpool|maxpool|pool)(\d+)?(?:s(\d+))?")
_DROP = re.compile(r"drop(\d*\.?\d*)")
_DENSE = re.compile(r"dense(\d+)")


def parse_spec(spec: str) -> list[Token]:
    """Read a spec into tokens, checking each on its own (shapes are checked by the build).

    Example:
        >>> [t.text for t in parse_spec("conv32k5-pool-flat")]
        ['conv32k5', 'pool', 'flat']
        >>> parse_spec("conv32k5")[0].args
        {'width': 32, 'kernel': 5, 'stride': 1, 'padding': 2}
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(str(spec), 0, 1, "the spec is empty; e.g. conv32-pool-flat-dense128")
    tokens, start = [], 0
    for text in spec.split("-"):
        tokens.append(_parse_token(spec, text, start))
        start += len(text) + 1
    return tokens


def _parse_token(spec: str, text: str, start: int) -> Token:
    def fail(message: str) -> SpecError:
        return SpecError(spec, start, len(text), message)

    if not text:
        raise fail("empty layer (two '-' in a row, or one at an end)")
    if text in ACTIVATIONS:
        return Token("act", text, start, {"name": text})
    if text in ("flat", "gap", "bn", "softmax"):
        return Token(text, text, start)
    if m := _DENSE.fullmatch(text):
        return Token("dense", text, start, {"width": _positive(m.group(1), "dense width", fail)})
    if m := _CONV.fullmatch(text):
        return Token("conv", text, start, _conv_args(m, fail))
    if m := _RES.fullmatch(text):
        width = _positive(m.group(1), "res width", fail)
        stride = _positive(m.group(2) or "1", "res stride", fail)
        return Token("res", text, start, {"width": width, "stride": stride})
    if m := _POOL.fullmatch(text):
        kind = "avgpool" if m.group(1) == "avgpool" else "pool"
        size = _positive(m.group(2) or "2", f"{kind} size", fail)
        stride = _positive(m.group(3) or str(size), f"{kind} stride", fail)
        return Token(kind, text, start, {"size": size, "stride": stride})
    if m := _DROP.fullmatch(text):
        raw = m.group(1)
        try:
            p = float(raw)
        except ValueError:
            raise fail("drop needs a probability, e.g. drop.25 or drop0.5") from None
        if not 0.0 <= p < 1.0:
            raise fail(f"dropout probability must be in [0, 1), got {raw} (drop.2 is 20%)")
        return Token("drop", text, start, {"p": p})
    for prefix in sorted(EXAMPLES, key=len, reverse=True):
        if text.startswith(prefix):
            raise fail(f"cannot read {text!r}; {prefix} is written like {EXAMPLES[prefix]}")
    raise fail(f"unknown layer {text!r}; layers are {', '.join(LAYERS)}")


def _positive(raw: str, what: str, fail: Any) -> int:
    value = int(raw)
    if value < 1:
        raise fail(f"{what} must be at least 1, got {value}")
    return value


def _conv_args(m: re.Match, fail: Any) -> dict[str, Any]:
    args = {"width": _positive(m.group(1), "conv width", fail)}
    names = {"k": "kernel", "s": "stride", "p": "padding"}
    for letter, raw in re.findall(r"([a-z])(\d*)", m.group(2)):
        if letter not in names or not raw:
            raise fail(
                f"conv options are k (kernel), s (stride), p (padding), each with a number, "
                f"e.g. conv32k5s2p0; cannot read {letter + raw!r}"
            )
        if names[letter] in args:
            raise fail(f"conv option {letter} is given twice")
        args[names[letter]] = int(raw)
    args.setdefault("kernel", 3)
    args.setdefault("stride", 1)
    args.setdefault("padding", args["kernel"] // 2)  # 'same' for odd kernels at stride 1
    if args["kernel"] < 1 or args["stride"] < 1:
        raise fail("conv kernel and stride must be at least 1")
    return {k: args[k] for k in ("width", "kernel", "stride", "padding")}


class ResBlock(nn.Module):
    """``act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))``: the ResNet basic block.

    The shortcut is the identity when the shape stays, else a 1x1 conv (with the block's
    stride) and BatchNorm, so the sum lines up: ``(N, c_in, H, W) -> (N, c_out, H/s, W/s)``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, act: type[nn.Module] | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = act() if act else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.act2 = act() if act else nn.Identity()

    def forward(self, x: Any) -> Any:
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(y + self.shortcut(x))


@dataclass(frozen=True)
class Words:
    """How build errors name things. A spec's errors name its tokens (the caret shows
    where); :class:`~deepstart.models.sequential.Sequential` names its layer objects, so
    every message speaks of what the user wrote."""

    layer: Callable[[Token], str] = lambda tok: tok.text
    flat: str = "flat"
    gap: str = "gap"
    dense: str = "dense"
    size: str = "a larger --size"
    whole: str = "the spec"


SPEC_WORDS = Words()


class SpecNet(Net):
    """The :class:`Net` of a spec. It knows whether the spec's last dense is the output
    layer, so :meth:`reset_head` keeps ``arch`` rebuildable: the new output width is written
    into the spec (``...-dense3`` becomes ``...-dense7``)."""

    def __init__(
        self, body: nn.Module, classifier: nn.Module, *, spec: str, output: Token | None
    ) -> None:
        super().__init__(body, classifier)
        self.spec = spec
        self.output_token = output  # the dense that is the output layer, if the spec has one

    def reset_head(self, num_classes: int) -> None:
        k = int(num_classes)
        last = final_dense(parse_spec(self.spec))
        if self.output_token is None and last is not None and last.args["width"] == k:
            raise ModelError(
                f"cannot give this spec model {k} outputs: its last layer {last.text} has {k} "
                f"units too, and a spec ending on dense{k} means that layer is the output; "
                f"build the spec for {k} classes instead"
            )
        super().reset_head(k)
        if self.output_token is not None:
            tok = self.output_token
            end = tok.start + len(tok.text)
            self.spec = f"{self.spec[: tok.start]}dense{k}{self.spec[end:]}"
            self.output_token = Token("dense", f"dense{k}", tok.start, {"width": k})
            if hasattr(self, "arch"):
                self.arch = {**self.arch, "kwargs": {**self.arch["kwargs"], "spec": self.spec}}


def final_dense(tokens: list[Token]) -> Token | None:
    """The dense that ends the spec, on its own or followed by ``linear`` or ``softmax``."""
    end = tokens[-1]
    if end.kind == "softmax" or (end.kind == "act" and end.args["name"] == "linear"):
        end = tokens[-2] if len(tokens) > 1 else end
    return end if end.kind == "dense" else None


def build_spec(
    spec: str,
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    activation: str = "relu",
    words: Words = SPEC_WORDS,
) -> SpecNet:
    """The :class:`Net` a spec describes, for this input and class count.

    ``words`` is how errors name the layers (``Sequential`` passes its own).

    Example:
        >>> net = build_spec("conv8-pool-flat", in_channels=1, num_classes=3, input_size=(8, 8))
        >>> net.body, net.classifier
        (Sequential(
          (0): Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
          (1): ReLU()
          (2): MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
        ), Sequential(
          (0): Flatten(start_dim=1, end_dim=-1)
          (1): Linear(in_features=128, out_features=3, bias=True)
        ))
        >>> build_spec("flat-dense3", in_channels=1, num_classes=3, input_size=(8, 8)).classifier
        Sequential(
          (0): Linear(in_features=64, out_features=3, bias=True)
        )
    """
    if activation not in ACTIVATIONS:
        raise ModelError(
            f"spec activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
        )
    tokens = parse_spec(spec)
    k = int(num_classes)
    _check_softmax(spec, tokens, k, words)
    last = final_dense(tokens)
    # The user's last dense is the output layer when it has one unit per class: it goes
    # into the head (even in a dense-only spec) and nothing is appended after it.
    output = last if last is not None and last.args["width"] == k else None
    default_act = ACTIVATIONS[activation]
    # The shape of one image as it flows: (C, H, W) for a feature map, (D,) for a vector.
    shape: tuple[int, ...] = (int(in_channels), *(int(s) for s in input_size))
    split = next((i for i, t in enumerate(tokens) if t.kind in ("flat", "gap")), len(tokens))
    body: list[nn.Module] = []
    head: list[nn.Module] = []
    # The default activation of the last conv/dense, still to be placed: it goes after a bn
    # that follows (conv-bn-act), into the part (body or head) its layer went to.
    pending: type[nn.Module] | None = None
    pending_in = body
    for i, tok in enumerate(tokens):
        layers = head if 0 < split <= i or tok is output else body
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.kind == "act":
            pending = None  # an explicit activation replaces the default one
        elif pending is not None and tok.kind != "bn":
            pending_in.append(pending())
            pending = None
        modules, shape = _layer(spec, tok, nxt, shape, default_act, words)
        layers.extend(modules)
        # No default activation after a dense that ends the spec: the user wrote none there.
        if tok.kind == "conv" or (tok.kind == "dense" and tok is not last):
            pending, pending_in = default_act, layers
    if pending is not None:
        pending_in.append(pending())
    if len(shape) != 1:
        c, h, w = shape
        raise SpecError(
            spec,
            len(spec),
            1,
            f"{words.whole} ends on a {c}x{h}x{w} feature map; end it with {words.flat} or "
            f"{words.gap} (then any {words.dense} layers) so the last layer gets a vector",
        )
    if output is None:
        head.append(nn.Linear(shape[0], k))
    return SpecNet(nn.Sequential(*body), nn.Sequential(*head), spec=spec, output=output)


def _check_softmax(spec: str, tokens: list[Token], k: int, words: Words) -> None:
    """``softmax`` may only end the spec, right after the output dense (and is dropped)."""
    for i, tok in enumerate(tokens):
        if tok.kind != "softmax":
            continue
        prev = tokens[i - 1] if i else None
        named = words.layer(prev if prev is not None and prev.kind == "dense" else tok)
        why = "the loss and the predictions apply softmax to the logits themselves"
        if i != len(tokens) - 1 or prev is None or prev.kind != "dense":
            raise SpecError(
                spec,
                tok.start,
                len(tok.text),
                f"{named}: softmax can only end the model, right after the output "
                f"{words.dense} layer ({why})",
            )
        if prev.args["width"] != k:
            raise SpecError(
                spec,
                prev.start,
                len(prev.text) + 1 + len(tok.text),
                f"{named}: softmax makes class probabilities, so this output layer needs one "
                f"unit per class: there are {k} classes, this layer has {prev.args['width']} units",
            )


def _layer(
    spec: str,
    tok: Token,
    nxt: Token | None,
    shape: tuple[int, ...],
    act: type[nn.Module] | None,
    words: Words = SPEC_WORDS,
) -> tuple[list[nn.Module], tuple[int, ...]]:
    """The modules of one token and the shape after them."""
    name = words.layer(tok)

    def fail(message: str) -> SpecError:
        return SpecError(spec, tok.start, len(tok.text), message)

    def need_map() -> tuple[int, int, int]:
        if len(shape) != 3:
            raise fail(
                f"{name} needs a feature map, but the input here is already a vector of "
                f"{shape[0]} ({words.flat} or {words.gap} came before it)"
            )
        return shape  # type: ignore[return-value]

    def check(h: int, w: int) -> None:
        if h < 1 or w < 1:
            _, h0, w0 = shape
            raise fail(
                f"{name} turns the {h0}x{w0} map into {h}x{w}: the input is too small for "
                f"{words.whole} (use {words.size}, less pooling, or padding)"
            )

    a, kind = tok.args, tok.kind
    if kind == "conv":
        c, h, w = need_map()
        k, s, p = a["kernel"], a["stride"], a["padding"]
        h2, w2 = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        check(h2, w2)
        bias = nxt is None or nxt.kind != "bn"  # a BatchNorm next would cancel the bias
        return [nn.Conv2d(c, a["width"], k, stride=s, padding=p, bias=bias)], (a["width"], h2, w2)
    if kind == "res":
        c, h, w = need_map()
        s = a["stride"]
        h2, w2 = (h - 1) // s + 1, (w - 1) // s + 1  # 3x3 conv, padding 1, stride s
        return [ResBlock(c, a["width"], s, act)], (a["width"], h2, w2)
    if kind in ("pool", "avgpool"):
        c, h, w = need_map()
        k, s = a["size"], a["stride"]
        h2, w2 = (h - k) // s + 1, (w - k) // s + 1
        check(h2, w2)
        pool = nn.MaxPool2d(k, s) if kind == "pool" else nn.AvgPool2d(k, s)
        return [pool], (c, h2, w2)
    if kind == "flat":
        c, h, w = need_map()
        return [Flatten()], (c * h * w,)  # (N, C, H, W) -> (N, C*H*W)
    if kind == "gap":
        c, _, _ = need_map()
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten()], (c,)  # (N, C, H, W) -> (N, C)
    if kind == "dense":
        if len(shape) != 1:
            c, h, w = shape
            raise fail(
                f"{name} needs a vector, but the input here is a {c}x{h}x{w} feature map: "
                f"put {words.flat} or {words.gap} before it"
            )
        bias = nxt is None or nxt.kind != "bn"
        return [nn.Linear(shape[0], a["width"], bias=bias)], (a["width"],)
    if kind == "bn":
        norm = nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])
        return [norm], shape
    if kind == "drop":
        return [Dropout(a["p"])], shape
    if kind == "act":
        cls = ACTIVATIONS[a["name"]]
        return ([cls()] if cls else []), shape
    if (
        kind == "softmax"
    ):  # checked by _check_softmax: it ends the output layer, the loss applies it
        return [], shape
    raise AssertionError(f"unhandled token kind {kind}")


def is_spec(name: str) -> bool:
    """Whether a model name is meant as a layer spec: it has a ``-`` (a bad spec then gets
    its pointed error) or it reads as one token (``flat``, ``conv32``).

    Example:
        >>> is_spec("conv32-pool-flat"), is_spec("flat"), is_spec("vgg_smal")
        (True, True, False)
    """
    if "-" in name:
        return True
    try:
        parse_spec(name)
    except SpecError:
        return False
    return True


@register_model(
    "spec",
    description="your own net in one line (a layer spec): --model conv32-pool-flat-dense10",
    input_size=(28, 28),
    in_channels=1,
    num_classes=10,
    spec=DEFAULT_SPEC,
    activation="relu",
)
def spec_model(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    spec: str,
    activation: str,
) -> SpecNet:
    """A net from a layer spec (see :mod:`deepstart.models.spec`); the default ``spec`` is
    the Keras CIFAR example with 'same' padding: two blocks of two convs, then dense 256.

    Args:
        in_channels: image channels C.
        num_classes: the model's outputs: the spec's last dense when it has this many
            units, else a linear layer appended to the spec.
        input_size: image ``(H, W)``.
        spec: the layers, e.g. ``"conv32-conv32-pool-drop.25-flat-dense256-drop.5"``.
        activation: the default activation after conv and dense layers (``relu``,
            ``gelu``, ``silu``, ``tanh``, ``sigmoid``, ``elu``, ``selu``, ``softplus`` or
            ``linear`` for none).

    Example:
        >>> create_model("conv16-pool-gap", input_size=(16, 16))(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """
    return build_spec(
        spec,
        in_channels=in_channels,
        num_classes=num_classes,
        input_size=input_size,
        activation=activation,
    )
