"""Float data for regression: points ``(x, y)`` held as tensors, and their batches.

What :class:`~deepstart.data.dataset.ImageSet` and :class:`~deepstart.data.dataset.Batches`
are for images, :class:`TensorSet` and :class:`TensorBatches` are for functions ``y = f(x)``:
the points live on the device from the start and a batch is a slice (or, for the full-batch
training small fits want, the whole set). A :class:`TensorData` is what a
:class:`~deepstart.train.learner.Learner` trains a regression model on.

Example:
    >>> x = torch.linspace(-3, 3, 200)
    >>> data = TensorData("sin", TensorSet(x, torch.sin(x)), TensorSet(x, torch.sin(x)))
    >>> learn = Learner(data, create_model("fit_mlp"), batch_size=len(data.train))
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from deepstart.data.dataset import DataError, epoch_permutation


def _as_columns(t: torch.Tensor | Sequence[float], what: str) -> torch.Tensor:
    """``(N,)`` or ``(N, D)`` numbers -> ``(N, D)`` float32."""
    t = torch.as_tensor(t, dtype=torch.float32)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise DataError(f"{what} must be (N,) or (N, D), got shape {tuple(t.shape)}")
    return t


@dataclass
class TensorSet:
    """Points of a function held in memory.

    Attributes:
        x: ``(N, D)`` float32 inputs (a 1-D tensor becomes ``(N, 1)``).
        y: ``(N, E)`` float32 targets.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        self.x = _as_columns(self.x, "x")
        self.y = _as_columns(self.y, "y")
        if len(self.x) != len(self.y):
            raise DataError(f"{len(self.x)} x values but {len(self.y)} y values")
        for name, t in (("x", self.x), ("y", self.y)):
            bad = ~torch.isfinite(t).all(dim=1)
            if bad.any():
                i = int(torch.nonzero(bad)[0])
                raise DataError(
                    f"{name} is not finite at point {i} (x = {self.x[i].tolist()}, "
                    f"y = {self.y[i].tolist()}): {int(bad.sum())} such points"
                )

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: torch.Tensor | Sequence[int]) -> TensorSet:
        index = torch.as_tensor(index, dtype=torch.int64)
        return TensorSet(self.x[index], self.y[index])

    def sorted(self) -> TensorSet:
        """The points in increasing x (first column), e.g. to draw them as a line."""
        return self.subset(torch.argsort(self.x[:, 0]))


@dataclass
class TensorData:
    """The splits of a regression problem, ready for a Learner.

    ``valid`` is scored every epoch; ``test`` is kept for the final score (None: use valid).
    For a formula, valid and test are evenly spaced grids of the true function, without noise
    (see :func:`deepstart.fitting.data.function_data`).

    Attributes:
        name: what is fitted, e.g. the formula or the CSV file.
        passes: passes over the training points per epoch. An epoch ends with a validation
            and a progress line; full-batch fitting takes hundreds of one-pass steps, so
            several are grouped into one epoch.
        notes: one-line remarks shown when the data is described.
    """

    name: str
    train: TensorSet
    valid: TensorSet
    test: TensorSet | None = None
    passes: int = 1
    notes: list[str] = field(default_factory=list)

    task = "regression"  # what the Learner scores: loss, max and RMS error
    preprocess = None  # images have one; these points are used as they are

    def __post_init__(self) -> None:
        if self.passes < 1:
            raise DataError(f"passes must be at least 1, got {self.passes}")
        dims = {
            (s.x.shape[1], s.y.shape[1])
            for s in (self.train, self.valid, self.test)
            if s is not None
        }
        if len(dims) > 1:
            raise DataError(f"splits disagree on (x, y) columns: {sorted(dims)}")

    @property
    def in_features(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.train.y.shape[1])

    @property
    def x_range(self) -> tuple[float, float]:
        """(min, max) of the training x (first column): what a model scales to [-1, 1]."""
        return _span(self.train.x[:, 0])

    @property
    def y_range(self) -> tuple[float, float]:
        """(min, max) of the training y (first column)."""
        return _span(self.train.y[:, 0])

    def summary(self) -> dict:
        splits = {"train": self.train, "valid": self.valid, "test": self.test}
        return {
            "name": self.name,
            "task": self.task,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "x_range": list(self.x_range),
            "y_range": list(self.y_range),
            "splits": {k: len(v) for k, v in splits.items() if v is not None},
            "passes": self.passes,
            "notes": list(self.notes),
        }


def _span(t: torch.Tensor) -> tuple[float, float]:
    lo, hi = float(t.min()), float(t.max())
    if hi - lo < 1e-12:  # a single x value: any scale will do, but not a zero one
        lo, hi = lo - 1.0, hi + 1.0
    return lo, hi


class TensorBatches:
    """Batches of a TensorSet held on ``device``; an epoch is ``passes`` passes over it.

    With ``batch_size >= len(data)`` every batch is the whole set (full-batch training) and
    nothing is copied or shuffled. Otherwise pass ``p`` of epoch ``e`` follows the shuffle
    :func:`~deepstart.data.dataset.epoch_permutation` ``(seed, e * passes + p)``.

    Example:
        >>> for x, y in TensorBatches(data.train, 64, device="cpu", shuffle=True): ...
        ... # x (64, D) float32, y (64, E) float32
    """

    def __init__(
        self,
        data: TensorSet,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        passes: int = 1,
    ) -> None:
        self.device = torch.device(device)
        self.x = data.x.to(self.device)  # (N, D) float32, moved once
        self.y = data.y.to(self.device)  # (N, E)
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.passes = int(passes)
        self.epoch, self.start = 0, 0

    @property
    def num_items(self) -> int:
        return len(self.x)

    @property
    def per_pass(self) -> int:
        n = len(self.x)
        if self.drop_last:
            return max(n // self.batch_size, 1) if n else 0
        return math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        return self.per_pass * self.passes

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the shuffle of ``epoch``; the next iteration begins at batch ``start``."""
        self.epoch, self.start = int(epoch), int(start)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs, per_pass = len(self.x), self.batch_size, self.per_pass
        start, self.start = self.start, 0  # a start applies to one pass only
        full = bs >= n
        order, order_pass = None, -1
        for i in range(start, len(self)):
            p, j = divmod(i, per_pass)
            if full:
                yield self.x, self.y
                continue
            if self.shuffle and p != order_pass:
                perm = epoch_permutation(n, self.seed, self.epoch * self.passes + p)
                order, order_pass = perm.to(self.device), p
            sl = slice(j * bs, min((j + 1) * bs, n))
            if order is None:
                yield self.x[sl], self.y[sl]
            else:
                idx = order[sl]
                yield self.x[idx], self.y[idx]
