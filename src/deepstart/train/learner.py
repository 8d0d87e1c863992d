"""The Learner: a model, its data, an optimizer and one plain ``fit`` loop with named events.

Everything optional (progress, logging, checkpoints, LR schedules) is a callback that
reacts to the events; control flow uses the small exceptions ``CancelFit``, ``CancelEpoch``
and ``CancelBatch``.

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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepstart.data.dataset import Batches, Dataset, ImageSet, Preprocess, conform_images
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
from deepstart.train.guard import DivergenceGuard
from deepstart.train.schedule import ScheduleSpec

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


# torch.OutOfMemoryError is the device-neutral name (CUDA, MPS, XPU); older torch only had
# the CUDA one.
OUT_OF_MEMORY: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)


def release_cached_memory(device: torch.device) -> None:
    """Give the allocator's cached blocks back after an out-of-memory error (CUDA only:
    the CPU has no such cache)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    "auto" uses bf16 on CUDA GPUs that support it, else fp16 on CUDA, and fp32 on CPU and
    MPS: CPU bf16 autocast is measured in bench/precision.py (docs/benchmarks.md).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def default_device() -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return default_device()
    return torch.device(device)


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
    """Build an optimizer by name: ``sgd`` (momentum, Nesterov), ``adam`` or ``adamw``.

    ``wd`` is decoupled weight decay for ``adamw`` and L2 for the others, as in PyTorch.
    """
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=wd
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=wd)
    raise ConfigError(f"unknown optimizer {name!r}; use sgd, adam or adamw")


