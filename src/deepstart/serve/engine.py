"""The model behind the web app: uploaded bytes -> pixels -> probabilities (+ a heat map).

An :class:`Engine` holds one loaded bundle and answers one upload at a time per inference
slot. Uploads are decoded exactly as ``deepstart predict`` decodes files
(:func:`deepstart.ship.predict.read_image`: EXIF orientation, mode, the bundle's size and resize
policy), then go through the bundle's own ``probabilities`` (its training mean/std). The
heat map is Grad-CAM (conv models) or vanilla saliency from :mod:`deepstart.interpret.vision`
for the top class, drawn over the very pixels the model saw.

Threads: a request thread runs :meth:`Engine.predict`; a semaphore lets at most
``concurrency`` of them use the CPU at once (default: one per core), so a burst of requests
queues instead of oversubscribing the cores. The model is in eval mode and only read
(``no_grad`` for probabilities; heat maps take gradients with ``torch.autograd.grad``, which
never writes ``.grad``), so concurrent requests need no lock around it.

Example:
    >>> engine = Engine(load_bundle("shapes.zip"))
    >>> engine.predict(open("circle.png", "rb").read(), top_k=2)["top"][0]["class"]
    'circle'
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from deepstart.data.decode import max_pixels
from deepstart.errors import DataError
from deepstart.ship.predict import read_image

EXPLAIN = ("gradcam", "saliency", "none")
_HEAT_SIDE = 224  # pixels per side of the heat-map PNGs (the model's input is upscaled)


class UploadError(Exception):
    """An upload the server refuses; ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_pixels(data: bytes) -> None:
    """Refuse an image whose header claims more than ``Image.MAX_IMAGE_PIXELS`` pixels, the
    limit ``deepstart predict`` applies, before any pixel is decoded.

    ``predict`` turns Pillow's decompression-bomb warning into an error with a process-wide
    warning filter (:func:`deepstart.ship.predict.refuse_bombs`), which is not safe to enter from
    many request threads at once; this check reads only the header and needs no filter.

    Raises:
        UploadError: 400 for bytes Pillow cannot identify, 413 for a possible bomb.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:  # parses the header only
            w, h = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UploadError(413, _bomb(str(e))) from None
    except Image.UnidentifiedImageError:
        raise UploadError(400, "not an image, or a format Pillow cannot read") from None
    except Exception as e:  # a header broken in any of Pillow's many ways
        raise UploadError(400, f"broken image file: {e or type(e).__name__}") from None
    limit = max_pixels()
    if limit is not None and w * h > limit:
        raise UploadError(413, _bomb(f"{w}x{h} = {w * h} pixels, over the limit of {limit}"))


def _bomb(detail: str) -> str:
    return (
        f"refused as a possible decompression bomb ({detail}); the server's limit is "
        "DEEPSTART_MAX_PIXELS (default: Pillow's)"
    )


def png_data_uri(pixels: np.ndarray) -> str:
    """``(H, W)`` or ``(H, W, 3)`` uint8 as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """A heat map over the image the model saw, upscaled for the eye.

    Args:
        image: ``(C, H, W)`` uint8, the model's input before normalisation.
        heat: ``(H, W)`` float, >= 0; scaled to its own maximum (an all-zero map stays blue).
        alpha: opacity of the colours.

    Returns:
        ``(S, S', 3)`` uint8, about 224 pixels on the longer side.

    Example:
        >>> overlay(torch.zeros(1, 28, 28, dtype=torch.uint8), torch.rand(28, 28)).shape
        (224, 224, 3)
    """
    from matplotlib import colormaps  # the colour table only; no pyplot, thread-safe

    h, w = image.shape[1:]
    scale = max(1, round(_HEAT_SIDE / max(h, w)))
    size = (w * scale, h * scale)  # PIL wants (W, H)
    base = image.permute(1, 2, 0).numpy()
    base = np.repeat(base, 3, axis=2) if base.shape[2] == 1 else base
    base = np.asarray(Image.fromarray(base).resize(size, Image.Resampling.NEAREST), np.float32)
    m = heat.to(torch.float32).clamp_min(0).numpy()
    m = m / m.max() if m.max() > 0 else m
    smooth = Image.fromarray(m).resize(size, Image.Resampling.BILINEAR)  # mode F: float map
    colours = colormaps["jet"](np.asarray(smooth))[:, :, :3] * 255  # (S, S', 3) float
    return np.clip((1 - alpha) * base + alpha * colours, 0, 255).astype(np.uint8)


