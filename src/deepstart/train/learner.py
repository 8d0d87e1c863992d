"""The Learner: a model, its data, an optimizer and one plain ``fit`` loop with named events.

Everything optional (progress, logging, checkpoints, LR schedules) is a callback that reacts
to the events (:mod:`deepstart.train.events`). The loop is the same for every task; what
differs (loss, batches, scores, evaluate, predict) is asked of ``learn.task``
(:mod:`deepstart.train.task`). The optimizer is built in :mod:`deepstart.train.optim`.

Example:
    >>> data = load_dataset("shapes", size=(16, 16))
    >>> model = create_model("vgg_small", in_channels=1, num_classes=3, input_size=(16, 16))
    >>> learn = Learner(data, model)
    >>> learn.fit_one_cycle(3, lr_max=3e-3)
    >>> learn.evaluate()["accuracy"]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from deepstart.augment import Augmentation, make_augment
from deepstart.data.dataset import Dataset, ImageSet, Preprocess
from deepstart.data.tensors import TensorData
from deepstart.device import OUT_OF_MEMORY, resolve_device, use_channels_last
from deepstart.errors import ConfigError
from deepstart.train import host_memory, optim, snapshot
from deepstart.train.callbacks import Recorder
from deepstart.train.display import DisplayMixin
from deepstart.train.evaluation import EvaluateMixin, score
from deepstart.train.events import Callback, CancelBatch, CancelEpoch, CancelFit, RestartEpoch
from deepstart.train.finetune import FreezeMixin, frozen_norms_eval
from deepstart.train.guard import DivergenceGuard
from deepstart.train.lr_finder import lr_find
from deepstart.train.memory import halve_batch
from deepstart.train.precompute import FeatureCache, fit_loaders
from deepstart.train.progress import Progress
from deepstart.train.sanity import SanityCheck
from deepstart.train.schedule import ScheduleSpec
from deepstart.train.task import Task, eval_batch_size, task_for
from deepstart.train.tta import tta

if TYPE_CHECKING:
    from deepstart.train.distributed import Distributed


class Learner(FreezeMixin, EvaluateMixin, DisplayMixin):
    """Trains ``model`` on ``data`` (a :class:`Dataset`, or a :class:`TensorData` for
    regression).

    Args:
        data: the dataset; its train split is shuffled per epoch, valid is scored per epoch.
        model: any module mapping ``(N, C, H, W)`` floats to ``(N, K)`` logits; for
            regression one mapping ``(N, D)`` floats to ``(N, E)``.
        loss_func: defaults to cross-entropy (mean squared error for regression).
        opt: "sgd", "adam", "adamw", "rmsprop" (Keras's rho and epsilon) or "lbfgs" (small
            full-batch problems; it needs a constant schedule: it picks its own step length
            by a line search). Another name is refused here, not at ``fit``.
        lr: default learning rate for ``fit`` (the peak for ``fit_one_cycle``).
        wd, momentum, nesterov: optimizer settings (momentum is Adam's beta1; SGD's
            default momentum 0.9 and wd 0.01 are not plain SGD: pass 0 and 0 for that).
        norm_bias_lr: LR multiplier of BatchNorm shifts, their L2 divided by it (airbench's
            64 with SGD; :func:`deepstart.train.finetune.split_norm_biases`).
        batch_size: training batch size; evaluation uses twice it.
        accumulate: one optimizer step every ``accumulate`` batches, on their averaged
            gradients (a larger effective batch than fits in memory; the schedule still
            advances per batch). Not with LBFGS, which re-evaluates its own batch.
        device: "auto", "cpu", "cuda", "mps" or a ``torch.device``.
        callbacks: extra callbacks; a :class:`Recorder` is always present, and a
            :class:`~deepstart.train.progress.Progress` ("auto": a live display in notebooks
            and terminals, plain lines in logs) unless the list holds one or ``quiet``.
        quiet: no progress display (nor time estimate) unless ``callbacks`` hold a Progress.
        seed: seeds the shuffle of every epoch (and nothing global).
        precision: "auto" (bf16 or fp16 autocast on CUDA, bf16 on CPUs with native bf16,
            fp32 elsewhere and for tasks that need it, regression), "fp32", "bf16" or "fp16".
        log: where one-line notices go (batch size halved after out-of-memory, ...).
        guard: add a :class:`~deepstart.train.guard.DivergenceGuard` (restore the last good
            state and halve the LR when the loss blows up). Pass False, or your own guard in
            ``callbacks``, to change that.
        sanity: add a :class:`~deepstart.train.sanity.SanityCheck` (one line through ``log``
            per problem the first fit's labels and first batches show; silent otherwise).
        preprocess: how images are normalised (and resized for evaluate/predict); defaults to
            the dataset's own, computed on its training split. A loaded model passes its own.
        augment: augmentation of the training batches, on the device: a preset name
            ("flip", "cifar", "photo", "digits"; see :mod:`deepstart.augment`), an
            ``Augmentation``, or None. Validation, evaluation and prediction stay plain.
        dist: this process's place in a distributed run (:mod:`deepstart.train.distributed`).
        precompute: while the body is frozen and nothing is augmented, compute the body's
            features once and train the head on them (see :mod:`deepstart.train.precompute`;
            the body, BatchNorm included, stays fixed while it is used).
        train_stats: :func:`deepstart.data.mismatch.input_stats` of the images the model was
            trained on (None: of ``data.train``, computed when first needed).
        input_check: whether :meth:`evaluate` warns (through ``log``) when a split looks
            prepared differently from the training images.
        channels_last: give the model NHWC batches (None: where that is faster, i.e. conv
            nets on the CPU and on CUDA under autocast). Only speed changes.
        task: a :class:`~deepstart.train.task.Task` or the name of one; None: the one the
            data names. ``learn.task`` is the Task (``learn.task.name``: "classification"...).
    """

    def __init__(
        self,
        data: Dataset | TensorData,
        model: nn.Module,
        *,
        loss_func: nn.Module | None = None,
        opt: str = "adamw",
        lr: float = 1e-3,
        wd: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = False,
        norm_bias_lr: float = 1.0,
        batch_size: int = 128,
        accumulate: int = 1,
        device: str | torch.device | None = "auto",
        callbacks: Sequence[Callback] = (),
        seed: int = 0,
        preprocess: Preprocess | None = None,
        precision: str = "auto",
        log: Callable[[str], None] = print,
        guard: bool = True,
        sanity: bool = True,
        augment: str | Augmentation | None = None,
        precompute: bool = False,
        dist: Distributed | None = None,
        train_stats: dict | None = None,
        input_check: bool = True,
        channels_last: bool | None = None,
        task: Task | str | None = None,
        quiet: bool = False,
    ) -> None:
        self.data = data
        # What the training images looked like (deepstart.data.mismatch.input_stats): evaluate
        # compares every split with it and logs what differs. None: computed from data.train
        # when first needed; a loaded model passes the one saved with it.
        self.train_stats = train_stats
        self.input_check = bool(input_check)
        self.dist = dist
        if dist is not None:
            device = dist.device
        self.task = task_for(data, task)
        self.preprocess = preprocess if preprocess is not None else data.preprocess
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.loss_func = loss_func if loss_func is not None else self.task.default_loss()
        if isinstance(self.loss_func, nn.Module):
            self.loss_func.to(self.device)  # class weights live in a buffer
        self.amp_dtype = self.task.amp_dtype(precision, self.device)
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 does not.
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type) if fp16 else None
        if channels_last is None:  # NHWC batches for conv nets where that is faster
            channels_last = use_channels_last(self.model, self.device, self.amp_dtype)
        self.channels_last = bool(channels_last)
        self.log = log
        optim.check_optimizer_name(opt)  # a typo fails here, with the names, not at fit()
        self.opt_name, self.lr, self.wd = opt, float(lr), float(wd)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.norm_bias_lr = float(norm_bias_lr)
        self.batch_size, self.seed = int(batch_size), int(seed)
        if int(accumulate) < 1:
            raise ConfigError(f"accumulate must be >= 1, got {accumulate}")
        self.accumulate = int(accumulate)
        self._pending = 0  # batches whose gradients wait for the next optimizer step
        self.augment = augment
        pre = self.preprocess  # None for regression points: no image statistics to augment by
        self._augment_fn = make_augment(augment, pre.mean, pre.std) if pre is not None else None
        self.lr_scales: list[float] | None = None  # per layer group; None: all 1 (see fit)
        self.precompute = bool(precompute)
        self.feature_cache = FeatureCache()
        self._precompute_note: str | None = None  # the last reason logged for not using it
        self.head_only = False  # this fit trains model.head on cached features
        # Which fit of a multi-fit plan runs (fine_tune: 0 frozen, 1 unfrozen): checkpoints
        # save it so a resumed run continues in the right one.
        self.phase = 0
        self.cancelled = False  # the last fit was ended early by CancelFit
        self._ddp: nn.Module | None = None  # the model in DDP, during a distributed fit
        self._stop_vote = False  # a callback asked to stop; agreed on over ranks (DDP)
        self._voting = False  # inside a distributed fit's epochs: CancelFit becomes a vote
        self.opt: torch.optim.Optimizer | None = None
        self.callbacks: list[Callback] = []
        self.recorder = Recorder()
        self.add_callbacks([self.recorder, *callbacks])
        if not quiet and self.get_callback(Progress) is None:
            self.add_callbacks([Progress("auto", default=True)])
        if guard and self.get_callback(DivergenceGuard) is None:
            self.add_callbacks([DivergenceGuard(log=log)])
        if sanity and self.get_callback(SanityCheck) is None:
            self.add_callbacks([SanityCheck()])
        self.epoch, self.n_epochs = 0, 0
        self.iter, self.n_iter = 0, 0  # batch within the epoch
        self.train_iter, self.total_iters = 0, 0  # batch over the whole fit
        self.training = False
        self.lr_mult = 1.0  # scales every scheduled LR; the divergence guard halves it
        self.restart_at = 0  # first batch of a restarted epoch (see RestartEpoch)
        self.metrics: dict[str, Any] = {}
        self.xb = self.yb = self.pred = self.loss = None

    # -- callbacks -------------------------------------------------------------------------
    def add_callbacks(self, cbs: Iterable[Callback]) -> None:
        for cb in cbs:
            cb.learn = self
            self.callbacks.append(cb)
        self.callbacks.sort(key=lambda c: c.order)

    def remove_callback(self, cb: Callback) -> None:
        self.callbacks.remove(cb)

    def __call__(self, event: str) -> None:
        for cb in list(self.callbacks):
            handler = getattr(cb, event, None)
            if handler is None:
                continue
            try:
                handler()
            except CancelFit:
                if not self._voting:
                    raise
                # A stop one rank decides alone (a clock, Ctrl-C) must not leave the others
                # waiting in a collective: vote, and stop together at the end of the batch.
                self._stop_vote = True

    def _agree_to_stop(self) -> None:
        if self.dist is not None:
            vote, self._stop_vote = self._stop_vote, False
            if self.dist.any(vote):
                raise CancelFit

    def get_callback(self, kind: type) -> Any:
        return next((cb for cb in self.callbacks if isinstance(cb, kind)), None)

    # -- data ------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def baseline_loss(self) -> float:
        """The loss of knowing nothing (ln K nats for K classes; see the task's)."""
        return self.task.baseline_loss(self)

    def batches(self, split: Any, *, train: bool = False, shard: bool = False) -> Any:
        """Batches of ``split`` on this learner's device, as its task makes them (normalised
        images; regression points as they are). ``shard``: this rank's part of every global
        batch (distributed fits)."""
        return self.task.batches(self, split, train=train, shard=shard)

    def eval_batch_size(self, split: ImageSet) -> int:
        """Images per evaluation batch (see :func:`deepstart.train.task.eval_batch_size`)."""
        return eval_batch_size(self, split)

    # -- the optimizer (deepstart.train.optim) ---------------------------------------------
    def create_opt(self) -> None:
        """A fresh optimizer, one param group per layer group (see :func:`optim.create_opt`)."""
        self.opt = optim.create_opt(self)

    def set_optimizer(self, opt: str) -> None:
        """Train with ``opt`` from the next ``fit`` on (a fresh optimizer, no state kept),
        e.g. ``"lbfgs"`` to polish what Adam fitted (docs/fitting.md)."""
        optim.check_optimizer_name(opt)
        self.opt_name, self.opt = opt, None

    def set_hyper(self, name: str, value: float) -> None:
        """Set ``lr`` or ``momentum`` on every param group (see :func:`optim.set_hyper`)."""
        assert self.opt is not None
        optim.set_hyper(self.opt, name, value)

    # -- in-memory state (deepstart.train.snapshot) ---------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A CPU copy of weights, optimizer state and progress; :meth:`restore` puts it back."""
        return snapshot.take(self)

    def restore(self, snap: dict[str, Any]) -> None:
        """Put back a :meth:`snapshot`: weights, optimizer state and ``train_iter``."""
        snapshot.restore(self, snap)

    def tta(self, split: str | ImageSet = "test", **kwargs: Any) -> dict[str, Any]:
        """Evaluate with test-time augmentation (see :func:`deepstart.train.tta.tta`)."""
        return tta(self, split, **kwargs)

    def lr_find(self, **kwargs: Any) -> Any:
        """Run the LR finder (see :func:`deepstart.train.lr_finder.lr_find`)."""
        return lr_find(self, **kwargs)

    # -- the loop --------------------------------------------------------------------------
    def fit(
        self,
        epochs: int,
        lr: float | slice | None = None,
        *,
        schedule: ScheduleSpec | str = "constant",
        callbacks: Sequence[Callback] = (),
        start_epoch: int = 0,
        restart_at: int = 0,
    ) -> None:
        """Train for ``epochs`` epochs; ``schedule`` shapes the LR (constant by default).

        ``start_epoch`` and ``restart_at`` (first batch of that epoch) continue a run whose
        state was restored from a checkpoint; the schedule continues where it was.

        ``lr=slice(lo, hi)`` gives discriminative learning rates: ``hi`` for the head, down to
        ``lo`` for the first layer group, spaced geometrically (fastai's convention).
        """
        if epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {epochs}")
        sched = optim.prepare_fit(self, lr, schedule)
        if self.device.type == "cpu":
            host_memory.keep_freed_memory()  # no fresh pages every step (a 0.8x epoch)
        if self.dist is not None:
            self._ddp = self.dist.wrap_for_fit(self)
        extra = [sched, *callbacks]
        self.add_callbacks(extra)
        self.n_epochs = epochs
        self.train_dl, self.valid_dl = fit_loaders(self)
        self.total_iters = epochs * len(self.train_dl)
        self.train_iter = start_epoch * len(self.train_dl) + restart_at
        self.restart_at = restart_at
        self.cancelled = False
        try:
            self("before_fit")
            epoch = start_epoch
            self._voting = self.dist is not None
            while epoch < epochs:
                self.epoch = epoch
                try:
                    self._do_epoch()
                except CancelEpoch:
                    self("after_cancel_epoch")
                except RestartEpoch:
                    epoch = self.epoch  # a callback restored a state, maybe of an earlier epoch
                    continue
                self.restart_at = 0
                epoch += 1
        except CancelFit:
            self.cancelled = True
            self._voting = False
            self("after_cancel_fit")
        finally:
            self._voting = False
            self("after_fit")
            for cb in extra:
                self.remove_callback(cb)
            self.head_only = False
            self._ddp = None
            if self.device.type == "cpu":
                host_memory.give_back_memory()

    def trainable_changed(self) -> None:
        """Say that a callback changed which parameters train in the middle of a fit: DDP fixes
        that set when it wraps the model, so it wraps it again (all processes do this at the
        same point; nothing to do in one process)."""
        if self.dist is not None and self._ddp is not None:
            self._ddp = self.dist.wrap(self.model)

    def fit_one_cycle(
        self,
        epochs: int,
        lr_max: float | slice | None = None,
        *,
        pct_start: float = 0.25,
        div: float = 25.0,
        final_div: float = 1e5,
        callbacks: Sequence[Callback] = (),
        start_epoch: int = 0,
        restart_at: int = 0,
    ) -> None:
        """fastai's one-cycle policy: LR from ``lr_max/div`` up to ``lr_max`` over the first
        ``pct_start`` of training, then down to ``lr_max/final_div``; momentum the other way.
        """
        spec = ScheduleSpec("one_cycle", pct_start=pct_start, div=div, final_div=final_div)
        at = {"start_epoch": start_epoch, "restart_at": restart_at}
        self.fit(epochs, lr_max, schedule=spec, callbacks=callbacks, **at)

    def _do_epoch(self) -> None:
        self("before_epoch")
        self._train_epoch()
        self._validate()
        self("after_epoch")
        self._agree_to_stop()

    def _train_epoch(self) -> None:
        self.training = True
        self.model.train()
        frozen_norms_eval(self.model)  # a frozen BatchNorm keeps its statistics too
        self.train_dl.set_epoch(self.epoch, start=self.restart_at)
        self._pending = 0  # an epoch cut short (restarted, cancelled) left no half group
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)
        self.n_iter = len(self.train_dl)
        self("before_train")
        for i, (xb, yb) in enumerate(self.train_dl, start=self.restart_at):
            self.iter = i
            self._one_batch(xb, yb)
        self("after_train")

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _one_batch(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        self.xb, self.yb = xb, yb
        self.pred = self.loss = None
        try:
            self("before_batch")
            with self._autocast():
                if self.head_only:
                    self.pred = self.model.head(self.xb)
                elif self._ddp is not None and self.training:
                    self.pred = self._ddp(self.xb)  # gradients averaged over ranks
                else:
                    self.pred = self.model(self.xb)
                self("after_pred")
                self.loss = self.loss_func(self.pred, self.yb)
                if self.dist is not None and self.training:
                    self.loss = self.dist.global_mean(self.loss)
            self("after_loss")
            if self.training:
                assert self.opt is not None
                self._pending += 1
                last = self.iter + 1 >= self.n_iter
                if self._pending < self.accumulate and not last:
                    self._accumulate()
                    return  # (the finally clause still raises after_batch)
                optim.backward(self)
                if self._pending > 1:  # the sum of the batches' gradients -> their mean
                    for p in self.model.parameters():
                        if p.grad is not None:
                            p.grad.div_(self._pending)
                self._pending = 0
                self("after_backward")
                optim.step(self)
                self.train_iter += 1  # batches trained so far: what the schedule's pct counts
                self("after_step")
                self.opt.zero_grad(set_to_none=True)
        except CancelBatch:
            self("after_cancel_batch")
        except OUT_OF_MEMORY as e:
            if not self.training or self.batch_size < 2 or self.dist is not None:
                raise  # (in a distributed run the ranks cannot halve their batches in step)
            halve_batch(self, e)
        finally:
            self("after_batch")
        self._agree_to_stop()

    def _accumulate(self) -> None:
        """Backward of a batch whose optimizer step waits for the next ones (``accumulate``):
        its gradients add to the others' (scaled, under fp16, by the same factor: the scaler
        only changes it at a step, where it unscales the sum once)."""
        if isinstance(self.opt, torch.optim.LBFGS):
            raise ConfigError("accumulate > 1 does not work with LBFGS (it re-evaluates a batch)")
        loss = self.scaler.scale(self.loss) if self.scaler is not None else self.loss
        loss.backward()
        self.train_iter += 1

    @torch.no_grad()
    def _validate(self) -> None:
        self.training = False
        self.model.eval()
        self("before_validate")
        out = score(self, self.valid_dl)
        self.metrics = {"valid_loss": out["loss"], **{k: out[k] for k in self.task.valid_metrics}}
        self("after_validate")
