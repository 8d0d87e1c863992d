"""Optimizers: building one by name, its parameter groups, and setting its hyper-parameters.

A Learner's optimizer has one param group per layer group with trainable parameters (for
discriminative learning rates, :mod:`deepstart.train.finetune`), BatchNorm shifts split
into groups of their own when ``norm_bias_lr`` is not 1. Each group carries an
``lr_scale``; :func:`set_hyper` sets ``lr`` as the scheduled LR times that scale. LBFGS
is the odd one out: it re-evaluates the loss in a line search, so it needs a closure and a
constant schedule (:func:`check_lbfgs`, :func:`lbfgs_closure`). :func:`backward` and
:func:`step` are the loop's two optimizer moves, fp16 loss scaling included.

Example:
    >>> opt = make_optimizer("sgd", model.parameters(), lr=0.1, wd=5e-4, nesterov=True)
    >>> set_hyper(opt, "lr", 0.05)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from deepstart.errors import ConfigError
from deepstart.train.callbacks import ParamScheduler
from deepstart.train.finetune import layer_groups, lr_scales, param_groups, split_norm_biases
from deepstart.train.schedule import ScheduleSpec

if TYPE_CHECKING:
    from deepstart.train.learner import Learner

# The names make_optimizer builds (the config's choices, OPTIMIZERS, are these less lbfgs,
# which needs a constant schedule and is for small full-batch fits from Python).
OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "rmsprop", "lbfgs")
# Keras's RMSprop defaults (rho 0.9, epsilon 1e-7), not PyTorch's (alpha 0.99, eps 1e-8): a
# Keras user's RMSprop at a Keras LR behaves as in the notes. A shorter average of squared
# gradients (about 10 steps, not 100) adapts faster to the scale of the gradients.
RMSPROP_ALPHA, RMSPROP_EPS = 0.9, 1e-7


def make_optimizer(
    name: str,
    params: Iterable[Any],
    *,
    lr: float,
    wd: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """Build an optimizer by name: ``sgd`` (momentum, Nesterov), ``adam``, ``adamw``,
    ``rmsprop`` or ``lbfgs``.

    ``wd`` is decoupled weight decay for ``adamw`` and L2 for the others, as in PyTorch.
    ``momentum`` is SGD's and RMSprop's momentum and Adam's beta1. ``rmsprop`` uses Keras's
    rho 0.9 and epsilon 1e-7 (:data:`RMSPROP_ALPHA`); Keras's own RMSprop has momentum 0,
    so pass ``momentum=0`` to match it.

    ``lbfgs`` (for small full-batch problems) takes a strong-Wolfe line search, so ``lr``
    is the first step tried (1 is the usual value); it has no weight decay or momentum
    and ignores ``wd`` and ``momentum``. One of its steps runs up to 5 iterations; it stops
    early only when its line search can make no progress (PyTorch's default tolerances are
    absolute, and would stop a fit whose loss is already 1e-7).
    """
    # Read twice (fusable, then the optimizer): a group's parameters must not be a generator.
    params = [{**p, "params": _tensors(p["params"])} if isinstance(p, dict) else p for p in params]
    fused = fusable(params)
    if name == "sgd":
        nesterov = nesterov and momentum > 0
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd, fused=fused
        )
    if name == "adam":
        return torch.optim.Adam(
            params, lr=lr, betas=(momentum, 0.999), weight_decay=wd, fused=fused
        )
    if name == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=(momentum, 0.999), weight_decay=wd, fused=fused
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            params,
            lr=lr,
            alpha=RMSPROP_ALPHA,
            eps=RMSPROP_EPS,
            momentum=momentum,
            weight_decay=wd,
        )
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
    raise ConfigError(f"unknown optimizer {name!r}; use {', '.join(OPTIMIZER_NAMES)}")


def fusable(params: list[Any]) -> bool | None:
    """True when every parameter (``params``: tensors or param-group dicts) is a float
    tensor on the CPU or a CUDA GPU, where PyTorch has fused SGD/Adam/AdamW kernels: one
    pass over each weight per step instead of ~10 elementwise ops, each reading and writing
    it. On the CPU that is ~5% of a small conv net's bf16 step (keras_cifar_cnn, batch 128,
    Intel Xeon with AMX: 4,641-4,762 images/s against 4,381-4,510). None elsewhere (MPS, ...):
    PyTorch's default there.

    Example:
        >>> fusable([torch.zeros(2, requires_grad=True)])
        True
    """
    tensors = [t for p in params for t in (_tensors(p["params"]) if isinstance(p, dict) else [p])]
    ok = all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)
    return True if tensors and ok else None


def _tensors(group: Any) -> list[Any]:
    """A param group's parameters as a list: PyTorch takes one tensor or any iterable."""
    return [group] if isinstance(group, torch.Tensor) else list(group)


def check_optimizer_name(name: str) -> None:
    """Raise ConfigError unless ``name`` is an optimizer :func:`make_optimizer` builds."""
    if name not in OPTIMIZER_NAMES:
        raise ConfigError(f"unknown optimizer {name!r}; use {', '.join(OPTIMIZER_NAMES)}")


