"""What the notebook progress display costs a fit, per batch (issue 21: under 1%).

    python bench/progress_overhead.py                # mnist_cnn, batches of 128 28x28 images
    python bench/progress_overhead.py --rounds 7 --batches 60

Two measures, on mnist_cnn with MNIST-sized batches (random 28x28 grey images: the work per
batch does not depend on the pixels):

1. **The display's own work**: every Progress event of a fit in notebook mode is timed
   (perf_counter around each call), its HTML rendered as in a kernel; outside a kernel the
   display is a fake that keeps the bundles (IPython's display would then only send them
   over ZMQ). Per batch: that total / batches. This is the figure that must stay under 1%
   of a batch.
2. **End to end**: fits without progress (``quiet=True``) and with the notebook display,
   interleaved A B A B so that a change of machine load hits both; medians per batch. On a
   shared machine this difference is mostly noise; it is printed as a check on (1).

Prints the load average beside the figures: the CPU is shared with other jobs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch

from deepstart import create_model
from deepstart.data.dataset import ImageSet, make_dataset
from deepstart.train.learner import Learner
from deepstart.train.notebook import in_notebook, ipython_display
from deepstart.train.progress import Progress


class Handle:
    def __init__(self, bundle: dict) -> None:
        self.last = bundle

    def update(self, bundle: dict) -> None:
        self.last = bundle


class FakeDisplay:
    """Keeps the last bundle of each output, as a kernel's display would send it."""

    def __init__(self) -> None:
        self.handles: list[Handle] = []

    def __call__(self, bundle: dict) -> Handle:
        self.handles.append(Handle(bundle))
        return self.handles[-1]


class TimedProgress(Progress):
    """The notebook Progress, with the time spent in each of its events added up."""

    def __init__(self, **kw: Any) -> None:
        super().__init__("notebook", **kw)
        self.spent = 0.0

    def _timed(self, name: str) -> None:
        t = time.perf_counter()
        getattr(super(), name)()
        self.spent += time.perf_counter() - t

    def before_fit(self) -> None:
        self._timed("before_fit")

    def before_train(self) -> None:
        self._timed("before_train")

    def after_batch(self) -> None:
        self._timed("after_batch")

    def before_validate(self) -> None:
        self._timed("before_validate")

    def after_validate(self) -> None:
        self._timed("after_validate")

    def after_epoch(self) -> None:
        self._timed("after_epoch")

    def after_fit(self) -> None:
        self._timed("after_fit")


def mnist_sized(n: int, seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    train = ImageSet(images, labels, [str(k) for k in range(10)])
    small = ImageSet(images[:256], labels[:256], train.classes)
    return make_dataset("mnist-sized", train, small, valid_pct=0.0, valid=small)


def fit_seconds(data: Any, batch_size: int, progress: TimedProgress | None) -> float:
    """Seconds per training batch of one epoch (the epoch's training part only)."""
    torch.manual_seed(0)
    model = create_model("mnist_cnn", in_channels=1, num_classes=10, input_size=(28, 28))
    cbs = [progress] if progress is not None else []
    learn = Learner(data, model, batch_size=batch_size, callbacks=cbs, quiet=True, guard=False)
    learn.fit(1)
    return learn.recorder.history[-1]["seconds"] / len(learn.train_dl)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="A B pairs")
    ap.add_argument("--batches", type=int, default=40, help="training batches per fit")
    ap.add_argument("--batch-size", type=int, default=128)
    a = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = mnist_sized(a.batches * a.batch_size)
    display = ipython_display() if in_notebook() else FakeDisplay()
    fit_seconds(data, a.batch_size, None)  # warm-up: allocations, kernel choice
    plain, shown, own = [], [], []
    for _ in range(a.rounds):
        plain.append(fit_seconds(data, a.batch_size, None))
        progress = TimedProgress(display=display)
        shown.append(fit_seconds(data, a.batch_size, progress))
        own.append(progress.spent / a.batches)
    a_s, b_s, own_s = (statistics.median(v) for v in (plain, shown, own))
    print(f"mnist_cnn, batches of {a.batch_size} 28x28 images, {a.rounds} rounds A B")
    print(f"  batch without progress:  {a_s * 1e3:8.2f} ms (median)")
    print(f"  batch with the display:  {b_s * 1e3:8.2f} ms (median)")
    print(f"  the display's own work:  {own_s * 1e6:8.1f} us per batch = {own_s / a_s:.3%}")
    print(f"  end to end difference:   {(b_s - a_s) / a_s:+.2%} (noise-limited)")
    print(
        f"  display: {'IPython kernel' if in_notebook() else 'fake (no kernel)'}; "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
