"""TensorBoard logging as a callback: loss and LR curves, epoch metrics, sample predictions
and weight histograms, written with ``torch.utils.tensorboard``.

Steps: batch curves (``train/*``) use the global batch index ``learn.train_iter``; epoch
curves, images and histograms use the 1-based epoch, as in metrics.jsonl. When the
divergence guard (or a resume) redoes batches or an epoch, their steps are written again;
TensorBoard keeps the newest record of a step (a record at step ``s`` drops the older
records at steps >= ``s`` of its curve), so the curves show the run that counted. (The
legacy reader, ``--load_fast=false``, shows both.)

Example:
    >>> learn.fit_one_cycle(5, 3e-3, callbacks=[TensorBoardLogger("runs/mnist/tensorboard")])
    >>> # then: tensorboard --logdir runs
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from deepstart.data.dataset import to_display
from deepstart.errors import ConfigError, DeepstartError
from deepstart.train.callbacks import Callback

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch.utils.tensorboard import SummaryWriter

    from deepstart.data.dataset import ImageSet


class TensorBoardMissing(DeepstartError, ImportError):
    """The optional ``tensorboard`` package is not installed."""


def summary_writer_class() -> type[SummaryWriter]:
    """``torch.utils.tensorboard.SummaryWriter``, or a :class:`TensorBoardMissing` error
    saying how to install it.

    Example:
        >>> writer = summary_writer_class()("runs/demo")
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TensorBoardMissing(
            "TensorBoard logging needs the tensorboard package: "
            "pip install 'deepstart[tensorboard]'"
        ) from e
    return SummaryWriter


