"""Predicting new images with a bundle: files, folders, globs, PIL images or arrays -> top-k.

Reading the inputs is :mod:`deepstart.data.inputs`, shared with ``Learner.predict``, so a
bundle and the Learner it came from see the same pixels for the same input:

- a file (PNG, JPEG, BMP, GIF, WebP, TIFF) is decoded by
  :func:`~deepstart.data.decode.decode_image`, exactly as ``load_folder`` decoded the
  training images (EXIF orientation, any colour mode, the resize policy, Pillow's filters);
- a PIL image goes through the same steps (:func:`~deepstart.data.decode.prepare_image`);
- an array or tensor (uint8, or float in [0, 1]) goes through
  :func:`~deepstart.data.dataset.conform_images`, as ``Learner.evaluate`` does for arrays of
  another size or channel count; a layout that cannot be told is refused.

Then the batch is normalised with the training mean/std (inside the model's ``probabilities``)
and, when the bundle stores statistics of its training inputs, compared with them by
:func:`deepstart.data.mismatch.check_inputs`. A file that cannot be read gives a
:class:`Prediction` with an ``error`` and the rest are still predicted. Images larger than
Pillow's ``Image.MAX_IMAGE_PIXELS`` are refused as possible decompression bombs.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from deepstart.data.dataset import Preprocess

# The reading of inputs is shared with Learner.predict (deepstart.data.inputs); these names
# are re-exported so ``from deepstart.ship.predict import read_image`` keeps working.
from deepstart.data.inputs import (
    CHUNK,
    InputMismatchWarning,
    Prediction,
    array_images,
    find_images,
    predict_inputs,
    read_image,
    refuse_bombs,
)

__all__ = [
    "CHUNK",
    "InputMismatchWarning",
    "PredictMixin",
    "Prediction",
    "Predictor",
    "array_images",
    "find_images",
    "predict",
    "predictions_csv",
    "predictions_json",
    "predictions_table",
    "read_image",
    "refuse_bombs",
]


class Predictor(Protocol):
    """What :func:`predict` needs: a :class:`~deepstart.ship.bundle.Bundle` or an
    :class:`~deepstart.ship.onnx.OnnxBundle`."""

    classes: list[str]
    preprocess: Preprocess
    meta: dict[str, Any]

    def probabilities(self, images: torch.Tensor, batch_size: int = ...) -> torch.Tensor: ...


def predict(
    predictor: Predictor,
    inputs: Any,
    *,
    top_k: int = 3,
    batch_size: int = 64,
    log: Callable[[str], None] | None = None,
) -> list[Prediction]:
    """Top-k predictions for files, folders, globs, PIL images and arrays
    (:func:`deepstart.data.inputs.predict_inputs` with the bundle's model).

    Args:
        predictor: a :class:`~deepstart.ship.bundle.Bundle` or an ``OnnxBundle``.
        inputs: one input or a list of them: a path (file, folder, glob), a PIL image, or an
            array/tensor, uint8 or float in [0, 1] (HW, HWC, CHW: one image; NHWC, NCHW: a
            batch).
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
    return predict_inputs(
        lambda x: predictor.probabilities(x, batch_size),
        inputs,
        predictor.preprocess,
        list(predictor.classes),
        top_k=top_k,
        train_stats=predictor.meta.get("input_stats"),
        log=log,
    )


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
        """Predict files, PIL images or arrays; see :func:`deepstart.ship.predict.predict`.

        Example:
            >>> [p.label for p in bundle.predict(["cat.jpg", "dog.png"])]
            ['cat', 'dog']
        """
        return predict(self, inputs, top_k=top_k, batch_size=batch_size, log=log)


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