class Learner:
    """Trains ``model`` on ``data`` (a :class:`Dataset`).

    Args:
        data: the dataset; its train split is shuffled per epoch, valid is scored per epoch.
        model: any module mapping ``(N, C, H, W)`` floats to ``(N, K)`` logits.
        loss_func: defaults to cross-entropy.
        opt: "sgd", "adam" or "adamw".
        lr: default learning rate for ``fit`` (the peak for ``fit_one_cycle``).
        wd, momentum, nesterov: optimizer settings (momentum is Adam's beta1).
        batch_size: training batch size; evaluation uses twice it.
        device: "auto", "cpu", "cuda", "mps" or a ``torch.device``.
        callbacks: extra callbacks; a :class:`Recorder` is always present.
        seed: seeds the shuffle of every epoch (and nothing global).
        precision: "auto" (bf16 or fp16 autocast on CUDA, fp32 elsewhere), "fp32", "bf16"
            or "fp16".
        log: where one-line notices go (batch size halved after out-of-memory, ...).
        guard: add a :class:`~deepstart.train.guard.DivergenceGuard` (restore the last good
            state and halve the LR when the loss blows up). Pass False, or your own guard in
            ``callbacks``, to change that.
        preprocess: how images are normalised (and resized for evaluate/predict); defaults to
            the dataset's own, computed on its training split. A loaded model passes its own.
    """

    def __init__(
        self,
        data: Dataset,
        model: nn.Module,
        *,
        loss_func: nn.Module | None = None,
        opt: str = "adamw",
        lr: float = 1e-3,
        wd: float = 0.01,
        momentum: float = 0.9,
        nesterov: bool = False,
        batch_size: int = 128,
        device: str | torch.device | None = "auto",
        callbacks: Sequence[Callback] = (),
        seed: int = 0,
        preprocess: Preprocess | None = None,
        precision: str = "auto",
        log: Callable[[str], None] = print,
        guard: bool = True,
    ) -> None:
        self.data = data
        self.preprocess = preprocess if preprocess is not None else data.preprocess
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.loss_func = loss_func if loss_func is not None else nn.CrossEntropyLoss()
        if isinstance(self.loss_func, nn.Module):
            self.loss_func.to(self.device)  # class weights live in a buffer
        self.amp_dtype = resolve_precision(precision, self.device)
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16 does not.
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        )
        self.log = log
        self.opt_name, self.lr, self.wd = opt, float(lr), float(wd)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
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
            if handler is not None:
                handler()

    def get_callback(self, kind: type) -> Any:
        return next((cb for cb in self.callbacks if isinstance(cb, kind)), None)

    # -- data ------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def batches(self, split: ImageSet, *, train: bool = False) -> Batches:
        """Batches of ``split`` on this learner's device, normalised by the train stats."""
        return Batches(
            split,
            self.batch_size if train else self.batch_size * 2,
            device=self.device,
            mean=self.preprocess.mean,
            std=self.preprocess.std,
            shuffle=train,
            # A last batch of 1 breaks BatchNorm and adds a noisy step: drop the remainder.
            drop_last=train and len(split) > self.batch_size,
            seed=self.seed,
        )

    def create_opt(self) -> None:
        self.opt = make_optimizer(
            self.opt_name,
            [p for p in self.model.parameters() if p.requires_grad],
            lr=self.lr,
            wd=self.wd,
            momentum=self.momentum,
            nesterov=self.nesterov,
        )

    def set_hyper(self, name: str, value: float) -> None:
        """Set ``lr`` or ``momentum`` on every param group (momentum is beta1 for Adam)."""
        assert self.opt is not None
        for group in self.opt.param_groups:
            if name == "momentum" and "betas" in group:
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

    def lr_find(self, **kwargs: Any) -> Any:
        """Run the LR finder (see :func:`deepstart.train.lr_finder.lr_find`)."""
        from deepstart.train.lr_finder import lr_find

        return lr_find(self, **kwargs)

    # -- the loop --------------------------------------------------------------------------
    def fit(
        self,
        epochs: int,
        lr: float | None = None,
        *,
        schedule: ScheduleSpec | str = "constant",
        callbacks: Sequence[Callback] = (),
        start_epoch: int = 0,
        restart_at: int = 0,
    ) -> None:
        """Train for ``epochs`` epochs; ``schedule`` shapes the LR (constant by default).

        ``start_epoch`` and ``restart_at`` (first batch of that epoch) continue a run whose
        state was restored from a checkpoint; the schedule continues where it was.
        """
        if epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {epochs}")
        if lr is not None:
            self.lr = float(lr)
        if isinstance(schedule, str):
            schedule = ScheduleSpec(kind=schedule)
        if self.opt is None:
            self.create_opt()
        sched = ParamScheduler(schedule.lr(self.lr), schedule.momentum(self._moms()))
        extra = [sched, *callbacks]
        self.add_callbacks(extra)
        self.n_epochs = epochs
        self.train_dl = self.batches(self.data.train, train=True)
        self.valid_dl = self.batches(self.data.valid)
        self.total_iters = epochs * len(self.train_dl)
        self.train_iter = start_epoch * len(self.train_dl) + restart_at
        self.restart_at = restart_at
        try:
            self("before_fit")
            epoch = start_epoch
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
            self("after_cancel_fit")
        finally:
            self("after_fit")
            for cb in extra:
                self.remove_callback(cb)

    def fit_one_cycle(
        self,
        epochs: int,
        lr_max: float | None = None,
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

    def _moms(self) -> tuple[float, float, float]:
        # fastai's (0.95, 0.85, 0.95), capped by the momentum the user asked for.
        top = max(self.momentum, 0.85)
        return (top, 0.85 if top > 0.85 else top, top)

    def _do_epoch(self) -> None:
        self("before_epoch")
        self._train_epoch()
        self._validate()
        self("after_epoch")

    def _train_epoch(self) -> None:
        self.training = True
        self.model.train()
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
                self.pred = self.model(self.xb)
                self("after_pred")
                self.loss = self.loss_func(self.pred, self.yb)
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
                else:
                    self.opt.step()
                self.train_iter += 1  # steps taken so far: what the schedule's pct counts
                self("after_step")
                self.opt.zero_grad(set_to_none=True)
        except CancelBatch:
            self("after_cancel_batch")
        except OUT_OF_MEMORY as e:
            if not self.training or self.batch_size < 2:
                raise
            self._halve_batch(e)
        finally:
            self("after_batch")

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
        self.train_dl = self.batches(self.data.train, train=True)
        self.valid_dl = self.batches(self.data.valid)
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
        self.metrics = {"valid_loss": out["loss"], "accuracy": out["accuracy"]}
        self("after_validate")

    def _score(self, dl: Batches) -> dict[str, Any]:
        """Loss, accuracy and the per-item predictions of ``dl`` in eval mode; halves the
        evaluation batch and starts again if the device runs out of memory."""
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
    def _score_once(self, dl: Batches) -> dict[str, Any]:
        was_training = self.model.training
        self.model.eval()
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        preds, targets, probs = [], [], []
        for xb, yb in dl:
            with self._autocast():
                logits = self.model(xb)
            logits = logits.float()
            total_loss += F.cross_entropy(logits, yb, reduction="sum").double()
            p = logits.softmax(dim=1)
            probs.append(p.cpu())
            preds.append(p.argmax(dim=1).cpu())
            targets.append(yb.cpu())
        self.model.train(was_training)
        n = max(dl.num_items, 1)
        pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)
        target = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.int64)
        return {
            "loss": float(total_loss) / n,
            "accuracy": float((pred == target).double().mean()) if len(target) else math.nan,
            "pred": pred,
            "target": target,
            "probs": torch.cat(probs) if probs else torch.zeros(0, self.num_classes),
        }

    # -- using the model -------------------------------------------------------------------
    def evaluate(self, split: str | ImageSet = "test") -> dict[str, Any]:
        """Loss, accuracy (overall and per class) on a split ("test", "valid", "train") or
        on an ImageSet; falls back to valid when the dataset has no test split.

        Example:
            >>> learn.evaluate()["accuracy"]
            0.995
        """
        images = self._split(split)
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
        }

    def _split(self, split: str | ImageSet) -> ImageSet:
        if isinstance(split, ImageSet):
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
        way the training data was.

        Example:
            >>> probs = learn.predict(data.test.images[:8])
            >>> [data.classes[i] for i in probs.argmax(1)]
        """
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
