"""ONNX export of a bundle, its parity check against PyTorch, and running it with onnxruntime.

The input contract of the exported graph (the same for every model):

- input ``pixels``: float32 ``(N, C, H, W)`` in **0-255 pixel units** (a uint8 image cast to
  float, no scaling), at the bundle's size and channel count; ``N`` is dynamic.
- output ``logits``: float32 ``(N, K)``; softmax gives the class probabilities.

The training normalisation (``(x / 255 - mean) / std``) is inside the graph, so a caller only
decodes, resizes to ``H x W`` (the bundle's resize policy) and casts to float. The classes,
the Preprocess spec and the rest of ``model.json`` travel in the model's ``metadata_props``
under the key ``deepstart`` (JSON), so ``deepstart predict model.onnx`` needs nothing else.

``onnx``, ``onnxscript`` and ``onnxruntime`` (the ``deepstart[onnx]`` extra) are imported only
inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from deepstart.cache import atomic_write
from deepstart.ship.bundle import check_batch, shareable
from deepstart.ship.predict import PredictMixin
from deepstart.ship.saved import VERSION as MODEL_VERSION
from deepstart.ship.saved import BundleError, checked_preprocess

if TYPE_CHECKING:
    from deepstart.ship.bundle import Bundle

ONNX_FORMAT = "deepstart.onnx"
ONNX_VERSION = 1
META_KEY = "deepstart"
INPUT, OUTPUT = "pixels", "logits"
# Parity: max |logit difference| allowed, relative to the largest |logit| (at least 1). fp32
# kernels differ in summation order; measured differences are 1e-7 to 1e-6 of that scale.
PARITY_RTOL = 1e-4
INSTALL = "pip install 'deepstart[onnx]'"


class PixelModel(nn.Module):
    """``model`` behind the training normalisation: 0-255 pixel floats in, logits out.

    The arithmetic is :meth:`deepstart.data.dataset.Batches.normalize`'s, one multiply-add.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        c = len(mean)
        mean_t = torch.tensor(list(mean), dtype=torch.float32)
        std_t = torch.tensor(list(std), dtype=torch.float32)
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, c, 1, 1))
        self.register_buffer("shift", (-mean_t / std_t).view(1, c, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels * self.scale + self.shift)  # (N, C, H, W) -> (N, K)


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and how closely onnxruntime reproduces PyTorch.

    Attributes:
        path: the ``.onnx`` file.
        max_abs_diff: max |logit difference|, PyTorch vs onnxruntime, on random inputs
            (NaN when the check was skipped).
        max_abs_logit: the largest |logit| PyTorch gave on them (the scale of the diff).
        seconds: time taken by the export (without the check).
    """

    path: Path
    max_abs_diff: float
    max_abs_logit: float
    seconds: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= PARITY_RTOL * max(1.0, self.max_abs_logit)


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BundleError(f"ONNX support needs {module}: {INSTALL}") from None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs its registry and warns about torch internals; none of that is the
    user's business (failures still raise)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for category in (DeprecationWarning, FutureWarning, UserWarning):
                warnings.simplefilter("ignore", category=category)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(
    bundle: Bundle, path: str | os.PathLike, *, check: bool = True, opset: int | None = None
) -> OnnxExport:
    """Write ``bundle`` as an ONNX file (dynamic batch, normalisation inside the graph) and,
    with ``check``, compare onnxruntime with PyTorch on random inputs.

    Uses torch's ``torch.export``-based exporter (it needs ``onnxscript``); the older
    TorchScript exporter still works in torch 2.13 but warns that it will be removed.

    Raises:
        BundleError: the extra is not installed, or onnxruntime's logits differ from
            PyTorch's by more than ``PARITY_RTOL`` of their scale.

    Example:
        >>> res = export_onnx(load_bundle("runs/x"), "model.onnx")
        >>> f"{res.max_abs_diff:.1e}"
        '2.4e-07'
    """
    _need("onnxscript")
    _need("onnx")
    path = Path(path)
    prep = bundle.preprocess
    model = bundle.model if bundle.device.type == "cpu" else copy.deepcopy(bundle.model).cpu()
    net = PixelModel(model, prep.mean, prep.std).eval()
    example = torch.rand(2, prep.channels, *prep.size) * 255  # (2, C, H, W) pixel units
    start = time.perf_counter()
    with _quiet_exporter():
        program = torch.onnx.export(
            net,
            (example,),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    info = {
        "format": ONNX_FORMAT,
        "version": ONNX_VERSION,
        "input": f"{INPUT}: float32 (N, {prep.channels}, {prep.size[0]}, {prep.size[1]}) in "
        "0-255 pixel units; normalisation is inside the graph",
        "output": f"{OUTPUT}: float32 (N, {len(bundle.classes)}); softmax gives probabilities",
        "model": bundle.meta,
    }
    program.model.metadata_props[META_KEY] = json.dumps(info)
    program.model.doc_string = f"deepstart image classifier: {', '.join(bundle.classes)}"
    with atomic_write(path) as f:
        f.write(program.model_proto.SerializeToString())
    shareable(path)
    seconds = time.perf_counter() - start
    if not check:
        return OnnxExport(path, float("nan"), float("nan"), seconds)
    diff, scale = onnx_parity(net, path)
    result = OnnxExport(path, diff, scale, seconds)
    if not result.ok:
        raise BundleError(
            f"{path}: onnxruntime's logits differ from PyTorch's by up to {diff:.2e} "
            f"(logits up to {scale:.2f}); the export is not faithful"
        )
    return result


@torch.no_grad()
def onnx_parity(
    net: nn.Module, path: str | os.PathLike, *, batches: tuple[int, ...] = (1, 7), seed: int = 0
) -> tuple[float, float]:
    """Max |logit difference| between ``net`` (a :class:`PixelModel`) and the ONNX file
    under onnxruntime, on uniform random pixels in batches of ``batches`` sizes (more than
    one size checks the dynamic batch axis); also the largest |logit|.

    Example:
        >>> onnx_parity(PixelModel(model, (0.5,), (0.25,)).eval(), "model.onnx")
        (2.384185791015625e-07, 6.12)
    """
    session = _session(Path(path))
    shape = tuple(session.get_inputs()[0].shape[1:])  # (C, H, W)
    gen = torch.Generator().manual_seed(seed)
    diff = scale = 0.0
    net.eval()
    for n in batches:
        x = torch.rand((n, *shape), generator=gen) * 255  # (n, C, H, W) pixel units
        ref = net(x).float()
        (out,) = session.run([OUTPUT], {INPUT: x.numpy()})
        diff = max(diff, float((torch.from_numpy(out) - ref).abs().max()))
        scale = max(scale, float(ref.abs().max()))
    return diff, scale


def _session(path: Path) -> Any:
    ort = _need("onnxruntime")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a broken file
        raise BundleError(f"{path}: onnxruntime cannot load it ({e})") from None


class OnnxBundle(PredictMixin):
    """An exported ``.onnx`` model run by onnxruntime, used like a :class:`Bundle`.

    Attributes:
        classes, preprocess, meta: as in the bundle it was exported from.
        session: the ``onnxruntime.InferenceSession``.
        source: the file it was loaded from.
    """

    def __init__(self, session: Any, info: dict, source: str) -> None:
        meta = info["model"]
        self.session = session
        self.meta: dict[str, Any] = meta
        self.classes: list[str] = list(meta["classes"])
        self.preprocess = checked_preprocess(meta, source)
        self.config = None
        self.source = source

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Class probabilities ``(N, K)`` of ``(N, C, H, W)`` uint8 images already at the
        bundle's size and channels (see :meth:`deepstart.ship.bundle.Bundle.probabilities`)."""
        check_batch(images, self.preprocess)
        out = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(torch.float32)  # pixel units
            (logits,) = self.session.run([OUTPUT], {INPUT: x.numpy()})
            out.append(torch.from_numpy(logits).softmax(dim=1))
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))


