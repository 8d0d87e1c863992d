"""Transfer learning: layer groups, freezing, discriminative learning rates, ``fine_tune``.

A model splits into layer groups (``model.layer_groups()``, from the shared interface: for a
ResNet the early layers, the late layers and the head). Freezing turns off the gradients of
all but the last groups; discriminative learning rates give each group its own LR, lowest
for the earliest layers, which change least when a pretrained body meets new data.

fastai's semantics throughout: ``lr=slice(lo, hi)`` spreads the LRs geometrically from ``lo``
(first group) to ``hi`` (the head); BatchNorm layers stay trainable in frozen groups, because
their statistics must adapt to the new data; ``fine_tune`` trains one epoch frozen, then
everything with lower rates for earlier groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from deepstart.errors import ConfigError
from deepstart.train.events import Callback

if TYPE_CHECKING:
    from deepstart.train.learner import Learner

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def layer_groups(model: nn.Module) -> list[list[nn.Module]]:
    """The model's layer groups, earliest first; one group if it does not define any."""
    if hasattr(model, "layer_groups"):
        groups = [list(g) if isinstance(g, (list, tuple)) else [g] for g in model.layer_groups()]
    else:
        groups = [[model]]
    return [g for g in groups if g]


def _params(group: Sequence[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for m in group:
        for p in m.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def freeze_to(model: nn.Module, n: int, *, train_bn: bool = True) -> bool:
    """Freeze the first ``n`` layer groups (negative counts from the end) and unfreeze the rest.

    With ``train_bn`` the normalisation layers of frozen groups stay trainable. Returns
    whether that changed which parameters train (an optimizer built before must then be
    rebuilt: it holds only the parameters that trained).

    Example:
        >>> freeze_to(model, -1)  # only the head trains
    """
    before = [p.requires_grad for p in model.parameters()]
    groups = layer_groups(model)
    n = n if n >= 0 else max(len(groups) + n, 0)
    for i, group in enumerate(groups):
        frozen = i < n
        for m in group:
            for sub in m.modules():
                keep = train_bn and isinstance(sub, _BN)
                for p in sub.parameters(recurse=False):
                    p.requires_grad_(not frozen or keep)
    return [p.requires_grad for p in model.parameters()] != before


def frozen_norms_eval(model: nn.Module) -> None:
    """Put normalisation layers whose parameters are all frozen into eval mode, so a
    BatchNorm frozen with ``train_bn=False`` also keeps its running statistics (call after
    ``model.train()``). Layers without parameters are left as they are."""
    for m in model.modules():
        if isinstance(m, _BN):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


def freeze(model: nn.Module, *, train_bn: bool = True) -> None:
    """Train only the last layer group (the head), and the BatchNorm layers if ``train_bn``."""
    freeze_to(model, -1, train_bn=train_bn)


def unfreeze(model: nn.Module) -> None:
    """Make every parameter trainable again."""
    freeze_to(model, 0)


class StemFreeze(Callback):
    """The model's stem (``model.stem_layers()``: fast_cifar's whitening) learns in the first
    ``epochs`` epochs of a fit only (airbench trains its whitening bias for 3 of ~10).

    Once nothing before the first block learns, the backward pass stops at that block: its
    input gradient, the costliest convolution of a small net's step (it runs at the full
    resolution), is never computed. A BatchNorm in the stem then keeps its statistics, as in
    any frozen layer. Decided from the epoch number alone, so a resumed run freezes the same.

    Example:
        >>> learn.fit_one_cycle(7, 4e-3, callbacks=[StemFreeze(2)])
    """

    order = -10  # before anything that reads which parameters train

    def __init__(self, epochs: int) -> None:
        if epochs < 0:
            raise ConfigError(f"stem_epochs must be >= 0, got {epochs}")
        self.epochs = int(epochs)
        self._params: list[nn.Parameter] = []

    def before_fit(self) -> None:
        model = self.learn.model
        stem = model.stem_layers() if hasattr(model, "stem_layers") else None
        if stem is None:
            raise ConfigError(f"stem_epochs: {type(model).__name__} has no stem to freeze")
        self._params = [p for p in stem.parameters() if p.requires_grad]

    def before_epoch(self) -> None:
        learns = self.learn.epoch < self.epochs
        if any(p.requires_grad != learns for p in self._params):
            for p in self._params:
                p.requires_grad_(learns)
            self.learn.trainable_changed()

    def after_fit(self) -> None:
        for p in self._params:  # as the fit found them, for the next fit
            p.requires_grad_(True)
        self._params = []


def lr_scales(n_groups: int, lr: float | slice) -> tuple[float, list[float]]:
    """``(peak_lr, scale per group)`` for ``lr``: a number gives every group the same LR;
    ``slice(lo, hi)`` spreads them geometrically from ``lo`` to ``hi``; ``slice(None, hi)``
    gives ``hi / 10`` to all groups but the last (fastai's rules).

    Example:
        >>> lr_scales(3, slice(1e-5, 1e-3))
        (0.001, [0.01, 0.1, 1.0])
    """
    if not isinstance(lr, slice):
        return float(lr), [1.0] * n_groups
    if lr.stop is None or lr.stop <= 0:
        raise ConfigError(f"a learning-rate slice needs a positive stop, got {lr}")
    hi = float(lr.stop)
    if lr.start is None:
        return hi, [0.1] * (n_groups - 1) + [1.0]
    lo = float(lr.start)
    if not 0 < lo <= hi:
        raise ConfigError(f"a learning-rate slice needs 0 < start <= stop, got {lr}")
    if n_groups == 1:
        return hi, [1.0]
    ratio = lo / hi
    return hi, [ratio ** (1 - i / (n_groups - 1)) for i in range(n_groups)]


def param_groups(model: nn.Module, scales: Sequence[float]) -> list[dict[str, Any]]:
    """Optimizer param groups, one per layer group that has trainable parameters, each with
    its ``lr_scale`` (the Learner multiplies the scheduled LR by it)."""
    groups = layer_groups(model)
    if len(scales) != len(groups):
        raise ConfigError(f"{len(scales)} LR scales for {len(groups)} layer groups")
    out, seen = [], set()
    for i, (group, scale) in enumerate(zip(groups, scales)):
        params = [p for p in _params(group) if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            out.append({"params": params, "lr_scale": float(scale), "layer_group": i})
    if not out:
        raise ConfigError("no trainable parameters: unfreeze some layers first")
    return out


def split_norm_biases(
    model: nn.Module, groups: list[dict[str, Any]], mult: float, wd: float
) -> list[dict[str, Any]]:
    """``groups`` with each one's BatchNorm shifts moved into a group of their own whose
    ``lr_scale`` is ``mult`` times larger and whose weight decay is ``wd / mult`` (so
    ``lr * weight_decay``, the decay per step, is unchanged): airbench's "bias scaler".
    ``mult == 1`` returns ``groups`` as they are."""
    if mult == 1.0:
        return groups
    shifts = {
        id(m.bias)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None
    }
    out = []
    for g in groups:
        mine = [p for p in g["params"] if id(p) in shifts]
        rest = [p for p in g["params"] if id(p) not in shifts]
        if rest:
            out.append({**g, "params": rest})
        if mine:
            out.append(
                {
                    **g,
                    "params": mine,
                    "lr_scale": g["lr_scale"] * mult,
                    "norm_mult": float(mult),
                    "weight_decay": wd / mult,
                }
            )
    return out


def fine_tune(
    learn: Learner,
    epochs: int,
    base_lr: float = 2e-3,
    *,
    freeze_epochs: int = 1,
    lr_mult: float = 100.0,
    pct_start: float = 0.3,
    div: float = 5.0,
    keep_frozen: int = 0,
    keep_better: bool = False,
    start_phase: int = 0,
    start_epoch: int = 0,
    restart_at: int = 0,
) -> None:
    """fastai's ``fine_tune``: ``freeze_epochs`` one-cycle epochs training the head only at
    ``base_lr``, then ``epochs`` with everything trainable, at ``base_lr / 2`` for the head
    down to ``base_lr / 2 / lr_mult`` for the first group.

    ``keep_frozen`` > 0 leaves that many layer groups frozen in the second phase, BatchNorm
    statistics included (``freeze_to(keep_frozen, train_bn=False)``): no gradient flows
    back into them, which on a CPU halves the cost of an unfrozen epoch of a pretrained
    EfficientNet-Lite0 at 224 px (its early, high-resolution blocks are most of the work).

    ``keep_better``: when the second phase ends with a higher validation loss than the
    first, put back the first phase's weights and say so. A short unfrozen phase on little
    data can undo more than it adds (Adam moves every weight by about the LR at its first
    steps, whatever the gradient's size); the validation split decides, as ``best.pt`` does.

    The two fits are phases 0 and 1 (``learn.phase``, saved in checkpoints): a resumed run
    passes the checkpoint's phase, epoch and batch as ``start_phase``, ``start_epoch`` and
    ``restart_at``. A fit cancelled early (Ctrl-C, a time budget) ends the whole plan.

    Example:
        >>> fine_tune(learn, 3)  # a pretrained ResNet on a new folder of photos
    """
    if start_phase == 0 and start_epoch >= freeze_epochs:
        start_phase, start_epoch, restart_at = 1, 0, 0  # the frozen phase had finished
    if start_phase == 0 and freeze_epochs > 0:
        learn.log(f"fine_tune: {freeze_epochs} epoch(s) training the head, body frozen")
        learn.phase = 0
        learn.freeze()
        learn.fit_one_cycle(
            freeze_epochs,
            slice(base_lr),
            # fastai's 0.99 (warm up, then drop at the very end) suits its one frozen epoch;
            # over several (cheap with cached features) the LR must come down again, or the
            # head ends at the peak: 12 epochs on CIFAR-10 features went 77.4% -> 76.4%.
            pct_start=0.99 if freeze_epochs == 1 else pct_start,
            start_epoch=start_epoch,
            restart_at=restart_at,
        )
        if learn.cancelled:
            return
        start_epoch, restart_at = 0, 0
    if start_epoch >= epochs:
        return  # a resumed run that had finished both phases
    before = _valid_loss(learn) if keep_better and start_phase == 0 else None
    frozen = (
        {k: v.detach().clone() for k, v in learn.model.state_dict().items()}
        if before is not None
        else None
    )
    base_lr /= 2
    what = f"all but the first {keep_frozen} layer group(s)" if keep_frozen else "everything"
    learn.log(
        f"fine_tune: {epochs} epoch(s) training {what}, LR {base_lr / lr_mult:.1e} (first "
        f"layers) to {base_lr:.1e} (head)"
    )
    learn.phase = 1
    if keep_frozen:
        learn.freeze_to(keep_frozen, train_bn=False)
    else:
        learn.unfreeze()
    learn.fit_one_cycle(
        epochs,
        slice(base_lr / lr_mult, base_lr),
        pct_start=pct_start,
        div=div,
        start_epoch=start_epoch,
        restart_at=restart_at,
    )
    after = _valid_loss(learn)
    worse = after is None or not after <= before if before is not None else False  # NaN: worse
    if frozen is not None and worse and not learn.cancelled:
        learn.model.load_state_dict(frozen)
        learn.log(
            f"fine_tune: the unfrozen phase ended at valid loss {after or float('nan'):.4f}, worse "
            f"than the frozen "
            f"phase's {before:.4f}: kept the frozen phase's weights (keep_better)"
        )


def _valid_loss(learn: Learner) -> float | None:
    rows = learn.recorder.history
    value = rows[-1].get("valid_loss") if rows else None
    return float(value) if value is not None else None


class FreezeMixin:
    """The Learner's transfer-learning methods (freezing layer groups, ``fine_tune``); they
    live here, beside what they call, to keep learner.py to the loop."""

    model: nn.Module
    opt: Any

    def freeze_to(self, n: int, *, train_bn: bool = True) -> None:
        """Freeze the first ``n`` layer groups (their BatchNorm layers stay trainable unless
        ``train_bn=False``, which also fixes their running statistics). Only when that changes
        what trains is the optimizer rebuilt at the next fit (a resumed run re-freezes what
        its checkpoint had frozen, and keeps the optimizer state it loaded)."""
        if freeze_to(self.model, n, train_bn=train_bn):
            self.opt = None

    def freeze(self, *, train_bn: bool = True) -> None:
        """Train only the head (the last layer group)."""
        self.freeze_to(-1, train_bn=train_bn)

    def unfreeze(self) -> None:
        """Train every layer again."""
        self.freeze_to(0)

    def fine_tune(self, epochs: int, base_lr: float = 2e-3, **kwargs: Any) -> None:
        """One epoch frozen, then ``epochs`` unfrozen (see :func:`finetune.fine_tune`)."""
        fine_tune(self, epochs, base_lr, **kwargs)