def sample_indices(images: ImageSet, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` item indices spread over the classes (round robin over each class's items in a
    seeded random order), sorted by class then index; fewer if the set is smaller.

    Example:
        >>> data.valid.labels[sample_indices(data.valid, 6)].tolist()  # 3 classes
        [0, 0, 1, 1, 2, 2]
    """
    gen = torch.Generator().manual_seed(seed)
    per_class = []
    for c in range(len(images.classes)):
        idx = torch.nonzero(images.labels == c).flatten()
        per_class.append(idx[torch.randperm(len(idx), generator=gen)].tolist())
    picked: list[int] = []
    for rank in range(max((len(p) for p in per_class), default=0)):
        picked += [p[rank] for p in per_class if rank < len(p)]
    picked = picked[:n]
    picked.sort(key=lambda i: (int(images.labels[i]), i))
    return torch.tensor(picked, dtype=torch.int64)


def predictions_figure(
    images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, classes: list[str]
) -> Figure:
    """A grid of images titled "predicted (probability)" over "true", green when right and
    red when wrong. Drawn on a bare Agg canvas: no pyplot state, no display.

    Args:
        images: ``(N, C, H, W)`` uint8, C = 1 or 3.
        labels: ``(N,)`` true class indices.
        probs: ``(N, K)`` class probabilities.
        classes: class names, ``classes[label]``.

    Example:
        >>> fig = predictions_figure(x, y, learn.predict(x), data.classes)
        >>> fig.savefig("predictions.png")
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(images)
    cols = max(math.ceil(math.sqrt(n)), 1)
    rows = max(math.ceil(n / cols), 1)
    fig = Figure(figsize=(cols * 1.7, rows * 1.9), layout="constrained")  # inches
    FigureCanvasAgg(fig)
    conf, pred = probs.max(dim=1)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(to_display(images[i]), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        p, t = int(pred[i]), int(labels[i])
        ax.set_title(
            f"{classes[p]} ({float(conf[i]):.0%})\ntrue: {classes[t]}",
            fontsize=8,
            color="green" if p == t else "red",
        )
    return fig


class TensorBoardLogger(Callback):
    """Writes a TensorBoard event file under ``log_dir`` while training.

    Written, by tag:

    - ``train/loss``, ``train/lr``: every ``every`` training batches, at step
      ``learn.train_iter`` (the 0-based global batch index; the loss is read from the device
      only on these batches).
    - ``epoch/train_loss``, ``epoch/valid_loss``, ``epoch/valid_bits``, ``epoch/chance_bits``
      (log2 of the class count: the bits of guessing), ``epoch/accuracy``: at step epoch
      (1-based); ``valid_bits`` and ``chance_bits`` also share a chart in Custom Scalars.
    - ``predictions``: a grid of ``images`` validation images (the same ones every epoch,
      picked with ``seed`` and spread over the classes), predicted by the weights that
      validation scores.
    - ``weights/<param name>`` and ``grads/<param name>``: histograms per epoch of every
      parameter and of its gradient on the epoch's last training batch (if ``histograms``).

    The file is flushed after every epoch and closed when fit ends, however it ends.

    Args:
        log_dir: directory for the event files (one run in TensorBoard).
        every: training batches between ``train/*`` points.
        images: validation images in the ``predictions`` grid; 0 for none.
        histograms: write weight and gradient histograms.
        seed: picks the images.
        enabled: write anything at all; a distributed run sets it False on all ranks but 0.

    Raises:
        TensorBoardMissing: (a :class:`DeepstartError`) if ``tensorboard`` is not installed.

    Example:
        >>> tb = TensorBoardLogger("runs/cifar/tensorboard", every=20, images=25)
        >>> learn.fit_one_cycle(10, 3e-3, callbacks=[tb])
    """

    # After the Recorder (10) has completed the epoch's metrics; before the divergence guard
    # (25), early stopping (90) and the time budget (95), which may end the fit in
    # after_batch / after_epoch, so the last batch and epoch are still logged.
    order = 15
    skip_lr_find = True  # the sweep's losses are not training

    def __init__(
        self,
        log_dir: str | Path,
        *,
        every: int = 10,
        images: int = 16,
        histograms: bool = True,
        seed: int = 0,
        enabled: bool = True,
    ) -> None:
        if every < 1:
            raise ConfigError(f"TensorBoard every must be at least 1 batch, got {every}")
        if images < 0:
            raise ConfigError(f"TensorBoard images must be 0 or more, got {images}")
        self._writer_class = summary_writer_class()  # fail now, not at the end of epoch 1
        self.log_dir = Path(log_dir)
        self.every, self.images, self.histograms = int(every), int(images), bool(histograms)
        self.seed, self.enabled = int(seed), bool(enabled)
        self.writer: SummaryWriter | None = None

    # -- events ----------------------------------------------------------------------------
    def before_fit(self) -> None:
        # The one place that decides whether this process writes (rank 0 only, under DDP):
        # every other event does nothing while self.writer is None.
        if not self.enabled:
            return
        self.writer = self._writer_class(log_dir=str(self.log_dir))
        self.writer.add_custom_scalars(
            {"epoch": {"bits": ["Multiline", ["epoch/valid_bits", "epoch/chance_bits"]]}}
        )
        valid = self.learn.data.valid
        self._sample = valid.subset(sample_indices(valid, self.images, self.seed))
        self._step = self.learn.train_iter
        self._probs: torch.Tensor | None = None
        self._grads: dict[str, torch.Tensor] = {}

    def before_epoch(self) -> None:
        self._grads = {}

    def before_batch(self) -> None:
        # train_iter counts the steps taken: here it is this batch's 0-based global index,
        # the index of its loss in learn.recorder.batch_losses.
        self._step = self.learn.train_iter

    def after_step(self) -> None:
        learn = self.learn
        if self.writer is None or not self.histograms or learn.iter != learn.n_iter - 1:
            return
        # Gradients are freed after this event: keep the last batch's (one copy per epoch).
        self._grads = {
            name: p.grad.detach().float().cpu()
            for name, p in learn.model.named_parameters()
            if p.grad is not None
        }

    def after_batch(self) -> None:
        learn = self.learn
        if self.writer is None or not learn.training or learn.loss is None:
            return
        if self._step % self.every:
            return
        loss = float(learn.loss.detach().float())  # a host sync, on logged batches only
        self.writer.add_scalar("train/loss", loss, self._step)
        self.writer.add_scalar("train/lr", float(learn.opt.param_groups[-1]["lr"]), self._step)

    def before_validate(self) -> None:
        # Predict here, with the weights that validation scores (EMA swaps its average in
        # at before_validate, order 5, and back at after_validate).
        if self.writer is not None and len(self._sample):
            self._probs, _ = self.learn.get_preds(self._sample)  # (n, K) on the CPU

    def after_epoch(self) -> None:
        if self.writer is None:
            return
        learn, writer = self.learn, self.writer
        step, m, k = learn.epoch + 1, learn.metrics, learn.num_classes
        for name in ("train_loss", "valid_loss", "valid_bits", "accuracy"):
            if name in m:
                writer.add_scalar(f"epoch/{name}", float(m[name]), step)
        writer.add_scalar("epoch/chance_bits", math.log2(k) if k > 1 else 0.0, step)
        if self._probs is not None:
            s = self._sample
            fig = predictions_figure(s.images, s.labels, self._probs, s.classes)
            writer.add_figure("predictions", fig, step)
        if self.histograms:
            for name, p in learn.model.named_parameters():
                _histogram(writer, f"weights/{name}", p.detach(), step)
            for name, g in self._grads.items():
                _histogram(writer, f"grads/{name}", g, step)
        writer.flush()

    def after_cancel_fit(self) -> None:
        self.close()

    def after_fit(self) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the event file (safe to call twice)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self._probs, self._grads = None, {}


def _histogram(writer: Any, tag: str, values: torch.Tensor, step: int) -> None:
    # Histograms need finite values; a diverged tensor is shown by what is left of it.
    values = values.float().cpu().flatten()
    values = values[torch.isfinite(values)]
    if values.numel():
        writer.add_histogram(tag, values.numpy(), step)
