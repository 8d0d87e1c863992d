"""Device memory: the largest batch that fits (``--batch-size auto``), and what a fit does
when the memory runs out anyway (:func:`halve_batch`).

The probe runs forward and backward on real training images at doubling batch sizes until
the device runs out of memory, and leaves the model exactly as it found it (BatchNorm
statistics included). On a CPU there is no device memory limit to find (the OS would swap
first), so the probe is skipped and a sensible default is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deepstart.device import OUT_OF_MEMORY, release_cached_memory
from deepstart.train.events import RestartEpoch
from deepstart.train.precompute import fit_loaders

if TYPE_CHECKING:
    from deepstart.train.learner import Learner

CPU_DEFAULT = 128


def find_batch_size(
    learn: Learner,
    *,
    start: int = 16,
    limit: int = 4096,
    margin: float = 0.9,
    probe_cpu: bool = False,
) -> int:
    """Double the batch from ``start`` until out-of-memory (or ``limit``, or the size of
    the training split); return the largest that ran, scaled down by ``margin`` and rounded
    down to a multiple of 8 (memory varies a little from step to step).

    Example:
        >>> learn.batch_size = find_batch_size(learn)
    """
    if learn.device.type == "cpu" and not probe_cpu:
        learn.log(f"batch size auto: no device memory limit on the CPU; using {CPU_DEFAULT}")
        return CPU_DEFAULT
    n = len(learn.data.train)
    snap = learn.snapshot()  # forward in train mode moves BatchNorm statistics
    was_training = learn.model.training
    learn.model.train()
    fits, size = 0, start
    try:
        while size <= min(limit, n):
            try:
                _probe(learn, size)
            except OUT_OF_MEMORY:
                break
            finally:
                learn.model.zero_grad(set_to_none=True)
                release_cached_memory(learn.device)
            fits, size = size, size * 2
    finally:
        learn.restore(snap)
        learn.model.train(was_training)
    if fits == 0:
        raise MemoryError(f"even a batch of {start} does not fit on {learn.device}")
    chosen = fits if fits >= min(limit, n) else max(8, int(fits * margin) // 8 * 8)
    learn.log(f"batch size auto: {fits} fit on {learn.device}; using {chosen}")
    return chosen


def _probe(learn: Learner, size: int) -> None:
    images = learn.data.train.subset(range(size))
    batches = learn.batches(images, train=False)
    batches.batch_size = size
    x, y = next(iter(batches))
    with learn._autocast():
        loss = learn.loss_func(learn.model(x), y)
    loss.backward()


def halve_batch(learn: Learner, error: BaseException) -> None:
    """Out of memory in a training step: halve the batch, keep the per-sample LR, and
    raise RestartEpoch to redo this batch.

    Batch ``i`` of size B holds the same items as batches ``2i`` and ``2i + 1`` of size
    B/2 (the epoch's order does not depend on the batch size), so the epoch goes on from
    exactly the items that failed.
    """
    assert learn.opt is not None
    learn.opt.zero_grad(set_to_none=True)
    learn.pred = learn.loss = None
    release_cached_memory(learn.device)
    old, new = learn.batch_size, learn.batch_size // 2
    learn.batch_size = new
    learn.lr_mult *= new / old  # linear scaling: same LR per sample
    learn.train_dl, learn.valid_dl = fit_loaders(learn)
    learn.restart_at = learn.iter * old // new
    learn.total_iters = learn.n_epochs * len(learn.train_dl)
    learn.train_iter = learn.epoch * len(learn.train_dl) + learn.restart_at
    learn.log(
        f"out of memory at batch size {old} ({type(error).__name__}); retrying with "
        f"{new} and the LR scaled by {new / old:g} to keep the per-sample rate"
    )
    raise RestartEpoch
