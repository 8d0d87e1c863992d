"""ResNets: torchvision's ``resnet18/34/50`` (same parameter names) and CIFAR-style ResNets.

The ImageNet ResNets (He et al. 2015, torchvision's "v1.5" with the stride on the 3x3 conv of
a bottleneck) name every parameter and buffer exactly as torchvision does (``conv1.weight``,
``bn1.running_mean``, ``layer1.0.downsample.0.weight``, ``fc.weight``...), so a torchvision or
timm ImageNet state dict loads as it is (see :func:`deepstart.models.pretrained.load_pretrained`).
That is why the modules sit directly on the model instead of under ``body``/``classifier``:
:class:`ResNet` overrides ``features``/``head``/``reset_head`` instead.

The CIFAR ResNets (He et al. 2015, section 4.2: ``resnet20`` ... ``resnet110``) start with a
3x3 conv and no max-pool, and have three stages of width 16/32/64 for 32x32 inputs; their
shortcuts that change shape are 1x1 conv + BatchNorm projections (option B) rather than the
paper's zero padding, which adds about 1% parameters and keeps one block type for all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deepstart.models.pretrained import IMAGENET_MEAN, IMAGENET_STD
from deepstart.models.registry import Classifier, ModelError, register_model


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    # No bias: BatchNorm follows every conv and would cancel it.
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs and a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``downsample`` (1x1 conv + BN) is the shortcut when the stride or width changes, else the
    identity. Attribute names are torchvision's.
    """

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = conv3x3(c_in, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(width, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4, plus a shortcut (torchvision's)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = conv1x1(c_in, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, c_out)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and c_in == c_out:
        return None  # no module, so no `downsample.*` keys, as in torchvision
    return nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))


class ResNet(Classifier):
    """A ResNet with torchvision's module names: ``conv1 bn1 relu maxpool layer1..layerK
    avgpool fc``.

    ``features(x)`` is the last stage's feature map ``(N, C, h, w)`` (what Grad-CAM looks at);
    ``head(f)`` is global average pool, flatten and ``fc``. Any input size works: the pool makes
    the head independent of it.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        depths: blocks per stage, e.g. ``(2, 2, 2, 2)`` for resnet18.
        widths: block width per stage, e.g. ``(64, 128, 256, 512)``; every stage after the
            first halves the resolution.
        in_channels: image channels C (``conv1`` takes them).
        num_classes: outputs of ``fc``.
        stem: ``"imagenet"`` (7x7 stride-2 conv + 3x3 stride-2 max-pool: /4) or ``"cifar"``
            (3x3 stride-1 conv, no pool).

    Example:
        >>> net = ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), 3, 10)
        >>> net.features(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 512, 2, 2])
    """

    # The normalisation torchvision's pretrained weights expect (in [0, 1] pixel units).
    pretrained_stats = (IMAGENET_MEAN, IMAGENET_STD)

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: Sequence[int],
        widths: Sequence[int],
        in_channels: int,
        num_classes: int,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        if len(depths) != len(widths) or min(depths, default=0) < 1 or min(widths) < 1:
            raise ModelError(
                f"a ResNet needs one positive depth and width per stage, "
                f"got depths={list(depths)} widths={list(widths)}"
            )
        c = int(widths[0])
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, c, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        elif stem == "cifar":
            self.conv1 = conv3x3(in_channels, c)
            self.maxpool = nn.Identity()  # no parameters, so no keys: the names stay torchvision's
        else:
            raise ModelError(f"unknown ResNet stem {stem!r}; use 'imagenet' or 'cifar'")
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.stage_names: list[str] = []
        for i, (depth, width) in enumerate(zip(depths, widths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(int(depth)):
                blocks.append(block(c, int(width), stride if j == 0 else 1))
                c = int(width) * block.expansion
            name = f"layer{i + 1}"
            setattr(self, name, nn.Sequential(*blocks))
            self.stage_names.append(name)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c, num_classes)
        # torchvision's initialisation, so a model trained from scratch starts the same way.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) -> (N, 64, H/4, W/4) for the ImageNet stem (H, W for the CIFAR one),
        # then each stage after the first halves the side: (N, c_last, h, w).
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def head(self, f: torch.Tensor) -> torch.Tensor:
        # (N, C, h, w) -> (N, C, 1, 1) -> (N, C) -> (N, num_classes)
        return self.fc(torch.flatten(self.avgpool(f), 1))

    def reset_head(self, num_classes: int) -> None:
        """Replace ``fc`` with a fresh ``nn.Linear`` for ``num_classes`` outputs."""
        old = self.fc
        self.fc = nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype)
        if hasattr(self, "arch"):
            self.arch = {**self.arch, "num_classes": int(num_classes)}

    def layer_groups(self) -> list[list[nn.Module]]:
        """Three groups, input to output: stem + first half of the stages, the other stages,
        ``fc`` (fastai's split), for discriminative learning rates and freezing.

        Example:
            >>> [len(g) for g in create_model("resnet18").layer_groups()]
            [4, 2, 1]
        """
        stages = [getattr(self, name) for name in self.stage_names]
        half = len(stages) // 2
        return [[self.conv1, self.bn1, *stages[:half]], stages[half:], [self.fc]]


def _imagenet_resnet(
    block: type[BasicBlock] | type[Bottleneck],
    depths: Sequence[int],
    in_channels: int,
    num_classes: int,
) -> ResNet:
    return ResNet(block, depths, (64, 128, 256, 512), in_channels, num_classes)


_IMAGENET = {"input_size": (224, 224), "in_channels": 3, "num_classes": 1000, "head": "fc"}


@register_model(description="ResNet-18 (torchvision names; ImageNet weights load)", **_IMAGENET)
def resnet18(*, in_channels: int, num_classes: int, input_size: tuple[int, int]) -> ResNet:
    """torchvision's resnet18: BasicBlocks (2, 2, 2, 2); 11,689,512 parameters at 1000 classes.

    ``input_size`` is not needed to build it (any size works; 224x224 is what the ImageNet
    weights saw); it is accepted so every model takes the same arguments.

    Example:
        >>> create_model("resnet18", num_classes=10).features(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 512, 7, 7])
    """
    return _imagenet_resnet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes)