def load_onnx(path: str | os.PathLike) -> OnnxBundle:
    """Open an ``.onnx`` file written by :func:`export_onnx` with onnxruntime.

    Raises:
        BundleError: onnxruntime is missing, the file is broken, has no deepstart metadata,
            or is from a newer deepstart.

    Example:
        >>> load_onnx("model.onnx").predict("circle.png")[0].label
        'circle'
    """
    path = Path(path)
    session = _session(path)
    raw = session.get_modelmeta().custom_metadata_map.get(META_KEY)
    if raw is None:
        raise BundleError(f"{path}: no deepstart metadata (not exported by deepstart export)")
    try:
        info = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: deepstart metadata is not valid JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != ONNX_FORMAT:
        raise BundleError(f"{path}: not a deepstart ONNX model")
    if int(info.get("version", 0)) > ONNX_VERSION:
        raise BundleError(
            f"{path}: ONNX format version {info['version']} is newer than this deepstart "
            f"reads ({ONNX_VERSION}); upgrade deepstart"
        )
    meta = info.get("model")
    if not isinstance(meta, dict) or not meta.get("preprocess") or "classes" not in meta:
        raise BundleError(f"{path}: deepstart metadata has no classes or preprocess")
    if int(meta.get("version", 0)) > MODEL_VERSION:
        raise BundleError(f"{path}: model format version {meta['version']} is newer; upgrade")
    return OnnxBundle(session, info, str(path))
