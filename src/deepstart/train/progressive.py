"""Progressive resizing: the first epochs of a fit train on smaller images.

fastai's trick (lesson 1's dogs and cats at 128 px, then 224 px): a convolutional net's
cost grows with the pixels it sees, and what it learns in the early epochs (edges, colours,
rough shapes) needs few of them. So the first ``epochs`` epochs train on each batch scaled
to ``scale`` of its side (0.75: a 32x32 CIFAR-10 picture becomes 24x24, ~0.56x the
multiply-adds), and the last epochs, validation, TTA and prediction all see the full size,
so the net ends where it will be used.

The batches are scaled on the device, after augmentation, by antialiased bilinear
interpolation: the whole picture, smaller. (A random crop of the same size instead cost
cifar10-fast 1.5 points on seed 0; docs/benchmarks.md.) The size is a function of the epoch
alone, so a resumed or a guard-restarted epoch trains at the same size again.

The last epochs at the full size matter. On cifar10-fast's seed 1, 5 small epochs of 8 at
0.75 of the side reached 80.57%; 7 of 9 (two left at full size) 79.92%; 8 of 10 at 0.625
(two at full size again) 76.96%.

Only nets that take any input size can do this (global pooling before the head); a net
with a flattening linear layer (logreg, mlp, mnist_cnn) is refused before its first step.

In a plan of several fits (``fine_tune``: the head, then everything) only the fit ``phase``
names resizes: there ``epochs`` counts the unfrozen epochs, so those are what ``small_epochs``
takes its first N of. The frozen phase sees the full size, as it does anyway when its
batches are cached features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepstart.errors import ConfigError
from deepstart.train.events import Callback


def check_small(epochs: int, scale: float) -> None:
    """A ConfigError unless ``epochs >= 0`` and ``0 < scale < 1``."""
    if epochs < 0:
        raise ConfigError(f"small_epochs must be >= 0, got {epochs}")
    if not 0 < scale < 1:
        raise ConfigError(f"small_scale must be in (0, 1), got {scale}")


def small_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The side lengths a ``height x width`` batch trains at: rounded, at least 1.

    Example:
        >>> small_size(32, 32, 0.75)
        (24, 24)
    """
    return max(1, round(height * scale)), max(1, round(width * scale))


class ProgressiveResize(Callback):
    """Train the first ``epochs`` epochs of a fit on batches scaled to ``scale`` of their side.

    Example:
        >>> learn.fit_one_cycle(8, 4e-3, callbacks=[ProgressiveResize(5, 0.75)])  # cifar10-fast
    """

    # It replaces learn.xb in before_batch, so every later event (the sanity checks, the
    # guard's replayed batches) sees the small batch the model trains on. The LR finder's
    # sweep stays at the full size.
    order = 5
    skip_lr_find = True

    def __init__(self, epochs: int, scale: float = 0.75, *, phase: int | None = None) -> None:
        check_small(epochs, scale)
        self.epochs, self.scale = int(epochs), float(scale)
        self.phase = phase  # None: every fit; 1: fine_tune's unfrozen phase only
        self._checked: tuple[int, ...] | None = None

    def _small(self, epoch: int) -> bool:
        # (no learner needed without a phase: the estimate's tests ask epoch_cost alone)
        return epoch < self.epochs and (self.phase is None or self.phase == self.learn.phase)

    def epoch_cost(self, epoch: int) -> float:
        """An epoch's cost against a full-size one, for the fit's time estimate: the pixels'
        share (0.75 of the side: 0.5625; measured on cifar10-fast: 0.56-0.69)."""
        return self.scale**2 if self._small(epoch) else 1.0

    def before_batch(self) -> None:
        learn = self.learn
        if not learn.training or learn.head_only or not self._small(learn.epoch):
            return  # (head_only: the batches are a frozen body's cached features)
        x = learn.xb  # (N, C, H, W), normalised, on the device
        if x.dim() != 4:
            raise ConfigError(f"small_epochs needs batches of images, got shape {tuple(x.shape)}")
        size = small_size(x.shape[-2], x.shape[-1], self.scale)
        small = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        if self._checked != tuple(small.shape[1:]):
            self._check_model(small[:1])
            self._checked = tuple(small.shape[1:])
        learn.xb = small

    def _check_model(self, x: torch.Tensor) -> None:
        """One image through the model in eval mode, so a net that cannot take the small
        size says so here rather than as a shape error deep in its forward pass."""
        model = self.learn.model
        was_training = model.training
        model.eval()  # BatchNorm's statistics stay as they are
        try:
            with torch.no_grad():
                model(x)
        except RuntimeError as e:
            h, w = x.shape[-2:]
            raise ConfigError(
                f"small_epochs: {type(model).__name__} cannot train on {h}x{w} images "
                f"(small_scale {self.scale:g} of the data's size): progressive resizing needs "
                f"a net that takes any size, such as fast_cifar or a resnet. ({e})"
            ) from e
        finally:
            model.train(was_training)

    def after_fit(self) -> None:
        self._checked = None