@register_model(description="ResNet-34 (torchvision names; ImageNet weights load)", **_IMAGENET)
def resnet34(*, in_channels: int, num_classes: int, input_size: tuple[int, int]) -> ResNet:
    """torchvision's resnet34: BasicBlocks (3, 4, 6, 3); 21,797,672 parameters at 1000 classes.

    Example:
        >>> create_model("resnet34", num_classes=10)(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 10])
    """
    return _imagenet_resnet(BasicBlock, (3, 4, 6, 3), in_channels, num_classes)


@register_model(description="ResNet-50 (torchvision names; ImageNet weights load)", **_IMAGENET)
def resnet50(*, in_channels: int, num_classes: int, input_size: tuple[int, int]) -> ResNet:
    """torchvision's resnet50: Bottlenecks (3, 4, 6, 3); 25,557,032 parameters at 1000 classes.

    Example:
        >>> create_model("resnet50", num_classes=10).features(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 2048, 7, 7])
    """
    return _imagenet_resnet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes)


_CIFAR = {"input_size": (32, 32), "in_channels": 3, "num_classes": 10, "head": "fc"}


def _cifar_resnet(depth: int, in_channels: int, num_classes: int) -> ResNet:
    n = (depth - 2) // 6  # 3 stages of n blocks of 2 convs, plus conv1 and fc: depth = 6n + 2
    return ResNet(BasicBlock, (n, n, n), (16, 32, 64), in_channels, num_classes, stem="cifar")


@register_model(
    description="CIFAR ResNet-20 (He et al.): 16/32/64 wide, ~0.27M params",
    # AdamW's default 1e-3 is far too low here: the LR finder's valleys on CIFAR-10 sat at
    # 1.8-4.5e-2. At 2e-2, 5 epochs: 79.04-79.80% on seeds 0-4, where 1e-3 gave 71.59% and
    # 72.37% on seeds 0-1 (docs/benchmarks.md, session 22). resnet56 is not measured yet.
    training={"lr": 2e-2},
    **_CIFAR,
)
def resnet20(*, in_channels: int, num_classes: int, input_size: tuple[int, int]) -> ResNet:
    """He et al.'s CIFAR ResNet-20: 3x3 stem, 3 stages of 3 BasicBlocks, widths 16/32/64.

    A 32x32 input gives an 8x8 feature map (~91.3% on CIFAR-10 in the paper).

    Example:
        >>> create_model("resnet20").features(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 64, 8, 8])
    """
    return _cifar_resnet(20, in_channels, num_classes)


@register_model(description="CIFAR ResNet-56 (He et al.): 16/32/64 wide, ~0.86M params", **_CIFAR)
def resnet56(*, in_channels: int, num_classes: int, input_size: tuple[int, int]) -> ResNet:
    """He et al.'s CIFAR ResNet-56: 3x3 stem, 3 stages of 9 BasicBlocks, widths 16/32/64.

    Example:
        >>> create_model("resnet56").features(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 64, 8, 8])
    """
    return _cifar_resnet(56, in_channels, num_classes)
