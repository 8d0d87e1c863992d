"""The ceiling: how many FLOP/s this machine's torch can sustain, and what a model costs.

    python bench/ceiling.py [--threads 2] [--seconds 3]

Sustained matrix-multiply throughput (``torch.mm`` of large square matrices, fp32 and bf16,
with ``--threads`` threads) is the most a conv net's training can reach on this machine: its
convolutions and linear layers are matrix multiplies in the end, the rest (BatchNorm,
activations, pooling, the optimizer) only adds time. Training FLOPs per image are counted
from the model's conv and linear multiply-adds (:func:`deepstart.models.summary.summarize`):
2 FLOPs per multiply-add for the forward pass, 3 times that for a training step (the backward
pass computes gradients for both the inputs and the weights: about twice the forward).

bench/peers.py imports these to say what fraction of the ceiling each framework reaches.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from deepstart.models.registry import create_model
from deepstart.models.summary import summarize


def matmul_gflops(
    dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 3.0, threads: int = 2
) -> float:
    """Sustained GFLOP/s of ``n x n`` matrix multiplies in ``dtype`` with ``threads`` threads
    (2 n^3 FLOPs each; the best of the 1-second windows after a warm-up, so a moment of
    contention from other processes does not count against the machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(dtype)
        b = torch.randn(n, n, generator=g).to(dtype)
        out = torch.empty(n, n, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up: packing buffers, kernels
        best, end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            start, reps = time.perf_counter(), 0
            while time.perf_counter() - start < 1.0:
                torch.mm(a, b, out=out)
                reps += 1
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
        return best
    finally:
        torch.set_num_threads(old)


def train_flops_per_image(model: str, shape: tuple[int, int, int], **options) -> int:
    """Training FLOPs of one image: 3 x (2 x conv/linear multiply-adds of the forward pass)."""
    c, h, w = shape
    net = create_model(model, in_channels=c, num_classes=10, input_size=(h, w), **options)
    return 3 * 2 * summarize(net, shape).macs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--n", type=int, default=2048, help="matrix side")
    a = p.parse_args()
    print(f"torch {torch.__version__}, load {os.getloadavg()[0]:.2f}")
    for dtype in (torch.float32, torch.bfloat16):
        gf = matmul_gflops(dtype, a.n, a.seconds, a.threads)
        print(f"torch.mm {a.n}x{a.n} {dtype}: {gf:,.0f} GFLOP/s with {a.threads} threads")
    models = [
        ("mnist_cnn", (1, 28, 28)),
        ("keras_cifar_cnn", (3, 32, 32)),
        ("fast_mnist", (1, 28, 28)),
        ("fast_cifar", (3, 32, 32)),
    ]
    for name, shape in models:
        f = train_flops_per_image(name, shape)
        print(f"{name} {shape}: {f / 1e6:,.1f} MFLOP per training image")


if __name__ == "__main__":
    main()
