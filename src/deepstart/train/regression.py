"""What the Learner measures when it fits numbers instead of classes.

A :class:`~deepstart.data.tensors.TensorData` makes the Learner a regression learner: its
default loss is the mean squared error, and every split is scored by its loss and by the
error ``|f(x) - y|`` of the model ``f``: its largest value (``max_error``, what "fits to
1e-3" means) and its root mean square (``rms_error``).
:class:`~deepstart.train.task.Regression` calls these functions; they hold no state of
their own.

Example:
    >>> learn = Learner(function_data("sin"), create_model("fit_mlp", x_range=(-6.3, 6.3)))
    >>> learn.fit(5, 1e-3)
    >>> learn.evaluate()["max_error"]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from deepstart.data.tensors import TensorBatches, TensorSet
from deepstart.errors import ConfigError
from deepstart.train.evaluation import resolve_split, score

if TYPE_CHECKING:
    from deepstart.train.learner import Learner

LOSSES = {"mse": nn.MSELoss, "mae": nn.L1Loss}


def make_regression_loss(name: str = "mse") -> nn.Module:
    """``"mse"`` (mean squared error, the default) or ``"mae"`` (mean absolute error).

    Example:
        >>> make_regression_loss("mae")(torch.zeros(3, 1), torch.ones(3, 1))
        tensor(1.)
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown regression loss {name!r}; use {' or '.join(LOSSES)}")
    return LOSSES[name]()


def describe_loss(loss_func: Any) -> str:
    """A few words naming the loss, for the header of the progress lines."""
    if isinstance(loss_func, nn.MSELoss):
        return "mean squared error"
    if isinstance(loss_func, nn.L1Loss):
        return "mean absolute error"
    return type(loss_func).__name__


def value_batches(
    learn: Learner, points: TensorSet, *, train: bool = False, shard: bool = False
) -> TensorBatches:
    """Batches of the points as they are (no normalisation) on the learner's device; an
    epoch is ``data.passes`` passes over the training points, evaluation uses twice the
    training batch."""
    if shard:
        raise ConfigError("distributed training is for image classifiers")
    return TensorBatches(
        points,
        learn.batch_size if train else learn.batch_size * 2,
        device=learn.device,
        shuffle=train,
        drop_last=train and len(points) > learn.batch_size,
        seed=learn.seed,
        passes=learn.data.passes if train else 1,
    )


@torch.no_grad()
def score_values(learn: Learner, dl: TensorBatches) -> dict[str, Any]:
    """Loss, max and RMS error and the predictions of ``dl`` in eval mode.

    The loss is the learner's own ``loss_func`` (a mean per batch, weighted by batch size),
    so train and valid losses are the same quantity.
    """
    model = learn.model
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=learn.device)
    preds, targets = [], []
    for xb, yb in dl:
        with learn._autocast():
            pred = model(xb)
        pred = pred.float()
        total_loss += learn.loss_func(pred, yb).double() * len(yb)
        preds.append(pred.cpu())
        targets.append(yb.cpu())
    model.train(was_training)
    n = max(dl.num_items, 1)
    pred = torch.cat(preds) if preds else torch.zeros(0, 1)
    target = torch.cat(targets) if targets else torch.zeros(0, 1)
    err = (pred.double() - target.double()).abs()  # (N, E)
    return {
        "loss": float(total_loss) / n,
        "max_error": float(err.max()) if err.numel() else math.nan,
        "rms_error": float(err.square().mean().sqrt()) if err.numel() else math.nan,
        "pred": pred,
        "target": target,
    }


def evaluate_values(learn: Learner, split: str | TensorSet) -> dict[str, Any]:
    """Loss, max, RMS and mean absolute error on a split (see ``Learner.evaluate``)."""
    points = resolve_split(learn.data, split)
    out = score(learn, learn.batches(points))
    err = (out["pred"].double() - out["target"].double()).abs()
    return {
        "split": split if isinstance(split, str) else "custom",
        "n": len(points),
        "loss": out["loss"],
        "max_error": out["max_error"],
        "rms_error": out["rms_error"],
        "mean_error": float(err.mean()) if err.numel() else math.nan,
    }


def predict_values(learn: Learner, x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The model's ``(N, E)`` outputs for x shaped ``(N,)`` or ``(N, D)``, on the CPU."""
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32)
    points = TensorSet(x, torch.zeros(len(x), learn.data.out_features))
    return score(learn, learn.batches(points))["pred"]


def baseline_loss(learn: Learner) -> float:
    """The valid loss of knowing nothing: always predicting the mean of the training y."""
    y_train = learn.data.train.y.to(learn.device)
    y_valid = learn.data.valid.y.to(learn.device)
    guess = y_train.mean(dim=0, keepdim=True).expand_as(y_valid)
    with torch.no_grad():
        return float(learn.loss_func(guess, y_valid))
