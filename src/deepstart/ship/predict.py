"""Predicting new images with a bundle: files, folders, globs, PIL images or arrays -> top-k.

Every input is brought to the bundle's :class:`~deepstart.data.dataset.Preprocess` the way
its kind was during training and evaluation:

- a file (PNG, JPEG, BMP, GIF, WebP, TIFF) is decoded by
  :func:`~deepstart.data.decode.decode_image`, exactly as ``load_folder`` decoded the
  training images (EXIF orientation, any colour mode, the resize policy, Pillow's filters);
- a PIL image goes through the same steps (:func:`~deepstart.data.decode.prepare_image`);
- a uint8 array or tensor goes through :func:`~deepstart.data.dataset.conform_images`, as
  ``Learner.evaluate`` and ``Learner.predict`` do for arrays of another size or channel count.

Then the batch is normalised with the training mean/std (inside the model's ``probabilities``)
and, when the bundle stores statistics of its training inputs, compared with them by
:func:`deepstart.data.mismatch.check_inputs`. A file that cannot be read gives a
:class:`Prediction` with an ``error`` and the rest are still predicted. Images larger than
Pillow's ``Image.MAX_IMAGE_PIXELS`` are refused as possible decompression bombs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from deepstart.data.dataset import DataError, ImageSet, Preprocess, conform_images
from deepstart.data.decode import decode_image, prepare_image, to_channels
from deepstart.data.folder import IMAGE_EXTENSIONS

CHUNK = 1024  # images decoded and held at a time: bounds memory on a folder of 100k photos
_THREADS_FROM = 32  # fewer files than this decode faster in one thread


class InputMismatchWarning(UserWarning):
    """New images look prepared differently from the bundle's training images."""


class Predictor(Protocol):
    """What :func:`predict` needs: a :class:`~deepstart.ship.bundle.Bundle` or an
    :class:`~deepstart.ship.onnx.OnnxBundle`."""

    classes: list[str]
    preprocess: Preprocess
    meta: dict[str, Any]

    def probabilities(self, images: torch.Tensor, batch_size: int = ...) -> torch.Tensor: ...


@dataclass(frozen=True)
class Prediction:
    """The prediction for one input.

    Attributes:
        source: the file path, or ``<input i>`` for an image or array passed in memory.
        top: the ``top_k`` most likely ``(class, probability)``, best first.
        probs: ``(K,)`` float32 probabilities over ``classes`` (None after an error).
        error: why the input could not be predicted (None when it was).
    """

    source: str
    top: tuple[tuple[str, float], ...] = ()
    probs: torch.Tensor | None = None
    error: str | None = None

    @property
    def label(self) -> str | None:
        """The most likely class (None after an error)."""
        return self.top[0][0] if self.top else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.source,
            "top": [{"class": c, "probability": round(p, 6)} for c, p in self.top],
            "error": self.error,
        }


