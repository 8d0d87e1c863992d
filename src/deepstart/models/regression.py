"""Regression models for ``y = f(x)``: ``fit_mlp``, an MLP with a choice of activation.

They map ``(N, in_features)`` floats to ``(N, out_features)`` and carry their own input and
output scaling (``x_range`` -> [-1, 1], [-1, 1] -> ``y_range``), so ``model(x)`` takes and
returns the data's own units and the saved bundle needs nothing else.

The activation decides what a network finds easy:

- ``relu``: piecewise linear. Every fit is a polyline, so the error peaks where f bends most
  (the extrema of sin) and only falls as fast as the kinks multiply.
- ``tanh``, ``silu``: smooth, and slow to fit several wiggles (spectral bias): Fourier
  features (``fourier=K``) fix that.
- ``sine``: SIREN (Sitzmann et al., 2020), ``sin(w0 * (W h + b))`` with their initialisation,
  so each layer starts with unit-size activations at frequencies up to about ``w0``
  radians per unit of the scaled input. Smooth functions are fitted fast and to ~1e-4.

Example:
    >>> model = create_model("fit_mlp", activation="tanh", width=32, depth=2)
    >>> model(torch.zeros(5, 1)).shape
    torch.Size([5, 1])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from deepstart.models.registry import ModelError, register_model

ACTIVATIONS = ("relu", "tanh", "silu", "sine")


class Sine(nn.Module):
    """``sin(w0 * x)``: SIREN's activation."""

    def __init__(self, w0: float) -> None:
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0:g}"


class FourierFeatures(nn.Module):
    """``u -> [u, sin(pi k u), cos(pi k u)]`` for ``k = 1..K``, per input column.

    On inputs scaled to [-1, 1] the features are periodic over the domain, with periods of
    2/k; the raw ``u`` is kept so trends that are not periodic stay easy. ``(N, D)`` in,
    ``(N, D * (2K + 1))`` out.
    """

    def __init__(self, k: int) -> None:
        super().__init__()
        # (K,) angular frequencies; not a parameter, and rebuilt from k, so not saved.
        self.register_buffer("freqs", math.pi * torch.arange(1, k + 1), persistent=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        a = u[:, :, None] * self.freqs.to(u.dtype)  # (N, D, K)
        feats = torch.cat([torch.sin(a), torch.cos(a)], dim=2).flatten(1)  # (N, 2DK)
        return torch.cat([u, feats], dim=1)


class FitMLP(nn.Module):
    """Scale x to [-1, 1], optional Fourier features, ``depth`` hidden layers of ``width``,
    a linear output scaled back to ``y_range``.

    ``body`` is the hidden stack, ``out`` the last linear layer (what is trained last to
    read the function off the features).
    """

    def __init__(
        self,
        *,
        in_features: int,
        out_features: int,
        activation: str,
        width: int,
        depth: int,
        fourier: int,
        w0: float,
        x_range: Sequence[float],
        y_range: Sequence[float],
    ) -> None:
        super().__init__()
        x_lo, x_hi = (float(v) for v in x_range)
        y_lo, y_hi = (float(v) for v in y_range)
        # Fixed affine maps (not trained, not saved: the arch's x_range/y_range rebuild them).
        self.register_buffer("x_mid", torch.tensor((x_lo + x_hi) / 2), persistent=False)
        self.register_buffer("x_half", torch.tensor((x_hi - x_lo) / 2), persistent=False)
        self.register_buffer("y_mid", torch.tensor((y_lo + y_hi) / 2), persistent=False)
        self.register_buffer("y_half", torch.tensor((y_hi - y_lo) / 2), persistent=False)
        self.encode = FourierFeatures(fourier) if fourier else nn.Identity()
        d = in_features * (2 * fourier + 1)
        layers: list[nn.Module] = []
        for i in range(depth):
            linear = nn.Linear(d, width)
            if activation == "sine":
                _siren_init(linear, first=i == 0 and not fourier, w0=w0)
                layers += [linear, Sine(w0)]
            else:
                act = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}[activation]
                layers += [linear, act()]
            d = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(d, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = (x - self.x_mid) / self.x_half  # (N, D) in [-1, 1] over the training domain
        return self.y_mid + self.y_half * self.out(self.body(self.encode(u)))


@torch.no_grad()
def _siren_init(linear: nn.Linear, *, first: bool, w0: float) -> None:
    """SIREN's weights: U(-1/d, 1/d) in the first layer (its sin(w0 .) then spans about
    +-w0 radians), U(-sqrt(6/d)/w0, sqrt(6/d)/w0) after, which keeps every layer's
    pre-activations about unit-normal. Biases keep PyTorch's default."""
    d = linear.in_features
    bound = 1 / d if first else math.sqrt(6 / d) / w0
    linear.weight.uniform_(-bound, bound)


@register_model(
    task="regression",
    description="MLP for y = f(x): relu/tanh/silu/sine (SIREN), optional Fourier features",
    in_features=1,
    out_features=1,
    activation="sine",
    width=32,
    depth=3,
    fourier=0,
    w0=30.0,
    x_range=(-1.0, 1.0),
    y_range=(-1.0, 1.0),
)
def fit_mlp(
    *,
    in_features: int,
    out_features: int,
    activation: str,
    width: int,
    depth: int,
    fourier: int,
    w0: float,
    x_range: Sequence[float],
    y_range: Sequence[float],
) -> FitMLP:
    """An MLP regressor ``(N, in_features) -> (N, out_features)``.

    Args:
        in_features, out_features: columns of x and y (1 and 1 for y = f(x)).
        activation: "relu", "tanh", "silu" or "sine" (SIREN, with its initialisation).
        width: units per hidden layer.
        depth: hidden layers (0 gives a linear model of the, maybe Fourier, features).
        fourier: K Fourier features per input (0: none), see :class:`FourierFeatures`.
        w0: frequency scale of the sine activation (SIREN's 30); ignored by the others.
        x_range: (lo, hi) of the x the model sees; mapped to [-1, 1] inside the model.
        y_range: (lo, hi) of the y; the last layer's [-1, 1] is mapped onto it.

    Example:
        >>> model = create_model("fit_mlp", x_range=(-6.28, 6.28))
        >>> model(torch.linspace(-6.28, 6.28, 7)[:, None]).shape
        torch.Size([7, 1])
    """
    if activation not in ACTIVATIONS:
        raise ModelError(f"fit_mlp activation must be one of {', '.join(ACTIVATIONS)}")
    if in_features < 1 or out_features < 1:
        raise ModelError(f"fit_mlp needs in/out features >= 1, got {in_features}, {out_features}")
    if width < 1 or depth < 0 or fourier < 0:
        raise ModelError(
            f"fit_mlp needs width >= 1, depth >= 0, fourier >= 0; got {width}, {depth}, {fourier}"
        )
    if not w0 > 0:
        raise ModelError(f"fit_mlp w0 must be positive, got {w0}")
    for name, span in (("x_range", x_range), ("y_range", y_range)):
        if len(span) != 2 or not float(span[0]) < float(span[1]):
            raise ModelError(f"fit_mlp {name} must be (lo, hi) with lo < hi, got {list(span)}")
    return FitMLP(
        in_features=int(in_features),
        out_features=int(out_features),
        activation=activation,
        width=int(width),
        depth=int(depth),
        fourier=int(fourier),
        w0=float(w0),
        x_range=x_range,
        y_range=y_range,
    )
