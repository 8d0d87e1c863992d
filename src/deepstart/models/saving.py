"""A model as files: ``model.safetensors`` + ``model.json``, written into a directory or a
``.zip`` bundle. Never pickle.

This is the write side of the bundle format, below both ``train/`` (``learn.export``) and
``ship/`` (``deepstart export``, ``Bundle.save``), so the two write the same files;
:mod:`deepstart.ship.saved` and :mod:`deepstart.ship.bundle` read and check them.

Example:
    >>> save_model(learn.model, "runs/x", classes=data.classes, preprocess=data.preprocess)
    >>> write_bundle(model_files(learn.model, classes=data.classes, preprocess=None), "m.zip")
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

from safetensors.torch import save
from torch import nn

from deepstart.cache import atomic_write
from deepstart.errors import DeepstartError

FORMAT = "deepstart.model"
VERSION = 1
META, WEIGHTS, CONFIG = "model.json", "model.safetensors", "config.json"


class BundleError(DeepstartError):
    """A model directory or bundle that is missing, broken or from a newer deepstart."""


def weights_bytes(model: nn.Module) -> bytes:
    # safetensors refuses shared or non-contiguous storage; clone to plain CPU tensors.
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return save(weights, metadata={"format": FORMAT})


def model_meta(
    model: nn.Module, *, classes: list[str], preprocess: Any, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``model.json``: the registry architecture, the classes, the Preprocess (an object with
    ``to_dict()``, :class:`deepstart.data.dataset.Preprocess`, or None) and ``extra``."""
    arch = getattr(model, "arch", None)
    if arch is None:
        raise BundleError("model has no .arch: build it with create_model() to save it")
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "classes": list(classes),
        "preprocess": preprocess.to_dict() if preprocess is not None else None,
        **(extra or {}),
    }


def model_files(
    model: nn.Module, *, classes: list[str], preprocess: Any, extra: dict[str, Any] | None = None
) -> dict[str, bytes]:
    """The bundle members of ``model``: name -> bytes, for :func:`write_bundle`."""
    meta = model_meta(model, classes=classes, preprocess=preprocess, extra=extra)
    return {META: json.dumps(meta, indent=2).encode(), WEIGHTS: weights_bytes(model)}


def save_model(
    model: nn.Module,
    directory: str | Path,
    *,
    classes: list[str],
    preprocess: Any,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory``.

    Example:
        >>> save_model(learn.model, "runs/x", classes=data.classes, preprocess=data.preprocess)
    """
    meta = model_meta(model, classes=classes, preprocess=preprocess, extra=extra)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_write(directory / WEIGHTS) as f:
        f.write(weights_bytes(model))
    with atomic_write(directory / META, "w") as f:
        json.dump(meta, f, indent=2)
    return directory


def shareable(path: Path) -> Path:
    """Give a file written through a temp file (mode 0600) the usual rights under the umask:
    a shipped model is meant to be read by others."""
    mask = os.umask(0)
    os.umask(mask)
    path.chmod(0o666 & ~mask)
    return path


def write_bundle(files: dict[str, bytes], out: str | os.PathLike) -> Path:
    """Write bundle members (name -> bytes) into a ``.zip`` or a directory, atomically."""
    out = Path(out)
    if out.suffix.lower() == ".zip":
        with atomic_write(out) as f, zipfile.ZipFile(f, "w") as zf:
            for name, data in files.items():
                # Weights are float noise to deflate (~7% smaller, slower); JSON shrinks well.
                method = zipfile.ZIP_STORED if name == WEIGHTS else zipfile.ZIP_DEFLATED
                zf.writestr(name, data, compress_type=method)
        return shareable(out)
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} exists and is not a directory; use a new name or a .zip")
    for name, data in files.items():
        with atomic_write(out / name) as f:
            f.write(data)
        shareable(out / name)
    return out
