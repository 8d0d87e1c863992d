"""Attribution: which pixels the class score depends on — saliency, SmoothGrad, Grad-CAM.

Each function takes normalised images ``(N, C, H, W)`` (see
:func:`deepstart.interpret.probe.normalise`) and a target class per image (default the
predicted one), takes gradients with ``torch.autograd.grad`` (so no parameter's ``.grad`` is
touched) in eval mode, and returns a detached CPU float32 map ``(N, H, W)``.

Example:
    >>> cam = grad_cam(model, x)  # (8, H, W) in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deepstart.interpret.probe import VisionError, as_batch, class_targets, eval_mode


def _input_grad(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d logit[target] / d x for a batch ``(N, C, H, W)``, without touching parameter grads."""
    p = x.detach().requires_grad_()
    logits = model(p)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), p)
    return grad


def saliency(
    model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None
) -> torch.Tensor:
    """Vanilla gradient saliency: which pixels would change the class score fastest.

    Args:
        model: any model.
        x: normalised images ``(N, C, H, W)``.
        target: class per image (or one for all); default the predicted class.

    Returns:
        ``(N, H, W)`` float32: max over channels of ``|d logit[target] / d x|``.

    Example:
        >>> saliency(create_model("logreg"), torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 28, 28])
    """
    xb = as_batch(model, x)
    with eval_mode(model):
        with torch.no_grad():
            t = class_targets(model(xb), target)
        grad = _input_grad(model, xb, t)
    return grad.abs().amax(1).detach().to("cpu", torch.float32)


def smoothgrad(
    model: nn.Module,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | None = None,
    *,
    n: int = 25,
    sigma: float = 0.15,
    seed: int = 0,
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): saliency averaged over noisy copies of the input.

    The target is chosen once on the clean images; the gradients (signed) are averaged over
    ``n`` copies with Gaussian noise of std ``sigma * (max - min)`` of each image, then reduced
    like :func:`saliency`. Deterministic for a seed.

    Returns:
        ``(N, H, W)`` float32, max over channels of the averaged gradient's magnitude.

    Example:
        >>> smoothgrad(model, x, n=10, seed=1).shape  # x (N, C, H, W)
    """
    if n < 1 or sigma < 0:
        raise VisionError(f"smoothgrad needs n >= 1 and sigma >= 0, got n={n} sigma={sigma}")
    xb = as_batch(model, x)
    gen = torch.Generator().manual_seed(int(seed))
    spread = (xb.amax(dim=(1, 2, 3)) - xb.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)  # (N,1,1,1)
    total = torch.zeros_like(xb)
    with eval_mode(model):
        with torch.no_grad():
            t = class_targets(model(xb), target)
        for _ in range(n):
            noise = torch.randn(xb.shape, generator=gen).to(xb)
            total += _input_grad(model, xb + noise * sigma * spread, t)
    return (total / n).abs().amax(1).detach().to("cpu", torch.float32)


def grad_cam(
    model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class lies.

    The last feature map ``f = model.features(x)`` ``(N, K, h, w)`` is weighted per channel by
    the mean over space of ``d logit[target] / d f``; the ReLU of the weighted sum is upsampled
    (bilinear) to the input size and divided by its maximum per image (an all-zero map stays
    zero).

    Args:
        model: a conv model (its ``features`` must return a 4-D feature map of more than one
            pixel: a 1x1 map has nothing to say about where).
        x: normalised images ``(N, C, H, W)``.
        target: class per image (or one for all); default the predicted class.

    Returns:
        ``(N, H, W)`` float32 in [0, 1].

    Example:
        >>> grad_cam(create_model("vgg_small"), torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 32, 32])
    """
    xb = as_batch(model, x)
    with eval_mode(model):
        with torch.no_grad():
            f = model.features(xb)
        if f.ndim != 4:
            raise VisionError(
                f"grad_cam needs a conv model whose features(x) is a (N, C, h, w) map; "
                f"{type(model).__name__} gives {tuple(f.shape)} (use saliency for dense models)"
            )
        if f.shape[2] * f.shape[3] == 1:
            raise VisionError(
                f"grad_cam needs a feature map of more than one pixel; {type(model).__name__}'s "
                f"is 1x1 at {xb.shape[2]}x{xb.shape[3]}, so it would paint the whole image one "
                f"colour (saliency shows where the model looks)"
            )
        f = f.detach().requires_grad_()  # only d logit / d f is needed: the body is not re-run
        logits = model.head(f)
        t = class_targets(logits.detach(), target)
        (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), f)
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (N, K, 1, 1)
    cam = F.relu((weights * f.detach()).sum(1, keepdim=True))  # (N, 1, h, w)
    cam = F.interpolate(cam, size=xb.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2), keepdim=True)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
    return cam.detach().to("cpu", torch.float32)
