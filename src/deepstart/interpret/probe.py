"""Looking inside a model safely: the shared ground of the vision tools.

Inputs are the *normalised* float images the model sees (:func:`normalise` makes them from
uint8 pixels); :func:`eval_mode` puts a model in eval mode and restores each module's own mode
afterwards; :func:`as_batch` brings images to the model's device and dtype. Used by
:mod:`deepstart.interpret.vision` (kernels, feature maps, filters) and
:mod:`deepstart.interpret.attribution` (saliency, Grad-CAM).

Example:
    >>> x = normalise(data.valid.images[:8], data.mean, data.std)  # (8, C, H, W) float32
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from deepstart.errors import DeepstartError


class VisionError(DeepstartError, ValueError):
    """A model, layer or input that a visualisation cannot use; the message says why."""


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images ``(N, C, H, W)`` or ``(C, H, W)`` -> float32 ``(x / 255 - mean) / std``.

    ``mean`` and ``std`` are per channel in [0, 1] pixel units, as in ``Preprocess``.

    Example:
        >>> normalise(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8), [0.5], [0.5])[0, 0, 0]
        tensor([1., 1.])
    """
    c = images.shape[-3]
    shape = (c, 1, 1)
    m = torch.as_tensor(list(mean), dtype=torch.float32, device=images.device).view(shape)
    s = torch.as_tensor(list(std), dtype=torch.float32, device=images.device).view(shape)
    return (images.to(torch.float32) / 255.0 - m) / s


def denormalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The inverse of :func:`normalise`, in [0, 1] display units (clamped).

    Example:
        >>> denormalise(torch.tensor([[[[1.0, -3.0]]]]), [0.5], [0.5])
        tensor([[[[1., 0.]]]])
    """
    c = x.shape[-3]
    m = torch.as_tensor(list(mean), dtype=x.dtype, device=x.device).view(c, 1, 1)
    s = torch.as_tensor(list(std), dtype=x.dtype, device=x.device).view(c, 1, 1)
    return (x * s + m).clamp(0.0, 1.0)


def device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model's float tensors live and their dtype (CPU float32 for a model with
    none, e.g. an empty Sequential)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with ``model`` in eval mode, then give every module its mode back."""
    # Per module, because a model may be partly in eval on purpose (frozen BatchNorm).
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def as_batch(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` float on the model's device and dtype (a 3-D image gets N=1)."""
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or not x.is_floating_point():
        raise VisionError(
            f"expected normalised float images (N, C, H, W), got {tuple(x.shape)} {x.dtype}; "
            "use normalise() on uint8 images"
        )
    device, dtype = device_dtype(model)
    return x.detach().to(device=device, dtype=dtype)


def class_targets(
    logits: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None
) -> torch.Tensor:
    """Class index per image ``(N,)``: the given one(s), else the predicted class."""
    n, k = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, dtype=torch.int64, device=logits.device).reshape(-1)
    t = t.expand(n) if t.numel() == 1 else t
    if t.numel() != n or int(t.min()) < 0 or int(t.max()) >= k:
        raise VisionError(f"target must be one class in [0, {k}) or one per image (N={n})")
    return t
