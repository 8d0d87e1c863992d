"""Speed-tuned conv nets: ``fast_mnist`` (28x28 digits, clothes) and ``fast_cifar`` (32x32
photos), the models of the fast recipes (:mod:`deepstart.recipes`, docs/speed.md).

The shape follows the public speed-run nets (airbench, hlb-CIFAR10, Page's ResNet-9): every
block is one 3x3 conv, a 2x2 max-pool *before* BatchNorm and the activation (so those run on a
quarter of the pixels), optionally a second conv at the pooled size; three blocks take 32x32
down to 4x4 (28x28 to 3x3), a global max-pool and one linear layer make the head. Lean widths
and few layers keep the multiply-adds low, which is what a 2-core CPU pays for.

``fast_cifar`` can start with a frozen *patch-whitening* layer (Page; hlb-CIFAR10): a 2x2
conv whose filters are the principal components of the training images' 2x2 patches,
scaled to unit variance, in both signs. It is fitted from the first training batch the
model sees (a data-dependent initialisation: its filters are buffers, saved with the
weights; only its bias learns), so the first layer starts out decorrelating the colour and
neighbour pixels instead of learning to.

Example:
    >>> model = create_model("fast_cifar", in_channels=3, num_classes=10, input_size=(32, 32))
    >>> model.features(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 256, 3, 3])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deepstart.models.registry import Classifier, ModelError, register_model

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class PatchWhitening(nn.Module):
    """A 2x2 (``patch``) conv with fixed filters: the training patches' principal
    components divided by the square root of their variance, each also negated (``2 * C *
    patch**2`` output channels). Fitted on the first batch seen in training mode.

    Args:
        in_channels: image channels C.
        patch: patch side (2 keeps it cheap; the output is ``patch - 1`` pixels smaller).
        eps: added to the variances, so near-constant directions are not blown up.
    """

    def __init__(self, in_channels: int, patch: int = 2, eps: float = 5e-4) -> None:
        super().__init__()
        n = in_channels * patch * patch
        self.patch, self.eps = int(patch), float(eps)
        self.out_channels = 2 * n
        # Buffers, not parameters: they are fitted, not learned (and saved with the weights).
        self.register_buffer("weight", torch.zeros(2 * n, in_channels, patch, patch))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.bias = nn.Parameter(torch.zeros(2 * n))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set the filters from the patches of ``x`` ``(N, C, H, W)`` (normalised images)."""
        c, p = x.shape[1], self.patch
        with torch.autocast(x.device.type, enabled=False):  # an eigendecomposition wants fp32
            patches = F.unfold(x.float(), p).transpose(1, 2).reshape(-1, c * p * p)  # (M, n)
            patches = patches - patches.mean(dim=0)
            cov = patches.T @ patches / max(len(patches) - 1, 1)  # (n, n)
            var, vecs = torch.linalg.eigh(cov.double())  # ascending variances
            filters = (vecs.T / (var.clamp_min(0) + self.eps).sqrt()[:, None]).float()
        filters = filters.flip(0).reshape(-1, c, p, p)  # strongest component first
        self.weight.copy_(torch.cat([filters, -filters]))
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.fitted):
            self.fit(x)
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


def batch_norm(c: int, *, scale: bool = True, momentum: float = 0.1) -> nn.BatchNorm2d:
    """BatchNorm2d over ``c`` channels; ``scale=False`` drops the learned scale (fixed at 1,
    only the shift learns: airbench), ``momentum`` weighs each new batch in the running
    statistics (PyTorch's convention; airbench's "0.6" is 0.4 here)."""
    bn = nn.BatchNorm2d(c, momentum=momentum)
    if not scale:
        bn.register_parameter("weight", None)  # batch_norm then scales by 1
    return bn


