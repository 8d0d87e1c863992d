"""Training options as callbacks: early stopping, gradient clipping, weight EMA, lookahead, a
time budget.

Each is independent; pass any of them to ``Learner(callbacks=...)`` or ``fit(callbacks=...)``.

Example:
    >>> learn.fit_one_cycle(30, 3e-3, callbacks=[EarlyStopping(patience=3), GradientClip(1.0),
    ...                                          EMA(0.999), MaxTime(600)])
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import torch

from deepstart.errors import ConfigError
from deepstart.train.callbacks import Callback, CancelFit


class EMA(Callback):
    """Keeps an exponential moving average of the weights; validates with it.

    After every optimizer step ``ema = decay_t * ema + (1 - decay_t) * weights`` for each
    float parameter; buffers (BatchNorm running stats) are copied, not averaged. Validation
    runs with the averaged weights swapped in, and the live weights are swapped back after,
    so training continues from them. With ``warmup`` the decay ramps up as in timm/TF:
    ``decay_t = min(decay, (1 + t) / (10 + t))`` at step ``t``, so early, random weights fade
    fast. Each ``fit`` starts a fresh average from the model's weights at ``before_fit``.

    Args:
        decay: the long-run decay; 0.999 averages over roughly the last 1000 steps.
        warmup: ramp the decay up over the first steps.
        use_ema: at the end of fit, leave the averaged weights in the model.

    Example:
        >>> learn.fit(10, 1e-3, callbacks=[EMA(0.999)])
    """

    order = 5  # before the Recorder and everything else that reads validation results
    skip_lr_find = True

    def __init__(self, decay: float = 0.999, warmup: bool = True, use_ema: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.use_ema = float(decay), bool(warmup), bool(use_ema)
        self.steps = 0
        self._swapped = False

    def before_fit(self) -> None:
        model = self.learn.model
        params = [p for p in model.parameters() if p.is_floating_point()]
        # Non-float params (rare) and all buffers are copied each step rather than averaged.
        ids = {id(p) for p in params}
        others = [p for p in model.parameters() if id(p) not in ids] + list(model.buffers())
        self._live, self._live_other = [p.detach() for p in params], [b.detach() for b in others]
        # The average lives on the model's device: no host round trip per step.
        self.ema = [t.clone() for t in self._live]
        self.ema_other = [t.clone() for t in self._live_other]
        self.steps, self._swapped, self._epoch = 0, False, -1

    @torch.no_grad()
    def before_epoch(self) -> None:
        # An epoch seen before is being redone after a restore (the divergence guard): the
        # average may hold the diverged weights, so start it again from the restored ones.
        if self.learn.epoch <= self._epoch:
            for e, t in zip(self.ema + self.ema_other, self._live + self._live_other):
                e.copy_(t)
        self._epoch = self.learn.epoch

    def decay_at(self, step: int) -> float:
        """The decay used for update number ``step`` (0-based)."""
        if self.warmup:
            return min(self.decay, (1 + step) / (10 + step))
        return self.decay

    @torch.no_grad()
    def after_step(self) -> None:
        d = self.decay_at(self.steps)
        if self._live:
            # ema + (1 - d) * (w - ema), fused over all tensors in a few kernel launches.
            torch._foreach_lerp_(self.ema, self._live, 1.0 - d)
        for e, t in zip(self.ema_other, self._live_other):
            e.copy_(t)
        self.steps += 1

    @torch.no_grad()
    def _swap(self) -> None:
        # Exchange live and averaged values in place; model tensors keep their identity, so
        # the optimizer's references to the parameters stay valid.
        for a, b in zip(self._live + self._live_other, self.ema + self.ema_other):
            tmp = a.clone()
            a.copy_(b)
            b.copy_(tmp)
        self._swapped = not self._swapped

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """A context in which the model holds the averaged weights, e.g. to evaluate them."""
        was = self._swapped
        if not was:
            self._swap()
        try:
            yield
        finally:
            if not was:
                self._swap()

    def before_validate(self) -> None:
        if not self._swapped:
            self._swap()

    def after_validate(self) -> None:
        if self._swapped:
            self._swap()

    @torch.no_grad()
    def after_fit(self) -> None:
        if self._swapped:  # validation was cancelled half-way: put the live weights back
            self._swap()
        if self.use_ema and self.steps > 0:
            for a, b in zip(self._live + self._live_other, self.ema + self.ema_other):
                a.copy_(b)


class Lookahead(Callback):
    """airbench's (and hlb-CIFAR10's) lookahead: the weights are pulled back to a slow
    average of themselves every ``every`` steps.

    From ``start`` (a share of training) on, every ``every`` optimizer steps: ``slow <- rho *
    slow + (1 - rho) * weights``, then ``weights <- slow``, with ``rho = base**every * pct**3``
    at training progress ``pct``, so the average is loose at first and tight at the end. At
    the end of each epoch the weights are set to the slow ones (what is validated and kept).
    BatchNorm's running statistics are averaged with the weights (they belong to them).
    Unlike :class:`EMA` the model trains on from the averaged weights. A run resumed from a
    checkpoint, or an epoch redone by the divergence guard, starts the average again from
    the weights it goes on with.

    Args:
        every: steps between pulls (5).
        base: the decay per step the average tends to (0.95).
        start: share of training before the first pull (0.3).

    Example:
        >>> learn.fit(8, 1.5, schedule="triangle", callbacks=[Lookahead()])
    """

    order = 5  # before validation readers, like EMA
    skip_lr_find = True

    def __init__(self, every: int = 5, base: float = 0.95, start: float = 0.3) -> None:
        if every < 1 or not 0.0 < base < 1.0 or not 0.0 <= start < 1.0:
            raise ConfigError("Lookahead wants every >= 1, 0 < base < 1 and 0 <= start < 1")
        self.every, self.base, self.start = int(every), float(base), float(start)
        self.slow: list[torch.Tensor] | None = None
        self._epoch = -1

    def before_fit(self) -> None:
        state = self.learn.model.state_dict(keep_vars=True).values()
        self._live = [t.detach() for t in state if t.is_floating_point()]
        self.slow, self._epoch = None, -1

    def before_epoch(self) -> None:
        # An epoch redone after a restore (the divergence guard) restarts the average from
        # the restored weights, which the slow copy may have never seen.
        if self.learn.epoch <= self._epoch:
            self.slow = None
        self._epoch = self.learn.epoch

    def rho(self, pct: float) -> float:
        """The decay of a pull at training progress ``pct``."""
        return self.base**self.every * min(max(pct, 0.0), 1.0) ** 3

    @torch.no_grad()
    def after_step(self) -> None:
        learn = self.learn
        pct = learn.train_iter / max(learn.total_iters, 1)
        if pct < self.start or learn.train_iter % self.every:
            return
        if self.slow is None:
            self.slow = [t.clone() for t in self._live]
            return
        torch._foreach_lerp_(self.slow, self._live, 1.0 - self.rho(pct))
        torch._foreach_copy_(self._live, self.slow)

    @torch.no_grad()
    def after_train(self) -> None:
        if self.slow is not None:
            torch._foreach_copy_(self._live, self.slow)


class EarlyStopping(Callback):
    """Stops training when ``monitor`` has not improved for ``patience`` epochs.

    Improvement means beating the best value so far by more than ``min_delta``. With
    ``restore_best`` the weights of the best epoch (an in-memory CPU copy) are put back at the
    end of fit. Under :class:`EMA` the averaged weights are the ones scored, so those are kept.

    Args:
        monitor: a key of ``learn.metrics`` after the Recorder ran: "valid_loss",
            "accuracy", "valid_bits", "train_loss", ...
        mode: "min", "max", or "auto" (min for names ending in "loss" or "bits").
        patience: epochs without improvement before stopping.
        min_delta: how much better than the best a value must be to count.
        restore_best: at the end of fit, load the best epoch's weights.
        log: where the one-line stop/restore message goes.

    Attributes:
        best: the best value seen; ``best_epoch`` its 1-based epoch; ``stopped_epoch`` the
            1-based epoch after which training stopped (None if it ran to the end).

    Example:
        >>> learn.fit(50, 1e-3, callbacks=[EarlyStopping("accuracy", patience=5)])
    """

    order = 90  # after the Recorder (10), Progress (20), Checkpoint (30) saw the epoch
    skip_lr_find = True

    def __init__(
        self,
        monitor: str = "valid_loss",
        mode: str = "auto",
        patience: int = 3,
        min_delta: float = 0.0,
        restore_best: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        if mode == "auto":
            mode = "min" if monitor.endswith(("loss", "bits")) else "max"
        if mode not in ("min", "max"):
            raise ConfigError(f"EarlyStopping mode must be min, max or auto, got {mode!r}")
        if patience < 1:
            raise ConfigError(f"EarlyStopping patience must be at least 1, got {patience}")
        self.monitor, self.mode, self.patience = monitor, mode, int(patience)
        self.min_delta, self.restore_best, self.log = abs(float(min_delta)), restore_best, log
        self.before_fit()

    def before_fit(self) -> None:
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.wait = 0
        self.best_state: dict[str, torch.Tensor] | None = None  # CPU copy of the best weights

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def _weights(self) -> dict[str, torch.Tensor]:
        ema = self.learn.get_callback(EMA)
        with ema.applied() if ema is not None and ema.steps > 0 else contextlib.nullcontext():
            return {
                k: v.detach().to("cpu", copy=True) for k, v in self.learn.model.state_dict().items()
            }

    def after_epoch(self) -> None:
        metrics = self.learn.metrics
        if self.monitor not in metrics:
            raise ConfigError(
                f"EarlyStopping monitors {self.monitor!r}, which is not a metric; "
                f"have {sorted(metrics)}"
            )
        value, epoch = float(metrics[self.monitor]), self.learn.epoch + 1
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_state = self._weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            raise CancelFit

    def after_fit(self) -> None:
        last = self.stopped_epoch or (self.learn.epoch + 1)
        restored = False
        if self.restore_best and self.best_state is not None:
            # Also when the best epoch is the last: under EMA the scored weights are the
            # averaged ones, which the model may not hold now (use_ema=False).
            self.learn.model.load_state_dict(self.best_state)
            restored = self.best_epoch != last
        if self.stopped_epoch is not None:
            best = "nan" if self.best is None else f"{self.best:.4g}"
            tail = f"; restored epoch {self.best_epoch}'s weights" if restored else ""
            self.log(
                f"early stopping: {self.monitor} has not improved on {best} "
                f"(epoch {self.best_epoch}) for {self.wait} epochs{tail}"
            )
        elif restored:
            self.log(
                f"restored epoch {self.best_epoch}'s weights (best {self.monitor} {self.best:.4g})"
            )


class GradientClip(Callback):
    """Clips gradients after the backward pass: all together to a total norm of at most
    ``max_norm`` (``clip_grad_norm_``), or with ``value`` each element to ``[-value, value]``.

    Args:
        max_norm: the largest total gradient norm allowed.
        norm_type: the p of the p-norm (``inf`` for the largest element).
        value: clip by value instead of by norm.

    Attributes:
        last_norm: the total gradient norm before clipping at the last step (reading it waits
            for the device).

    Example:
        >>> learn.fit(5, 1e-2, callbacks=[GradientClip(max_norm=1.0)])
    """

    order = 0

    def __init__(
        self, max_norm: float = 1.0, norm_type: float = 2.0, value: float | None = None
    ) -> None:
        if value is None and not max_norm > 0:
            raise ConfigError(f"GradientClip max_norm must be positive, got {max_norm}")
        if value is not None and not value > 0:
            raise ConfigError(f"GradientClip value must be positive, got {value}")
        self.max_norm, self.norm_type, self.value = float(max_norm), float(norm_type), value
        self._norm: torch.Tensor | None = None

    @property
    def last_norm(self) -> float:
        return math.nan if self._norm is None else float(self._norm)

    def after_backward(self) -> None:
        params = [p for p in self.learn.model.parameters() if p.grad is not None]
        if not params:
            return
        if self.value is None:
            # Kept as a tensor: converting to a float every step would stall a GPU.
            self._norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type)
        else:
            grads = [p.grad for p in params]
            # The norm before clipping, as clip_grad_norm_ reports it (fused per-tensor norms).
            norms = torch.stack(torch._foreach_norm(grads, self.norm_type))
            self._norm = torch.linalg.vector_norm(norms, self.norm_type)
            torch.nn.utils.clip_grad_value_(params, self.value)


class MaxTime(Callback):
    """Stops training (CancelFit) once ``seconds`` of wall-clock time have passed since fit
    began. Checked after every training batch, when its optimizer step is complete, and after
    every epoch; an epoch cut short is not validated.

    Args:
        seconds: the budget.
        log: where the one-line stop message goes.

    Example:
        >>> learn.fit(100, 1e-3, callbacks=[MaxTime(15 * 60)])
    """

    order = 95  # after_batch: let the Recorder (10) and the progress bar see the last batch
    skip_lr_find = True

    def __init__(self, seconds: float, log: Callable[[str], None] = print) -> None:
        if not seconds > 0:
            raise ConfigError(f"MaxTime seconds must be positive, got {seconds}")
        self.seconds, self.log = float(seconds), log
        self.stopped_epoch: int | None = None
        self.elapsed = 0.0

    def before_fit(self) -> None:
        self.start = time.perf_counter()
        self.stopped_epoch = None

    def _check(self, where: str) -> None:
        self.elapsed = time.perf_counter() - self.start
        if self.elapsed > self.seconds:
            self.stopped_epoch = self.learn.epoch + 1
            self.log(
                f"max time: stopped after {self.elapsed:.1f} s (budget {self.seconds:g} s) "
                f"{where} of epoch {self.stopped_epoch}/{self.learn.n_epochs}"
            )
            raise CancelFit

    def after_batch(self) -> None:
        if self.learn.training:
            self._check(f"at batch {self.learn.iter + 1}/{self.learn.n_iter}")

    def after_epoch(self) -> None:
        if self.learn.epoch + 1 < self.learn.n_epochs:
            self._check("at the end")
