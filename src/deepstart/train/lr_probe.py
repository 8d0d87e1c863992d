"""A short LR sweep from a known-good state: how far the divergence guard should bring a
diverging LR down in one jump, rather than halving it a dozen times.

Halving is right for an LR a little too high (the notes' "halve it until it stops
diverging"), but an LR 10,000x too high needs 14 halvings, and when only the held-out loss
shows the blow-up each halving costs a whole epoch. So at every divergence the guard asks
this module: starting from the restored state, train a few steps on the last few batches the
fit saw while the LR grows geometrically from ``lr / span`` to ``lr``; read where that made
things worse (:func:`blowup_lr`: is half the LR already too much?) and a tenth of the LR at
the lowest smoothed loss (:func:`safe_lr`, the LR finder's ``minimum`` rule, fastai's
``lr_min``: the lowest loss is already close to diverging); :func:`next_lr` makes the
guard's choice from both. The caller puts the good state back afterwards; the sweep's steps
only measure.

Example:
    >>> lrs, losses = sweep(learn, [(xb, yb)], lr=10.0)
    >>> safe_lr(lrs, losses)
    0.0012...
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from deepstart.train import optim
from deepstart.train.finetune import frozen_norms_eval
from deepstart.train.lr_finder import minimum, smooth_losses

if TYPE_CHECKING:
    from deepstart.train.learner import Learner

Batch = tuple[torch.Tensor, torch.Tensor]
# Optimizers whose step is about the LR per weight whatever the gradient's size (Adam's
# m / sqrt(v) is near +-1 while the gradients agree), unlike SGD's, which scales with it.
ADAPTIVE = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
)
# The share of the weights' typical size an adaptive step may take once the LR has diverged.
ADAPTIVE_SHARE = 0.1
# Layers in series compound a step's change of the output; past this many weight tensors the
# share shrinks as sqrt(CAP_DEPTH / n).
CAP_DEPTH = 20
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def sweep(
    learn: Learner,
    batches: Sequence[Batch],
    lr: float,
    *,
    steps: int = 24,
    span: float = 1e5,
    stop: float = 4.0,
) -> tuple[list[float], list[float]]:
    """Train ``steps`` steps on ``batches`` (cycled) with the LR rising geometrically from
    ``lr / span`` to ``lr``; returns the LRs and losses (inf once the loss has gone past
    ``stop`` x its lowest, see :func:`blew_up`, or NaN, or reached 0: the remaining steps are
    not trained).
    Dropout is off during the sweep, and on again after it.

    Every param group keeps its ratio to the last group's LR (discriminative LRs). Changes
    weights, optimizer state and BatchNorm statistics: restore a snapshot after it. The
    global RNG is left as it was (dropout draws from it), so the fit's randomness does not
    depend on whether a sweep ran. In a distributed run every rank trains the same number of
    steps on its own batches and the losses are averaged over ranks once at the end, so all
    ranks see one curve and choose one LR (the ranks' weights drift apart here, but the
    restore puts back identical ones).
    """
    if not batches or learn.opt is None or isinstance(learn.opt, torch.optim.LBFGS):
        return [], []
    opt, model = learn.opt, learn.model
    last = float(opt.param_groups[-1]["lr"]) or 1.0
    ratios = [float(g["lr"]) / last for g in opt.param_groups]
    lrs = [lr / span * span ** (k / max(steps - 1, 1)) for k in range(steps)]
    losses: list[float] = []
    period, loss_before = len(batches), learn.loss
    devices = [learn.device] if learn.device.type == "cuda" else []
    # (the guard may call from after_validate, inside the loop's no_grad)
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        model.train()
        frozen_norms_eval(model)
        # Dropout off: a step's loss then depends on the weights alone, and the same batch
        # met again shows what the steps between did (blowup_lr's per-batch rule). With it,
        # one batch of 16 moved by 26% at an Adam LR of 1e-5 (mnist_cnn).
        dropouts = [m for m in model.modules() if isinstance(m, DROPOUTS)]
        for m in dropouts:
            m.eval()
        for k, step_lr in enumerate(lrs):
            # Blown up, NaN, or a loss of 0 (4 batches learnt by heart: from there on no
            # step moves the weights, and the curve says nothing): stop training.
            if losses and (losses[-1] == 0 or blew_up(losses, len(losses) - 1, period, stop)):
                losses.append(math.inf)
                continue
            for group, ratio in zip(opt.param_groups, ratios):
                group["lr"] = step_lr * ratio
            xb, yb = batches[k % len(batches)]
            with learn._autocast():
                pred = model.head(xb) if learn.head_only else model(xb)
                loss = learn.loss_func(pred, yb)
            opt.zero_grad(set_to_none=True)
            learn.loss = loss  # the loop's backward and step (fp16 loss scaling included)
            optim.backward(learn)
            optim.step(learn)
            value = float(loss.detach())  # a host sync per step: 24 of them, once
            losses.append(value if math.isfinite(value) else math.inf)
        opt.zero_grad(set_to_none=True)
        for m in dropouts:
            m.train()
    learn.loss = loss_before
    if learn.dist is not None:
        losses = [v / learn.dist.world for v in learn.dist.sum(losses)]
    return lrs, losses


def blew_up(losses: Sequence[float], i: int, period: int = 0, stop: float = 4.0) -> bool:
    """Whether :func:`sweep`'s loss at step ``i`` went past ``stop`` x the lowest before it
    (or is not finite, or at step 0 is 0), where the sweep stops. With ``period`` (the
    number of batches it cycles through), past ``stop`` x the lowest that same batch had,
    and in the first pass, where each batch is met once, past ``stop`` x the highest loss
    before it: batches differ, near 0 nats by 5x (fast_mnist with Adam, trained: 0.119,
    0.037, 0.208 at LRs about 1e-7; a sweep that stopped there set the LR to 4.7e-9, and the
    guard gave up).

    Example:
        >>> blew_up([0.12, 0.04, 0.21], 2), blew_up([0.12, 0.04, 0.21], 2, period=4)
        (True, False)
    """
    if i < period:
        ref = max(losses[:i] or losses[:1])
    elif period:
        ref = min(losses[i - period :: -period])
    else:
        ref = min(losses[:i] or losses[:1])
    return not losses[i] < stop * ref


def blowup_lr(
    lrs: Sequence[float],
    losses: Sequence[float],
    *,
    period: int = 0,
    guessing: float = math.inf,
    stop: float = 4.0,
    beta: float = 0.5,
    worse: float = 2.0,
) -> float | None:
    """The LR of the step after which :func:`sweep`'s training made things worse than the
    restored state (a step's loss shows the steps before it); None when it never did.

    Worse is: a NaN/inf loss; a loss past ``stop`` x the lowest (:func:`blew_up`, where the
    sweep stops) and above the first; or a smoothed loss that fell clearly (10%) below the
    start, then came back up to 95% of it, or to ``guessing`` (ln K) when the start was above
    that: a net killed by the LR sits at chance, not higher (mnist_cnn, AdamW, label
    smoothing: 2.37, down to 1.7, then 2.30 flat); from a start under half of ``guessing``,
    back up to that half. A loss only ``stop`` x a low minimum (4 batches overfitted to 0.01
    nats, then 0.05) stops the sweep without saying that higher LRs blow up.

    With ``period`` (the number of batches the sweep cycled through), also a batch's loss
    ``worse`` x (and 0.1 nats over) the lowest that same batch had, with the next step's
    batch worse too (or the sweep ending there): batches differ by 10-20% on a flat curve,
    so only a batch against itself shows a rise that stays under ``stop`` (logreg, Adam,
    shapes: 1.04-1.26 nats up to an LR of 0.064, then 3.28, 2.31, 6.06). A batch 25-60%
    worse is noise of a sweep that trains (vgg_small, SGD: 1.05, then 1.2-1.7 from 0.02 to
    1.3, while 0.1 trains it to 100%), and so is one spike the next step undoes (mnist_cnn,
    AdamW: 2.26 at 0.024, then 0.97 and 0.80, then 2.57 and 23.1 at 0.11).

    Example:
        >>> blowup_lr([1e-4, 1e-3, 1e-2, 1e-1], [2.0, 1.5, 9.0, math.inf])
        0.001
    """
    end = next((i for i, v in enumerate(losses) if not math.isfinite(v)), len(losses))
    if end == 0:
        return None  # the first loss, measured before any step, is not finite: no LR to blame
    level = min(losses[0], guessing)
    # A trained net's batches differ by 5x near 0 nats (fast_mnist, Adam: 0.119, 0.037,
    # 0.208 at LRs of 1e-7), so from under half of guessing's loss it counts as killed only
    # once back at that half: a net the LR kills sits at chance.
    back = max(0.95 * level, 0.5 * guessing if math.isfinite(guessing) else 0.0)
    smooth, fell = smooth_losses(list(losses[:end]), beta=beta), False
    first = None  # the step of a batch that got worse, while the steps after it stay worse
    for i in range(1, end):
        value = losses[i]
        if blew_up(losses, i, period, stop):  # the sweep stopped after this step
            return lrs[(first or i) - 1] if value > losses[0] else None
        if period and i >= period:
            own = min(losses[i - period :: -period])  # this batch's losses before
            if value < max(worse * own, own + 0.1):
                first = None
            elif first is None:
                first = i
            else:  # two in a row
                return lrs[first - 1]
        fell = fell or smooth[i] < 0.9 * level  # (never from a level of 0 nats)
        if fell and smooth[i] >= back:
            return lrs[i - 1]
    if end == len(losses):
        return None
    # A NaN: measured after the step at lrs[end - 1]. Or a loss of 0 that stopped the sweep:
    # 4 batches learnt by heart, where the higher LRs went untried, so the bound is the last
    # LR whose step was measured. That 0 shows the steps up to lrs[end - 2]; the step after
    # it went unmeasured.
    known = end - 1 if losses[end - 1] == 0.0 else end
    last = first or known  # 0: batches learnt by heart before any step was measured
    return lrs[last - 1] if last else None


def safe_lr(
    lrs: Sequence[float], losses: Sequence[float], beta: float = 0.7, fall: float = 0.0
) -> float | None:
    """A tenth of the LR at the lowest smoothed loss of :func:`sweep`'s curve, or None when
    the curve says nothing (no finite loss, or the loss never fell below its first value:
    even the smallest LR of the sweep did not help; with ``fall``, never by that fraction
    of it: a curve flat within noise has its lowest point anywhere).

    Example:
        >>> safe_lr([1e-4, 1e-3, 1e-2, 1e-1], [2.0, 1.5, 1.0, math.inf])
        0.001
    """
    finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
    if len(finite) < 2:
        return None
    end = finite[-1] + 1  # the curve up to its last finite loss
    smooth = smooth_losses(list(losses[:end]), beta=beta)
    if not all(math.isfinite(v) for v in smooth) or min(smooth) >= smooth[0] * (1 - fall):
        return None
    return minimum(list(lrs[:end]), smooth)[0]


def next_lr(
    lr: float,
    lrs: Sequence[float],
    losses: Sequence[float],
    *,
    period: int = 0,
    guessing: float = math.inf,
    factor: float = 0.5,
    first: bool = True,
) -> tuple[float, str]:
    """The LR to go on with after training diverged at ``lr``, and how it was chosen
    ("halved": ``lr * factor``; "swept": from :func:`sweep`'s curve ``lrs``/``losses``, run
    from the restored state; ``period`` and ``guessing`` as for :func:`blowup_lr`).

    The first divergence of a fit halves (the notes' rule: an LR a little too high), unless
    the curve blew up below the halved LR already: then halving would leave it far too high,
    the net dying slowly at chance with no loss rule firing (mnist_cnn, AdamW at 0.3). From
    the second divergence on (halving once did not do it), the curve's LR is taken when it
    is lower.

    Example:
        >>> next_lr(10.0, [1e-4, 1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.5, 1.0, 0.9, math.inf])
        (0.01, 'swept')
    """
    halved = lr * factor
    learned = safe_lr(lrs, losses, fall=0.1)  # None: the loss never fell clearly
    blown = blowup_lr(lrs, losses, period=period, guessing=guessing)
    found = learned  # safe_lr without fall gives the same LR when the loss fell clearly
    if blown is not None:
        # The safe LR lies 10 to 100x below where the sweep made things worse: a tenth of the
        # lowest loss's LR (fastai's old rule) within that, when the loss fell clearly on
        # the way. 24 steps from a fresh net often stay flat until the blow-up, and then the
        # lowest loss is noise anywhere on the flat part (logreg, Adam, shapes: a tenth of
        # it was 2.1e-6 for a blow-up at 0.06, and the run ended at 35%): then a twentieth
        # of the blow-up (mnist_cnn, SGD, shapes, flat until 2.1: a tenth died at chance,
        # where 0.1 trains it).
        found = blown / 20 if learned is None else min(max(learned, blown / 100), blown / 10)
    else:
        # No blow-up up to the LR that diverged: then the lowest point says little, and a
        # tenth of it can be anywhere below. A decade down is as far as such a curve takes
        # the LR (the layer-spec net, Adam, shapes: dead at 2.4e-2, then a flat sweep from
        # the fit's start gave 5.1e-4, and 60% where 3e-3 reaches 94%; fast_mnist, Adam,
        # trained: batches 5x apart near 0 nats put the lowest point at 8e-8, and the guard
        # gave up at a tenth of it, under its floor of 1e-8).
        found = None if safe_lr(lrs, losses) is None else lr / 10
    far = blown is not None and blown <= halved
    if found is not None and found < halved and (not first or far):
        return found, "swept"
    return halved, "halved"


def adaptive_cap(model: nn.Module, opt: torch.optim.Optimizer | None) -> float | None:
    """The LR an adaptive optimizer (:data:`ADAPTIVE`) goes on with after diverging at an
    LR far too high (the guard applies it from 10x this up, instead of a sweep): a tenth of the
    median RMS of the trainable weight matrices (every tensor of 2 or more dimensions: conv
    kernels, linear weights; all-zero ones left out), times sqrt(20 / n) for a net of n > 20
    such tensors; or None (SGD, LBFGS, no such weights).

    An Adam step moves every weight by about the LR, so at an LR near the weights' own size
    a few steps rewrite the network, and with BatchNorm the loss need not blow up on the way:
    a ResNet-18 with Adam, 10,000x too high, was swept to 3.2e-2 (its weights' median RMS
    0.04), trained there without diverging and ended at 89% where 3e-3 reaches 100%
    (docs/benchmarks.md); a sweep can also land far too low (ResNet-50: 7.1e-5, a fortieth
    of this). Deep nets get less: every layer's output moves, and layers in series compound
    it; at a tenth, ResNet-50 (54 weight tensors) ended at 47.5% where 3e-3 reaches 92.8%, and
    ResNet-56 diverged again. For the registered models the cap is 1.8e-3 (logreg) to 8.7e-3
    (EfficientNet) at initialisation; logreg's own Adam LR on MNIST, 1e-2, is above it, so an
    LR that diverged below 10x the cap (a bad batch more likely than a mad LR) is left to the
    sweep and halving.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(100, 10)  # PyTorch's init: weights uniform in +-0.1, RMS ~0.058
        >>> adaptive_cap(model, torch.optim.Adam(model.parameters()))
        0.00585...
    """
    if not isinstance(opt, ADAPTIVE):
        return None
    sizes = _weight_sizes(model)
    return ADAPTIVE_SHARE * statistics.median(sizes) * _depth(len(sizes)) if sizes else None


def _weight_sizes(model: nn.Module) -> list[float]:
    """RMS of each trainable weight matrix (2 or more dimensions) that is not all zeros."""
    sizes = [
        float(p.detach().float().pow(2).mean().sqrt())
        for p in model.parameters()
        if p.requires_grad and p.dim() >= 2
    ]
    return [v for v in sizes if v > 0]  # zero-initialised weights say nothing of the scale


def cap_depth(model: nn.Module) -> float:
    """The factor :func:`adaptive_cap` takes for depth: sqrt(CAP_DEPTH / n) for n > CAP_DEPTH
    trainable weight matrices, else 1.

    Example:
        >>> cap_depth(nn.Linear(4, 2)), round(cap_depth(create_model("resnet50")), 2)
        (1.0, 0.61)
    """
    return _depth(len(_weight_sizes(model)))


def _depth(n: int) -> float:
    return min(1.0, math.sqrt(CAP_DEPTH / n)) if n else 1.0


def fine_tuning(model: nn.Module) -> bool:
    """Whether pretrained weights train: the model came from pretrained weights
    (``pretrained_from``, which ``load_pretrained`` sets) and any parameter outside its new
    head is trainable. That includes fine_tune's frozen phase when the body's BatchNorm scales
    and shifts train (``freeze``'s default, fastai's ``train_bn``): they are pretrained, and
    an LR fit for a new head alone wrecks them (EfficientNet-Lite2, SGD: a frozen phase swept
    to 0.67, 28.94% where 2e-2 reaches 56.50%). Only a head on a wholly frozen body is trained
    as from scratch.

    Example:
        >>> model = create_model("efficientnet_lite0", pretrained="imagenet", num_classes=10)
        >>> fine_tuning(model), fine_tuning(create_model("efficientnet_lite0"))
        (True, False)
    """
    if getattr(model, "pretrained_from", None) is None:
        return False
    head = getattr(model, "classifier", None)
    new = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    return any(p.requires_grad and id(p) not in new for p in model.parameters())
