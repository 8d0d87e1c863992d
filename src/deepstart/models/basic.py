"""Dense models on the flattened image: ``logreg`` and ``mlp``.

They ignore the image's 2-D structure, which is the point: they are the baselines every conv net
has to beat (on MNIST about 92% for ``logreg`` and 98% for ``mlp``).

Also here: :class:`Net`, the plain ``body`` + ``classifier`` :class:`Classifier` that every
builder in ``basic`` and ``cnn`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from deepstart.models.layers import Dropout
from deepstart.models.registry import Classifier, ModelError, register_model


class Net(Classifier):
    """A :class:`Classifier` made of two modules: ``forward(x) == classifier(body(x))``.

    Args:
        body: maps images ``(N, C, H, W)`` to features (a feature map or ``(N, D)``).
        classifier: maps features to logits ``(N, num_classes)``; its last ``nn.Linear`` is
            what ``reset_head`` replaces.

    Example:
        >>> net = Net(nn.Flatten(), nn.Sequential(nn.Linear(784, 10)))
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, body: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.classifier = classifier


def flat_size(name: str, in_channels: int, input_size: tuple[int, int]) -> int:
    """The length ``C * H * W`` of a flattened image, checked to be positive.

    Example:
        >>> flat_size("logreg", 1, (28, 28))
        784
    """
    h, w = input_size
    if in_channels < 1 or h < 1 or w < 1:
        raise ModelError(
            f"{name} needs a positive input size and channel count, "
            f"got {h}x{w} with {in_channels} channels"
        )
    return in_channels * h * w


@register_model(
    description="one linear layer on the flattened image (softmax regression, ~92% on MNIST)",
    input_size=(28, 28),
    in_channels=1,
    num_classes=10,
    training={"epochs": 5, "lr": 1e-2},
)
def logreg(*, in_channels: int, num_classes: int, input_size: tuple[int, int]) -> Net:
    """Softmax regression: logits = W @ flatten(x) + b.

    Example:
        >>> create_model("logreg").classifier
        Sequential(
          (0): Linear(in_features=784, out_features=10, bias=True)
        )
    """
    d = flat_size("logreg", in_channels, input_size)
    # The body only flattens, so features(x) is the raw pixels (N, C*H*W).
    return Net(nn.Flatten(), nn.Sequential(nn.Linear(d, num_classes)))


@register_model(
    description="multilayer perceptron on the flattened image (~98% on MNIST)",
    input_size=(28, 28),
    in_channels=1,
    num_classes=10,
    training={"epochs": 10},
    hidden=(512, 256),
    dropout=0.2,
)
def mlp(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    hidden: Sequence[int],
    dropout: float,
) -> Net:
    """Flatten, then ``Linear-ReLU-Dropout`` per hidden width, then a linear head.

    Args:
        in_channels: image channels C.
        num_classes: outputs of the head.
        input_size: image ``(H, W)``.
        hidden: width of each hidden layer (default ``(512, 256)``); empty gives ``logreg``.
        dropout: dropout probability after each hidden layer (default 0.2).

    Example:
        >>> create_model("mlp", hidden=(64,))(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    widths = [int(h) for h in hidden]
    if any(h < 1 for h in widths):
        raise ModelError(f"mlp hidden widths must be positive, got {list(hidden)}")
    if not 0.0 <= dropout < 1.0:
        raise ModelError(f"mlp dropout must be in [0, 1), got {dropout}")
    d = flat_size("mlp", in_channels, input_size)
    layers: list[nn.Module] = [nn.Flatten()]  # (N, C, H, W) -> (N, C*H*W)
    for width in widths:
        layers += [nn.Linear(d, width), nn.ReLU(), Dropout(dropout)]
        d = width
    # features(x) is the last hidden layer's activations (N, hidden[-1]).
    return Net(nn.Sequential(*layers), nn.Sequential(nn.Linear(d, num_classes)))
