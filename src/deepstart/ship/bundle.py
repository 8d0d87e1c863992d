"""Shipping a classifier: a *bundle* is a directory or a single ``.zip`` holding
``model.safetensors``, ``model.json`` (see :mod:`deepstart.ship.saved`) and the run's
``config.json`` (the training config). A run directory is a bundle too.

:func:`load_bundle` opens any of them (and an ``.onnx`` file written by
:func:`deepstart.ship.onnx.export_onnx`, or the name of a model with published weights) as an
object whose ``predict`` takes files, PIL images or arrays. Zips are read in memory, member by
member, with size limits; nothing is extracted. Loading never runs code from the bundle.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import torch

from deepstart.data.dataset import Batches, ImageSet, Preprocess
from deepstart.device import resolve_device, use_channels_last
from deepstart.models.saving import shareable, write_bundle
from deepstart.ship.predict import PredictMixin
from deepstart.ship.saved import (
    CONFIG,
    FORMAT,
    META,
    VERSION,
    WEIGHTS,
    BundleError,
    SavedModel,
    build_model,
    check_meta,
    checked_preprocess,
    load_model,
    parse_json,
    read_meta,
    save_model,
    weights_bytes,
)

if TYPE_CHECKING:
    from deepstart.ship.onnx import OnnxBundle, OnnxExport

# What the package, the run code and the tests import from here; the saving and loading of a
# model directory lives in deepstart.ship.saved.
__all__ = [
    "VERSION",
    "Bundle",
    "BundleError",
    "SavedModel",
    "check_batch",
    "export_bundle",
    "load_bundle",
    "load_model",
    "pretrained_bundle",
    "read_meta",
    "read_zip_members",
    "save_model",
    "shareable",
    "write_bundle",
]


# Limits on what is read from a zip (uncompressed bytes): a bundle holds two JSON files and
# one weights file, so anything bigger is a broken or hostile archive.
MAX_JSON_BYTES = 64 * 2**20
MAX_WEIGHTS_BYTES = 4 * 2**30
MAX_MEMBERS = 1000


@dataclass
class Bundle(SavedModel, PredictMixin):
    """A shippable image classifier: model (eval mode), classes, Preprocess and metadata.

    Attributes:
        model: the network; maps normalised ``(N, C, H, W)`` floats to ``(N, K)`` logits.
        classes: class names, ``classes[k]`` is output ``k``.
        preprocess: size, channels, resize policy and mean/std of the training data.
        meta: the whole ``model.json`` (arch, dataset, test score, ``input_stats``, ...).
        config: the training config (``config.json``), or None if the bundle has none.
        source: where it was loaded from.
    """

    config: dict[str, Any] | None = None
    source: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Class probabilities ``(N, K)`` (float32, CPU) of ``(N, C, H, W)`` uint8 images
        already at the bundle's size and channels; normalised exactly as training did.

        Example:
            >>> bundle.probabilities(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape
            torch.Size([2, 10])
        """
        check_batch(images, self.preprocess)
        labels = torch.zeros(len(images), dtype=torch.int64)
        batches = Batches(
            ImageSet(images, labels, list(self.classes)),
            batch_size,
            device=self.device,
            mean=self.preprocess.mean,
            std=self.preprocess.std,
            # The layout training used (and the faster one): the same numbers as the Learner.
            channels_last=use_channels_last(self.model, self.device, None),
        )
        out = [self.model(x).float().softmax(dim=1).cpu() for x, _ in batches]
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def save(self, out: str | os.PathLike) -> Path:
        """Write the bundle to ``out``: a ``.zip`` file, or else a directory.

        Example:
            >>> load_bundle("runs/x").save("model.zip")
            PosixPath('model.zip')
        """
        files = {
            META: json.dumps(self.meta, indent=2).encode(),
            WEIGHTS: weights_bytes(self.model),
        }
        if self.config is not None:
            files[CONFIG] = json.dumps(self.config, indent=2).encode()
        return write_bundle(files, out)

    def export_onnx(self, path: str | os.PathLike, **kwargs: Any) -> OnnxExport:
        """Write an ONNX file; see :func:`deepstart.ship.onnx.export_onnx`."""
        from deepstart.ship.onnx import export_onnx

        return export_onnx(self, path, **kwargs)


