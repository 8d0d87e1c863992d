"""What a classifier is asked to predict: files, folders, globs, PIL images, arrays and
tensors, brought to a :class:`~deepstart.data.dataset.Preprocess` and turned into
:class:`Prediction` objects.

One path for every predictor: a bundle (:mod:`deepstart.ship.predict`), an ONNX bundle and a
Learner (``learn.predict``) all call :func:`predict_inputs` with their own ``probabilities``
function, so the same input gives the same pixels, and the same answer, everywhere.

- a file (PNG, JPEG, BMP, GIF, WebP, TIFF) is decoded by
  :func:`~deepstart.data.decode.decode_image`, exactly as ``load_folder`` decoded the
  training images (EXIF orientation, any colour mode, the resize policy, Pillow's filters);
- a PIL image goes through the same steps (:func:`~deepstart.data.decode.prepare_image`);
- an array or tensor (uint8, or float in [0, 1]) is laid out by :func:`array_images` and
  brought to size by :func:`~deepstart.data.dataset.conform_images`. A 2-D array is one grey
  image, a 3-D one one image (HWC or CHW), a 4-D one a batch (NHWC or NCHW); a layout that
  cannot be told (``(3, 32, 3)``) is refused, never guessed.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deepstart.data.dataset import ImageSet, Preprocess, conform_images
from deepstart.data.decode import decode_image, prepare_image, to_channels
from deepstart.data.folder import IMAGE_EXTENSIONS
from deepstart.errors import DataError

CHUNK = 1024  # images decoded and held at a time: bounds memory on a folder of 100k photos
_THREADS_FROM = 32  # fewer files than this decode faster in one thread

# (N, C, H, W) uint8 at the predictor's Preprocess -> (N, K) float32 probabilities on the CPU
Probabilities = Callable[[torch.Tensor], torch.Tensor]


class InputMismatchWarning(UserWarning):
    """New images look prepared differently from the model's training images."""


@dataclass(frozen=True, repr=False)
class Prediction:
    """The prediction for one input.

    Attributes:
        source: the file path, or ``<input i>`` for an image or array passed in memory.
        top: the ``top_k`` most likely ``(class, probability)``, best first.
        probs: ``(K,)`` float32 probabilities over the classes (None after an error).
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

    @property
    def probability(self) -> float | None:
        """The most likely class's probability (None after an error)."""
        return self.top[0][1] if self.top else None

    def __repr__(self) -> str:
        """``Prediction('7' 98.9%; then '9' 1.0%, '3' 0.1%; <input 0>)``: never the (K,)
        tensor, which for 1000 ImageNet classes would fill a notebook cell."""
        if self.error is not None:
            return f"Prediction(error {self.error!r}; {self.source})"
        (best, p), rest = self.top[0], self.top[1:]
        then = ", ".join(f"{c!r} {q:.1%}" for c, q in rest)
        return (
            f"Prediction({best!r} {p:.1%}"
            + (f"; then {then}" if then else "")
            + (f"; {self.source})")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.source,
            "top": [{"class": c, "probability": round(p, 6)} for c, p in self.top],
            "error": self.error,
        }


# --- files ------------------------------------------------------------------------------


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
        elif _is_glob(text):
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


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


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


# --- pixels in memory -------------------------------------------------------------------


def as_uint8(t: torch.Tensor) -> torch.Tensor:
    """Pixels as uint8: uint8 as it is, whole numbers in 0-255, floats in [0, 1] times 255.

    Anything else is refused rather than clipped: float pixels in [0, 255] (not divided)
    or standardised ones (negative) would otherwise become a white or black picture."""
    if t.dtype == torch.uint8:
        return t
    if t.dtype == torch.bool or t.is_complex():
        raise DataError(f"images must be uint8 (0-255) or float in [0, 1], got {t.dtype}")
    lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 0.0)
    if t.is_floating_point():
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
            raise DataError(
                f"float images must be in [0, 1], got {t.dtype} in [{lo:g}, {hi:g}]; "
                "pass uint8 0-255 pixels, or divide by 255"
            )
        return (t.float() * 255.0).round().to(torch.uint8)
    if not (lo >= 0 and hi <= 255):
        raise DataError(f"images must be uint8 (0-255), got {t.dtype} in [{lo:g}, {hi:g}]")
    return t.to(torch.uint8)


