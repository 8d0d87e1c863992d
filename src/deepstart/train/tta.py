"""Test-time augmentation: score a split on the plain images and on augmented copies.

fastai's semantics: the prediction is a mix of the plain prediction and the mean of ``n``
augmented ones, ``p = beta * p_plain + (1 - beta) * mean_j p_aug_j`` (``beta = 0.25``).
The augmented copies are drawn from a generator seeded per (seed, copy, batch), so the
result is the same on every call and does not depend on what ran before.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from deepstart.augment import Augmentation, make_augment
from deepstart.data.dataset import Batches, ImageSet, conform_images
from deepstart.errors import ConfigError

if TYPE_CHECKING:
    from deepstart.train.learner import Learner


@torch.no_grad()
def tta(
    learn: Learner,
    split: str | ImageSet = "test",
    *,
    n: int = 4,
    augment: str | Augmentation | dict = "flip",
    beta: float = 0.25,
    seed: int = 0,
) -> dict[str, Any]:
    """Loss and accuracy of ``learn.model`` on ``split`` with test-time augmentation.

    Returns what :meth:`Learner.evaluate` returns (split, n, loss, loss_bits, chance_bits,
    accuracy, per_class) plus ``probs`` ``(N, K)`` (the mixed probabilities), ``pred``,
    ``target`` and ``tta`` (the settings). With ``n = 0`` it is the plain evaluation.

    Args:
        learn: a Learner (its model, device, preprocess and batches are used).
        split: "test", "valid", "train" or an ImageSet.
        n: augmented copies per image.
        augment: a preset name (see :func:`deepstart.augment.list_augments`) or a spec; use
            one that keeps labels ("flip" is wrong for digits: try "digits").
        beta: weight of the plain prediction in the mix.
        seed: seeds the augmented copies.

    Example:
        >>> tta(learn, "test", n=4, augment="flip")["accuracy"]
        0.912
    """
    if n < 0 or not 0.0 <= beta <= 1.0:
        raise ConfigError(f"tta wants n >= 0 and beta in [0, 1], got n={n}, beta={beta}")
    aug = make_augment(augment, learn.preprocess.mean, learn.preprocess.std)
    if aug is None and n > 0:
        raise ConfigError("tta with n > 0 needs an augmentation, not 'none'")
    images = conform_images(learn._split(split), learn.preprocess)
    dl = learn.batches(images)
    gen = torch.Generator(device=dl.device)
    was_training = learn.model.training
    learn.model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=learn.device)
    probs, targets = [], []
    try:
        for i, (xb, yb) in enumerate(dl):
            logp = _log_probs(learn, xb)  # (B, K)
            if n > 0:
                # log(mean_j p_j) over the n copies, computed in log space (no underflow).
                copies = []
                for j in range(n):
                    gen.manual_seed(Batches.augment_seed(seed, j, i))
                    copies.append(_log_probs(learn, aug(xb, gen)))
                aug_logp = torch.logsumexp(torch.stack(copies), dim=0) - math.log(n)
                if beta == 0.0:
                    logp = aug_logp
                elif beta < 1.0:
                    mix = torch.stack([logp + math.log(beta), aug_logp + math.log(1 - beta)])
                    logp = torch.logsumexp(mix, dim=0)
            total_loss += F.nll_loss(logp, yb, reduction="sum").double()
            probs.append(logp.exp().cpu())
            targets.append(yb.cpu())
    finally:
        learn.model.train(was_training)
    k = learn.num_classes
    prob = torch.cat(probs) if probs else torch.zeros(0, k)
    target = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.int64)
    pred = prob.argmax(dim=1)
    loss = float(total_loss) / max(len(images), 1)
    per_class = []
    for c in range(k):
        mask = target == c
        n_c = int(mask.sum())
        acc = float((pred[mask] == c).double().mean()) if n_c else math.nan
        per_class.append({"class": learn.data.classes[c], "n": n_c, "accuracy": acc})
    return {
        "split": split if isinstance(split, str) else "custom",
        "n": len(images),
        "loss": loss,
        "loss_bits": loss / math.log(2),
        "chance_bits": math.log2(k) if k > 1 else 0.0,
        "accuracy": float((pred == target).double().mean()) if len(target) else math.nan,
        "per_class": per_class,
        "probs": prob,
        "pred": pred,
        "target": target,
        "tta": {"n": n, "augment": augment if isinstance(augment, str) else "custom", "beta": beta},
    }


def _log_probs(learn: Learner, x: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` float32 log-probabilities of the model on a normalised batch."""
    with learn._autocast():
        logits = learn.model(x)
    return F.log_softmax(logits.float(), dim=1)
