"""The LR finder (Leslie Smith's range test, fastai-style): train a few batches with the LR
growing exponentially, watch the loss, suggest a learning rate, then put everything back.

The sweep is an ordinary :meth:`Learner.fit` with one extra callback that sets the LR, records
the loss and stops the fit; the suggestion rules are pure functions of ``(lrs, losses)``.

Example:
    >>> result = learn.lr_find(plot="lr_find.png")
    >>> learn.fit_one_cycle(3, lr_max=result.valley)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepstart.errors import ConfigError
from deepstart.train.callbacks import Checkpoint, Recorder
from deepstart.train.events import Callback, CancelEpoch, CancelFit
from deepstart.train.progress import Progress
from deepstart.train.schedule import exponential

if TYPE_CHECKING:
    from deepstart.figures import InlineFigure
    from deepstart.train.learner import Learner

Rule = Callable[[Sequence[float], Sequence[float]], tuple[float, int]]


def _curve(lrs: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(lrs, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
        raise ValueError(f"need two equal, non-empty 1-d curves, got {x.shape} and {y.shape}")
    return x, y


def smooth_losses(losses: Sequence[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average of ``losses``, bias-corrected as in Adam, so early values are
    not pulled towards 0. A NaN or inf stays in the average from then on.

    Example:
        >>> smooth_losses([1.0, 2.0], beta=0.5)
        [1.0, 1.6666666666666667]
    """
    avg, out = 0.0, []
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * float(loss)
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def valley(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float, int]:
    """Two thirds of the way down the longest valley of the curve.

    The valley is the longest strictly decreasing subsequence of ``losses`` (points need not
    be adjacent, so small bumps don't break it); of equally long ones the first to end wins.
    With ``L`` points ending at index ``e``, the suggestion is index ``e - L + (2 L) // 3``:
    fastai's documented rule ("2/3 of the way down the valley"). fastai's code steps only
    one and a half thirds, the middle of the valley; on a curve that falls a little all the
    way from its flat start (Adam at tiny LRs still learns), the middle lands where the loss
    has barely begun to fall: on MNIST with mnist_cnn it picks 2.5e-4, and 5 epochs of
    one-cycle there reach 98.74% test accuracy (10 epochs: 98.93%), where this rule picks
    1.6e-3 and 5 epochs reach 99.17%. Where the curve never falls, the first LR is returned.

    Example:
        >>> valley([1e-4, 1e-3, 1e-2, 1e-1], [2.0, 1.0, 0.5, 3.0])
        (0.001, 1)
    """
    x, y = _curve(lrs, losses)
    longest = np.ones(len(y), dtype=np.int64)  # longest decreasing run ending at each point
    for i in range(1, len(y)):
        higher = y[:i] > y[i]
        if higher.any():
            longest[i] = longest[:i][higher].max() + 1
    end = int(np.argmax(longest))  # the first of the longest
    n = int(longest[end])
    i = max(end - n + (2 * n) // 3, 0)
    return float(x[i]), i


def steep(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float, int]:
    """The LR where the loss falls fastest against log(lr): the left end of the steepest
    segment between neighbouring points.

    Example:
        >>> steep([1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.9, 0.9, 0.8])
        (0.01, 1)
    """
    x, y = _curve(lrs, losses)
    if len(y) < 2:
        return float(x[0]), 0
    i = int(np.argmin(np.diff(y) / np.diff(np.log(x))))
    return float(x[i]), i


def minimum(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float, int]:
    """A tenth of the LR at the lowest loss (the lowest loss is already close to diverging);
    the index is that of the minimum itself.

    Example:
        >>> minimum([1e-3, 1e-2, 1e-1], [2.0, 0.5, 3.0])
        (0.001, 1)
    """
    x, y = _curve(lrs, losses)
    i = int(np.argmin(y))
    return float(x[i]) / 10, i


def slide(
    lrs: Sequence[float],
    losses: Sequence[float],
    *,
    lr_diff: int = 15,
    thresh: float = 0.005,
    adjust_value: float = 1.0,
) -> tuple[float, int]:
    """fastai's interval slide rule: slide a window of ``lr_diff`` points leftwards from the
    end of the curve while the loss slopes (``np.gradient``, per point) at its two ends differ
    by more than ``thresh``; suggest the left end of the last window that still differed
    (the first window's left end if none did), times ``adjust_value``.

    The idea: the divergent tail has slopes unlike the rest; stop where the curve is regular
    again. ``thresh`` is in loss units per point, so it depends on the scale of the loss.

    Example:
        >>> lrs = [10 ** (k / 10 - 6) for k in range(40)]
        >>> slide(lrs, [3.0 - 0.05 * k for k in range(40)])[1]  # a straight line: no slide
        24
    """
    x, y = _curve(lrs, losses)
    if len(y) < 2:
        return float(x[0]) * adjust_value, 0
    grad = np.gradient(y)
    right = len(y) - 1
    left = right - min(lr_diff, right)
    i = left
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        i = left
        right, left = right - 1, left - 1
    return float(x[i]) * adjust_value, i


RULES: dict[str, Rule] = {"valley": valley, "steep": steep, "minimum": minimum, "slide": slide}


@dataclass
class LRFindResult:
    """What a sweep saw and what it suggests.

    ``lrs`` and ``losses`` are per training step (raw batch loss); ``smoothed`` is their
    bias-corrected moving average, which the rules read. ``suggestions`` maps rule name -> LR
    (all four built-in rules, plus any custom ones), ``indices`` rule name -> index into
    ``lrs`` of the point the rule chose. ``stop_reason``: "completed", "diverged" (smoothed
    loss above ``div_factor`` x its best) or "non-finite" (NaN or inf loss).
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestions: dict[str, float]
    indices: dict[str, int] = field(default_factory=dict)
    stop_reason: str = "completed"
    marked: list[str] = field(default_factory=lambda: list(RULES))  # drawn on the plot
    seconds: float = 0.0

    @property
    def valley(self) -> float:
        return self.suggestions["valley"]

    @property
    def lowest(self) -> float:
        """The LR at the lowest smoothed loss (``minimum`` suggests a tenth of it); NaN when
        the sweep had too few points or ran without the ``minimum`` rule."""
        i = self.indices.get("minimum", -1)
        return self.lrs[i] if i >= 0 else math.nan

    def __repr__(self) -> str:
        """One line: ``LRFindResult(suggestion=3.0e-03 (valley), 100 points from 1e-07 to
        10)``; the first marked rule is the suggestion (a notebook shows the plot instead)."""
        name = self.marked[0] if self.marked else "valley"
        lr = self.suggestions.get(name, math.nan)
        said = f"{lr:.1e} ({name})" if math.isfinite(lr) else f"none ({name}: too few points)"
        span = f" from {self.lrs[0]:.3g} to {self.lrs[-1]:.3g}" if self.lrs else ""
        stop = "" if self.stop_reason == "completed" else f", stopped: {self.stop_reason}"
        return f"LRFindResult(suggestion={said}, {len(self.lrs)} points{span}{stop})"

    def _repr_png_(self) -> bytes:
        """The plot of :meth:`figure`, with the suggestions marked: what a notebook shows."""
        from deepstart.figures import png_bytes

        return png_bytes(self.figure())

    def to_dict(self) -> dict[str, Any]:
        """Plain, strict JSON (NaN and inf become ``None``); :meth:`from_dict` reverses it."""
        d = asdict(self)
        for key in ("lrs", "losses", "smoothed"):
            d[key] = [v if math.isfinite(v) else None for v in d[key]]
        d["suggestions"] = {k: v if math.isfinite(v) else None for k, v in self.suggestions.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LRFindResult:
        def num(v: float | None) -> float:
            return math.nan if v is None else float(v)

        fixed = {key: [num(v) for v in d[key]] for key in ("lrs", "losses", "smoothed")}
        fixed["suggestions"] = {k: num(v) for k, v in d["suggestions"].items()}
        return cls(**{**d, **fixed})

    def figure(self) -> InlineFigure:
        """Loss against LR (log axis): raw in grey, smoothed in blue, one marker per rule.

        Drawn on a bare Agg canvas, so no pyplot state or display is involved; the figure
        shows inline in a notebook (:class:`deepstart.figures.InlineFigure`).
        """
        from deepstart.figures import new_figure

        fig = new_figure((7, 4.5), layout="constrained")
        ax = fig.add_subplot()
        ax.plot(self.lrs, self.losses, color="0.7", lw=1, label="loss per batch")
        ax.plot(self.lrs, self.smoothed, color="C0", lw=2, label="smoothed loss")
        x, y = np.log10(self.lrs), np.asarray(self.smoothed, dtype=np.float64)
        ok = np.isfinite(y)
        for k, name in enumerate(self.marked):
            lr = self.suggestions.get(name, math.nan)
            if not (math.isfinite(lr) and ok.any()):
                continue
            at = float(np.interp(math.log10(lr), x[ok], y[ok]))  # on the smoothed curve
            style = {"marker": "ovsD^P*X"[k % 8], "markersize": 9, "color": f"C{k + 1}"}
            ax.plot([lr], [at], linestyle="none", label=f"{name} {lr:.1e}", **style)
        if ok.any():
            # Keep the divergent tail from squashing the interesting part of the curve.
            raw = np.asarray(self.losses, dtype=np.float64)
            lo = min(y[ok].min(), raw[np.isfinite(raw)].min())  # raw dips below the average
            first, top = y[ok][0], y[ok].max()
            hi = min(top, first + (first - lo)) if first > lo else top
            pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 0.05
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        span = f"{self.lrs[0]:.0e} to {self.lrs[-1]:.0e}" if self.lrs else "no steps"
        ax.set_title(f"LR finder: {len(self.lrs)} steps, {span} ({self.stop_reason})")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="best")
        return fig

    def plot(self, path: str | Path) -> Path:
        """Save :meth:`figure` as a PNG at ``path`` and return the path.

        Example:
            >>> learn.lr_find().plot("runs/lr_find.png")
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure().savefig(path, dpi=110)
        return path


class _Sweep(Callback):
    """Sets the LR of step ``k`` to ``start * (end/start) ** (k / (num_it - 1))``, records the
    loss, and ends the fit after ``num_it`` steps, on divergence or on a non-finite loss."""

    order = 100  # after any scheduler, so the sweep's LR is the one the step uses

    def __init__(
        self, start: float, end: float, num_it: int, stop_div: bool, div: float, beta: float
    ) -> None:
        self.sched, self.num_it = exponential(start, end), num_it
        self.stop_div, self.div, self.beta = stop_div, div, beta
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.stop_reason = "completed"
        self._avg, self._best, self._lr = 0.0, math.inf, start

    def before_fit(self) -> None:
        # fit() was given num_it epochs as a safe upper bound; tell callbacks the real plan.
        self.learn.n_epochs = -(-self.num_it // max(len(self.learn.train_dl), 1))
        self.learn.total_iters = self.num_it

    def before_batch(self) -> None:
        if self.learn.training:
            self._lr = self.sched(len(self.lrs) / (self.num_it - 1))
            self.learn.set_hyper("lr", self._lr)

    def after_step(self) -> None:
        loss = float(self.learn.loss.detach())  # a host sync per step: the stop rule needs it now
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        self.lrs.append(self._lr)
        self.losses.append(loss)
        self.smoothed.append(self._avg / (1 - self.beta ** len(self.losses)))

    def after_batch(self) -> None:
        if not self.learn.training or not self.smoothed:
            return
        s = self.smoothed[-1]
        if not math.isfinite(s):
            self.stop_reason = "non-finite"
            raise CancelFit
        self._best = min(self._best, s)
        if self.stop_div and s > self.div * self._best:
            self.stop_reason = "diverged"
            raise CancelFit
        if len(self.lrs) >= self.num_it:
            raise CancelFit

    def after_train(self) -> None:
        raise CancelEpoch  # the sweep never validates


def _skipped(cb: Callback) -> bool:
    # Logging, recording and saving would describe the sweep as if it were training.
    return isinstance(cb, (Recorder, Progress, Checkpoint)) or getattr(cb, "skip_lr_find", False)


def _suggest(
    lrs: list[float], smoothed: list[float], num_it: int, rules: dict[str, Rule]
) -> tuple[dict[str, float], dict[str, int]]:
    n = next((i for i, v in enumerate(smoothed) if not math.isfinite(v)), len(smoothed))
    # As fastai: skip the first tenth (the average is still settling) and the last 5 steps
    # (already diverging); short sweeps keep more rather than fail.
    lo, hi = num_it // 10, n - 5
    if hi - lo < 2:
        lo, hi = min(lo, max(n - 2, 0)), n
    if hi - lo < 1:
        return {k: math.nan for k in rules}, {k: -1 for k in rules}
    suggestions, indices = {}, {}
    for name, rule in rules.items():
        lr, i = rule(lrs[lo:hi], smoothed[lo:hi])
        suggestions[name], indices[name] = float(lr), lo + int(i)
    return suggestions, indices


def lr_find(
    learn: Learner,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
    div_factor: float = 4.0,
    beta: float = 0.98,
    suggest: Sequence[str | Rule] = ("valley", "steep", "minimum", "slide"),
    plot: str | Path | None = None,
) -> LRFindResult:
    """Sweep the LR exponentially from ``start_lr`` to ``end_lr`` over ``num_it`` training
    batches (as many epochs as that takes, no validation), then restore the learner exactly:
    weights, optimizer state (or none, if it had none), callbacks, RNG and counters.

    Progress, Checkpoint and the Recorder sit the sweep out (as does any callback with
    ``skip_lr_find = True``); other callbacks take part. The sweep stops early when the
    smoothed loss exceeds ``div_factor`` times its best (if ``stop_div``) and always on a NaN
    or inf loss. All four rules (:func:`valley`, :func:`steep`, :func:`minimum`,
    :func:`slide`) are computed; ``suggest`` picks which to mark on the plot and may add
    callables ``rule(lrs, losses) -> (lr, index)``. ``plot`` is a PNG path to write.

    The learner's Progress shows the sweep instead: a bar in notebooks and terminals, and
    one line at its end.

    Example:
        >>> result = lr_find(learn, plot="lr_find.png")  # mnist_cnn on MNIST:
        >>> {k: f"{v:.1e}" for k, v in result.suggestions.items() if k != "slide"}
        {'valley': '1.6e-03', 'steep': '1.6e-03', 'minimum': '5.5e-03'}
    """
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if num_it < 2 or div_factor <= 1 or not 0 <= beta < 1:
        raise ConfigError(
            f"need num_it >= 2, div_factor > 1, 0 <= beta < 1; got {num_it}, {div_factor}, {beta}"
        )
    if len(learn.data.train) == 0:
        raise ConfigError("the training split is empty: nothing to sweep over")
    rules, marked = dict(RULES), []
    for s in suggest:
        if isinstance(s, str) and s not in RULES:
            raise ConfigError(f"unknown suggestion rule {s!r}; use {', '.join(RULES)}")
        name = s if isinstance(s, str) else getattr(s, "__name__", f"rule{len(rules)}")
        rules.setdefault(name, s)
        marked.append(name)

    sweep = _Sweep(start_lr, end_lr, num_it, stop_div, div_factor, beta)
    shown = learn.get_callback(Progress)  # the sweep shows as the learner's fits do
    extra = shown.for_sweep(sweep) if shown is not None else []
    # Everything fit() may change, to put back afterwards. vars() is shallow: the model and
    # optimizer go back through snapshot/restore, the callback list through its contents.
    saved_vars, saved_cbs = dict(vars(learn)), list(learn.callbacks)
    modes = [(m, m.training) for m in learn.model.modules()]
    snap = learn.snapshot()
    cuda = learn.device.type == "cuda"
    rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None)
    start = time.perf_counter()
    try:
        for cb in saved_cbs:
            if _skipped(cb):
                learn.remove_callback(cb)
        learn.fit(num_it, callbacks=[sweep, *extra])  # epochs: an upper bound; sweep cancels
    finally:
        seconds = time.perf_counter() - start
        learn.restore(snap)
        for key in set(vars(learn)) - set(saved_vars):
            delattr(learn, key)
        vars(learn).update(saved_vars)  # opt back to None if fit() had to create one
        learn.callbacks[:] = saved_cbs
        for m, training in modes:
            m.training = training
        torch.set_rng_state(rng[0])  # dropout drew from it; later runs shouldn't notice
        if rng[1] is not None:
            torch.cuda.set_rng_state_all(rng[1])

    suggestions, indices = _suggest(sweep.lrs, sweep.smoothed, num_it, rules)
    result = LRFindResult(
        lrs=sweep.lrs,
        losses=sweep.losses,
        smoothed=sweep.smoothed,
        suggestions=suggestions,
        indices=indices,
        stop_reason=sweep.stop_reason,
        marked=marked,
        seconds=round(seconds, 3),
    )
    if plot is not None:
        result.plot(plot)
    return result
