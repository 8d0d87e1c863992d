"""Saving and loading a trained model: ``model.safetensors`` + ``model.json``. Never pickle.

``model.json`` holds what is needed to rebuild and use the model: the registry architecture
and its arguments, the class names and the :class:`Preprocess` the training data got (a
regression model, which takes raw numbers, has no classes and no preprocess).
Loading it can never run code: weights are plain tensors, everything else is JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save
from torch import nn

from deepstart.data.cache import atomic_write
from deepstart.data.dataset import Preprocess
from deepstart.errors import DeepstartError
from deepstart.models.registry import create_model_from_arch

FORMAT = "deepstart.model"
VERSION = 1


class BundleError(DeepstartError):
    """A model directory that is missing, broken or from a newer deepstart."""


@dataclass
class SavedModel:
    """A model loaded back, with what it needs to be used on new images."""

    model: nn.Module
    classes: list[str]
    preprocess: Preprocess | None  # None for a regression model
    meta: dict[str, Any] = field(default_factory=dict)


def save_model(
    model: nn.Module,
    directory: str | Path,
    *,
    classes: list[str],
    preprocess: Preprocess | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory``.

    Example:
        >>> save_model(learn.model, "runs/x", classes=data.classes, preprocess=data.preprocess)
    """
    arch = getattr(model, "arch", None)
    if arch is None:
        raise BundleError("model has no .arch: build it with create_model() to save it")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or non-contiguous storage; clone to plain CPU tensors.
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_write(directory / "model.safetensors") as f:
        f.write(save(weights, metadata={"format": FORMAT}))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "classes": list(classes),
        "preprocess": preprocess.to_dict() if preprocess is not None else None,
        **(extra or {}),
    }
    with atomic_write(directory / "model.json", "w") as f:
        json.dump(meta, f, indent=2)
    return directory


def read_meta(directory: str | Path) -> dict:
    """The checked ``model.json`` of a saved model directory (its weights file must exist).

    Raises:
        BundleError: no model, invalid JSON, not a deepstart model, or a newer format.
    """
    directory = Path(directory)
    meta_path, weights_path = directory / "model.json", directory / "model.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise BundleError(f"{directory}: no model.json + model.safetensors (is it a run dir?)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{meta_path}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: not a deepstart model (format {meta.get('format')!r})")
    if int(meta.get("version", 0)) > VERSION:
        raise BundleError(
            f"{meta_path}: format version {meta['version']} is newer than this deepstart "
            f"reads ({VERSION}); upgrade deepstart"
        )
    return meta


def load_model(directory: str | Path, device: str = "cpu") -> SavedModel:
    """Rebuild a model saved by :func:`save_model` (eval mode, on ``device``).

    Example:
        >>> saved = load_model("runs/20260101-120000-shapes-vgg_small")
        >>> saved.classes
        ['circle', 'square', 'triangle']
    """
    meta = read_meta(directory)
    weights_path = Path(directory) / "model.safetensors"
    model = create_model_from_arch(meta["arch"])
    try:
        state = load_file(str(weights_path))
        model.load_state_dict(state)
    except Exception as e:  # safetensors and torch raise several kinds for a broken file
        raise BundleError(f"{weights_path}: cannot load weights ({e})") from None
    model.to(device).eval()
    prep = Preprocess.from_dict(meta["preprocess"]) if meta.get("preprocess") else None
    return SavedModel(model, list(meta["classes"]), prep, meta)