def array_images(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An image or batch (uint8, or float in [0, 1]) as ``(N, C, H, W)`` uint8: 2-D is one
    grey image (HW), 3-D one image (HWC or CHW), 4-D a batch (NHWC or NCHW).

    The channel axis is the one of size 1-4. When both ends could be it (``(3, 32, 3)``), the
    layout cannot be told and the array is refused: pass a PIL image. Two or four channels
    mean alpha, composited over black.

    Example:
        >>> array_images(np.zeros((28, 28, 3), np.uint8)).shape
        torch.Size([1, 3, 28, 28])
    """
    t = x if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(x))
    shape = tuple(t.shape)
    if t.ndim not in (2, 3, 4):
        raise DataError(f"images must be HW, HWC, CHW, NHWC or NCHW; got shape {shape}")
    t = as_uint8(t.detach().cpu())
    if t.ndim == 2:
        t = t[None, None]
    else:
        batch = t.ndim == 4
        t = t if batch else t[None]
        first, last = t.shape[1] <= 4, t.shape[-1] <= 4
        if first and last:
            fix = "a list of PIL images" if batch else "a PIL image"
            raise DataError(
                f"cannot tell whether shape {shape} is channels-first or channels-last; pass "
                f"{fix} (PIL.Image.fromarray of the height x width x channels pixels)"
            )
        if not first and not last:
            raise DataError(
                f"cannot tell the channel axis of shape {shape}: an image has 1-4 channels; "
                "a batch of grey images (N, H, W) is x[:, None] (N, 1, H, W)"
            )
        if last:
            t = t.permute(0, 3, 1, 2)
    if t.shape[1] in (2, 4):  # alpha over black, as for files
        hwc = [to_channels(a, None) for a in t.permute(0, 2, 3, 1).numpy()]
        t = torch.from_numpy(np.stack(hwc)).permute(0, 3, 1, 2)
    return t.contiguous()


def memory_images(item: Any, prep: Preprocess) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 at ``prep``'s size and channels of a PIL image, an ImageSet
    or an array/tensor (:func:`array_images`)."""
    if isinstance(item, Image.Image):
        a = prepare_image(item, size=prep.size, channels=prep.channels, resize=prep.resize)
        return torch.from_numpy(a.transpose(2, 0, 1).copy())[None]  # (1, C, H, W)
    x = item.images if isinstance(item, ImageSet) else array_images(item)
    labels = torch.zeros(len(x), dtype=torch.int64)
    return conform_images(ImageSet(x, labels, ["?"]), prep).images


def is_single(inputs: Any) -> bool:
    """Whether ``inputs`` is one image (a file path, a PIL image, a 2-D or 3-D array or
    tensor) rather than several (a list, a folder, a glob, a 4-D batch, an ImageSet)."""
    if isinstance(inputs, Image.Image):
        return True
    if isinstance(inputs, np.ndarray) or torch.is_tensor(inputs):
        return inputs.ndim <= 3
    if isinstance(inputs, (str, os.PathLike)):
        return not Path(inputs).expanduser().is_dir() and not _is_glob(str(inputs))
    return False


def _items(inputs: Any) -> list[tuple[str, Any]]:
    """Flatten the inputs: ``("file", Path)``, ``("error", Prediction)`` or ``("memory",
    PIL image, ImageSet or array)``, in the order given (a folder or glob in place of its
    files)."""
    single = (str, os.PathLike, Image.Image, np.ndarray, ImageSet)
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


# --- predicting -------------------------------------------------------------------------


def predict_inputs(
    probabilities: Probabilities,
    inputs: Any,
    prep: Preprocess,
    classes: list[str],
    *,
    top_k: int = 3,
    train_stats: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Prediction]:
    """Top-k predictions for files, folders, globs, PIL images, arrays and tensors.

    Args:
        probabilities: ``(N, C, H, W)`` uint8 at ``prep``'s size -> ``(N, K)`` probabilities.
        inputs: one input or a list of them (see the module docstring).
        prep: the model's Preprocess; classes: its class names.
        top_k: classes per prediction (at most the number of classes).
        train_stats: :func:`deepstart.data.mismatch.input_stats` of the training images; the
            first chunk of inputs is compared with them (None: no check).
        log: where mismatch warnings go; default ``warnings.warn`` with
            :class:`InputMismatchWarning`.

    Returns:
        One :class:`Prediction` per image, in input order (a folder's files sorted); an
        unreadable file gives one with ``error`` set instead of raising.
    """
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
                for img in memory_images(value, prep):
                    ready.append((f"<input {n_memory}>", img))
                    n_memory += 1
        good = [img for _, img in ready if not isinstance(img, str)]
        x = torch.stack(good) if good else torch.zeros(0, prep.channels, *prep.size)
        if good and not checked:  # the first chunk (up to CHUNK images) stands for all
            _check_mismatch(train_stats, x, log)
            checked = True
        probs = iter(probabilities(x.to(torch.uint8)) if good else [])
        for source, img in ready:
            if isinstance(img, str):
                out.append(Prediction(source, error=img))
                continue
            p = next(probs)
            values, idx = p.topk(k)
            top = tuple((classes[i], float(v)) for v, i in zip(values.tolist(), idx.tolist()))
            out.append(Prediction(source, top, p))
    return out


def _check_mismatch(
    stats: dict | None, images: torch.Tensor, log: Callable[[str], None] | None
) -> None:
    """Warn when ``images`` (``(N, C, H, W)`` uint8, already at the model's size) look
    prepared differently from the training images ``stats`` describe."""
    if not stats:
        return
    from deepstart.data.mismatch import check_inputs

    for message in check_inputs(stats, images, what="images to predict"):
        if log is not None:
            log(message)
        else:
            warnings.warn(message, InputMismatchWarning, stacklevel=5)