def find_images(specs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Prediction]]:
    """Expand files, folders (image files found recursively, hidden ones skipped) and globs.

    Returns:
        The files in order (duplicates dropped) and an error :class:`Prediction` for every
        spec that matched nothing.

    Example:
        >>> files, missing = find_images(["photos/", "extra/*.jpg", "cat.png"])
    """
    found: list[Path] = []
    errors: list[Prediction] = []
    for spec in specs:
        path = Path(spec).expanduser()
        text = str(spec)
        if path.is_dir():
            hits = _walk(path)
            if not hits:
                errors.append(Prediction(text, error="folder has no image files"))
            found.extend(hits)
        elif path.is_file():
            found.append(path)
        elif any(ch in text for ch in "*?["):
            import glob

            hits = []
            for match in sorted(glob.glob(os.path.expanduser(text), recursive=True)):
                p = Path(match)
                hits.extend(_walk(p) if p.is_dir() else [p] if _is_image(p) else [])
            if not hits:
                errors.append(Prediction(text, error="no image files match this pattern"))
            found.extend(hits)
        else:
            errors.append(Prediction(text, error="no such file or folder"))
    return list(dict.fromkeys(found)), errors


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _walk(folder: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # walked in name order
        out.extend(Path(root) / f for f in sorted(files) if _is_image(Path(f)))
    return out


def read_image(path: str | os.PathLike, prep: Preprocess) -> torch.Tensor:
    """One file as ``(C, H, W)`` uint8 at ``prep``'s size and channels, decoded exactly as
    training folders are. Call it under :func:`refuse_bombs` (the file readers here do).

    Example:
        >>> with refuse_bombs():
        ...     read_image("cat.jpg", bundle.preprocess).shape
        torch.Size([3, 64, 64])
    """
    a = decode_image(path, size=prep.size, channels=prep.channels, resize=prep.resize)
    return torch.from_numpy(a.transpose(2, 0, 1).copy())  # (H, W, C) -> (C, H, W)


@contextlib.contextmanager
def refuse_bombs() -> Iterator[None]:
    """Turn Pillow's DecompressionBombWarning (over ``Image.MAX_IMAGE_PIXELS`` pixels) into
    an error, as its DecompressionBombError (over twice that) already is.

    Warning filters are process-wide: enter this around a whole decoding pass (threads
    included), never inside the threads.

    Example:
        >>> with refuse_bombs():
        ...     pixels = read_image("huge.png", bundle.preprocess)  # raises
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _reason(e: BaseException, path: Path) -> str:
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return (
            f"refused as a possible decompression bomb ({e}); set DEEPSTART_MAX_PIXELS higher "
            "if you trust this file"
        )
    text = str(e).replace(f"'{path}'", "").replace(str(path), "").strip(" :") or type(e).__name__
    if isinstance(e, Image.UnidentifiedImageError):
        return f"{text} (not an image, or a format Pillow cannot read)"
    if isinstance(e, FileNotFoundError | IsADirectoryError | PermissionError):
        return text
    return f"broken image file: {text}"


def _read_files(paths: list[Path], prep: Preprocess) -> list[torch.Tensor | str]:
    """Each file's ``(C, H, W)`` uint8 tensor, or the reason it could not be read."""

    def one(p: Path) -> torch.Tensor | str:
        try:
            return read_image(p, prep)
        except Exception as e:  # whatever Pillow raises, this file is unreadable: go on
            return _reason(e, p)

    with refuse_bombs():
        # Pillow releases the GIL while decoding and resizing: two threads on two cores.
        workers = min(4, os.cpu_count() or 1)
        if len(paths) < _THREADS_FROM or workers == 1:
            return [one(p) for p in paths]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, paths))


