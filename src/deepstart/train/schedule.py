"""Learning-rate and momentum schedules as pure functions of training progress.

``pct`` is the fraction of training done, in [0, 1]. Each schedule maps it to a value, so it
can be tested exactly, plotted, and resumed from any step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Schedule = Callable[[float], float]


def _clip(pct: float) -> float:
    return min(max(float(pct), 0.0), 1.0)


def constant(value: float) -> Schedule:
    """Always ``value``."""
    return lambda pct: float(value)


def linear(start: float, end: float) -> Schedule:
    """Straight line from ``start`` at pct 0 to ``end`` at pct 1."""
    return lambda pct: start + (end - start) * _clip(pct)


def cosine(start: float, end: float) -> Schedule:
    """Half a cosine from ``start`` to ``end``: flat at both ends."""

    def sched(pct: float) -> float:
        w = (1 + math.cos(math.pi * _clip(pct))) / 2  # 1 -> 0; exact at both ends
        return start * w + end * (1 - w)

    return sched


def exponential(start: float, end: float) -> Schedule:
    """Geometric interpolation, as the LR finder sweeps."""
    return lambda pct: start * (end / start) ** _clip(pct)


def combine(pcts: Sequence[float], scheds: Sequence[Schedule]) -> Schedule:
    """Run ``scheds[i]`` over a fraction ``pcts[i]`` of training, each seeing its own [0, 1]."""
    if len(pcts) != len(scheds) or not math.isclose(sum(pcts), 1.0):
        raise ValueError(f"phases must cover [0, 1]: got {list(pcts)}")
    edges = [0.0]
    for p in pcts:
        edges.append(edges[-1] + p)

    def sched(pct: float) -> float:
        pct = _clip(pct)
        for i, f in enumerate(scheds):
            lo, hi = edges[i], edges[i + 1]
            if pct <= hi or i == len(scheds) - 1:
                width = hi - lo
                return f((pct - lo) / width if width > 0 else 1.0)
        raise AssertionError("unreachable")

    return sched


def one_cycle(
    lr_max: float, *, pct_start: float = 0.25, div: float = 25.0, final_div: float = 1e5
) -> Schedule:
    """fastai's one-cycle LR: cosine from ``lr_max/div`` up to ``lr_max`` over ``pct_start``,
    then cosine down to ``lr_max/final_div``.

    Example:
        >>> s = one_cycle(0.1)
        >>> s(0.0), s(0.25), s(1.0)
        (0.004, 0.1, 1e-06)
    """
    if pct_start <= 0:
        return cosine(lr_max, lr_max / final_div)
    return combine(
        [pct_start, 1 - pct_start],
        [cosine(lr_max / div, lr_max), cosine(lr_max, lr_max / final_div)],
    )


def triangle(
    lr_max: float, *, pct_start: float = 0.23, start: float = 0.2, end: float = 0.07
) -> Schedule:
    """airbench's triangular LR: a straight line from ``start * lr_max`` up to ``lr_max`` over
    ``pct_start``, then straight down to ``end * lr_max`` (no momentum schedule).

    Example:
        >>> s = triangle(1.0)
        >>> round(s(0.0), 3), round(s(0.23), 3), round(s(1.0), 3)
        (0.2, 1.0, 0.07)
    """
    if pct_start <= 0:
        return linear(lr_max, lr_max * end)
    return combine(
        [pct_start, 1 - pct_start], [linear(lr_max * start, lr_max), linear(lr_max, lr_max * end)]
    )


def one_cycle_momentum(
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95), *, pct_start: float = 0.25
) -> Schedule:
    """Momentum (or Adam's beta1) moving opposite to the LR in one-cycle."""
    if pct_start <= 0:
        return cosine(moms[1], moms[2])
    return combine([pct_start, 1 - pct_start], [cosine(moms[0], moms[1]), cosine(moms[1], moms[2])])


def step_decay(lr: float, *, step_pcts: Sequence[float], gamma: float = 0.1) -> Schedule:
    """``lr``, multiplied by ``gamma`` at each progress point in ``step_pcts``."""
    points = sorted(step_pcts)
    return lambda pct: lr * gamma ** sum(1 for p in points if _clip(pct) >= p)


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule by name, so it can live in a JSON config: ``constant``, ``one_cycle``,
    ``step`` (decay by ``gamma`` at ``steps``), ``cosine`` (to lr/final_div) or ``triangle``
    (:func:`triangle`, peaking at ``pct_start``)."""

    kind: str = "one_cycle"
    pct_start: float = 0.25
    div: float = 25.0
    final_div: float = 1e5
    steps: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1

    def lr(self, lr_max: float) -> Schedule:
        if self.kind == "one_cycle":
            return one_cycle(
                lr_max, pct_start=self.pct_start, div=self.div, final_div=self.final_div
            )
        if self.kind == "constant":
            return constant(lr_max)
        if self.kind == "step":
            return step_decay(lr_max, step_pcts=self.steps, gamma=self.gamma)
        if self.kind == "cosine":
            return cosine(lr_max, lr_max / self.final_div)
        if self.kind == "triangle":
            return triangle(lr_max, pct_start=self.pct_start)
        raise ValueError(
            f"unknown schedule {self.kind!r}: use one_cycle, constant, step, cosine, triangle"
        )

    def momentum(self, moms: tuple[float, float, float]) -> Schedule | None:
        if self.kind == "one_cycle":
            return one_cycle_momentum(moms, pct_start=self.pct_start)
        return None
