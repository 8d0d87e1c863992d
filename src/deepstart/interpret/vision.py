"""What the network sees: kernels, feature maps, filter visualisation, saliency and Grad-CAM.

Pure tensor computations on any model with the shared interface
(``model(x) == model.head(model.features(x))``); the drawings live in ``vision_plots``.
Saliency, SmoothGrad and Grad-CAM are computed in :mod:`deepstart.interpret.attribution` and
the input helpers in :mod:`deepstart.interpret.probe`; this module re-exports both.
Inputs are the *normalised* float images the model sees (see :func:`normalise`). Every function
puts the model in eval mode and restores each module's previous mode afterwards, runs on the
model's own device, takes gradients with ``torch.autograd.grad`` (so no parameter's ``.grad``
is touched) and returns detached CPU float tensors.

Example:
    >>> x = normalise(data.valid.images[:8], data.mean, data.std)  # (8, C, H, W)
    >>> cam = grad_cam(model, x)  # (8, H, W) in [0, 1]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deepstart.interpret.attribution import grad_cam, saliency, smoothgrad
from deepstart.interpret.probe import (
    VisionError,
    as_batch,
    denormalise,
    device_dtype,
    eval_mode,
    normalise,
)

# The attribution maps and the input helpers live in their own modules; this one stays the
# single place the report, serve, the docs and the tests take all vision tools from.
__all__ = [
    "HAND_KERNELS",
    "VisionError",
    "apply_kernels",
    "conv_layers",
    "denormalise",
    "feature_maps",
    "first_layer_weights",
    "grad_cam",
    "normalise",
    "saliency",
    "smoothgrad",
    "visualise_filters",
]


# -- first layer and hand-made kernels -----------------------------------------------------


def first_layer_weights(
    model: nn.Module, image_shape: tuple[int, int, int] | None = None
) -> torch.Tensor:
    """The first layer's weights as images: the kernels a conv net learned first.

    For a conv net this is the first ``nn.Conv2d`` weight ``(O, I, kh, kw)``. For a dense net
    (logreg, mlp) it is the first ``nn.Linear``'s rows reshaped to the input image
    ``(O, C, H, W)`` — for logreg, the one "template" per class that softmax regression learns.

    Args:
        model: any model; a dense one needs ``model.arch`` (from ``create_model``) or
            ``image_shape``.
        image_shape: ``(C, H, W)`` of the input, for a dense model without ``arch``.

    Example:
        >>> first_layer_weights(create_model("logreg")).shape
        torch.Size([10, 1, 28, 28])
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.weight.detach().to("cpu", torch.float32).clone()
        if isinstance(m, nn.Linear):
            if image_shape is None:
                arch = getattr(model, "arch", None)
                if arch is None:
                    raise VisionError("a dense model needs image_shape=(C, H, W) or model.arch")
                image_shape = (arch["in_channels"], *arch["input_size"])
            c, h, w = (int(s) for s in image_shape)
            if m.in_features != c * h * w:
                raise VisionError(
                    f"the first Linear takes {m.in_features} inputs, not an image of "
                    f"{c}x{h}x{w}={c * h * w} pixels"
                )
            return m.weight.detach().to("cpu", torch.float32).reshape(-1, c, h, w).clone()
    raise VisionError("model has no nn.Conv2d or nn.Linear layer")


def _k(rows: list[list[float]], scale: float = 1.0) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32) * scale


