"""Loss builders: cross-entropy with label smoothing and per-class weights.

``make_loss`` returns a plain ``nn.CrossEntropyLoss``; its class weights are a buffer on the
module, so ``loss.to(device)`` moves them with it.

Example:
    >>> loss = make_loss(label_smoothing=0.1, class_weights="balanced",
    ...                  train_labels=data.train.labels, num_classes=data.num_classes)
    >>> learn = Learner(data, model, loss_func=loss)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from deepstart.errors import ConfigError


def balanced_class_weights(
    labels: Sequence[int] | torch.Tensor | np.ndarray, num_classes: int | None = None
) -> torch.Tensor:
    """Per-class weights ``n_samples / (n_classes * count_c)``, as sklearn's "balanced".

    A class with half the average count gets weight 2, so every class contributes the same
    total weight to the loss.

    Args:
        labels: the training labels, class indices in ``[0, num_classes)``.
        num_classes: how many classes there are; defaults to ``max(labels) + 1``.

    Returns:
        A float32 tensor ``(num_classes,)``.

    Raises:
        ConfigError: no labels, a label out of range, or a class with no samples (its weight
            would be infinite).

    Example:
        >>> balanced_class_weights([0, 0, 0, 1])
        tensor([0.6667, 2.0000])
    """
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    y = y.flatten().to("cpu", torch.int64)
    if len(y) == 0:
        raise ConfigError("class_weights='balanced' needs the training labels; got none")
    k = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ConfigError(
            f"training labels must lie in [0, {k}); got range [{int(y.min())}, {int(y.max())}]"
        )
    counts = torch.bincount(y, minlength=k)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ConfigError(
            f"class_weights='balanced' needs at least one training sample per class; "
            f"class(es) {empty} have none (counts {counts.tolist()})"
        )
    # float64 for the division so the weights are exact to float32 precision.
    return (len(y) / (k * counts.double())).float()


def make_loss(
    label_smoothing: float = 0.0,
    class_weights: str | Sequence[float] | torch.Tensor | None = None,
    num_classes: int | None = None,
    train_labels: Sequence[int] | torch.Tensor | np.ndarray | None = None,
) -> nn.Module:
    """Cross-entropy with optional label smoothing and class weights.

    Args:
        label_smoothing: in ``[0, 1)``; the target puts ``1 - s + s/K`` on the true class and
            ``s/K`` on every other (PyTorch's definition).
        class_weights: None (all classes count the same), "balanced" (computed from
            ``train_labels``, see :func:`balanced_class_weights`) or one non-negative weight
            per class.
        num_classes: the class count; checks the length of a weight list and makes
            "balanced" notice a class that has no training samples at the end of the range.
        train_labels: the training labels, needed for "balanced".

    Returns:
        An ``nn.CrossEntropyLoss``; the weights (if any) are its ``weight`` buffer.

    Raises:
        ConfigError: a bad smoothing value, an unknown weighting, a wrong-length or negative
            weight list, or a class with no samples under "balanced".

    Example:
        >>> loss = make_loss(label_smoothing=0.1, class_weights=[1.0, 3.0])
        >>> loss(torch.zeros(4, 2), torch.tensor([0, 1, 1, 0]))
        tensor(0.6931)
    """
    s = float(label_smoothing)
    if not 0.0 <= s < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    weight = None
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ConfigError(
                f"unknown class_weights {class_weights!r}; use None, 'balanced' or a list"
            )
        if train_labels is None:
            raise ConfigError("class_weights='balanced' needs train_labels")
        weight = balanced_class_weights(train_labels, num_classes)
    elif class_weights is not None:
        weight = _check_weights(class_weights, num_classes)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=s)


def _check_weights(
    class_weights: Sequence[float] | torch.Tensor, num_classes: int | None
) -> torch.Tensor:
    w = torch.as_tensor(
        class_weights.detach().cpu() if torch.is_tensor(class_weights) else list(class_weights),
        dtype=torch.float32,
    ).flatten()
    if num_classes is not None and len(w) != num_classes:
        raise ConfigError(f"class_weights has {len(w)} values but there are {num_classes} classes")
    values = w.tolist()
    if not values or any(not math.isfinite(v) or v < 0 for v in values) or not any(values):
        raise ConfigError(
            f"class_weights must be finite, non-negative and not all zero; got {values}"
        )
    return w
