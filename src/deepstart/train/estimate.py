"""How long a fit will take on this machine, timed from its first training batches.

:class:`FitEstimate` is fed the clock by :class:`~deepstart.train.progress.Progress` after
each training batch and validation. After a warm-up (the first batches pay for memory
allocation, kernel selection and caches), it times a few batches (``TIMED``, or fewer once
``TIMED_SECONDS`` have passed), then says once, in one line, how long the whole fit will take,
if that is long enough to matter (``min_seconds``): short fits stay quiet.

A ``hint(seconds) -> str | None`` given by the caller may add a faster way to the line (the
run layer names a recipe of the dataset: see :func:`deepstart.recipes.choose.faster_recipe`;
this module cannot know recipes, which live above the training layer).

Example:
    >>> est = FitEstimate()
    >>> est.start(learn, clock())          # before_fit
    >>> line = est.batch(learn, clock())   # after each training batch: a line once, or None
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepstart.train.learner import Learner

WARMUP = 2  # batches of a fit not timed
TIMED = 8  # batches timed after the warm-up...
TIMED_SECONDS = 2.0  # ...or fewer, once this much training time was timed
# Validation is forward-only: about a third of a training step's work per image.
VALID_COST = 1 / 3


def duration_text(seconds: float) -> str:
    """``45 s``, ``4 min 10 s``, ``1 h 5 min``: a rounded duration for a sentence.

    Example:
        >>> duration_text(250.4), duration_text(3900), duration_text(7.2)
        ('4 min 10 s', '1 h 5 min', '7 s')
    """
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, s = divmod(s, 60)
        if m >= 10:  # "12 min 40 s" is more precision than an estimate has
            s = 0
        return f"{m} min {s} s" if s else f"{m} min"
    h, m = divmod((s + 30) // 60, 60)
    return f"{h} h {m} min" if m else f"{h} h"


def _later_cost(learn: Learner) -> float:
    """How much a batch still to come costs against one of the current epoch, on average.

    1 unless a callback makes epochs cost differently: one with ``epoch_cost(epoch) ->
    float`` (progressive resizing: ``scale ** 2`` for its small epochs, 1 after) is asked
    for the current epoch and the ones left. The rest of this epoch counts as the current.
    """
    costs = [cb.epoch_cost for cb in learn.callbacks if hasattr(cb, "epoch_cost")]
    if not costs or learn.n_iter < 1:
        return 1.0

    def cost(epoch: int) -> float:
        c = 1.0
        for f in costs:
            c *= f(epoch)
        return c

    now = cost(learn.epoch)
    rest = max(learn.n_iter - learn.iter - 1, 0)  # of this epoch
    later = range(learn.epoch + 1, learn.n_epochs)
    n = rest + len(later) * learn.n_iter
    if n == 0 or now <= 0:
        return 1.0
    return (rest * now + learn.n_iter * sum(cost(e) for e in later)) / (n * now)


class FitEstimate:
    """Times a fit's first training batches and estimates the whole fit, once.

    ``min_seconds``: the estimate is said only for fits at least this long.
    ``hint(seconds)``: an optional suggestion appended to the line (a faster recipe).
    """

    def __init__(
        self, min_seconds: float = 30.0, hint: Callable[[float], str | None] | None = None
    ) -> None:
        self.min_seconds = float(min_seconds)
        self.hint = hint
        self.seconds: float | None = None  # the estimate, once made

    def start(self, learn: Learner, now: float) -> None:
        self.t_fit, self.last = now, now
        self.start_iter = learn.train_iter  # a resumed fit starts part-way
        self.batches = 0  # training batches of this fit so far
        self.timed_s, self.timed_n, self.timed_items = 0.0, 0, 0
        self.valid_s: float | None = None  # one validation, measured
        self.t_valid: float | None = None
        self.seconds, self.done = None, False

    def train_start(self, now: float) -> None:
        """A training epoch begins: time its first batch from here (its shuffle included)."""
        self.last = now

    def validate_start(self, now: float) -> None:
        self.t_valid = now

    def validate_end(self, now: float) -> None:
        if self.t_valid is not None and self.valid_s is None:
            self.valid_s = now - self.t_valid

    def batch(self, learn: Learner, now: float) -> str | None:
        """After a training batch: the estimate line the one time it is due, else None."""
        if self.done:
            return None
        step, self.last = now - self.last, now
        self.batches += 1
        if self.batches <= WARMUP:
            return None
        self.timed_s += step
        self.timed_n += 1
        self.timed_items += len(learn.yb) if learn.yb is not None else 0
        if self.timed_n < TIMED and self.timed_s < TIMED_SECONDS:
            return None
        self.done = True
        self.seconds = self.estimate(learn, now)
        return self.line(learn) if self.seconds >= self.min_seconds else None

    def estimate(self, learn: Learner, now: float) -> float:
        """Seconds from the start of the fit to its end: what has passed, the batches left
        at the timed rate, and the validations left (measured, or a third of the training
        cost per image)."""
        per_batch = self.timed_s / self.timed_n
        left = max(learn.total_iters - self.start_iter - self.batches, 0)
        left *= _later_cost(learn)
        valid_s = self.valid_s
        if valid_s is None:
            per_item = self.timed_s / max(self.timed_items, 1)
            valid_dl = getattr(learn, "valid_dl", None)
            n_valid = getattr(valid_dl, "num_items", 0) if valid_dl is not None else 0
            valid_s = VALID_COST * per_item * n_valid
        validations = max(learn.n_epochs - learn.epoch, 0)  # this epoch's is still to come
        return (now - self.t_fit) + left * per_batch + validations * valid_s

    def line(self, learn: Learner) -> str:
        assert self.seconds is not None
        rate = self.timed_items / self.timed_s if self.timed_s > 0 else 0.0
        epochs = learn.n_epochs
        text = (
            f"estimate: about {duration_text(self.seconds)} for {epochs} "
            f"epoch{'s' if epochs != 1 else ''} on this machine ({rate:,.0f} images/s, "
            f"timed on {self.timed_n} batch{'es' if self.timed_n != 1 else ''})"
        )
        extra = self.hint(self.seconds) if self.hint is not None else None
        return f"{text}; {extra}" if extra else text
