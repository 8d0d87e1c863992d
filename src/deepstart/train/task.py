"""Tasks: what differs between the kinds of problem the one training loop solves.

The Learner's loop (forward, loss, backward, step, validate) is the same whether a model
classifies images or fits numbers. What differs is asked of the learner's :class:`Task`:
the default loss, how a split becomes batches, what one pass over a split measures, what
``evaluate`` and ``predict`` return, the loss of knowing nothing, the columns the progress
lines and the Recorder show, and whether reduced precision is a fair default.

The data names its task (``data.task``: a Dataset of images has none and is
classification, a TensorData says "regression"; data never imports train), and
:func:`task_for` turns the name into a Task. ``Learner(..., task=...)`` takes any Task, a
new kind included, without a change to the Learner.

Example:
    >>> learn = Learner(function_data("sin"), create_model("fit_mlp", x_range=(-6.3, 6.3)))
    >>> learn.task.name, learn.task.valid_metrics
    ('regression', ('max_error', 'rms_error'))
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from deepstart.data.dataset import Batches, ImageSet
from deepstart.data.tensors import TensorSet
from deepstart.device import resolve_precision
from deepstart.errors import ConfigError
from deepstart.train import evaluation, regression
from deepstart.train.evaluation import resolve_split, score
from deepstart.train.progress import Column

if TYPE_CHECKING:
    from deepstart.train.learner import Learner

# The pixels of an evaluation batch on a CPU: 32 images at 224 px (see eval_batch_size).
EVAL_CPU_PIXELS = 32 * 224 * 224


def significant(value: float, digits: int = 6) -> float:
    """``value`` rounded to ``digits`` significant digits (NaN and inf stay as they are)."""
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


class Task:
    """What the Learner and its callbacks ask of a kind of problem.

    A new task subclasses this and implements ``default_loss``, ``batches``, ``score``,
    ``predict`` and ``baseline_loss``; the rest have defaults that fit most tasks. The
    methods take the Learner (model, device, data, batch size) and keep no state, so one
    Task object can serve many learners.

    Attributes:
        name: the task's name, as data, configs and messages spell it.
        valid_metrics: keys of a :meth:`score` result that join ``valid_loss`` in the
            learner's ``metrics`` after each validation (and in the Recorder's rows).
        loss_format: number format of the loss on the live progress bar.
        autocast_by_default: whether precision "auto" may pick bf16/fp16 autocast (bf16
            keeps about 3 digits: not enough for a fit judged on errors of 1e-3).
    """

    name: str = "task"
    valid_metrics: tuple[str, ...] = ()
    loss_format: str = ".3e"
    autocast_by_default: bool = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # -- training --------------------------------------------------------------------------
    def default_loss(self) -> nn.Module:
        """The loss a Learner trains with when none is given."""
        raise NotImplementedError

    def amp_dtype(self, precision: str, device: torch.device) -> torch.dtype | None:
        """The autocast dtype for ``precision`` on ``device`` (None: fp32); "auto" stays
        fp32 unless ``autocast_by_default``, a named precision always wins."""
        if precision == "auto" and not self.autocast_by_default:
            return None
        return resolve_precision(precision, device)

    def batches(
        self, learn: Learner, split: Any, *, train: bool = False, shard: bool = False
    ) -> Any:
        """Batches of ``split`` on the learner's device, with ``__len__``, ``batch_size``
        and ``set_epoch(epoch, start)``; shuffled per epoch when ``train``. ``shard``: this
        rank's part of every global batch (distributed fits)."""
        raise NotImplementedError

    def score(self, learn: Learner, dl: Any) -> dict[str, Any]:
        """One pass over ``dl`` in eval mode: ``loss`` (mean over items), each key of
        ``valid_metrics``, and the per-item ``pred`` and ``target`` (CPU tensors)."""
        raise NotImplementedError

    # -- what the callbacks show -----------------------------------------------------------
    def columns(self) -> tuple[Column, ...]:
        """The progress columns between epoch and lr."""
        keys = ("train_loss", "valid_loss", *self.valid_metrics)
        return tuple((key, max(10, len(key)), ".3e") for key in keys)

    def row(self, metrics: dict[str, Any], train_loss: float) -> dict[str, float]:
        """The Recorder's scores of one epoch from the validation ``metrics``: train_loss,
        valid_loss and each of ``valid_metrics``, to 6 significant digits (a fit's loss can
        be 1e-8, so rounding to decimal places would lose it)."""
        keys = ("valid_loss", *self.valid_metrics)
        return {"train_loss": significant(train_loss), **{k: significant(metrics[k]) for k in keys}}

    def legend(self, learn: Learner) -> str:
        """What the progress columns mean, printed above them ("" prints nothing)."""
        return ""

    # -- using the model -------------------------------------------------------------------
    def evaluate(self, learn: Learner, split: Any, *, probs: bool = False) -> dict[str, Any]:
        """split, n, loss and each of ``valid_metrics`` on ``split`` (a name or a set);
        ``probs`` is for tasks that have probabilities to add (classification)."""
        items = resolve_split(learn.data, split)
        out = score(learn, self.batches(learn, items))
        return {
            "split": split if isinstance(split, str) else "custom",
            "n": len(items),
            "loss": out["loss"],
            **{k: out[k] for k in self.valid_metrics},
        }

    def predict(self, learn: Learner, x: Any, **options: Any) -> Any:
        """The model's answer for raw inputs ``x`` (``Learner.predict``); ``options`` are the
        task's own (classification's ``top_k``)."""
        raise NotImplementedError

    def get_preds(self, learn: Learner, x: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(outputs, targets)`` on the CPU of a split or set of items (``Learner.get_preds``);
        ``(outputs, None)`` for raw inputs."""
        raise NotImplementedError

    def baseline_loss(self, learn: Learner) -> float:
        """The loss of knowing nothing (the divergence guard's yardstick)."""
        raise NotImplementedError


def eval_batch_size(learn: Learner, split: ImageSet) -> int:
    """Twice the training batch (no gradients to keep), but on a CPU at most
    ``EVAL_CPU_PIXELS`` pixels a batch: bigger batches of big images spill the caches.
    EfficientNet-Lite0 at 224 px computed 65 img/s in batches of 128, 85 in 64 and 120
    in 32 (Xeon, 2 threads, bf16); 28 px digits keep their batches of 512."""
    size = 2 * learn.batch_size
    if learn.device.type == "cpu" and len(split):
        h, w = split.images.shape[-2:]
        size = min(size, max(learn.batch_size // 2, EVAL_CPU_PIXELS // (h * w), 1))
    return size


class Classification(Task):
    """Images to one of K classes: cross-entropy in nats, accuracy, per-class scores."""

    name = "classification"
    valid_metrics = ("accuracy",)
    loss_format = ".4f"

    def default_loss(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def batches(
        self, learn: Learner, split: ImageSet, *, train: bool = False, shard: bool = False
    ) -> Batches:
        """Images normalised by the learner's preprocess, augmented when ``train``."""
        dist = learn.dist
        rank, world = (dist.rank, dist.world) if shard and dist else (0, 1)
        bs = learn.batch_size
        return Batches(
            split,
            bs if train else eval_batch_size(learn, split),
            device=learn.device,
            mean=learn.preprocess.mean,
            std=learn.preprocess.std,
            shuffle=train,
            # A last batch of 1 breaks BatchNorm and adds a noisy step: drop the remainder.
            drop_last=train and len(split) > bs * world,
            seed=learn.seed,
            augment=learn._augment_fn if train else None,
            channels_last=learn.channels_last,
            rank=rank,
            world=world,
        )

    def score(self, learn: Learner, dl: Any) -> dict[str, Any]:
        return evaluation.score_logits(learn, dl)

    def columns(self) -> tuple[Column, ...]:
        return (
            ("train_loss", 10, ".4f"),
            ("valid_loss", 10, ".4f"),
            ("valid_bits", 10, ".3f"),
            ("accuracy", 9, ".4f"),
        )

    def row(self, metrics: dict[str, Any], train_loss: float) -> dict[str, float]:
        return {
            "train_loss": round(train_loss, 6),
            "valid_loss": round(metrics["valid_loss"], 6),
            "valid_bits": round(metrics["valid_loss"] / math.log(2), 6),
            "accuracy": round(metrics["accuracy"], 6),
        }

    def legend(self, learn: Learner) -> str:
        k = learn.num_classes
        chance = math.log2(k) if k > 1 else 0.0
        return (
            f"loss in nats; valid_bits = nats / ln 2; chance level for {k} classes = "
            f"log2({k}) = {chance:.3f} bits"
        )

    def evaluate(
        self, learn: Learner, split: str | ImageSet, *, probs: bool = False
    ) -> dict[str, Any]:
        return evaluation.evaluate_images(learn, split, probs=probs)

    def predict(self, learn: Learner, x: Any, *, top_k: int = 3) -> Any:
        """One :class:`~deepstart.data.inputs.Prediction` for one image, a list for several."""
        return evaluation.predict_images(learn, x, top_k=top_k)

    def get_preds(self, learn: Learner, x: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Probabilities ``(N, K)`` and labels ``(N,)`` (None for unlabelled images)."""
        return evaluation.image_preds(learn, x)

    def baseline_loss(self, learn: Learner) -> float:
        """ln K nats for K classes: a uniform guess."""
        return math.log(max(learn.num_classes, 2))


class Regression(Task):
    """Float points to float outputs (:mod:`deepstart.train.regression`): mean squared
    error by default, scored by the loss and the largest and RMS error ``|f(x) - y|``."""

    name = "regression"
    valid_metrics = ("max_error", "rms_error")
    autocast_by_default = False

    def default_loss(self) -> nn.Module:
        return nn.MSELoss()

    def batches(
        self, learn: Learner, split: TensorSet, *, train: bool = False, shard: bool = False
    ) -> Any:
        return regression.value_batches(learn, split, train=train, shard=shard)

    def score(self, learn: Learner, dl: Any) -> dict[str, Any]:
        return regression.score_values(learn, dl)

    def legend(self, learn: Learner) -> str:
        return (
            f"loss = {regression.describe_loss(learn.loss_func)}; max_error, rms_error = "
            f"largest and root-mean-square |f(x) - y| on the {len(learn.data.valid)} "
            f"validation points"
        )

    def evaluate(
        self, learn: Learner, split: str | TensorSet, *, probs: bool = False
    ) -> dict[str, Any]:
        return regression.evaluate_values(learn, split)

    def predict(self, learn: Learner, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The outputs ``(N, E)`` for x shaped ``(N,)`` or ``(N, D)``."""
        return regression.predict_values(learn, x)

    def get_preds(self, learn: Learner, x: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Outputs ``(N, E)`` and targets of a split or TensorSet; ``(outputs, None)`` of x."""
        if isinstance(x, (str, TensorSet)):
            out = score(learn, self.batches(learn, resolve_split(learn.data, x)))
            return out["pred"], out["target"]
        return regression.predict_values(learn, x), None

    def baseline_loss(self, learn: Learner) -> float:
        """The valid loss of always predicting the mean training y."""
        return regression.baseline_loss(learn)


# The tasks data can name (``data.task``).
TASKS: dict[str, type[Task]] = {"classification": Classification, "regression": Regression}


def task_for(data: Any, task: Task | str | None = None) -> Task:
    """The Task a Learner on ``data`` uses: ``task`` when given (a Task, or the name of one
    in ``TASKS``), else the one ``data.task`` names (classification when it names none).

    Example:
        >>> task_for(load_dataset("shapes")).name
        'classification'
    """
    chosen = task if task is not None else getattr(data, "task", "classification")
    if isinstance(chosen, Task):
        return chosen
    if chosen not in TASKS:
        raise ConfigError(f"unknown task {chosen!r}; use {', '.join(TASKS)} or a Task object")
    return TASKS[chosen]()
