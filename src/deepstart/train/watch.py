"""How the divergence guard tells that training went wrong, one batch at a time: a loss that
is NaN or spiked (:class:`LossWatch`), and a network that answers every input alike
(:func:`output_spread`: dead). What to do about it is the guard's
(:mod:`deepstart.train.guard`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

DEAD = 1e-6  # a relative spread of the outputs over a batch this small: every input alike


def output_spread(pred: Any, device: torch.device) -> torch.Tensor:
    """How much a batch's outputs (B, ...) differ between inputs, relative to their size: 0
    for a net that answers everything alike, nan for a batch of one (or no tensor), which
    says nothing. A 0-d float32 tensor on the device, read with the loss in one sync."""
    if not isinstance(pred, torch.Tensor) or pred.dim() == 0 or pred.shape[0] < 2:
        return torch.full((), math.nan, device=device)
    p = pred.detach().float().reshape(pred.shape[0], -1)
    return ((p.amax(0) - p.amin(0)).amax() / (1 + p.abs().amax())).to(device)


class LossWatch:
    """Decides, one training loss at a time, whether training has diverged.

    A loss is *bad* when it is above ``spike`` times the smoothed loss (a debiased moving
    average) of the good losses before it, never measured against less than ``floor`` nats.
    ``update`` answers "nan" at once for a NaN/inf loss, "spike" once ``patience`` bad
    losses come in a row, and None otherwise.

    Why this rule: a single batch can honestly be many times the average (a hard batch, or
    one confidently wrong example once the loss is near zero), but a real divergence keeps
    the loss up, so asking for 3 in a row removes the false alarms at the cost of 2 batches.
    Bad losses are not folded into the average, so a run of them is measured against the
    level before it; slow honest rises (LR warm-up, warm restarts) are folded in and never
    trigger, which a "best loss so far" reference would not allow. The floor stops noise
    at tiny losses (0.002 -> 0.01 nats) from counting as a spike. Checks start after one
    loss (``warmup``): a fresh model's first loss (about ln K) is a fair reference, and the
    worst blow-ups come in the first steps (Adam at LR 10 takes the loss to 1e10 in one);
    a longer warm-up lets them through and the network dies at chance without a NaN.

    Example:
        >>> watch = LossWatch()
        >>> [watch.update(v) for v in [1.0] * 12 + [9.0, 9.0, 9.0]][-3:]
        [None, None, 'spike']
    """

    def __init__(
        self,
        spike: float = 4.0,
        patience: int = 3,
        warmup: int = 1,
        beta: float = 0.9,
        floor: float = 0.05,
    ) -> None:
        self.spike, self.patience, self.warmup = spike, patience, warmup
        self.beta, self.floor = beta, floor
        self.reset()

    def reset(self) -> None:
        self.avg, self.n, self.streak = 0.0, 0, 0

    @property
    def smooth(self) -> float:
        """The debiased exponential moving average of the good losses (nan before any)."""
        return self.avg / (1 - self.beta**self.n) if self.n else math.nan

    def update(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return "nan"
        if self.n >= self.warmup and loss > self.spike * max(self.smooth, self.floor):
            self.streak += 1
            return "spike" if self.streak >= self.patience else None
        self.streak = 0
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        self.n += 1
        return None

    def state(self) -> tuple[float, int, int]:
        return (self.avg, self.n, self.streak)

    def load_state(self, state: tuple[float, int, int]) -> None:
        self.avg, self.n, self.streak = state
