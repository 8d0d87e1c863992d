"""The Learner: a model, its data, an optimizer and one plain ``fit`` loop with named events.

Everything optional (progress, logging, checkpoints, LR schedules) is a callback that
reacts to the events; control flow uses the small exceptions ``CancelFit``, ``CancelEpoch``
and ``CancelBatch``.

The data decides the task. A :class:`Dataset` of images is classification: cross-entropy,
accuracy, per-class scores. A :class:`~deepstart.data.tensors.TensorData` of float points is
regression: mean squared error by default, and every split scored by its loss and its largest
and RMS error (:mod:`deepstart.train.regression`). The loop is the same for both.

Example:
    >>> data = load_dataset("shapes", size=(16, 16))
    >>> model = create_model("vgg_small", in_channels=1, num_classes=3, input_size=(16, 16))
    >>> learn = Learner(data, model)
    >>> learn.fit_one_cycle(3, lr_max=3e-3)
    >>> learn.evaluate()["accuracy"]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepstart.augment import Augmentation, make_augment
from deepstart.data.dataset import Batches, Dataset, ImageSet, Preprocess, conform_images
from deepstart.data.tensors import TensorBatches, TensorData, TensorSet
from deepstart.device import (
    OUT_OF_MEMORY,
    release_cached_memory,
    resolve_device,
    resolve_precision,
    use_channels_last,
)
from deepstart.errors import ConfigError
from deepstart.train.callbacks import (
    Callback,
    CancelBatch,
    CancelEpoch,
    CancelFit,
    ParamScheduler,
    Recorder,
    RestartEpoch,
)
from deepstart.train.finetune import (
    fine_tune,
    freeze_to,
    frozen_norms_eval,
    layer_groups,
    lr_scales,
    param_groups,
    split_norm_biases,
)
from deepstart.train.guard import DivergenceGuard
from deepstart.train.precompute import FeatureBatches, FeatureCache, cached_batches
from deepstart.train.regression import (
    baseline_loss,
    evaluate_values,
    predict_values,
    score_values,
)
from deepstart.train.schedule import ScheduleSpec

if TYPE_CHECKING:
    from deepstart.train.distributed import Distributed

# The events, in the order one epoch raises them (validation sits inside the epoch).
EVENTS = (
    "before_fit",
    "before_epoch",
    "before_train",
    "before_batch",
    "after_pred",
    "after_loss",
    "after_backward",
    "after_step",
    "after_batch",
    "after_train",
    "before_validate",
    "after_validate",
    "after_epoch",
    "after_fit",
    "after_cancel_batch",
    "after_cancel_epoch",
    "after_cancel_fit",
)


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def make_optimizer(
    name: str,
    params: Iterable[Any],
    *,
    lr: float,
    wd: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """Build an optimizer by name: ``sgd`` (momentum, Nesterov), ``adam``, ``adamw`` or
    ``lbfgs``.

    ``wd`` is decoupled weight decay for ``adamw`` and L2 for ``sgd`` and ``adam``, as in
    PyTorch. ``lbfgs`` (for small full-batch problems) takes a strong-Wolfe line search, so
    ``lr`` is the first step tried (1 is the usual value); it has no weight decay or momentum
    and ignores ``wd`` and ``momentum``. One of its steps runs up to 5 iterations; it stops
    early only when its line search can make no progress (PyTorch's default tolerances are
    absolute, and would stop a fit whose loss is already 1e-7).
    """
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=wd
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=wd)
    if name == "lbfgs":
        # A few iterations per step, so callbacks (progress, snapshots) see it advance.
        return torch.optim.LBFGS(
            params,
            lr=lr,
            max_iter=5,
            max_eval=10,
            tolerance_grad=0.0,
            tolerance_change=0.0,
            history_size=50,
            line_search_fn="strong_wolfe",
        )
    raise ConfigError(f"unknown optimizer {name!r}; use sgd, adam, adamw or lbfgs")


# The pixels of an evaluation batch on a CPU: 32 images at 224 px (see eval_batch_size).
EVAL_CPU_PIXELS = 32 * 224 * 224


class Learner:
    """Trains ``model`` on ``data`` (a :class:`Dataset`, or a :class:`TensorData` for
    regression).

    Args:
        data: the dataset; its train split is shuffled per epoch, valid is scored per epoch.
        model: any module mapping ``(N, C, H, W)`` floats to ``(N, K)`` logits; for
            regression one mapping ``(N, D)`` floats to ``(N, E)``.
        loss_func: defaults to cross-entropy (mean squared error for regression).
        opt: "sgd", "adam", "adamw" or "lbfgs" (small full-batch problems; it needs a
            constant schedule: it picks its own step length by a line search).
        lr: default learning rate for ``fit`` (the peak for ``fit_one_cycle``).
        wd, momentum, nesterov: optimizer settings (momentum is Adam's beta1).
        norm_bias_lr: LR multiplier of BatchNorm shifts, their L2 divided by it (airbench's
            64 with SGD; see :func:`deepstart.train.finetune.split_norm_biases`).
        batch_size: training batch size; evaluation uses twice it.
        device: "auto", "cpu", "cuda", "mps" or a ``torch.device``.
        callbacks: extra callbacks; a :class:`Recorder` is always present.
        seed: seeds the shuffle of every epoch (and nothing global).
        precision: "auto" (bf16 or fp16 autocast on CUDA, bf16 on CPUs with native bf16,
            fp32 elsewhere and for regression), "fp32", "bf16" or "fp16".
        log: where one-line notices go (batch size halved after out-of-memory, ...).
        guard: add a :class:`~deepstart.train.guard.DivergenceGuard` (restore the last good
            state and halve the LR when the loss blows up). Pass False, or your own guard in
            ``callbacks``, to change that.
        preprocess: how images are normalised (and resized for evaluate/predict); defaults to
            the dataset's own, computed on its training split. A loaded model passes its own.
        augment: augmentation of the training batches, on the device: a preset name
            ("flip", "cifar", "photo", "digits"; see :mod:`deepstart.augment`), an
            ``Augmentation``, or None. Validation, evaluation and prediction stay plain.
        dist: this process's place in a distributed run (see
            :mod:`deepstart.train.distributed`); None for a single process.
        precompute: while the body is frozen and nothing is augmented, compute the body's
            features once and train the head on them (see :mod:`deepstart.train.precompute`;
            the body, BatchNorm included, stays fixed while it is used).
        train_stats: :func:`deepstart.data.mismatch.input_stats` of the images the model was
            trained on (None: of ``data.train``, computed when first needed).
        input_check: whether :meth:`evaluate` warns (through ``log``) when a split looks
            prepared differently from the training images.
        channels_last: give the model NHWC batches (None: where that is faster, i.e. conv
            nets on the CPU and on CUDA under autocast; see
            :func:`deepstart.device.use_channels_last`). Only speed changes.

    Attributes:
        task: "classification" or "regression", from the data.
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
        device: str | torch.device | None = "auto",
        callbacks: Sequence[Callback] = (),
        seed: int = 0,
        preprocess: Preprocess | None = None,
        precision: str = "auto",
        log: Callable[[str], None] = print,
        guard: bool = True,
        augment: str | Augmentation | None = None,
        precompute: bool = False,
        dist: Distributed | None = None,
        train_stats: dict | None = None,
        input_check: bool = True,
        channels_last: bool | None = None,
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
        self.task: str = getattr(data, "task", "classification")
        self.preprocess = preprocess if preprocess is not None else data.preprocess
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        if loss_func is None:
            loss_func = nn.MSELoss() if self.task == "regression" else nn.CrossEntropyLoss()
        self.loss_func = loss_func
        if isinstance(self.loss_func, nn.Module):
            self.loss_func.to(self.device)  # class weights live in a buffer
        self.amp_dtype = resolve_precision(precision, self.device, self.task)
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 does not.
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        )
        # NHWC batches for conv nets where that is faster (deepstart.device); None: decide.
        self.channels_last = (
            use_channels_last(self.model, self.device, self.amp_dtype)
            if channels_last is None
            else bool(channels_last)
        )
        self.log = log
        self.opt_name, self.lr, self.wd = opt, float(lr), float(wd)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.norm_bias_lr = float(norm_bias_lr)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.augment = augment
        self._augment_fn = (
            make_augment(augment, self.preprocess.mean, self.preprocess.std)
            if self.preprocess is not None  # regression points have no image statistics
            else None
        )
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
        if guard and self.get_callback(DivergenceGuard) is None:
            self.add_callbacks([DivergenceGuard(log=log)])
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
            if self.dist is None or not self._voting:
                handler()
                continue
            try:
                handler()
            except CancelFit:
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
        """The loss of knowing nothing: ln K nats for K classes (a uniform guess); for
        regression, the valid loss of always predicting the mean training y."""
        if self.task == "regression":
            return baseline_loss(self)
        return math.log(max(self.num_classes, 2))

    def batches(
        self, split: ImageSet | TensorSet, *, train: bool = False, shard: bool = False
    ) -> Any:
        """Batches of ``split`` on this learner's device, normalised by the train stats
        (:class:`Batches`); for regression, :class:`TensorBatches` of the points as they are.
        ``shard``: this rank's part of every global batch (distributed fits)."""
        rank, world = (self.dist.rank, self.dist.world) if shard and self.dist else (0, 1)
        if self.task == "regression":
            if shard:
                raise ConfigError("distributed training is for image classifiers")
            return TensorBatches(
                split,
                self.batch_size if train else self.batch_size * 2,
                device=self.device,
                shuffle=train,
                drop_last=train and len(split) > self.batch_size,
                seed=self.seed,
                passes=self.data.passes if train else 1,
            )
        return Batches(
            split,
            self.batch_size if train else self.eval_batch_size(split),
            device=self.device,
            mean=self.preprocess.mean,
            std=self.preprocess.std,
            shuffle=train,
            # A last batch of 1 breaks BatchNorm and adds a noisy step: drop the remainder.
            drop_last=train and len(split) > self.batch_size * world,
            seed=self.seed,
            augment=self._augment_fn if train else None,
            channels_last=self.channels_last,
            rank=rank,
            world=world,
        )

    def eval_batch_size(self, split: ImageSet) -> int:
        """Twice the training batch (no gradients to keep), but on a CPU at most
        ``EVAL_CPU_PIXELS`` pixels a batch: bigger batches of big images spill the caches.
        EfficientNet-Lite0 at 224 px computed 65 img/s in batches of 128, 85 in 64 and 120
        in 32 (Xeon, 2 threads, bf16); 28 px digits keep their batches of 512."""
        size = 2 * self.batch_size
        if self.device.type == "cpu" and len(split):
            h, w = split.images.shape[-2:]
            size = min(size, max(self.batch_size // 2, EVAL_CPU_PIXELS // (h * w), 1))
        return size

    def create_opt(self) -> None:
        """One param group per layer group with trainable parameters, each with its
        ``lr_scale`` (discriminative learning rates; see :mod:`deepstart.train.finetune`)."""
        n = len(layer_groups(self.model))
        scales = self.lr_scales if self.lr_scales and len(self.lr_scales) == n else [1.0] * n
        groups = param_groups(self.model, scales)
        groups = split_norm_biases(self.model, groups, self.norm_bias_lr, self.wd)
        self.opt = make_optimizer(
            self.opt_name,
            groups,
            lr=self.lr,
            wd=self.wd,
            momentum=self.momentum,
            nesterov=self.nesterov,
        )

    def set_optimizer(self, opt: str) -> None:
        """Train with ``opt`` from the next ``fit`` on: a fresh optimizer, no state kept.

        Example: Adam with one-cycle, then an LBFGS polish of the same model:
            >>> learn.fit_one_cycle(10, 1e-3)
            >>> learn.set_optimizer("lbfgs")
            >>> learn.fit(10, 1.0)
        """
        make_optimizer(opt, [torch.zeros(1, requires_grad=True)], lr=1.0)  # checks the name
        self.opt_name, self.opt = opt, None

    def set_hyper(self, name: str, value: float) -> None:
        """Set ``lr`` (times each group's ``lr_scale``) or ``momentum`` on every param group
        (momentum is beta1 for Adam)."""
        assert self.opt is not None
        for group in self.opt.param_groups:
            if name == "lr":
                group["lr"] = value * group.get("lr_scale", 1.0)
            elif name == "momentum" and "betas" in group:
                group["betas"] = (value, group["betas"][1])
            elif name in group:
                group[name] = value

    def snapshot(self) -> dict[str, Any]:
        """A copy of everything training changes: weights, optimizer state, progress.

        Held in memory (CPU copies); :meth:`restore` puts it back. The divergence guard and
        the LR finder use it.
        """
        return {
            "model": {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            },
            # _to_cpu builds new containers and copies every tensor: nothing is shared.
            "opt": _to_cpu(self.opt.state_dict()) if self.opt is not None else None,
            "train_iter": self.train_iter,
            "epoch": self.epoch,
            "iter": self.iter,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Put back a :meth:`snapshot`: weights, optimizer state and ``train_iter``."""
        self.model.load_state_dict(snap["model"])
        if self.opt is not None and snap["opt"] is not None:
            self.opt.load_state_dict(snap["opt"])  # moves state to the params' device
        self.train_iter, self.epoch, self.iter = snap["train_iter"], snap["epoch"], snap["iter"]

    def _rescale_groups(self) -> None:
        """Give the existing optimizer's groups the current ``lr_scales`` (keeps its state)."""
        assert self.opt is not None
        scales = self.lr_scales or []
        for i, group in enumerate(self.opt.param_groups):
            k = group.get("layer_group", i)
            group["lr_scale"] = (scales[k] if k < len(scales) else 1.0) * group.get(
                "norm_mult", 1.0
            )

    # -- transfer learning -----------------------------------------------------------------
    def freeze_to(self, n: int, *, train_bn: bool = True) -> None:
        """Freeze the first ``n`` layer groups (their BatchNorm layers stay trainable unless
        ``train_bn=False``, which also fixes their running statistics). When that changes
        which parameters train, the optimizer is rebuilt for them at the next fit; otherwise
        it keeps its state (a resumed run re-freezes what its checkpoint had frozen)."""
        before = [p.requires_grad for p in self.model.parameters()]
        freeze_to(self.model, n, train_bn=train_bn)
        if [p.requires_grad for p in self.model.parameters()] != before:
            self.opt = None

    def freeze(self, *, train_bn: bool = True) -> None:
        """Train only the head (the last layer group)."""
        self.freeze_to(-1, train_bn=train_bn)

    def unfreeze(self) -> None:
        """Train every layer again."""
        self.freeze_to(0)

    def fine_tune(self, epochs: int, base_lr: float = 2e-3, **kwargs: Any) -> None:
        """fastai's fine_tune: one epoch with the body frozen, then ``epochs`` unfrozen with
        discriminative LRs (see :func:`deepstart.train.finetune.fine_tune`)."""
        fine_tune(self, epochs, base_lr, **kwargs)

    def tta(self, split: str | ImageSet = "test", **kwargs: Any) -> dict[str, Any]:
        """Evaluate with test-time augmentation (see :func:`deepstart.train.tta.tta`)."""
        from deepstart.train.tta import tta

        return tta(self, split, **kwargs)

    def lr_find(self, **kwargs: Any) -> Any:
        """Run the LR finder (see :func:`deepstart.train.lr_finder.lr_find`)."""
        from deepstart.train.lr_finder import lr_find

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
        if lr is not None:
            self.lr, self.lr_scales = lr_scales(len(layer_groups(self.model)), lr)
            if self.opt is not None:
                self._rescale_groups()
        if isinstance(schedule, str):
            schedule = ScheduleSpec(kind=schedule)
        if self.opt is None:
            self.create_opt()
        if isinstance(self.opt, torch.optim.LBFGS):
            self._check_lbfgs(schedule)
        if self.dist is not None:
            self._check_distributed()
            self._ddp = self.dist.wrap(self.model)
        sched = ParamScheduler(schedule.lr(self.lr), schedule.momentum(self._moms()))
        extra = [sched, *callbacks]
        self.add_callbacks(extra)
        self.n_epochs = epochs
        self._make_loaders()
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

    def _check_distributed(self) -> None:
        assert self.dist is not None
        if isinstance(self.opt, torch.optim.LBFGS):
            raise ConfigError("lbfgs is not supported in distributed training")
        if len(self.data.train) < self.batch_size * self.dist.world:
            raise ConfigError(
                f"the train split ({len(self.data.train)} images) is smaller than one global "
                f"batch ({self.batch_size} per process x {self.dist.world} processes)"
            )

    def _make_loaders(self) -> None:
        """The fit's train and valid batches: cached body features when ``precompute`` can
        be used (then the loop runs ``model.head`` only), else the images."""
        cached = cached_batches(self, self.log) if self.precompute else None
        self.head_only = cached is not None
        if cached is not None:
            self.train_dl, self.valid_dl = cached
        else:
            shard = self.dist is not None
            self.train_dl = self.batches(self.data.train, train=True, shard=shard)
            self.valid_dl = self.batches(self.data.valid, shard=shard)

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
        self.fit(
            epochs,
            lr_max,
            schedule=spec,
            callbacks=callbacks,
            start_epoch=start_epoch,
            restart_at=restart_at,
        )

    def _check_lbfgs(self, schedule: ScheduleSpec) -> None:
        """LBFGS chooses its step length itself (line search), so an LR schedule would only
        rescale the first step it tries; and it cannot step through a loss scaler."""
        if schedule.kind != "constant":
            raise ConfigError(
                f"lbfgs picks its own step length by a line search: train it with a constant "
                f"schedule (fit(..., schedule='constant')), not {schedule.kind}"
            )
        if self.scaler is not None:
            raise ConfigError("lbfgs cannot step through fp16 loss scaling; use fp32 or bf16")

    def _moms(self) -> tuple[float, float, float]:
        # fastai's (0.95, 0.85, 0.95), capped by the momentum the user asked for.
        top = max(self.momentum, 0.85)
        return (top, 0.85 if top > 0.85 else top, top)

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
                if self.scaler is not None:
                    self.scaler.scale(self.loss).backward()
                    self.scaler.unscale_(self.opt)  # callbacks (clipping) see true gradients
                else:
                    self.loss.backward()
                self("after_backward")
                if self.scaler is not None:
                    self.scaler.step(self.opt)
                    self.scaler.update()
                elif isinstance(self.opt, torch.optim.LBFGS):
                    self.opt.step(self._closure())
                else:
                    self.opt.step()
                self.train_iter += 1  # steps taken so far: what the schedule's pct counts
                self("after_step")
                self.opt.zero_grad(set_to_none=True)
        except CancelBatch:
            self("after_cancel_batch")
        except OUT_OF_MEMORY as e:
            if not self.training or self.batch_size < 2 or self.dist is not None:
                raise  # (in a distributed run the ranks cannot halve their batches in step)
            self._halve_batch(e)
        finally:
            self("after_batch")
        self._agree_to_stop()

    def _closure(self) -> Callable[[], torch.Tensor]:
        """The re-evaluation LBFGS needs: loss and gradients of the current batch at the
        current weights. Its first call returns what the loop just computed (gradients are
        in place, after the callbacks' after_backward); line-search calls recompute."""
        first = True

        def closure() -> torch.Tensor:
            nonlocal first
            if first:
                first = False
                return self.loss
            assert self.opt is not None
            self.opt.zero_grad(set_to_none=True)
            with self._autocast():
                pred = self.model.head(self.xb) if self.head_only else self.model(self.xb)
                loss = self.loss_func(pred, self.yb)
            loss.backward()
            return loss

        return closure

    def _halve_batch(self, error: BaseException) -> None:
        """Out of memory: halve the batch, keep the per-sample LR, redo this batch.

        Batch ``i`` of size B holds the same items as batches ``2i`` and ``2i + 1`` of size
        B/2 (the epoch's order does not depend on the batch size), so the epoch goes on from
        exactly the items that failed.
        """
        assert self.opt is not None
        self.opt.zero_grad(set_to_none=True)
        self.pred = self.loss = None
        release_cached_memory(self.device)
        old, new = self.batch_size, self.batch_size // 2
        self.batch_size = new
        self.lr_mult *= new / old  # linear scaling: same LR per sample
        self._make_loaders()
        self.restart_at = self.iter * old // new
        self.total_iters = self.n_epochs * len(self.train_dl)
        self.train_iter = self.epoch * len(self.train_dl) + self.restart_at
        self.log(
            f"out of memory at batch size {old} ({type(error).__name__}); retrying with "
            f"{new} and the LR scaled by {new / old:g} to keep the per-sample rate"
        )
        raise RestartEpoch

    @torch.no_grad()
    def _validate(self) -> None:
        self.training = False
        self.model.eval()
        self("before_validate")
        out = self._score(self.valid_dl)
        if self.task == "regression":
            self.metrics = {
                "valid_loss": out["loss"],
                "max_error": out["max_error"],
                "rms_error": out["rms_error"],
            }
        else:
            self.metrics = {"valid_loss": out["loss"], "accuracy": out["accuracy"]}
        self("after_validate")

    def _score(self, dl: Batches | TensorBatches) -> dict[str, Any]:
        """Loss, accuracy and the per-item predictions of ``dl`` in eval mode (loss, max and
        RMS error for regression); halves the evaluation batch and starts again if the device
        runs out of memory."""
        while True:
            try:
                return self._score_once(dl)
            except OUT_OF_MEMORY as e:
                if dl.batch_size < 2:
                    raise
                old, dl.batch_size = dl.batch_size, dl.batch_size // 2
                release_cached_memory(self.device)
                self.log(
                    f"out of memory while evaluating at batch size {old} "
                    f"({type(e).__name__}); retrying with {dl.batch_size}"
                )

    @torch.no_grad()
    def _score_once(self, dl: Batches | TensorBatches | FeatureBatches) -> dict[str, Any]:
        if self.task == "regression":
            return score_values(self, dl)
        # cached features go through the head only
        net = self.model.head if isinstance(dl, FeatureBatches) else self.model
        was_training = self.model.training
        self.model.eval()
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        preds, targets, probs = [], [], []
        for xb, yb in dl:
            with self._autocast():
                logits = net(xb)
            logits = logits.float()
            total_loss += F.cross_entropy(logits, yb, reduction="sum").double()
            p = logits.softmax(dim=1)
            probs.append(p.cpu())
            preds.append(p.argmax(dim=1).cpu())
            targets.append(yb.cpu())
        self.model.train(was_training)
        pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)
        target = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.int64)
        loss, correct, n = float(total_loss), float((pred == target).sum()), len(target)
        if getattr(dl, "world", 1) > 1 and self.dist is not None:
            # a shard per rank: the scores of the whole split (pred/target stay this rank's)
            loss, correct, n = self.dist.sum([loss, correct, float(n)])
        return {
            "loss": loss / max(n, 1),
            "accuracy": correct / n if n else math.nan,
            "pred": pred,
            "target": target,
            "probs": torch.cat(probs) if probs else torch.zeros(0, self.num_classes),
        }

    # -- using the model -------------------------------------------------------------------
    def evaluate(
        self, split: str | ImageSet | TensorSet = "test", *, probs: bool = False
    ) -> dict[str, Any]:
        """Loss, accuracy (overall and per class) on a split ("test", "valid", "train") or
        on an ImageSet; falls back to valid when the dataset has no test split. For
        regression: loss, max_error, rms_error and mean_error of ``|f(x) - y|``.
        ``probs=True`` adds the ``(N, K)`` class probabilities under ``"probs"`` (a tensor:
        not JSON).

        Example:
            >>> learn.evaluate()["accuracy"]
            0.995
        """
        if self.task == "regression":
            return evaluate_values(self, split)
        images = self._split(split)
        warnings: list[str] = []
        if self.input_check and isinstance(images, ImageSet):
            from deepstart.data.mismatch import check_inputs, input_stats

            train = getattr(self.data, "train", None)
            if self.train_stats is None and isinstance(train, ImageSet):
                self.train_stats = input_stats(train.images)
            name = f"{split} images" if isinstance(split, str) else "these images"
            warnings = check_inputs(self.train_stats, images.images, what=name)
            for w in warnings:
                self.log(f"warning: {w}")
        images = conform_images(images, self.preprocess)
        out = self._score(self.batches(images))
        k = self.num_classes
        per_class = []
        for c in range(k):
            mask = out["target"] == c
            n_c = int(mask.sum())
            acc = float((out["pred"][mask] == c).double().mean()) if n_c else math.nan
            per_class.append({"class": self.data.classes[c], "n": n_c, "accuracy": acc})
        return {
            "split": split if isinstance(split, str) else "custom",
            "n": len(images),
            "loss": out["loss"],
            "loss_bits": out["loss"] / math.log(2),
            "chance_bits": math.log2(k) if k > 1 else 0.0,
            "accuracy": out["accuracy"],
            "per_class": per_class,
            "input_warnings": warnings,
            **({"probs": out["probs"]} if probs else {}),
        }

    def _split(self, split: str | ImageSet | TensorSet) -> Any:
        if isinstance(split, (ImageSet, TensorSet)):
            return split
        if split == "test":
            return self.data.test if self.data.test is not None else self.data.valid
        if split in ("valid", "train"):
            return getattr(self.data, split)
        raise ConfigError(f"unknown split {split!r}; use train, valid or test")

    @torch.no_grad()
    def predict(self, images: torch.Tensor | np.ndarray | ImageSet) -> torch.Tensor:
        """Class probabilities ``(N, K)`` for uint8 images shaped ``(N, C, H, W)``,
        ``(N, H, W)`` or ``(N, H, W, C)``; other sizes and channel counts are converted the
        way the training data was. For regression: the outputs ``(N, E)`` for x values
        shaped ``(N,)`` or ``(N, D)``.

        Example:
            >>> probs = learn.predict(data.test.images[:8])
            >>> [data.classes[i] for i in probs.argmax(1)]
        """
        if self.task == "regression":
            return predict_values(self, images)
        if not isinstance(images, ImageSet):
            x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
            if x.dtype != torch.uint8:
                raise ConfigError(f"predict wants uint8 images (0-255), got {x.dtype}")
            if x.ndim == 3:
                x = x[:, None]
            elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3, 4):
                x = x.permute(0, 3, 1, 2)
            images = ImageSet(x[:, :3].contiguous(), torch.zeros(len(x)), list(self.data.classes))
        images = conform_images(images, self.preprocess)
        return self._score(self.batches(images))["probs"]
