"""Scoring a model on a split: the out-of-memory-safe pass every task uses, and what an
image classifier measures with it (loss, accuracy overall and per class, probabilities), and
its predictions of new images (:func:`predict_images`, the same as a bundle's).

The functions take the Learner and leave it as they found it (train/eval mode included);
:class:`~deepstart.train.task.Classification` calls them, and
:mod:`deepstart.train.regression` holds the regression counterparts.

Example:
    >>> out = score(learn, learn.batches(learn.data.valid))
    >>> out["loss"], out["accuracy"], out["probs"].shape  # nats, fraction, (N, K)
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from deepstart.data.dataset import ImageSet, conform_images
from deepstart.data.inputs import Prediction, is_single, predict_inputs
from deepstart.data.tensors import TensorSet
from deepstart.device import OUT_OF_MEMORY, release_cached_memory
from deepstart.errors import ConfigError, DataError
from deepstart.models.saving import model_files, write_bundle
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


@torch.no_grad()
def image_probabilities(learn: Learner, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(N, K)`` on the CPU of ``(N, C, H, W)`` uint8 images already at
    the learner's size and channels (normalised as its training batches were)."""
    labels = torch.zeros(len(images), dtype=torch.int64)
    return score(learn, learn.batches(ImageSet(images, labels, list(learn.data.classes))))["probs"]


def predict_images(learn: Learner, inputs: Any, *, top_k: int = 3) -> Prediction | list[Prediction]:
    """:class:`~deepstart.data.inputs.Prediction` objects for anything a bundle predicts
    (see :meth:`EvaluateMixin.predict`): one for one image, a list for several."""
    stats = train_stats(learn) if learn.input_check else None
    preds = predict_inputs(
        lambda x: image_probabilities(learn, x),
        inputs,
        learn.preprocess,
        list(learn.data.classes),
        top_k=top_k,
        train_stats=stats,
        log=lambda message: learn.log(f"warning: {message}"),
    )
    if not is_single(inputs):
        return preds
    (pred,) = preds
    if pred.error is not None:  # one file asked for: its error is the answer, said loudly
        raise DataError(f"{pred.source}: {pred.error}")
    return pred


def image_preds(learn: Learner, x: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(probs (N, K), targets (N,))`` of a split or an ImageSet; ``(probs, None)`` of
    images given any way :meth:`EvaluateMixin.predict` takes them (see ``get_preds``)."""
    if isinstance(x, (str, ImageSet)):
        images = conform_images(resolve_split(learn.data, x), learn.preprocess)
        out = score(learn, learn.batches(images))
        return out["probs"], out["target"]
    preds = predict_images(learn, [x] if is_single(x) else x)
    failed = [p for p in preds if p.error is not None]
    if failed:
        raise DataError(f"{failed[0].source}: {failed[0].error}")
    k = learn.num_classes
    return (torch.stack([p.probs for p in preds]) if preds else torch.zeros(0, k)), None


def export_learner(learn: Learner, path: str | os.PathLike) -> Path:
    """Write the learner's model as a bundle (see :meth:`EvaluateMixin.export`)."""
    extra: dict[str, Any] = {"dataset": getattr(learn.data, "name", None)}
    if learn.task.name == "classification":
        extra["input_stats"] = train_stats(learn)  # bundles warn on images unlike these
    else:
        extra["task"] = learn.task.name
    files = model_files(
        learn.model,
        classes=list(getattr(learn.data, "classes", None) or []),
        preprocess=learn.preprocess,
        extra=extra,
    )
    return write_bundle(files, path)


class EvaluateMixin:
    """The Learner's ways of using its model: ``evaluate``, ``predict`` and ``get_preds``,
    asked of its task."""

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

    def predict(self, x: Any, *, top_k: int | None = None) -> Any:
        """Predict new images the way a bundle of this model would
        (:func:`deepstart.ship.bundle.load_bundle` ``(...).predict``): the same decoding, the
        same resize and normalisation, the same :class:`~deepstart.data.inputs.Prediction`
        (``label``, ``probability``, ``top``, ``probs``).

        ``x`` is a file path, a PIL image, an array or tensor (uint8, or float in [0, 1]; HW,
        HWC or CHW), which give one Prediction (with the ``top_k`` classes, 3 by default);
        or a list of those, a folder, a glob, a 4-D batch (NCHW or NHWC) or an ImageSet,
        which give a list. A 3-D array whose layout cannot be told (``(3, 32, 3)``) is
        refused: pass a PIL image. An unreadable file raises when asked for alone, and gives
        a Prediction with ``error`` in a list.

        For regression, the outputs ``(N, E)`` for x shaped ``(N,)`` or ``(N, D)``.
        Probabilities of a whole split or batch: :meth:`get_preds`.

        Example:
            >>> learn.predict("circle.png").label
            'circle'
        """
        # A task of your own may take no options: top_k goes only where it was asked for.
        options = {} if top_k is None else {"top_k": top_k}
        return self.task.predict(self, x, **options)

    def get_preds(self, split_or_images: Any = "valid") -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(probs, targets)``: class probabilities ``(N, K)`` and labels ``(N,)`` of a split
        ("valid", "train", "test") or an ImageSet, as fastai's ``get_preds``; for images given
        as :meth:`predict` takes them (a 4-D batch, a list, a folder) ``(probs, None)``. For
        regression the outputs ``(N, E)`` and targets.

        Example:
            >>> probs, targets = learn.get_preds("valid")
            >>> (probs.argmax(1) == targets).float().mean()  # the validation accuracy
        """
        return self.task.get_preds(self, split_or_images)

    def export(self, path: str | os.PathLike) -> Path:
        """Write the model as a bundle (``model.safetensors`` + ``model.json``: weights,
        architecture, classes, Preprocess, training-image statistics) into ``path``, a
        ``.zip`` file or a directory, and return ``path``. It is what ``deepstart export``
        writes of a run (less the run's config.json): ``load_bundle(path).predict(x)``
        answers what ``learn.predict(x)`` does, with nothing but torch and the bundle.

        Example:
            >>> learn.export("shapes.zip")
            PosixPath('shapes.zip')
        """
        return export_learner(self, path)
