"""A saved model directory: ``model.safetensors`` + ``model.json``. Never pickle.

``model.json`` holds what is needed to rebuild and use the model: the registry architecture
and its arguments, the class names and the :class:`Preprocess` the training data got (a
regression model, which takes raw numbers, has no classes and no preprocess), plus whatever
the run added (dataset name, test score, statistics of the training inputs).
Loading it can never run code: weights are plain tensors, everything else is JSON.

This module reads and checks those two files (:mod:`deepstart.models.saving` writes them);
:mod:`deepstart.ship.bundle` packs them (with the run's ``config.json``) into a shippable
bundle and predicts with it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, load_file
from torch import nn

from deepstart.data.dataset import Preprocess
from deepstart.data.decode import RESIZE_POLICIES
from deepstart.device import resolve_device
from deepstart.errors import DeepstartError
from deepstart.models.registry import count_parameters, create_model_from_arch

# The write side of the format lives in deepstart.models.saving (Learner.export writes it
# too); its names are re-exported here for the code that imports them from this module.
from deepstart.models.saving import (
    CONFIG,
    FORMAT,
    META,
    VERSION,
    WEIGHTS,
    BundleError,
    save_model,
    weights_bytes,
)

__all__ = [
    "CONFIG",
    "FORMAT",
    "META",
    "VERSION",
    "WEIGHTS",
    "BundleError",
    "SavedModel",
    "build_model",
    "check_meta",
    "checked_preprocess",
    "load_model",
    "parse_json",
    "read_meta",
    "save_model",
    "weights_bytes",
]

# What a bundle may ask to be built, checked before anything is allocated: a hostile or
# broken model.json must not take the machine's memory (10**12 classes, a 100000x100000
# input) nor be silently read as something else (a resize mode that does not exist).
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841
MAX_SIDE = 4096  # pixels per side of the model's input
MAX_PARAMS = 2**30  # 4 GiB of float32: the largest weights file a zipped bundle may hold
CHANNELS = (1, 3)


@dataclass
class SavedModel:
    """A model loaded back, with what it needs to be used on new images."""

    model: nn.Module
    classes: list[str]
    preprocess: Preprocess | None  # None for a regression model
    meta: dict[str, Any] = field(default_factory=dict)


def check_meta(meta: Any, where: str) -> dict:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise BundleError(f"{where}: not a deepstart model (format {got!r})")
    try:
        version = int(meta.get("version", 0))
    except (TypeError, ValueError):
        raise BundleError(
            f"{where}: format version {meta.get('version')!r} is not a number"
        ) from None
    if version > VERSION:
        raise BundleError(
            f"{where}: format version {version} is newer than this deepstart "
            f"reads ({VERSION}); upgrade deepstart"
        )
    if not isinstance(meta.get("arch"), dict) or not isinstance(meta.get("classes"), list):
        raise BundleError(f"{where}: has no model architecture or class list")
    return meta


def parse_json(data: bytes | str, where: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{where}: not valid JSON ({e})") from None


def read_meta(directory: str | Path) -> dict:
    """The checked ``model.json`` of a saved model directory (its weights file must exist).

    Raises:
        BundleError: no model, invalid JSON, not a deepstart model, or a newer format.
    """
    directory = Path(directory)
    meta_path, weights_path = directory / META, directory / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise BundleError(f"{directory}: no {META} + {WEIGHTS} (is it a run dir?)")
    return check_meta(parse_json(meta_path.read_bytes(), str(meta_path)), str(meta_path))


def build_model(meta: dict, weights: str | bytes, where: str, device: str) -> nn.Module:
    """The architecture of ``meta`` with ``weights`` (a file path or the file's bytes),
    built only after its parameters are counted on the meta device (nothing allocated)."""
    arch = meta["arch"]
    if "pretrained" in (arch.get("kwargs") or {}):
        raise BundleError(f"{where}: the architecture names weights to fetch; a bundle has its own")
    try:
        with torch.device("meta"):
            n = count_parameters(create_model_from_arch(arch))
        if n > MAX_PARAMS:
            raise BundleError(f"{where}: {n:,} parameters, over the limit of {MAX_PARAMS:,}")
        model = create_model_from_arch(arch)
    except BundleError:
        raise
    except (DeepstartError, KeyError, TypeError, ValueError, RuntimeError, MemoryError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BundleError(f"{where}: cannot rebuild the model ({why})") from None
    try:
        state = load_file(weights) if isinstance(weights, str) else load(weights)
        model.load_state_dict(state)
    except Exception as e:  # safetensors and torch raise several kinds for a broken file
        raise BundleError(f"{where}: cannot load weights ({e})") from None
    return model.to(device).eval()


def load_model(directory: str | Path, device: str = "cpu") -> SavedModel:
    """Rebuild a model saved by :func:`save_model` (eval mode, on ``device``).

    Example:
        >>> saved = load_model("runs/20260101-120000-shapes-vgg_small")
        >>> saved.classes
        ['circle', 'square', 'triangle']
    """
    device = str(resolve_device(device))  # a device this machine lacks: one line, now
    meta = read_meta(directory)
    weights_path = Path(directory) / WEIGHTS
    prep = checked_preprocess(meta, str(directory)) if meta.get("preprocess") else None
    model = build_model(meta, str(weights_path), str(weights_path), device)
    return SavedModel(model, list(meta["classes"]), prep, meta)


def checked_preprocess(meta: dict, where: str) -> Preprocess:
    """The bundle's Preprocess, refused in one line when it cannot give sane predictions:
    a class list that does not match the model's outputs (IndexError in predict, HTTP 500 in
    serve) or a std of 0 or a non-finite mean/std (NaN probabilities)."""
    arch = meta.get("arch") or {}
    classes, k = meta["classes"], arch.get("num_classes")
    if k is not None:
        _bounded(k, "num_classes (the model's outputs)", 1, MAX_CLASSES, where)
        if len(classes) != k:
            raise BundleError(f"{where}: {len(classes)} class names for a model with {k} outputs")
    if "input_size" in arch:
        _sides(arch["input_size"], "the model's input size", where)
    try:
        prep = Preprocess.from_dict(meta["preprocess"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise BundleError(f"{where}: broken preprocess ({e})") from None
    _sides(meta["preprocess"]["size"], "preprocess size", where)
    if prep.channels not in CHANNELS:
        raise BundleError(f"{where}: preprocess channels must be 1 or 3, got {prep.channels}")
    if arch.get("in_channels", prep.channels) != prep.channels:
        raise BundleError(
            f"{where}: the model takes {arch['in_channels']!r} channels, the preprocess gives "
            f"{prep.channels}"
        )
    if prep.resize not in RESIZE_POLICIES:
        raise BundleError(
            f"{where}: preprocess resize {prep.resize!r} is not one of {', '.join(RESIZE_POLICIES)}"
        )
    values = (*prep.mean, *prep.std)
    if not all(math.isfinite(v) for v in values) or min(prep.std, default=0) <= 0:
        raise BundleError(f"{where}: preprocess std must be positive and finite, got {prep.std}")
    if len(prep.mean) != prep.channels or len(prep.std) != prep.channels:
        raise BundleError(
            f"{where}: preprocess mean/std have {len(prep.mean)}/{len(prep.std)} values for "
            f"{prep.channels} channels"
        )
    return prep


def _bounded(value: Any, what: str, low: int, high: int, where: str) -> int:
    """``value`` when it is a whole number in ``low..high``, else a one-line BundleError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(f"{where}: {what} {value!r} is not a whole number")
    if not low <= value <= high:
        raise BundleError(f"{where}: {what} {value:,} is outside the limits {low}..{high:,}")
    return value


def _sides(size: Any, what: str, where: str) -> None:
    """An ``[H, W]`` of whole numbers, each 1..MAX_SIDE pixels."""
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise BundleError(f"{where}: {what} must be [height, width], got {size!r}")
    for side in size:
        _bounded(side, what, 1, MAX_SIDE, where)
