"""Scoring a model on a split: the out-of-memory-safe pass every task uses, and what an
image classifier measures with it (loss, accuracy overall and per class, probabilities).

The functions take the Learner and leave it as they found it (train/eval mode included);
:class:`~deepstart.train.task.Classification` calls them, and
:mod:`deepstart.train.regression` holds the regression counterparts.

Example:
    >>> out = score(learn, learn.batches(learn.data.valid))
    >>> out["loss"], out["accuracy"], out["probs"].shape  # nats, fraction, (N, K)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from deepstart.data.dataset import ImageSet, conform_images
from deepstart.data.tensors import TensorSet
from deepstart.device import OUT_OF_MEMORY, release_cached_memory
from deepstart.errors import ConfigError
from deepstart.train.precompute import FeatureBatches

if TYPE_CHECKING:
    from deepstart.train.learner import Learner


def resolve_split(data: Any, split: str | ImageSet | TensorSet) -> Any:
    """The split named ``split`` ("train", "valid", "test"; test falls back to valid when the
    data has none), or ``split`` itself when it is already a set of items."""
    if isinstance(split, (ImageSet, TensorSet)):
        return split
    if split == "test":
        return data.test if data.test is not None else data.valid
    if split in ("valid", "train"):
        return getattr(data, split)
    raise ConfigError(f"unknown split {split!r}; use train, valid or test")


def score(learn: Learner, dl: Any) -> dict[str, Any]:
    """``learn.task.score`` of the batches ``dl`` in eval mode; when the device runs out of
    memory it halves the evaluation batch and starts again (no gradients are kept, so only
    speed depends on the batch size).

    A pass over no items measured nothing: its loss is NaN (written as null), never the 0.0
    of an empty sum, which would read as a perfect score."""
    while True:
        try:
            out = learn.task.score(learn, dl)
            # (A distributed classifier's shard may be empty while the split is not; its
            # scorer sums over the ranks and settles this itself.)
            if len(out["target"]) == 0 and getattr(dl, "world", 1) == 1:
                out["loss"] = math.nan
            return out
        except OUT_OF_MEMORY as e:
            if dl.batch_size < 2:
                raise
            old, dl.batch_size = dl.batch_size, dl.batch_size // 2
            release_cached_memory(learn.device)
            learn.log(
                f"out of memory while evaluating at batch size {old} "
                f"({type(e).__name__}); retrying with {dl.batch_size}"
            )


@torch.no_grad()
def score_logits(learn: Learner, dl: Any) -> dict[str, Any]:
    """Mean cross-entropy (nats), accuracy, and the per-item ``pred`` ``(N,)``, ``target``
    ``(N,)`` and softmax ``probs`` ``(N, K)`` (on the CPU) of one pass over ``dl``.

    In a distributed fit each rank holds a shard: loss and accuracy are summed over the
    ranks (so they describe the whole split); pred, target and probs stay this rank's.
    """
    # cached features (precompute) go through the head only
    net = learn.model.head if isinstance(dl, FeatureBatches) else learn.model
    was_training = learn.model.training
    learn.model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=learn.device)
    preds, targets, probs = [], [], []
    for xb, yb in dl:
        with learn._autocast():
            logits = net(xb)
        logits = logits.float()
        total_loss += F.cross_entropy(logits, yb, reduction="sum").double()
        p = logits.softmax(dim=1)
        probs.append(p.cpu())
        preds.append(p.argmax(dim=1).cpu())
        targets.append(yb.cpu())
    learn.model.train(was_training)
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)
    target = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.int64)
    loss, correct, n = float(total_loss), float((pred == target).sum()), len(target)
    if getattr(dl, "world", 1) > 1 and learn.dist is not None:
        loss, correct, n = learn.dist.sum([loss, correct, float(n)])
    return {
        "loss": loss / n if n else math.nan,
        "accuracy": correct / n if n else math.nan,
        "pred": pred,
        "target": target,
        "probs": torch.cat(probs) if probs else torch.zeros(0, learn.num_classes),
    }


def train_stats(learn: Learner) -> dict | None:
    """The training images' input statistics (:func:`deepstart.data.mismatch.input_stats`),
    computed from ``learn.data.train`` the first time they are needed; None for non-images."""
    from deepstart.data.mismatch import input_stats

    train = getattr(learn.data, "train", None)
    if learn.train_stats is None and isinstance(train, ImageSet):
        learn.train_stats = input_stats(train.images)
    return learn.train_stats


def _input_warnings(learn: Learner, split: str | ImageSet, images: ImageSet) -> list[str]:
    """What looks prepared differently from the training images (each also logged)."""
    from deepstart.data.mismatch import check_inputs

    train_stats(learn)
    name = f"{split} images" if isinstance(split, str) else "these images"
    warnings = check_inputs(learn.train_stats, images.images, what=name)
    for w in warnings:
        learn.log(f"warning: {w}")
    return warnings


def evaluate_images(
    learn: Learner, split: str | ImageSet, *, probs: bool = False
) -> dict[str, Any]:
    """Loss (nats and bits), accuracy overall and per class of a classifier on ``split``
    (see :meth:`Learner.evaluate`); ``probs=True`` adds the ``(N, K)`` probabilities."""
    images = resolve_split(learn.data, split)
    warnings: list[str] = []
    if learn.input_check and isinstance(images, ImageSet) and len(images):
        warnings = _input_warnings(learn, split, images)
    images = conform_images(images, learn.preprocess)
    out = score(learn, learn.batches(images))
    k = learn.num_classes
    per_class = []
    for c in range(k):
        mask = out["target"] == c
        n_c = int(mask.sum())
        acc = float((out["pred"][mask] == c).double().mean()) if n_c else math.nan
        per_class.append({"class": learn.data.classes[c], "n": n_c, "accuracy": acc})
    return {
        "split": split if isinstance(split, str) else "custom",
        "n": len(images),
        "loss": out["loss"],
        "loss_bits": out["loss"] / math.log(2),
        "chance_bits": math.log2(k) if k > 1 else 0.0,
        "accuracy": out["accuracy"],
        "per_class": per_class,
        "input_warnings": warnings,
        **({"probs": out["probs"]} if probs else {}),
    }


def as_image_set(images: torch.Tensor | np.ndarray, classes: list[str]) -> ImageSet:
    """uint8 images shaped ``(N, C, H, W)``, ``(N, H, W)`` or ``(N, H, W, C)`` as an
    unlabelled ImageSet of ``(N, C, H, W)`` (at most 3 channels: alpha is dropped)."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if x.dtype != torch.uint8:
        raise ConfigError(f"predict wants uint8 images (0-255), got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    return ImageSet(x[:, :3].contiguous(), torch.zeros(len(x)), list(classes))


@torch.no_grad()
def predict_images(learn: Learner, images: torch.Tensor | np.ndarray | ImageSet) -> torch.Tensor:
    """Class probabilities ``(N, K)`` on the CPU (see :meth:`Learner.predict`)."""
    if not isinstance(images, ImageSet):
        images = as_image_set(images, learn.data.classes)
    images = conform_images(images, learn.preprocess)
    return score(learn, learn.batches(images))["probs"]


class EvaluateMixin:
    """The Learner's ways of using its model: ``evaluate`` and ``predict``, asked of its task."""

    data: Any
    task: Any

    def evaluate(
        self, split: str | ImageSet | TensorSet = "test", *, probs: bool = False
    ) -> dict[str, Any]:
        """Scores on a split ("test", falling back to valid without one; "valid", "train") or
        on a set of items: loss, accuracy overall and per class (``probs=True`` adds the
        ``(N, K)`` probabilities, a tensor); for regression loss, max_error, rms_error and
        mean_error of ``|f(x) - y|``. Example: ``learn.evaluate()["accuracy"]``."""
        return self.task.evaluate(self, split, probs=probs)

    def _split(self, split: str | ImageSet | TensorSet) -> Any:
        return resolve_split(self.data, split)

    @torch.no_grad()
    def predict(self, images: torch.Tensor | np.ndarray | ImageSet) -> torch.Tensor:
        """Class probabilities ``(N, K)`` for uint8 images ``(N, C, H, W)``, ``(N, H, W)`` or
        ``(N, H, W, C)``, converted the way the training data was (any size and channels);
        for regression the outputs ``(N, E)`` for x shaped ``(N,)`` or ``(N, D)``."""
        return self.task.predict(self, images)