class Engine:
    """One bundle, ready to answer uploads from many threads.

    Args:
        bundle: a :class:`~deepstart.ship.bundle.Bundle` or ``OnnxBundle`` (heat maps need the
            PyTorch one).
        concurrency: uploads decoded and run at once; default one per CPU core.

    Attributes:
        explain: the heat-map methods this model supports, best first (empty for ONNX).
    """

    def __init__(self, bundle: Any, concurrency: int | None = None) -> None:
        self.bundle = bundle
        self.classes = list(bundle.classes)
        self.preprocess = bundle.preprocess
        self.concurrency = max(1, concurrency or os.cpu_count() or 1)
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self.explain = self._methods()

    def _methods(self) -> list[str]:
        model = getattr(self.bundle, "model", None)
        if not isinstance(model, torch.nn.Module):
            return []  # ONNX: no gradients
        methods = ["saliency"]
        if callable(getattr(model, "features", None)) and callable(getattr(model, "head", None)):
            x = torch.zeros(1, self.preprocess.channels, *self.preprocess.size)
            with torch.no_grad():
                f = model.features(x.to(next(model.parameters()).device))
            if f.ndim == 4 and f.shape[2] * f.shape[3] > 1:  # a map: Grad-CAM can say where
                methods.insert(0, "gradcam")
        return methods

    def decode(self, data: bytes) -> torch.Tensor:
        """An upload as ``(C, H, W)`` uint8 at the bundle's size, decoded as ``predict``
        decodes files.

        Raises:
            UploadError: empty, not an image, broken, or too many pixels.
        """
        if not data:
            raise UploadError(400, "empty upload: send an image file")
        check_pixels(data)
        try:
            return read_image(io.BytesIO(data), self.preprocess)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise UploadError(413, _bomb(str(e))) from None
        except DataError as e:
            raise UploadError(400, str(e)) from None
        except Exception as e:  # truncated data, bad chunks, ...: Pillow raises many kinds
            raise UploadError(400, f"broken image file: {e or type(e).__name__}") from None

    def predict(self, data: bytes, *, top_k: int = 3, explain: str = "none") -> dict[str, Any]:
        """Classify one uploaded image.

        Args:
            data: the file's bytes (PNG, JPEG, GIF, BMP, WebP, TIFF, ...).
            top_k: classes returned, best first (at most the number of classes).
            explain: "gradcam", "saliency" or "none": the heat map of the top class.

        Returns:
            ``{"label", "top": [{"class", "probability"}], "probabilities": {class: p},
            "explain", "input", "overlay", "warnings", "seconds"}``; ``input`` and
            ``overlay`` are PNG data URIs (what the model saw, and the heat map over it),
            None when ``explain`` is "none".

        Raises:
            UploadError: a refused upload (400/413) or a method this model lacks (400).
        """
        if explain not in EXPLAIN:
            raise UploadError(400, f"explain must be one of {', '.join(EXPLAIN)}")
        if explain != "none" and explain not in self.explain:
            have = ", ".join(self.explain) or "none (an ONNX model has no gradients)"
            raise UploadError(400, f"this model cannot explain by {explain}; it can: {have}")
        start = time.perf_counter()
        with self._slots:
            image = self.decode(data)  # (C, H, W) uint8
            probs = self.bundle.probabilities(image[None])[0]  # (K,)
            k = max(1, min(int(top_k), len(self.classes)))
            values, idx = probs.topk(k)
            heat = self._heat(image, int(idx[0]), explain) if explain != "none" else None
        out: dict[str, Any] = {
            "label": self.classes[int(idx[0])],
            "top": [
                {"class": self.classes[i], "probability": round(float(v), 6)}
                for v, i in zip(values.tolist(), idx.tolist())
            ],
            "probabilities": {c: round(float(p), 6) for c, p in zip(self.classes, probs)},
            "explain": explain,
            "input": None,
            "overlay": None,
            "warnings": self._mismatch(image),
        }
        if heat is not None:
            shown = image.permute(1, 2, 0).numpy()
            out["input"] = png_data_uri(shown[:, :, 0] if shown.shape[2] == 1 else shown)
            out["overlay"] = png_data_uri(overlay(image, heat))
        out["seconds"] = round(time.perf_counter() - start, 4)
        return out

    def _heat(self, image: torch.Tensor, target: int, method: str) -> torch.Tensor:
        """``(H, W)`` heat map of class ``target`` for one ``(C, H, W)`` uint8 image."""
        from deepstart.interpret.vision import grad_cam, normalise, saliency

        prep, model = self.preprocess, self.bundle.model
        x = normalise(image[None], prep.mean, prep.std)  # (1, C, H, W) float, as trained
        explain = grad_cam if method == "gradcam" else saliency
        return explain(model, x, target)[0]

    def _mismatch(self, image: torch.Tensor) -> list[str]:
        """What ``predict`` would warn about this image (inverted colours, off-centre...)."""
        stats = self.bundle.meta.get("input_stats")
        if not stats:
            return []
        from deepstart.data.mismatch import check_inputs

        return check_inputs(stats, image[None], what="the pixels the model saw")