def array_images(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A uint8 image or batch as ``(N, C, H, W)``: 2-D is one grey image (HW), 3-D one image
    (HWC or CHW), 4-D a batch (NHWC or NCHW).

    The channel axis is the one of size 1-4; when both candidates are (a 3x3 image), it is
    the first, as in torch. Two or four channels mean alpha, composited over black.

    Example:
        >>> array_images(np.zeros((28, 28, 3), np.uint8)).shape
        torch.Size([1, 3, 28, 28])
    """
    t = x if torch.is_tensor(x) else torch.from_numpy(np.asarray(x))
    if t.dtype != torch.uint8:
        raise DataError(f"images must be uint8 (0-255), got {t.dtype}")
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim in (3, 4):
        t = t if t.ndim == 4 else t[None]
        first, last = t.shape[1] <= 4, t.shape[-1] <= 4
        if last and not first:
            t = t.permute(0, 3, 1, 2)
    else:
        raise DataError(f"images must be HW, HWC, CHW, NHWC or NCHW; got shape {tuple(t.shape)}")
    if t.shape[1] not in (1, 2, 3, 4):
        raise DataError(f"cannot tell the channel axis of shape {tuple(x.shape)}")
    if t.shape[1] in (2, 4):  # alpha over black, as for files
        hwc = [to_channels(a, None) for a in t.permute(0, 2, 3, 1).cpu().numpy()]
        t = torch.from_numpy(np.stack(hwc)).permute(0, 3, 1, 2)
    return t.cpu().contiguous()


def _memory_images(item: Any, prep: Preprocess) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 at ``prep``'s size of a PIL image or an array."""
    if isinstance(item, Image.Image):
        a = prepare_image(item, size=prep.size, channels=prep.channels, resize=prep.resize)
        return torch.from_numpy(a.transpose(2, 0, 1).copy())[None]  # (1, C, H, W)
    x = array_images(item)
    labels = torch.zeros(len(x), dtype=torch.int64)
    return conform_images(ImageSet(x, labels, ["?"]), prep).images


def _items(inputs: Any) -> list[tuple[str, Any]]:
    """Flatten the inputs: ``("file", Path)``, ``("error", Prediction)`` or ``("memory",
    PIL image or array)``, in the order given (a folder or glob in place of its files)."""
    single = (str, os.PathLike, Image.Image, np.ndarray)
    items = [inputs] if isinstance(inputs, single) or torch.is_tensor(inputs) else list(inputs)
    out: list[tuple[str, Any]] = []
    seen: set[Path] = set()  # a file named twice (itself and in its folder) is predicted once
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            files, errors = find_images([item])
            out.extend(("file", f) for f in files if f not in seen)
            seen.update(files)
            out.extend(("error", e) for e in errors)
        else:
            out.append(("memory", item))
    return out


def predict(
    predictor: Predictor,
    inputs: Any,
    *,
    top_k: int = 3,
    batch_size: int = 64,
    log: Callable[[str], None] | None = None,
) -> list[Prediction]:
    """Top-k predictions for files, folders, globs, PIL images and uint8 arrays.

    Args:
        predictor: a :class:`~deepstart.ship.bundle.Bundle` or an ``OnnxBundle``.
        inputs: one input or a list of them: a path (file, folder, glob), a PIL image, or a
            uint8 array/tensor (HW, HWC, CHW: one image; NHWC, NCHW: a batch).
        top_k: classes per prediction (at most the number of classes).
        batch_size: images per forward pass.
        log: where mismatch warnings go; default ``warnings.warn`` with
            :class:`InputMismatchWarning`.

    Returns:
        One :class:`Prediction` per image, in input order (a folder's files sorted); an
        unreadable file gives one with ``error`` set instead of raising.

    Example:
        >>> preds = predict(load_bundle("shapes.zip"), ["a.png", np.zeros((32, 32), np.uint8)])
        >>> [(p.source, p.label) for p in preds]
        [('a.png', 'circle'), ('<input 0>', 'square')]
    """
    prep, classes = predictor.preprocess, list(predictor.classes)
    k = max(1, min(int(top_k), len(classes)))
    items = _items(inputs)
    out: list[Prediction] = []
    checked, n_memory = False, 0
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        files = [v for kind, v in chunk if kind == "file"]
        read = iter(_read_files(files, prep))
        ready: list[tuple[str, torch.Tensor | str]] = []  # (source, (C, H, W) uint8 or error)
        for kind, value in chunk:
            if kind == "file":
                ready.append((str(value), next(read)))
            elif kind == "error":
                ready.append((value.source, value.error))
            else:
                for img in _memory_images(value, prep):
                    ready.append((f"<input {n_memory}>", img))
                    n_memory += 1
        good = [img for _, img in ready if not isinstance(img, str)]
        x = torch.stack(good) if good else torch.zeros(0, prep.channels, *prep.size)
        if good and not checked:  # the first chunk (up to CHUNK images) stands for all
            _check_mismatch(predictor.meta, x, log)
            checked = True
        probs = iter(predictor.probabilities(x.to(torch.uint8), batch_size) if good else [])
        for source, img in ready:
            if isinstance(img, str):
                out.append(Prediction(source, error=img))
                continue
            p = next(probs)
            values, idx = p.topk(k)
            top = tuple((classes[i], float(v)) for v, i in zip(values.tolist(), idx.tolist()))
            out.append(Prediction(source, top, p))
    return out


class PredictMixin:
    """Gives a :class:`Predictor` (``Bundle``, ``OnnxBundle``) its ``predict`` method: the
    two differ only in how ``probabilities`` runs the model, so reading inputs is shared."""

    def predict(
        self: Predictor,
        inputs: Any,
        *,
        top_k: int = 3,
        batch_size: int = 64,
        log: Callable[[str], None] | None = None,
    ) -> list[Prediction]:
        """Predict files, PIL images or uint8 arrays; see :func:`deepstart.ship.predict.predict`.

        Example:
            >>> [p.label for p in bundle.predict(["cat.jpg", "dog.png"])]
            ['cat', 'dog']
        """
        return predict(self, inputs, top_k=top_k, batch_size=batch_size, log=log)


def _check_mismatch(
    meta: dict[str, Any], images: torch.Tensor, log: Callable[[str], None] | None
) -> None:
    """Warn when ``images`` (``(N, C, H, W)`` uint8, already at the bundle's size) look
    prepared differently from the training images whose statistics ``meta`` stores."""
    stats = meta.get("input_stats")
    if not stats:
        return
    from deepstart.data.mismatch import check_inputs

    for message in check_inputs(stats, images, what="images to predict"):
        if log is not None:
            log(message)
        else:
            warnings.warn(message, InputMismatchWarning, stacklevel=4)


# --- output -----------------------------------------------------------------------------


def predictions_json(preds: Sequence[Prediction]) -> str:
    """A JSON list: ``{"file", "top": [{"class", "probability"}], "error"}`` per input."""
    return json.dumps([p.to_dict() for p in preds], indent=2)


def predictions_csv(preds: Sequence[Prediction], top_k: int) -> str:
    """CSV with a header: ``file, class_1, probability_1, ..., error``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = ["file"]
    for i in range(1, top_k + 1):
        header += [f"class_{i}", f"probability_{i}"]
    writer.writerow([*header, "error"])
    for p in preds:
        row: list[Any] = [p.source]
        for i in range(top_k):
            c, prob = p.top[i] if i < len(p.top) else ("", "")
            row += [c, f"{prob:.6f}" if prob != "" else ""]
        writer.writerow([*row, p.error or ""])
    return buf.getvalue()


def predictions_table(preds: Sequence[Prediction], top_k: int, title: str = "") -> Any:
    """A rich Table: file, then the top-k classes with probabilities (errors in red)."""
    from rich.table import Table

    table = Table(title=title or None, show_lines=top_k > 3)
    # The file name keeps a readable width however narrow the output (a pipe, a long error,
    # many top-k columns): the class cells wrap instead. Beyond 3 classes they stack in one
    # column, a line each, which fits 80 columns where 5 side by side do not.
    longest = max((len(p.source) for p in preds), default=4)
    table.add_column("file", overflow="fold", min_width=min(max(longest, 4), 28))
    columns = 1 if top_k > 3 else top_k
    for i in range(1, columns + 1):
        head = f"top {top_k}" if top_k > 3 else (f"top {i}" if top_k > 1 else "class")
        table.add_column(head, overflow="fold")
    for p in preds:
        if p.error:
            table.add_row(p.source, f"[red]error: {p.error}[/red]", *[""] * (columns - 1))
        elif top_k > 3:
            table.add_row(p.source, "\n".join(f"{c} {prob:6.1%}" for c, prob in p.top))
        else:
            cells = [f"{c} {prob:6.1%}" for c, prob in p.top]
            table.add_row(p.source, *cells, *[""] * (top_k - len(cells)))
    return table
