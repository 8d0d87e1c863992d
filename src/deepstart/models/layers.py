"""Layers the models share where PyTorch's own is slow on the CPU.

:class:`Flatten` is ``nn.Flatten`` whose gradient keeps a channels-last input's layout.

:class:`Dropout` is ``nn.Dropout`` with a faster mask on the CPU. PyTorch draws a CPU
dropout mask with one Mersenne-Twister call and one Bernoulli draw per element, which made
dropout the second-largest cost of a ``mnist_cnn`` training step (8-9 ms of a 45 ms step for
its 1.2 M activations, more than the convolution it follows). Here one 64-bit draw gives the
keep/drop decision of four elements (16 random bits each), 4-5x faster forward and backward
(bench/ablations.py). On CUDA and MPS it is PyTorch's fused dropout, unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepstart.device import to_channels_last

# randint's bounds for uniform 64-bit draws: every bit (and so every 16-bit slice) uniform.
_LOW, _HIGH = -(2**63), 2**63 - 1


def dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A dropout mask like ``x`` (same dtype, device and memory layout): each element is
    ``1 / (1 - p)`` with probability ``1 - p`` and 0 otherwise, independently.

    The keep probability is ``1 - p`` rounded to a multiple of 2**-16 (off by at most 8e-6),
    and the scale is exactly ``1 / (1 - p)``. Draws come from torch's default generator, so
    ``torch.manual_seed`` (and a checkpoint's saved RNG state) repeats them.

    Example:
        >>> m = dropout_mask(torch.ones(1000, 100), 0.25)
        >>> round((m > 0).float().mean().item(), 2), m.max().item()
        (0.75, 1.3333333730697632)
    """
    n = x.numel()
    words = torch.randint(_LOW, _HIGH, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    bits = words.view(torch.int16)[:n]  # n uniform 16-bit integers in [-32768, 32767]
    keep = bits < round((1.0 - p) * 65536) - 32768
    # empty_like keeps x's strides when x is dense, else makes it contiguous: either way the
    # mask is dense, its storage exactly n elements. Dropout is elementwise, so the order the
    # draws land in does not matter: fill that storage as it lies (channels-last stays so).
    mask = torch.empty_like(x)
    mask.as_strided((n,), (1,)).copy_(keep)
    return mask.mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, same behaviour, an instance of it) whose CPU training
    mask is :func:`dropout_mask`.

    Example:
        >>> drop = Dropout(0.5).train()
        >>> drop(torch.ones(4, 8)).unique().tolist()  # dropped, or kept and scaled
        [0.0, 2.0]
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0 or x.device.type != "cpu":
            return F.dropout(x, self.p, True, self.inplace)
        mask = dropout_mask(x, self.p)
        return x.mul_(mask) if self.inplace else x * mask


class _FlattenKeepLayout(torch.autograd.Function):
    """``x.flatten(1)`` whose gradient comes back in ``x``'s memory layout."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.flatten(1)  # (N, C, H, W) -> (N, C*H*W) in C, H, W order, whatever the layout

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return to_channels_last(grad.reshape(ctx.shape))


class Flatten(nn.Flatten):
    """``nn.Flatten`` (an instance of it, flattening from dim 1) that, in training, hands
    the gradient back channels-last when the feature map came in channels-last.

    The flattened features are in the usual (C, H, W) order either way, so the weights of
    the layer after it mean the same in every layout. Without this, the gradient of a
    channels-last map arrives NCHW, and the layers below (max-pool's backward above all)
    convert it back and forth: ~20% of a ``mnist_cnn`` bf16 step (bench/ablations.py).

    Example:
        >>> Flatten()(torch.zeros(2, 64, 12, 12)).shape
        torch.Size([2, 9216])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.start_dim == 1
            and self.end_dim == -1
            and x.dim() == 4
            and x.shape[1] > 1
            and x.stride(1) == 1  # channels-last
            and x.requires_grad
            and torch.is_grad_enabled()
        ):
            return _FlattenKeepLayout.apply(x)
        return super().forward(x)