class ConvBlock(nn.Sequential):
    """conv3x3 - maxpool2 - BN - act, then ``extra`` more conv3x3 - BN - act at the pooled size.

    Pooling before BatchNorm and the activation gives the same function class (max-pool
    commutes with a per-channel increasing map) at a quarter of their cost. ``norm`` holds
    :func:`batch_norm`'s options.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        act: type[nn.Module],
        extra: int = 0,
        norm: dict | None = None,
    ) -> None:
        norm = norm or {}
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),  # BN follows: no bias
            nn.MaxPool2d(2),
            batch_norm(c_out, **norm),
            act(),
        ]
        for _ in range(extra):
            layers += [
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                batch_norm(c_out, **norm),
                act(),
            ]
        super().__init__(*layers)


class Scale(nn.Module):
    """Multiplies by a constant: a smaller logit scale at the start (airbench's 1/9) keeps
    the first steps' softmax soft."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


class FastNet(Classifier):
    """A stem, pooling conv blocks, then global max-pool and a linear head.

    ``features(x)`` is the last block's map ``(N, C, h, w)`` (what Grad-CAM looks at),
    ``head(f)`` = max over ``h, w`` - linear - scale.

    Args:
        in_channels: image channels C.
        num_classes: outputs of the head.
        widths: output channels of the stem, then of each block (a block halves the side).
        extra: extra convs per block at the pooled size (0 or 1 is the usual).
        act: "relu", "gelu" or "silu".
        whiten: a :class:`PatchWhitening` stem (then ``widths[0]`` is unused: the whitening
            has ``2 * C * 4`` channels) instead of a conv3x3-BN-act stem.
        channels_last: keep activations NHWC: oneDNN's bf16 convolutions want it (NCHW
            makes them reorder every tensor), as do tensor cores on GPUs (bench/ablations.py).
        logit_scale: multiplies the logits.
        dirac: start each block's convs as the identity on their first ``c_in`` output
            channels (airbench's initialisation: an implicit residual, so a fresh deep net
            passes its input through; the other channels keep the random init).
        bn_scale: BatchNorm learns a scale (False: fixed at 1, only its shift learns).
        bn_momentum: BatchNorm's running-statistics momentum (PyTorch's convention, 0.1).
        space_to_depth: fold each ``k x k`` patch of pixels into ``k * k`` channels before
            the stem (``pixel_unshuffle``; 1: off). A 28x28 grey digit becomes 14x14x4: no
            layer then runs at full resolution, where a fast net's element-wise layers
            (BatchNorm, ReLU, max-pool and their gradients) cost as much as its convs.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int],
        *,
        extra: int = 0,
        act: str = "relu",
        whiten: bool = False,
        channels_last: bool = False,
        logit_scale: float = 1.0,
        dirac: bool = False,
        bn_scale: bool = True,
        bn_momentum: float = 0.1,
        space_to_depth: int = 1,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not 0 < bn_momentum <= 1:
            raise ModelError(f"bn_momentum must be in (0, 1], got {bn_momentum}")
        self.space_to_depth = _fold(space_to_depth)
        in_channels *= self.space_to_depth**2
        if len(widths) < 2 or min(widths) < 1 or extra < 0 or act not in ACTIVATIONS:
            raise ModelError(
                f"a fast net needs a stem width and at least one block width (all positive), "
                f"extra >= 0 and act in {sorted(ACTIVATIONS)}; got widths={widths} "
                f"extra={extra} act={act!r}"
            )
        activation = ACTIVATIONS[act]
        if whiten:
            white = PatchWhitening(in_channels)
            stem: nn.Module = nn.Sequential(white, activation())
            c = white.out_channels
        else:
            stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                batch_norm(widths[0], scale=bn_scale, momentum=bn_momentum),
                activation(),
            )
            c = widths[0]
        blocks: list[nn.Module] = [stem]
        norm = {"scale": bool(bn_scale), "momentum": float(bn_momentum)}
        for w in widths[1:]:
            blocks.append(ConvBlock(c, w, activation, extra, norm))
            c = w
        self.body = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.AdaptiveMaxPool2d(1),  # (N, C, h, w) -> (N, C, 1, 1)
            nn.Flatten(),
            nn.Linear(c, num_classes, bias=False),
            Scale(logit_scale),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if dirac and m.kernel_size == (3, 3):
                    with torch.no_grad():
                        nn.init.dirac_(m.weight[: m.in_channels])
        # Only the activations go NHWC (the input, converted in features; every layer keeps
        # its input's layout): the weights stay contiguous, so state dicts save as they are.
        self.channels_last = bool(channels_last)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.space_to_depth > 1:  # (N, C, H, W) -> (N, C k^2, H / k, W / k)
            x = F.pixel_unshuffle(x, self.space_to_depth)
        if not self.channels_last:
            return self.body(x)
        # Before every stage, not just the input: a 1-channel image is as NCHW as it is NHWC,
        # so the stem's output would fall back to NCHW (a no-op when it is NHWC already).
        for stage in self.body:
            x = stage(x.contiguous(memory_format=torch.channels_last))
        return x

    def stem_layers(self) -> nn.Module:
        """The whitening (or conv-BN-act) stem, before the first block."""
        return self.body[0]

    def layer_groups(self) -> list[list[nn.Module]]:
        """Stem + first half of the blocks, the other blocks, the head.

        Example:
            >>> [len(g) for g in create_model("fast_cifar").layer_groups()]
            [2, 2, 1]
        """
        stem, *blocks = list(self.body)
        half = len(blocks) // 2
        return [[stem, *blocks[:half]], blocks[half:], [self.classifier]]


def _fold(space_to_depth: float) -> int:
    if int(space_to_depth) != space_to_depth or space_to_depth < 1:
        raise ModelError(f"space_to_depth must be a whole number >= 1, got {space_to_depth}")
    return int(space_to_depth)


def _check_size(
    name: str, input_size: tuple[int, int], pools: int, whiten: bool, fold: int = 1
) -> None:
    """Each block halves the side (floor): the smallest side must survive every pool, after
    ``space_to_depth`` (``fold``) has divided it, which it must do exactly."""
    h, w = (int(s) for s in input_size)
    fold = _fold(fold)
    if h % fold or w % fold:
        raise ModelError(f"{name}: space_to_depth={fold} must divide the input size, {h}x{w}")
    need = 2**pools + (1 if whiten else 0)
    if min(h, w) < need * fold:
        raise ModelError(f"{name} needs input at least {need * fold}x{need * fold}, got {h}x{w}")


# Registered defaults both fast nets share (the options are :class:`FastNet`'s); listed after
# the width and activation options so that model.json keeps its key order.
_SPEED = {
    "channels_last": True,
    "logit_scale": 1.0,
    "dirac": False,
    "bn_scale": True,
    "bn_momentum": 0.1,
    "space_to_depth": 1,
}


@register_model(
    description="speed-tuned BN conv net for 28x28 (MNIST, Fashion-MNIST): 11M mult-adds",
    input_size=(28, 28),
    in_channels=1,
    num_classes=10,
    widths=(16, 32, 64, 128),
    extra=0,
    act="relu",
    **_SPEED,
    # Without a recipe (--model fast_mnist), AdamW's default 1e-3 is too low: the LR
    # finder's valleys sat at 3.4e-3 to 1e-2 on shapes, MNIST and Fashion-MNIST. At 6e-3
    # (mnist-fast's LR; 5 epochs, batch 128) every seed of five ended above 1e-3's, lowest
    # 100% / 99.39% / 92.54% against 99.67% / 99.23% / 91.22% (docs/benchmarks.md, session 22).
    training={"lr": 6e-3},
)
def fast_mnist(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    widths: Sequence[int],
    extra: int,
    act: str,
    channels_last: bool,
    logit_scale: float,
    dirac: bool,
    bn_scale: bool,
    bn_momentum: float,
    space_to_depth: int,
) -> FastNet:
    """conv16 stem | conv-pool-BN-ReLU x3 (32, 64, 128) | global max-pool - linear.

    The options are :class:`FastNet`'s (no whitening stem: digits need none); ``input_size``
    must be at least 8x8 with three blocks. Defaults: ReLU, no extra convs, channels-last
    activations (with bf16 autocast on the CPU, 2-3x faster steps than NCHW, docs/speed.md).

    Example:
        >>> create_model("fast_mnist").features(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 128, 3, 3])
    """
    _check_size("fast_mnist", input_size, len(widths) - 1, whiten=False, fold=space_to_depth)
    return FastNet(
        in_channels,
        num_classes,
        widths,
        extra=extra,
        act=act,
        channels_last=channels_last,
        logit_scale=logit_scale,
        dirac=dirac,
        bn_scale=bn_scale,
        bn_momentum=bn_momentum,
        space_to_depth=space_to_depth,
    )


@register_model(
    description="speed-tuned CIFAR net (airbench-like): patch whitening, 3 BN conv blocks",
    input_size=(32, 32),
    in_channels=3,
    num_classes=10,
    widths=(32, 64, 128, 256),
    extra=1,
    act="gelu",
    whiten=True,
    **_SPEED,
)
def fast_cifar(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    widths: Sequence[int],
    extra: int,
    act: str,
    whiten: bool,
    channels_last: bool,
    logit_scale: float,
    dirac: bool,
    bn_scale: bool,
    bn_momentum: float,
    space_to_depth: int,
) -> FastNet:
    """whiten2x2 | conv-pool-BN-GELU(-conv-BN-GELU) x3 (64, 128, 256) | max-pool - linear.

    The options are :class:`FastNet`'s; ``input_size`` must be at least 9x9 with three blocks
    and whitening. Defaults: GELU, one extra conv per block, the whitening stem (then
    ``widths[0]`` is unused), channels-last activations. Where they differ from airbench:
    ``logit_scale`` 1 (airbench's 1/9 suits its SGD, and slowed AdamW down here: the head's
    weights must grow 9x first), ``dirac`` off, ``bn_scale`` on (airbench: off),
    ``bn_momentum`` 0.1 (airbench: 0.4).

    Example:
        >>> create_model("fast_cifar").features(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 256, 3, 3])
    """
    _check_size("fast_cifar", input_size, len(widths) - 1, whiten, fold=space_to_depth)
    return FastNet(
        in_channels,
        num_classes,
        widths,
        extra=extra,
        act=act,
        whiten=whiten,
        channels_last=channels_last,
        logit_scale=logit_scale,
        dirac=dirac,
        bn_scale=bn_scale,
        bn_momentum=bn_momentum,
        space_to_depth=space_to_depth,
    )
