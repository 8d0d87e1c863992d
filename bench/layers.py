"""deepstart's CPU layers against PyTorch's own: dropout forward + backward, interleaved.

    python bench/layers.py                 # the mnist_cnn pool output, fp32 and bf16
    python bench/layers.py --rounds 9 --shape 128,64,12,12

For each dtype it times ``nn.Dropout`` and ``deepstart.models.layers.Dropout`` on the same
channels-last activation (the pooled map of ``mnist_cnn`` at batch 128 by default), A B A B,
and prints the medians in ms and their ratio. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from deepstart.models.layers import Dropout


def time_ms(layer: nn.Module, x: torch.Tensor, steps: int) -> float:
    """Mean ms of forward + backward of ``layer`` on ``x`` (after one warm-up)."""
    grad = torch.ones_like(x)

    def step() -> None:
        x.grad = None
        layer(x).backward(grad)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--shape", default="128,64,12,12", help="N,C,H,W of the activation")
    p.add_argument("--p", type=float, default=0.25, help="drop probability")
    a = p.parse_args()
    n, c, h, w = (int(v) for v in a.shape.split(","))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load "
        f"{os.getloadavg()[0]:.2f}, activation {n}x{c}x{h}x{w} channels-last, p={a.p}"
    )
    print("| dtype | nn.Dropout ms | deepstart Dropout ms | speed-up |")
    print("|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(n, h, w, c).permute(0, 3, 1, 2).to(dtype).requires_grad_()
        layers = {"torch": nn.Dropout(a.p).train(), "deepstart": Dropout(a.p).train()}
        runs: dict[str, list[float]] = {k: [] for k in layers}
        for _ in range(a.rounds):
            for name, layer in layers.items():  # interleaved: A B A B
                runs[name].append(time_ms(layer, x, a.steps))
        t, d = (statistics.median(runs[k]) for k in ("torch", "deepstart"))
        print(f"| {str(dtype).removeprefix('torch.')} | {t:.2f} | {d:.2f} | {t / d:.1f}x |")


if __name__ == "__main__":
    main()
