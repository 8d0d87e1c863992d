"""Cached features: train only the head on body outputs computed once (fastai v0.7's
``precompute=True``).

When the body of a pretrained model is frozen and the training images are not augmented,
every epoch feeds the same images through the same fixed body: the body's output
``model.features(x)`` is the same each time. Computing it once and training ``model.head``
on the stored features costs one forward pass of the body in all, instead of one per epoch;
on a CPU, where a ResNet body is nearly all the work, the epochs after the first become
near-instant.

What "fixed" means here: the whole body, BatchNorm included. The features are computed in
eval mode (running statistics, no dropout), so BatchNorm layers that :func:`freeze` leaves
trainable do not learn while the cache is used. That is the price of the speed, and why the
cache is opt-in (``Learner(precompute=True)``, ``deepstart train --precompute``).

Example:
    >>> learn = Learner(data, create_model("resnet18", ...), precompute=True)
    >>> learn.freeze()
    >>> learn.fit_one_cycle(10, 1e-2)  # the body runs once, over train and valid
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from deepstart.data.dataset import ImageSet, epoch_permutation
from deepstart.train.finetune import _BN, layer_groups

if TYPE_CHECKING:
    from deepstart.train.learner import Learner

# The cache keeps every feature of a split in memory; beyond this it falls back to full passes.
MAX_CACHE_BYTES = 4 * 2**30


class FeatureBatches:
    """Batches of cached features ``(N, ...)`` and their labels, in the same order a
    :class:`~deepstart.data.dataset.Batches` over the images would give (same seeded
    permutation per epoch, same batch boundaries), so the head sees the same batches either
    way.

    Example:
        >>> fb = FeatureBatches(feats, labels, 64, shuffle=True, drop_last=True, seed=0)
        >>> for f, y in fb: ...  # f (B, C, h, w) float32, y (B,) int64
    """

    def __init__(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        self.features, self.labels = features, labels
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        n = len(self.features)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_items(self) -> int:
        return len(self.features)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.features)
        order = epoch_permutation(n, self.seed, self.epoch) if self.shuffle else None
        if order is not None:
            order = order.to(self.features.device)
        start, self.start = self.start, 0
        for i in range(start, len(self)):
            sl = slice(i * self.batch_size, min((i + 1) * self.batch_size, n))
            idx = order[sl] if order is not None else sl
            yield self.features[idx], self.labels[idx]


def head_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of the last layer group: what trains while the body is frozen."""
    return layer_groups(model)[-1]


def why_not(learn: Learner) -> str | None:
    """Why the cache cannot be used for the next fit (None: it can).

    It needs an image classifier with the ``features``/``head`` interface, no training
    augmentation, and no trainable parameters outside the head except normalisation layers
    (which :func:`~deepstart.train.finetune.freeze` keeps trainable; the cache fixes them).
    """
    model = learn.model
    if learn.dist is not None:
        return "it is not supported in distributed training yet"
    if learn.task.name != "classification":
        return "it is for image classifiers"
    if not (hasattr(model, "features") and hasattr(model, "head")):
        return "the model has no features()/head() split"
    if learn._augment_fn is not None:
        return "the training images are augmented, so the body's output changes every epoch"
    head = {id(p) for m in head_modules(model) for p in m.parameters()}
    for name, mod in model.named_modules():
        if isinstance(mod, _BN):
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in head:
                where = f"{name}.{pname}" if name else pname
                return f"the body is not frozen ({where} trains): call freeze() first"
    return None


def _fingerprint(model: nn.Module) -> tuple:
    """Changes whenever a body weight or buffer changes: each tensor's storage and its
    in-place version counter (optimizer steps, ``load_state_dict`` and BatchNorm's running
    statistics all bump it), so a stale cache is never used."""
    head = {id(t) for m in head_modules(model) for t in (*m.parameters(), *m.buffers())}
    return tuple(
        (t.data_ptr(), t._version)
        for t in (*model.parameters(), *model.buffers())
        if id(t) not in head
    )