HAND_KERNELS: dict[str, torch.Tensor] = {
    "identity": _k([[0, 0, 0], [0, 1, 0], [0, 0, 0]]),
    "box blur": _k([[1, 1, 1], [1, 1, 1], [1, 1, 1]], 1 / 9),
    "gaussian blur": _k([[1, 2, 1], [2, 4, 2], [1, 2, 1]], 1 / 16),
    "sharpen": _k([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
    "edges (Laplacian)": _k([[0, 1, 0], [1, -4, 1], [0, 1, 0]]),
    "Sobel x": _k([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]),
    "Sobel y": _k([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]),
    "emboss": _k([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]),
}
"""Classic 3x3 kernels, applied as cross-correlation (what ``nn.Conv2d`` computes): Sobel x is
positive where brightness grows to the right, Sobel y where it grows downwards."""


def apply_kernels(
    image: torch.Tensor, kernels: Mapping[str, torch.Tensor] = HAND_KERNELS
) -> dict[str, torch.Tensor]:
    """Convolve one image with each kernel: what a single conv filter does to a picture.

    The image (``(C, H, W)`` or ``(H, W)`` uint8) is turned into grey in [0, 1] (ITU-R 601
    luma for colour); borders are repeated so that the 'same'-size output has no false edges
    at the frame.

    Returns:
        name -> ``(H, W)`` float32 map, in the image's [0, 1] units times the kernel.

    Example:
        >>> apply_kernels(torch.zeros(1, 8, 8, dtype=torch.uint8))["Sobel x"].shape
        torch.Size([8, 8])
    """
    x = image.detach().to("cpu", torch.float32) / 255.0
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise VisionError(f"apply_kernels wants one (C, H, W) image, got {tuple(image.shape)}")
    if x.shape[0] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    out = {}
    for name, kernel in kernels.items():
        k = torch.as_tensor(kernel, dtype=torch.float32)
        kh, kw = k.shape
        if kh % 2 == 0 or kw % 2 == 0:
            raise VisionError(f"kernel {name!r} is {kh}x{kw}; 'same' padding needs odd sizes")
        padded = F.pad(x[None], (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
        out[name] = F.conv2d(padded, k[None, None])[0, 0]  # (H, W)
    return out


# -- layers and feature maps ---------------------------------------------------------------


def conv_layers(model: nn.Module) -> list[str]:
    """Dotted names of the model's ``nn.Conv2d`` layers, in order (empty for a dense model).

    Example:
        >>> conv_layers(create_model("mnist_cnn"))
        ['body.0', 'body.2']
    """
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _module(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules:
        convs = ", ".join(conv_layers(model)) or "none (a dense model)"
        raise VisionError(
            f"no layer {layer!r} in {type(model).__name__}; its conv layers: {convs} "
            "(any name from model.named_modules() works)"
        )
    return modules[layer]


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once the layer has run."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output


def _capture(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of ``module`` when ``model`` runs on ``x`` (the rest of the net is skipped)."""

    def hook(_mod: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        raise _Captured(output)

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Captured as c:
        return c.output
    finally:
        handle.remove()
    raise VisionError("the layer did not run during the forward pass")


def feature_maps(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The activations of ``layer`` for one normalised image: ``(C', h, w)``.

    Args:
        model: any model.
        x: one normalised image ``(1, C, H, W)`` or ``(C, H, W)``.
        layer: a dotted module name, e.g. from :func:`conv_layers`.

    Example:
        >>> feature_maps(create_model("mnist_cnn"), torch.zeros(1, 1, 28, 28), "body.0").shape
        torch.Size([32, 26, 26])
    """
    module = _module(model, layer)
    xb = as_batch(model, x)
    if len(xb) != 1:
        raise VisionError(f"feature_maps takes one image, got a batch of {len(xb)}")
    with eval_mode(model), torch.no_grad():
        out = _capture(model, module, xb)
    if out.ndim != 4:
        raise VisionError(
            f"layer {layer!r} gives {tuple(out.shape)}, not a (N, C, h, w) feature map; "
            f"conv layers: {', '.join(conv_layers(model)) or 'none (a dense model)'}"
        )
    return out[0].detach().to("cpu", torch.float32)


# -- activation maximisation ---------------------------------------------------------------


def visualise_filters(
    model: nn.Module,
    layer: str,
    channels: Sequence[int],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    size: tuple[int, int] | None = None,
    in_channels: int | None = None,
    steps: int = 48,
    lr: float = 0.05,
    jitter: int = 2,
    decay: float = 0.01,
    blur_every: int = 4,
    seed: int = 0,
) -> torch.Tensor:
    """Images that excite each channel of ``layer`` most: activation maximisation.

    Gradient ascent on the input pixels (as in Keras's "how convnets see the world" and
    Yosinski et al. 2015): start from grey plus a little noise; each step roll the image by a
    random few pixels (so the pattern must not depend on exact position), step along the
    gradient of the channel's mean activation (normalised per image), pull the pixels back
    towards grey by ``decay``, blur lightly every ``blur_every`` steps and clip to [0, 1].
    All channels are optimised together as one batch (eval mode keeps them independent).

    Args:
        model: any model.
        layer: dotted module name (a conv layer, or any module; a dense unit also works).
        channels: the channels (units) of ``layer`` to visualise, one image each.
        mean, std: the normalisation the model was trained with (``Preprocess``).
        size, in_channels: input ``(H, W)`` and channels; default from ``model.arch``.
        steps: ascent steps; 0 returns the starting noise (to compare against).
        lr: step size in [0, 1] pixel units (per-pixel RMS of one step).
        jitter: largest random shift per step, in pixels.
        decay: fraction of the distance to grey removed each step (L2 decay).
        blur_every: blur with a 3x3 Gaussian every this many steps (0: never).
        seed: the start and the shifts are a pure function of it.

    Returns:
        ``(len(channels), C, H, W)`` float32 in [0, 1] display units.

    Example:
        >>> imgs = visualise_filters(model, "body.3", range(8), mean=[0.2], std=[0.3])
    """
    module = _module(model, layer)
    arch = getattr(model, "arch", {}) or {}
    if (size is None or in_channels is None) and "input_size" not in arch:
        raise VisionError("pass size=(H, W) and in_channels for a model without model.arch")
    h, w = (int(s) for s in (size or arch["input_size"]))
    c = int(in_channels if in_channels is not None else arch["in_channels"])
    chans = [int(ch) for ch in channels]
    if not chans:
        raise VisionError("channels is empty")
    device, dtype = device_dtype(model)
    m = torch.as_tensor(list(mean), dtype=dtype, device=device).view(1, -1, 1, 1)
    s = torch.as_tensor(list(std), dtype=dtype, device=device).view(1, -1, 1, 1)
    if m.shape[1] != c or s.shape[1] != c:
        raise VisionError(f"mean and std need {c} values (one per input channel)")

    gen = torch.Generator().manual_seed(int(seed))
    n = len(chans)
    start = 0.5 + 0.05 * torch.randn(n, c, h, w, generator=gen)  # grey + noise, [0, 1] units
    img = start.clamp(0, 1).to(device=device, dtype=dtype)
    shifts = torch.randint(-jitter, jitter + 1, (max(steps, 1), 2), generator=gen).tolist()
    blur = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=dtype, device=device) / 16
    blur = blur.expand(c, 1, 3, 3)
    index = torch.arange(n, device=device)
    ch = torch.tensor(chans, device=device)
    with eval_mode(model):
        for step in range(steps):
            dy, dx = shifts[step]
            p = img.detach().requires_grad_()
            out = _capture(model, module, (torch.roll(p, (dy, dx), dims=(2, 3)) - m) / s)
            if step == 0 and (out.ndim < 2 or max(chans) >= out.shape[1] or min(chans) < 0):
                raise VisionError(
                    f"layer {layer!r} gives {tuple(out.shape)}; channels must be in "
                    f"[0, {out.shape[1] if out.ndim >= 2 else 0})"
                )
            act = out[index, ch]  # (n, ...) each image's own channel
            objective = act.reshape(n, -1).mean(1).sum()
            (grad,) = torch.autograd.grad(objective, p)
            # Normalised per image, so lr is a step in pixel units whatever the layer's scale.
            rms = grad.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-12
            with torch.no_grad():
                img = p + lr * grad / rms
                img = 0.5 + (img - 0.5) * (1.0 - decay)
                if blur_every and (step + 1) % blur_every == 0:
                    img = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="reflect"), blur, groups=c)
                img = img.clamp(0.0, 1.0)
    return img.detach().to("cpu", torch.float32)