def check_batch(images: torch.Tensor, prep: Preprocess) -> None:
    """Refuse anything but ``(N, C, H, W)`` uint8 at ``prep``'s channels and size."""
    want = (prep.channels, *prep.size)
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise BundleError(
            f"probabilities() wants (N, {want[0]}, {want[1]}, {want[2]}) uint8 images, got "
            f"{tuple(images.shape)} {images.dtype}; predict() converts any size and mode"
        )


def export_bundle(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Check a run directory's model and write it as a bundle: ``out`` is a ``.zip`` file or a
    directory. The weights and JSON are copied byte for byte.

    Example:
        >>> export_bundle("runs/20260101-120000-shapes-vgg_small", "shapes.zip")
        PosixPath('shapes.zip')
    """
    load_bundle(run_dir)  # refuse to ship what cannot be loaded back
    src = Path(run_dir)
    if Path(out).resolve() == src.resolve():
        raise BundleError(f"{out} is the run directory itself; export somewhere else")
    files = {name: (src / name).read_bytes() for name in (META, WEIGHTS, CONFIG)
             if (src / name).is_file()}  # fmt: skip
    return write_bundle(files, out)


def load_bundle(path: str | os.PathLike, device: str = "cpu") -> Bundle | OnnxBundle:
    """Open a bundle: a ``.zip``, a bundle or run directory, or an ``.onnx`` file.

    Loading runs no code from the bundle: the weights are read as plain tensors (from bytes,
    for a zip), the rest as JSON. An ``.onnx`` file gives an ``OnnxBundle`` (run by
    onnxruntime) with the same ``predict``, ``classes``, ``preprocess`` and ``meta``.

    Args:
        path: the bundle.
        device: where a PyTorch model runs: "cpu", "cuda", "mps" or "auto" (onnxruntime
            always runs on the CPU); one this machine lacks is a ConfigError.

    Raises:
        BundleError: a missing path or member, broken JSON or weights, an unsafe or
            oversized zip, a newer format, or a model that does not classify images.

    Example:
        >>> bundle = load_bundle("shapes.zip")
        >>> bundle.predict("circle.png")[0].label
        'circle'
    """
    path = Path(path).expanduser()
    device = str(resolve_device(device))  # a device this machine lacks: one line, now
    if not path.exists():
        if _model_name(str(path)):
            return pretrained_bundle(str(path), device=device)
        raise BundleError(f"{path} does not exist")
    if path.is_file() and path.suffix.lower() == ".onnx":
        from deepstart.ship.onnx import load_onnx

        return load_onnx(path)
    if path.is_dir():
        meta = read_meta(path)
        config_path = path / CONFIG
        config = parse_json(config_path.read_bytes(), str(config_path)) if (
            config_path.is_file()) else None  # fmt: skip
        weights: str | bytes = str(path / WEIGHTS)
    elif zipfile.is_zipfile(path):
        members = read_zip_members(path)
        meta = check_meta(parse_json(members[META], f"{path}:{META}"), f"{path}:{META}")
        config = parse_json(members[CONFIG], f"{path}:{CONFIG}") if CONFIG in members else None
        weights = members[WEIGHTS]
    else:
        raise BundleError(f"{path}: not a bundle (a directory, a .zip or an .onnx file)")
    if not meta.get("preprocess") or meta["arch"].get("task", "classification") != (
        "classification"
    ):
        raise BundleError(f"{path}: not an image classifier (use load_model for other models)")
    prep = checked_preprocess(meta, f"{path}:{META}")
    model = build_model(meta, weights, f"{path}:{WEIGHTS}", device)
    return Bundle(model, list(meta["classes"]), prep, meta, config, str(path))


def _model_name(text: str) -> bool:
    """``efficientnet_lite0`` or ``resnet50:imagenet-v1``: a model with published weights."""
    from deepstart.models.weights import is_weights_name

    model, _, weights = text.partition(":")
    return is_weights_name(model, weights or "imagenet")


def pretrained_bundle(name: str, device: str = "cpu") -> Bundle:
    """A published ImageNet classifier as a bundle: "what is in this photo?" with no
    training. ``name`` is a model with weights (``deepstart weights``), optionally with the
    weights' name after a colon (``resnet50:imagenet-v1``; default ``imagenet``).

    Its ``Preprocess`` is the weights' own: their resolution, RGB, a centre crop (the
    evaluation transform they were scored with, less the 256-px border) and their mean/std.

    Example:
        >>> pretrained_bundle("efficientnet_lite0").predict("cat.jpg")[0].label
        'tabby'
    """
    from deepstart.models.registry import create_model
    from deepstart.models.weights import get_weights

    model_name, _, weights_name = name.partition(":")
    device = str(resolve_device(device))
    w = get_weights(model_name, weights_name or "imagenet")
    model = create_model(model_name, input_size=w.input_size, pretrained=w.name)
    prep = Preprocess(w.input_size, 3, tuple(w.mean), tuple(w.std), resize="crop")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "arch": model.arch,
        "classes": w.class_names(),
        "preprocess": prep.to_dict(),
        "dataset": "ImageNet (ILSVRC-2012, 1000 classes)",
        "weights": {"name": w.key, "source": w.source, "licence": w.licence},
    }
    if w.top1 is not None:
        meta["test"] = {"accuracy": w.top1, "split": "ImageNet validation (published)"}
    return Bundle(model.to(device).eval(), w.class_names(), prep, meta, None, name)


def _safe_name(name: str) -> bool:
    """A relative POSIX member name with no ``..``, drive, backslash or absolute root."""
    if not name or "\\" in name or "\0" in name or name.startswith("/"):
        return False
    parts = PurePosixPath(name).parts
    return not any(p == ".." for p in parts) and ":" not in parts[0]


def read_zip_members(
    path: str | os.PathLike, names: Sequence[str] = (META, WEIGHTS, CONFIG)
) -> dict[str, bytes]:
    """The bytes of a zipped bundle's members, found at the top or in one top folder.

    The whole archive is refused if any member name could escape a folder (``../x``,
    ``/etc/x``, ``C:x``, backslashes); each member is read with a size limit that does not
    trust the sizes the archive claims.

    Raises:
        BundleError: a broken or unsafe zip, a missing or oversized member.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise BundleError(f"{path}: {len(infos)} members; a bundle has a few")
            bad = [i.filename for i in infos if not _safe_name(i.filename)]
            if bad:
                raise BundleError(f"{path}: refusing a zip with unsafe member name {bad[0]!r}")
            by_name = {i.filename: i for i in infos if not i.is_dir()}
            tops = sorted({n.rsplit("/", 1)[0] + "/" for n in by_name if n.endswith("/" + META)})
            prefix = "" if META in by_name else (tops[0] if len(tops) == 1 else None)
            if prefix is None or prefix.count("/") > 1:
                raise BundleError(f"{path}: no {META} at the top of the zip (is it a bundle?)")
            out = {}
            for name in names:
                info = by_name.get(prefix + name)
                if info is None:
                    if name == CONFIG:
                        continue  # optional: a model saved without a run has no config
                    raise BundleError(f"{path}: the zip has no {prefix}{name}")
                limit = MAX_WEIGHTS_BYTES if name == WEIGHTS else MAX_JSON_BYTES
                with zf.open(info) as f:
                    data = f.read(limit + 1)  # the header's size may lie; the stream cannot
                if len(data) > limit:
                    raise BundleError(f"{path}: {name} is over the {limit:,}-byte limit")
                out[name] = data
            return out
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
        raise BundleError(f"{path}: broken zip ({e})") from None
