"""Small conv nets: the two Keras examples (``mnist_cnn``, ``keras_cifar_cnn``) and ``vgg_small``.

Each builder returns a :class:`~deepstart.models.basic.Net` whose ``body`` ends at the last
feature map ``(N, C, h, w)`` (what Grad-CAM looks at) and whose ``classifier`` starts at the
flatten or global pool. Flatten sizes are computed from ``input_size`` with the same integer
arithmetic the layers do, so any input size works and one that is too small fails at build time
with a :class:`ModelError` rather than at the first batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from deepstart.models.basic import Net
from deepstart.models.layers import Dropout, Flatten
from deepstart.models.registry import ModelError, register_model


def _feature_size(
    name: str, input_size: tuple[int, int], side: Callable[[int], int]
) -> tuple[int, int]:
    """The body's output ``(h, w)`` for ``input_size``, or a ModelError naming the minimum.

    ``side`` maps one input side length to the feature map's, and is monotonic, so the smallest
    usable input is found by counting up.
    """
    h, w = (int(s) for s in input_size)
    if side(h) >= 1 and side(w) >= 1:
        return side(h), side(w)
    need = next(n for n in range(1, 4097) if side(n) >= 1)
    raise ModelError(f"{name} needs input at least {need}x{need}, got {h}x{w}")


def _keras_init(model: nn.Module) -> nn.Module:
    # Keras initialises Conv2D and Dense with glorot_uniform and zero biases; matching it keeps
    # the learning curves of the Keras examples (and the notes built on them) comparable.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


@register_model(
    description="the Keras mnist_cnn example: 2 convs, max-pool, dense 128 (~99% on MNIST)",
    input_size=(28, 28),
    in_channels=1,
    num_classes=10,
    # Keras trained it 12 epochs to 99.25%; one-cycle AdamW alone ended at 99.22% (seed 0).
    # Small shifts, turns and zooms of the digits buy the margin (docs/benchmarks.md).
    training={"epochs": 12, "lr": 2e-3, "label_smoothing": 0.1, "augment": "digits"},
)
def mnist_cnn(*, in_channels: int, num_classes: int, input_size: tuple[int, int]) -> Net:
    """conv32-conv64 (3x3 valid) - maxpool2 - dropout .25 | flatten - dense128 - dropout .5 - dense.

    1,199,882 parameters at 1x28x28 and 10 classes, as in Keras.

    Example:
        >>> create_model("mnist_cnn").features(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 64, 12, 12])
    """
    # Two valid 3x3 convs take 2 pixels each, then the pool halves (floor): 28 -> 24 -> 12.
    h, w = _feature_size("mnist_cnn", input_size, lambda n: (n - 4) // 2)
    body = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        # max-pool before ReLU: the same numbers and gradients (ReLU is monotonic, so it
        # commutes with max), with the ReLU on a 4x smaller map.
        nn.MaxPool2d(2),
        nn.ReLU(),
        Dropout(0.25),
    )
    classifier = nn.Sequential(
        Flatten(),  # (N, 64, h, w) -> (N, 64*h*w)
        nn.Linear(64 * h * w, 128),
        nn.ReLU(),
        Dropout(0.5),
        nn.Linear(128, num_classes),
    )
    return _keras_init(Net(body, classifier))


@register_model(
    description="the Keras CIFAR-10 example: 2 blocks of 2 convs (32, 64), dense 512",
    input_size=(32, 32),
    in_channels=3,
    num_classes=10,
    widths=(32, 64),
    hidden=512,
    # The notes' 79.35% took Keras 100 epochs (RMSprop 1e-4). One-cycle AdamW with label
    # smoothing, flips and shifts, and the mirror-pair TTA: 83.05-83.49% in 30 on five seeds
    # at a peak of 1.3e-3, where 3e-3 gave 82.27-83.16% (lower on every seed; the sweep of
    # --lr auto picks about 1.3e-3 here; docs/benchmarks.md, session 19).
    training={
        "epochs": 30,
        "lr": 1.3e-3,
        "label_smoothing": 0.1,
        "augment": "cifar",
        "tta": True,
    },
)
def keras_cifar_cnn(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    widths: Sequence[int],
    hidden: int,
) -> Net:
    """Two blocks of conv('same')-conv('valid')-maxpool2-dropout .25 | dense - dropout .5 - dense.

    Args:
        in_channels: image channels C.
        num_classes: outputs of the head.
        input_size: image ``(H, W)``; at least 10x10.
        widths: conv width of each block (default ``(32, 64)``, the Keras example's).
        hidden: width of the dense layer (default 512, the Keras example's).

    Example:
        >>> create_model("keras_cifar_cnn").features(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 64, 6, 6])
    """
    widths = [int(c) for c in widths]
    if len(widths) != 2 or min(widths) < 1 or hidden < 1:
        raise ModelError(
            f"keras_cifar_cnn needs two positive widths and a positive hidden size, "
            f"got widths={widths} hidden={hidden}"
        )
    # Per block: 'same' conv keeps the size, 'valid' takes 2, the pool halves: 32 -> 15 -> 6.
    h, w = _feature_size("keras_cifar_cnn", input_size, lambda n: ((n - 2) // 2 - 2) // 2)
    layers: list[nn.Module] = []
    c_in = in_channels
    for c in widths:
        layers += [
            nn.Conv2d(c_in, c, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, c, 3),
            nn.MaxPool2d(2),  # before the ReLU: same values, cheaper (see mnist_cnn)
            nn.ReLU(),
            Dropout(0.25),
        ]
        c_in = c
    classifier = nn.Sequential(
        Flatten(),  # (N, C, h, w) -> (N, C*h*w)
        nn.Linear(c_in * h * w, hidden),
        nn.ReLU(),
        Dropout(0.5),
        nn.Linear(hidden, num_classes),
    )
    return _keras_init(Net(nn.Sequential(*layers), classifier))


@register_model(
    description="a small VGG: blocks of two 3x3 convs + BatchNorm, global-average-pool head",
    input_size=(32, 32),
    in_channels=1,
    num_classes=10,
    width=16,
    blocks=3,
    bn=True,
    dropout=0.2,
    # AdamW's default 1e-3 is far too low for this BatchNorm net: the LR finder's valley sat
    # at 5.9e-3 to 4.5e-2 on shapes, MNIST, Fashion-MNIST and CIFAR-10 (median 2.2e-2). At
    # 2e-2 (5 epochs, one-cycle) every seed of five ended above 1e-3's: lowest 100% / 99.47% /
    # 92.41% / 76.25% against 96.50% / 99.28% / 90.07% / 67.07%; 1e-2 was lower on CIFAR-10
    # on all five (docs/benchmarks.md, session 22).
    training={"lr": 2e-2},
)
def vgg_small(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    width: int,
    blocks: int,
    bn: bool,
    dropout: float,
) -> Net:
    """Blocks of (conv3x3-[BN]-ReLU) x 2 - maxpool2, widths doubling | avgpool - dropout - dense.

    Fewer blocks are used when the input is too small to pool ``blocks`` times and keep at least
    a 2x2 feature map (28x28 and 32x32 keep 3 blocks, 8x8 gets 2); the global average pool makes
    the head independent of the input size.

    Args:
        in_channels: image channels C.
        num_classes: outputs of the head.
        input_size: image ``(H, W)``; at least 4x4.
        width: channels of the first block (default 16); each block doubles it.
        blocks: most blocks to use (default 3: widths 16, 32, 64).
        bn: BatchNorm after each conv (default True).
        dropout: dropout probability before the last layer (default 0.2).

    Example:
        >>> create_model("vgg_small").features(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 64, 4, 4])
    """
    if width < 1 or blocks < 1 or not 0.0 <= dropout < 1.0:
        raise ModelError(
            f"vgg_small needs width >= 1, blocks >= 1 and dropout in [0, 1), "
            f"got width={width} blocks={blocks} dropout={dropout}"
        )
    # Each block halves the side (floor); use as many as keep the smaller side >= 2.
    side = min(int(s) for s in input_size)
    n_blocks = 0
    while n_blocks < blocks and side // 2 ** (n_blocks + 1) >= 2:
        n_blocks += 1
    if n_blocks == 0:
        h, w = input_size
        raise ModelError(f"vgg_small needs input at least 4x4, got {h}x{w}")

    layers: list[nn.Module] = []
    c_in = in_channels
    for i in range(n_blocks):
        c = width * 2**i
        for _ in range(2):
            # With BatchNorm right after, a conv bias would only be cancelled by the BN mean.
            layers.append(nn.Conv2d(c_in, c, 3, padding=1, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.ReLU())
            c_in = c
        layers.append(nn.MaxPool2d(2))
    body = nn.Sequential(*layers)
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    classifier = nn.Sequential(
        nn.AdaptiveAvgPool2d(1),  # (N, C, h, w) -> (N, C, 1, 1)
        nn.Flatten(),  # -> (N, C)
        Dropout(dropout),
        nn.Linear(c_in, num_classes),
    )
    return Net(body, classifier)
