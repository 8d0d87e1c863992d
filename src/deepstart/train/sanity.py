"""Start-of-training sanity checks: what is wrong before a long run shows it, one line each.

:class:`SanityCheck` is on by default in every Learner (``Learner(..., sanity=False)`` or
``deepstart train --no-sanity`` turns it off). In the first fit of a learner it looks at:

- the labels, from the splits' class counts (no pass over the images): one class far more
  common than another, a class with no training images, a validation class the training
  split lacks;
- the first training batch, before any step: constant, blank or non-finite inputs, a model
  with more outputs than the data has classes, and a loss far from ln K nats (what a model
  that knows nothing scores on K classes; classification only, through the Task seam);
- the first 20 training batches: a loss that rises steadily (the LR is too high; classifiers
  only, whose loss starts at a known level). A NaN or a blow-up is the divergence guard's
  (:mod:`deepstart.train.guard`), which restores and says so itself: this check stays silent
  when the guard has acted, and speaks of a NaN only when there is no guard.

Each finding is one line through ``learn.log`` (where the run's other notices go), starting
with "sanity:"; when all is well it says nothing. ``findings`` keeps them as (check, message).

Example:
    >>> learn = Learner(data, model)  # the check is already there
    >>> learn.fit_one_cycle(1, 3e-3)
    sanity: labels heavily imbalanced (circle 900, triangle 60, square 40; 22x): ...
    >>> [name for name, _ in learn.get_callback(SanityCheck).findings]
    ['imbalance']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from deepstart.train.events import Callback
from deepstart.train.guard import DivergenceGuard

# Thresholds, each chosen on real cases (docs/training.md, "Sanity checks"):
# Default-init models on shapes/MNIST-sized inputs start within about 1 nat of ln K, a few
# (fast_mnist's scaled logits, resnet56) up to 2.2 nats above it; a last layer scaled x10
# starts 3-9 nats above it and x100 starts 9-100 above. So "far above" is ln K + 3 nats.
HIGH_EXCESS_NATS = 3.0
# No default-init model starts below ~0.95 ln K; below half of it the model already "knows"
# the labels before any step (trained on them, or the labels leak into the inputs).
LOW_FRACTION = 0.5
IMBALANCE_RATIO = 10.0  # largest class over smallest
DOMINANT_SHARE = 0.9  # one class's share of the training labels
BLANK_SHARE = 0.25  # share of one-value images in the first batch worth a line
WATCH_BATCHES = 20  # batches whose losses show a diverging LR
RISE = 1.5  # the last 5 of them above RISE x the first 5 (and above ln K): a rising loss
CONSTANT_STD = 1e-6  # the std of a batch of inputs (normalised units) that is no signal


def _count_list(classes: Sequence[str], counts: Sequence[int], limit: int = 6) -> str:
    """ "circle 900, square 40, ..." with the largest and smallest first when there are many."""
    pairs = sorted(zip(classes, counts), key=lambda p: -p[1])
    if len(pairs) > limit:
        head, tail = pairs[: limit // 2], pairs[-(limit // 2) :]
        return (
            ", ".join(f"{c} {n}" for c, n in head)
            + ", ..., "
            + ", ".join(f"{c} {n}" for c, n in tail)
        )
    return ", ".join(f"{c} {n}" for c, n in pairs)


def label_findings(
    classes: Sequence[str], train: Sequence[int], valid: Sequence[int] | None
) -> list[tuple[str, str]]:
    """The label checks, from the class counts of the training and validation splits.

    Example:
        >>> label_findings(["a", "b"], [950, 50], [10, 10])[0][0]
        'imbalance'
    """
    out: list[tuple[str, str]] = []
    n = sum(train)
    present = [c for c in train if c > 0]
    if n and len(present) == 1:
        only = classes[max(range(len(train)), key=lambda i: train[i])]
        out.append(
            (
                "imbalance",
                f"every training label is {only!r} ({n} images): a model learns nothing from "
                "one class; check how the labels were read (one folder per class?)",
            )
        )
    elif n:
        largest, smallest = max(present), min(present)
        missing = [c for c, k in zip(classes, train) if k == 0]
        if largest > IMBALANCE_RATIO * smallest or largest > DOMINANT_SHARE * n:
            out.append(
                (
                    "imbalance",
                    f"labels heavily imbalanced ({_count_list(classes, train)}; "
                    f"{largest / smallest:.0f}x): accuracy can look good while the rare "
                    "classes are never predicted; weight the loss (--class-weights balanced), "
                    "collect more of the rare classes, and judge by per-class recall",
                )
            )
        if missing:
            out.append(
                (
                    "missing_class",
                    f"no training images of {', '.join(map(repr, missing))}: the model "
                    "cannot learn to predict them; add images or drop the classes",
                )
            )
    if valid is not None:
        unseen = [(c, v) for c, k, v in zip(classes, train, valid) if v > 0 and k == 0]
        if unseen:
            what = ", ".join(f"{c!r} ({v} images)" for c, v in unseen)
            out.append(
                (
                    "valid_class",
                    f"the validation split has {what} but the training split has none: "
                    "those are always wrong; re-split (e.g. --valid-pct) so every class "
                    "is in both",
                )
            )
    return out


def input_findings(xb: torch.Tensor) -> list[tuple[str, str]]:
    """The checks of one batch of model inputs (normalised images ``(N, C, H, W)``, or
    points ``(N, D)``): non-finite values, one value throughout, blank images."""
    x = xb.detach().float()
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        return [("inputs", f"the first batch holds {bad} NaN/inf input values: fix the data")]
    if float(x.std()) < CONSTANT_STD:
        value = float(x.flatten()[0])
        return [
            (
                "inputs",
                f"the first batch of inputs is constant (every value {value:.3g} after "
                "normalisation): the images are blank or failed to load, or the "
                "normalisation divides by ~0",
            )
        ]
    if x.ndim == 4 and len(x) > 1:
        flat = x.flatten(1)
        blank = int((flat.std(dim=1) < CONSTANT_STD).sum())
        if blank >= BLANK_SHARE * len(x):
            return [
                (
                    "inputs",
                    f"{blank} of the {len(x)} images of the first batch are one flat value: "
                    "blank images (all zero?) or files that failed to decode",
                )
            ]
    return []


def loss_findings(loss: float, k: int) -> list[tuple[str, str]]:
    """The first-batch loss of a K-class classifier against ln K (what knowing nothing
    scores).

    Example:
        >>> loss_findings(1.1, 3)
        []
    """
    chance = math.log(max(k, 2))
    if not math.isfinite(loss):
        return []  # the guard (or the divergence check) reports it
    if loss > chance + HIGH_EXCESS_NATS:
        return [
            (
                "initial_loss",
                f"the first batch's loss is {loss:.2f} nats, far above ln {k} = {chance:.2f} "
                "(a guess): bad init (outputs too large: a scaled or pretrained last layer?) "
                "or labels that do not match the model's outputs",
            )
        ]
    if loss < LOW_FRACTION * chance:
        return [
            (
                "initial_loss",
                f"the first batch's loss is {loss:.3f} nats before any training, far below "
                f"ln {k} = {chance:.2f} (a guess): the model already knows these labels "
                "(trained on them?) or the labels leak into the inputs",
            )
        ]
    return []


def rising_findings(losses: Sequence[float], chance: float | None, lr: float) -> list[tuple]:
    """The losses of the first batches: NaN, or steadily rising (the LR is too high).

    Example:
        >>> rising_findings([1.1] * 5 + [1.5] * 10 + [3.0] * 5, 1.1, 0.1)[0][0]
        'diverging'
    """
    try_ = "try a lower LR, or `deepstart lr-find` / learn.lr_find()"
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    if bad:
        return [
            (
                "diverging",
                f"the loss became {losses[bad[0]]} at batch {bad[0]} (lr {lr:.1e}): the LR "
                f"is far too high or the data holds bad values; {try_}",
            )
        ]
    if len(losses) < 10:
        return []
    first = sorted(losses[:5])[2]
    last = sorted(losses[-5:])[2]  # medians: one hard batch is not a trend
    floor = chance if chance is not None else 0.0
    if last > RISE * first and last > floor:
        return [
            (
                "diverging",
                f"the loss rose from {first:.3g} to {last:.3g} over the first {len(losses)} "
                f"batches (lr {lr:.1e}): the LR is likely too high; {try_}",
            )
        ]
    return []


class SanityCheck(Callback):
    """Cheap checks at the start of the first fit, one logged line per finding (see the
    module's docstring); silent when all is well.

    Args:
        log: where the lines go (None: the learner's ``log``).
    """

    order = 15  # after the Recorder, before the progress header and the divergence guard
    skip_lr_find = True  # the LR finder raises the LR until the loss diverges, on purpose

    def __init__(self, log: Callable[[str], Any] | None = None) -> None:
        self.log = log
        self.findings: list[tuple[str, str]] = []
        self.done = False  # the first fit has been checked: later fits are not

    def _say(self, found: list[tuple[str, str]]) -> None:
        log = self.log or self.learn.log
        for name, message in found:
            self.findings.append((name, message))
            log(f"sanity: {message}")

    @property
    def _classifying(self) -> bool:
        return self.learn.task.name == "classification"

    def before_fit(self) -> None:
        learn = self.learn
        # A resumed fit (train_iter > 0) was checked when it started; fine_tune's second fit
        # starts from a trained head, where ln K means nothing.
        active = not self.done and learn.train_iter == 0
        self.done = True
        self._first = active  # the first training batch is still to be looked at
        self._watching = active  # collecting the first WATCH_BATCHES losses
        self._losses: dict[int, torch.Tensor] = {}  # train_iter -> loss (redone batches replace)
        self._lr = math.nan
        self._guard_events = self._guard_count()
        if active and self._classifying:
            self._say(self._label_findings())

    def _label_findings(self) -> list[tuple[str, str]]:
        data = self.learn.data
        train = getattr(data, "train", None)
        if train is None or not hasattr(train, "class_counts"):
            return []
        valid = getattr(data, "valid", None)
        valid_counts = valid.class_counts() if hasattr(valid, "class_counts") else None
        return label_findings(data.classes, train.class_counts(), valid_counts)

    def _guard_count(self) -> int | None:
        guard = self.learn.get_callback(DivergenceGuard)
        return None if guard is None else len(guard.events)

    def after_loss(self) -> None:
        learn = self.learn
        if not learn.training or not self._first:
            return
        self._first = False
        found = input_findings(learn.xb)
        if self._classifying and learn.pred is not None:
            k = learn.num_classes
            outputs = int(learn.pred.shape[-1])
            if outputs > k:
                found.append(
                    (
                        "outputs",
                        f"the model has {outputs} outputs but the data has {k} classes: "
                        f"{outputs - k} of them are never a right answer; build it with "
                        f"num_classes={k}",
                    )
                )
            found += loss_findings(float(learn.loss.detach().float()), k)
        self._say(found)

    def after_batch(self) -> None:
        learn = self.learn
        if not self._watching or not learn.training or learn.loss is None:
            return
        # Kept on the device (one host sync when they are judged, not one per batch). Keyed
        # by the step count, so batches the guard redoes replace their first try.
        if learn.train_iter <= WATCH_BATCHES:
            self._losses[learn.train_iter] = learn.loss.detach()
            self._lr = float(learn.opt.param_groups[-1]["lr"])

    def before_batch(self) -> None:
        # Judged before the next batch, after every callback (the guard too) saw batch 20.
        if self._watching and self.learn.training and len(self._losses) >= WATCH_BATCHES:
            self._judge_rise()

    def after_train(self) -> None:
        if self._watching:  # an epoch shorter than WATCH_BATCHES: judge what there is
            self._judge_rise()

    def _judge_rise(self) -> None:
        losses = [float(v) for _, v in sorted(self._losses.items())]
        self._losses, self._watching = {}, False
        count = self._guard_count()
        if count is not None and count > (self._guard_events or 0):
            return  # the guard acted on these batches and said so
        if count is not None:  # a NaN or blow-up is the guard's to report
            losses = [v for v in losses if math.isfinite(v)]
        if not self._classifying:
            # A regression loss (MSE of a fit at 1e-3) can double early and still be fine:
            # only a NaN is a finding there.
            losses = losses if not all(map(math.isfinite, losses)) else []
        chance = self.learn.baseline_loss if self._classifying else None
        self._say(rising_findings(losses, chance, self._lr))
