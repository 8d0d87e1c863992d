"""``--batch-size auto``: the largest batch that fits in the accelerator's memory.

The probe runs forward and backward on real training images at doubling batch sizes until
the device runs out of memory, and leaves the model exactly as it found it (BatchNorm
statistics included). On a CPU there is no device memory limit to find (the OS would swap
first), so the probe is skipped and a sensible default is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deepstart.device import OUT_OF_MEMORY, release_cached_memory

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