def create_opt(learn: Learner) -> torch.optim.Optimizer:
    """The learner's optimizer: one param group per layer group with trainable parameters,
    each with its ``lr_scale`` (``learn.lr_scales``; all 1 when they do not match the
    model's layer groups), BatchNorm shifts split off by ``learn.norm_bias_lr``."""
    n = len(layer_groups(learn.model))
    scales = learn.lr_scales if learn.lr_scales and len(learn.lr_scales) == n else [1.0] * n
    groups = param_groups(learn.model, scales)
    groups = split_norm_biases(learn.model, groups, learn.norm_bias_lr, learn.wd)
    return make_optimizer(
        learn.opt_name,
        groups,
        lr=learn.lr,
        wd=learn.wd,
        momentum=learn.momentum,
        nesterov=learn.nesterov,
    )


def set_hyper(opt: torch.optim.Optimizer, name: str, value: float) -> None:
    """Set ``lr`` (times each group's ``lr_scale``) or ``momentum`` (beta1 for Adam) or any
    other key on every param group of ``opt``."""
    for group in opt.param_groups:
        if name == "lr":
            group["lr"] = value * group.get("lr_scale", 1.0)
        elif name == "momentum" and "betas" in group:
            group["betas"] = (value, group["betas"][1])
        elif name in group:
            group[name] = value


def rescale_groups(opt: torch.optim.Optimizer, lr_scales: list[float] | None) -> None:
    """Give an existing optimizer's groups new ``lr_scales`` (one per layer group), keeping
    its state; a group's BatchNorm multiplier (``norm_mult``) stays on top."""
    scales = lr_scales or []
    for i, group in enumerate(opt.param_groups):
        k = group.get("layer_group", i)
        group["lr_scale"] = (scales[k] if k < len(scales) else 1.0) * group.get("norm_mult", 1.0)


def cycle_momentums(momentum: float) -> tuple[float, float, float]:
    """One-cycle's momentum (start, middle, end): fastai's (0.95, 0.85, 0.95), capped by the
    momentum the user asked for; below 0.85 (0 is plain SGD, as in the notes) it is held at
    what was asked rather than raised into the cycle."""
    if momentum < 0.85:
        return (momentum, momentum, momentum)
    return (momentum, 0.85, momentum)


def prepare_fit(
    learn: Learner, lr: float | slice | None, schedule: ScheduleSpec | str
) -> ParamScheduler:
    """Ready the learner's optimizer for a fit; return the callback that sets its LR and
    momentum from ``schedule`` at every batch.

    ``lr`` (None: keep ``learn.lr``) is the peak LR, or a slice for discriminative LRs
    (:func:`deepstart.train.finetune.lr_scales`); an existing optimizer keeps its state and
    takes the new per-group scales. A missing one is built (:func:`create_opt`).
    """
    if lr is not None:
        learn.lr, learn.lr_scales = lr_scales(len(layer_groups(learn.model)), lr)
        if learn.opt is not None:
            rescale_groups(learn.opt, learn.lr_scales)
    if isinstance(schedule, str):
        schedule = ScheduleSpec(kind=schedule)
    if learn.opt is None:
        learn.create_opt()
    if isinstance(learn.opt, torch.optim.LBFGS):
        check_lbfgs(schedule, learn.scaler)
        if learn.dist is not None:
            raise ConfigError("lbfgs is not supported in distributed training")
    moms = schedule.momentum(cycle_momentums(learn.momentum))
    return ParamScheduler(schedule.lr(learn.lr), moms)


def check_lbfgs(schedule: ScheduleSpec, scaler: Any) -> None:
    """LBFGS chooses its step length itself (line search), so an LR schedule would only
    rescale the first step it tries; and it cannot step through a loss scaler."""
    if schedule.kind != "constant":
        raise ConfigError(
            f"lbfgs picks its own step length by a line search: train it with a constant "
            f"schedule (fit(..., schedule='constant')), not {schedule.kind}"
        )
    if scaler is not None:
        raise ConfigError("lbfgs cannot step through fp16 loss scaling; use fp32 or bf16")


def backward(learn: Learner) -> None:
    """Gradients of ``learn.loss``: through the fp16 loss scaler when there is one, then
    unscaled in place, so callbacks (gradient clipping) see the true gradients."""
    if learn.scaler is not None:
        learn.scaler.scale(learn.loss).backward()
        learn.scaler.unscale_(learn.opt)
    else:
        learn.loss.backward()


def step(learn: Learner) -> None:
    """One optimizer step on the gradients :func:`backward` left: through the loss scaler
    (it skips steps whose gradients overflowed), or with the closure LBFGS re-evaluates."""
    opt = learn.opt
    assert opt is not None
    if learn.scaler is not None:
        learn.scaler.step(opt)
        learn.scaler.update()
    elif isinstance(opt, torch.optim.LBFGS):
        opt.step(lbfgs_closure(learn))
    else:
        opt.step()


def lbfgs_closure(learn: Learner) -> Callable[[], torch.Tensor]:
    """The re-evaluation LBFGS needs: loss and gradients of the current batch at the
    current weights. Its first call returns what the loop just computed (gradients are
    in place, after the callbacks' after_backward); line-search calls recompute."""
    first = True

    def closure() -> torch.Tensor:
        nonlocal first
        if first:
            first = False
            return learn.loss
        assert learn.opt is not None
        learn.opt.zero_grad(set_to_none=True)
        with learn._autocast():
            pred = learn.model.head(learn.xb) if learn.head_only else learn.model(learn.xb)
            loss = learn.loss_func(pred, learn.yb)
        loss.backward()
        return loss

    return closure
