"""fp32 against bf16 autocast on this machine's device: training steps per second.

    python bench/precision.py [--steps 30] [--rounds 3]

Runs A B A B ... (fp32, bf16) on the same model and batch, and prints the median of each and
the ratio. This is what decides ``--precision auto`` on a CPU (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from deepstart.data.dataset import ImageSet, make_dataset
from deepstart.models.registry import create_model
from deepstart.train.learner import Learner


def steps_per_second(model_name: str, shape: tuple[int, int, int], precision: str, steps: int):
    c, h, w = shape
    g = torch.Generator().manual_seed(0)
    n = 128 * steps
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    s = ImageSet(images, labels, [str(i) for i in range(10)])
    data = make_dataset("bench", s, None, valid=s.subset(range(128)))
    torch.manual_seed(0)
    model = create_model(model_name, in_channels=c, num_classes=10, input_size=(h, w))
    learn = Learner(data, model, batch_size=128, precision=precision, device="cpu", quiet=True)
    learn.fit(1, 1e-3)  # warm-up (allocator, kernels)
    start = time.perf_counter()
    learn.fit(1, 1e-3)
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    cases = [("mnist_cnn", (1, 28, 28)), ("keras_cifar_cnn", (3, 32, 32))]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 128")
    print("| model | fp32 steps/s | bf16 steps/s | bf16 / fp32 |")
    print("|---|---|---|---|")
    for name, shape in cases:
        runs: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(a.rounds):
            for prec in runs:  # interleaved: A B A B
                runs[prec].append(steps_per_second(name, shape, prec, a.steps))
        f, b = statistics.median(runs["fp32"]), statistics.median(runs["bf16"])
        print(f"| {name} | {f:.2f} | {b:.2f} | {b / f:.2f} |")


if __name__ == "__main__":
    main()