class FeatureCache:
    """The body's outputs per split, recomputed only when the body has changed.

    Example:
        >>> cache = FeatureCache()
        >>> feats, labels = cache.get(learn, "train", learn.data.train)
    """

    def __init__(self) -> None:
        self._store: dict[str, tuple[int, tuple, torch.Tensor, torch.Tensor]] = {}

    def clear(self) -> None:
        self._store.clear()

    def get(
        self, learn: Learner, key: str, images: ImageSet, log: Callable[[str], None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, labels)`` of ``images`` on the learner's device: ``features`` is
        ``(N, ...)`` float32, ``model.features`` of each image in eval mode."""
        fp = _fingerprint(learn.model)
        hit = self._store.get(key)
        if hit is not None and hit[0] == id(images) and hit[1] == fp:
            return hit[2], hit[3]
        t0 = time.perf_counter()
        feats, labels = compute_features(learn, images)
        if log is not None:
            log(
                f"precompute: body features of {key} ({len(images)} images, "
                f"{tuple(feats.shape[1:])} each, {feats.numel() * 4 / 2**20:.0f} MiB) in "
                f"{time.perf_counter() - t0:.1f} s"
            )
        # Computing in eval mode leaves the body untouched, so ``fp`` still describes it.
        self._store[key] = (id(images), fp, feats, labels)
        return feats, labels


class TooLarge(Exception):
    """The features of a split would not fit the cache's memory budget."""


@torch.no_grad()
def compute_features(learn: Learner, images: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.features`` of every image in eval mode (no augmentation), in order.

    Raises:
        TooLarge: the first batch shows the whole split would exceed ``MAX_CACHE_BYTES``.
    """
    model = learn.model
    was = model.training
    model.eval()
    feats, labels = [], []
    try:
        for xb, yb in learn.batches(images):  # plain, unshuffled, at the eval batch size
            with learn._autocast():
                f = model.features(xb).float()
            if not feats and f[0].numel() * 4 * len(images) > MAX_CACHE_BYTES:
                need = f[0].numel() * 4 * len(images) / 2**30
                raise TooLarge(f"the features of {len(images)} images would take {need:.1f} GiB")
            feats.append(f)
            labels.append(yb)
    finally:
        model.train(was)
    if not feats:
        return torch.zeros(0, device=learn.device), torch.zeros(0, dtype=torch.int64)
    return torch.cat(feats), torch.cat(labels)


def cached_batches(learn: Learner, log: Callable[[str], None]) -> tuple[Any, Any] | None:
    """Train and valid :class:`FeatureBatches` for the next fit, or None (with the reason
    logged once) when the cache cannot or should not be used."""
    reason = why_not(learn)
    if reason is None:
        try:
            cache = learn.feature_cache
            train_f, train_y = cache.get(learn, "train", learn.data.train, log)
            valid_f, valid_y = cache.get(learn, "valid", learn.data.valid, log)
        except TooLarge as e:
            reason = str(e)
    if reason is not None:
        if learn._precompute_note != reason:
            log(f"precompute: off for this fit, {reason}")
            learn._precompute_note = reason
        return None
    learn._precompute_note = None
    bs = learn.batch_size
    train = FeatureBatches(
        train_f,
        train_y,
        bs,
        shuffle=True,
        drop_last=len(train_f) > bs,  # as Batches does for images
        seed=learn.seed,
    )
    return train, FeatureBatches(valid_f, valid_y, bs * 2)


def fit_loaders(learn: Learner) -> tuple[Any, Any]:
    """A fit's (train, valid) batches: cached body features when ``precompute`` can be used
    (``learn.head_only`` is then set: the loop runs ``model.head`` only), else the images."""
    cached = cached_batches(learn, learn.log) if learn.precompute else None
    learn.head_only = cached is not None
    if cached is not None:
        return cached
    shard = learn.dist is not None
    train = learn.batches(learn.data.train, train=True, shard=shard)
    return train, learn.batches(learn.data.valid, shard=shard)
