"""What pays on this machine: training throughput of model / precision / layout / batch variants.

    python bench/ablations.py                 # every group
    python bench/ablations.py precision       # groups whose name contains "precision"
    python bench/ablations.py --rounds 5 --images 4096

Each variant trains the same number of random uint8 images through the ``Learner`` (the
deepstart path: uint8 on the device, per-batch normalisation, autocast); variants of a group
run interleaved A B C A B C ..., and the table gives the median images/s, the ratio to the
group's first row and the model's multiply-adds per image. Accuracy effects of these knobs
(widths, activations, whitening) are in bench/recipes.py's runs and docs/speed.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from deepstart.data.dataset import ImageSet, make_dataset
from deepstart.models import layers
from deepstart.models.registry import create_model
from deepstart.models.summary import summarize
from deepstart.train.learner import Learner


@dataclass(frozen=True)
class Variant:
    label: str
    model: str
    shape: tuple[int, int, int]
    precision: str = "bf16"
    batch: int = 256
    options: dict[str, Any] = field(default_factory=dict)
    learner: dict[str, Any] = field(default_factory=dict)  # Learner options (channels_last)
    torch_layers: bool = False  # swap deepstart's Dropout/Flatten for torch's own
    fused: bool = True  # False: the optimizer as PyTorch builds it by default on the CPU


def torch_layers(model: torch.nn.Module) -> torch.nn.Module:
    """The model with PyTorch's nn.Dropout and nn.Flatten in place of deepstart's (the
    baseline for models/layers.py)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, layers.Dropout):
                setattr(parent, name, torch.nn.Dropout(child.p))
            elif isinstance(child, layers.Flatten):
                setattr(parent, name, torch.nn.Flatten())
    return model


MN, CF = (1, 28, 28), (3, 32, 32)
NCHW = {"channels_last": False}
GROUPS: dict[str, list[Variant]] = {
    "precision-mnist": [
        Variant("fast_mnist fp32", "fast_mnist", MN, "fp32"),
        Variant("fast_mnist bf16", "fast_mnist", MN, "bf16"),
    ],
    "precision-cifar": [
        Variant("fast_cifar fp32", "fast_cifar", CF, "fp32"),
        Variant("fast_cifar bf16", "fast_cifar", CF, "bf16"),
    ],
    # NCHW end to end: the model's activations and the Learner's batches (the fast nets and
    # the Learner are channels-last by default).
    "channels_last-mnist": [
        Variant("fast_mnist NCHW", "fast_mnist", MN, options=NCHW, learner=NCHW),
        Variant("fast_mnist channels_last", "fast_mnist", MN),
    ],
    "channels_last-cifar": [
        Variant("fast_cifar NCHW", "fast_cifar", CF, options=NCHW, learner=NCHW),
        Variant("fast_cifar channels_last", "fast_cifar", CF),
    ],
    # The layout was chosen for bf16; users without native bf16 train in fp32.
    "channels_last-fp32-mnist": [
        Variant("fast_mnist fp32 NCHW", "fast_mnist", MN, "fp32", 128, NCHW, NCHW),
        Variant("fast_mnist fp32 channels_last", "fast_mnist", MN, "fp32", 128),
    ],
    "channels_last-fp32-cifar": [
        Variant("fast_cifar fp32 NCHW", "fast_cifar", CF, "fp32", 256, NCHW, NCHW),
        Variant("fast_cifar fp32 channels_last", "fast_cifar", CF, "fp32", 256),
    ],
    "batch-mnist": [
        Variant(f"fast_mnist batch {b}", "fast_mnist", MN, batch=b) for b in (128, 256, 512, 1024)
    ],
    "batch-cifar": [
        Variant(f"fast_cifar batch {b}", "fast_cifar", CF, batch=b) for b in (128, 256, 512, 1024)
    ],
    "width-cifar": [
        Variant("fast_cifar 64-128-256 extra 1", "fast_cifar", CF),
        Variant("fast_cifar 64-128-256 extra 0", "fast_cifar", CF, options={"extra": 0}),
        Variant(
            "fast_cifar 32-64-128 extra 1",
            "fast_cifar",
            CF,
            options={"widths": [32, 32, 64, 128]},
        ),
        Variant(
            "fast_cifar 64-192-256 extra 1",
            "fast_cifar",
            CF,
            options={"widths": [32, 64, 192, 256]},
        ),
        Variant(
            "fast_cifar 64-256-256 extra 1 (airbench)",
            "fast_cifar",
            CF,
            options={"widths": [32, 64, 256, 256]},
        ),
    ],
    "act-cifar": [
        Variant("fast_cifar gelu", "fast_cifar", CF),
        Variant("fast_cifar relu", "fast_cifar", CF, options={"act": "relu"}),
    ],
    "width-mnist": [
        Variant("fast_mnist 32-64-128-128", "fast_mnist", MN),
        Variant("fast_mnist 16-32-64-64", "fast_mnist", MN, options={"widths": [16, 32, 64, 64]}),
        Variant("fast_mnist 32-64-128-128 extra 1", "fast_mnist", MN, options={"extra": 1}),
    ],
    # The notes' models, batch 128 as in bench/peers.py: what each speed-up of the Keras
    # nets is worth (channels-last batches; models/layers.py's Dropout and Flatten).
    "layout-notes": [
        Variant(
            "mnist_cnn NCHW, torch layers",
            "mnist_cnn",
            MN,
            batch=128,
            learner={"channels_last": False},
            torch_layers=True,
        ),
        Variant("mnist_cnn NCHW", "mnist_cnn", MN, batch=128, learner={"channels_last": False}),
        Variant(
            "mnist_cnn channels_last, torch layers", "mnist_cnn", MN, batch=128, torch_layers=True
        ),
        Variant("mnist_cnn channels_last", "mnist_cnn", MN, batch=128),
        Variant(
            "keras_cifar_cnn NCHW, torch layers",
            "keras_cifar_cnn",
            CF,
            batch=128,
            learner={"channels_last": False},
            torch_layers=True,
        ),
        Variant("keras_cifar_cnn channels_last", "keras_cifar_cnn", CF, batch=128),
    ],
    # Fused optimizer steps (train/optim.py) against PyTorch's CPU default, a per-tensor loop.
    "optimizer-notes": [
        Variant("mnist_cnn per-tensor AdamW", "mnist_cnn", MN, batch=128, fused=False),
        Variant("mnist_cnn fused AdamW", "mnist_cnn", MN, batch=128),
        Variant("keras_cifar_cnn per-tensor AdamW", "keras_cifar_cnn", CF, batch=128, fused=False),
        Variant("keras_cifar_cnn fused AdamW", "keras_cifar_cnn", CF, batch=128),
    ],
    "notes-models": [
        Variant("mnist_cnn fp32", "mnist_cnn", MN, "fp32", 128),
        Variant("mnist_cnn bf16", "mnist_cnn", MN, "bf16", 128),
        Variant("keras_cifar_cnn fp32", "keras_cifar_cnn", CF, "fp32", 128),
        Variant("keras_cifar_cnn bf16", "keras_cifar_cnn", CF, "bf16", 128),
    ],
}


def images_per_second(v: Variant, n_images: int) -> float:
    c, h, w = v.shape
    g = torch.Generator().manual_seed(0)
    n = max(n_images // v.batch, 2) * v.batch
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    s = ImageSet(images, labels, [str(i) for i in range(10)])
    data = make_dataset("bench", s, None, valid=s.subset(range(v.batch)))
    torch.manual_seed(0)
    model = create_model(v.model, in_channels=c, num_classes=10, input_size=(h, w), **v.options)
    if v.torch_layers:
        model = torch_layers(model)
    learn = Learner(
        data,
        model,
        batch_size=v.batch,
        precision=v.precision,
        device="cpu",
        log=lambda m: None,
        quiet=True,  # timed: no progress display
        **v.learner,
    )
    if not v.fused:  # the same param groups, stepped one tensor at a time
        learn.create_opt()
        groups = [{k: x for k, x in g.items() if k != "fused"} for g in learn.opt.param_groups]
        learn.opt = type(learn.opt)(groups, foreach=False)
    warm = ImageSet(images[: 2 * v.batch], labels[: 2 * v.batch], s.classes)
    learn.data = make_dataset("warm", warm, None, valid=s.subset(range(v.batch)))
    learn.fit(1, 1e-3)  # warm-up: allocator, oneDNN kernels, whitening fit
    learn.data = data
    start = time.perf_counter()
    learn.fit(1, 1e-3)
    return n / (time.perf_counter() - start)


def macs(v: Variant) -> int:
    c, h, w = v.shape
    model = create_model(v.model, in_channels=c, num_classes=10, input_size=(h, w), **v.options)
    return summarize(model, v.shape).macs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("groups", nargs="*", help="substrings of group names (default: all)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=8192, help="training images per timing")
    a = p.parse_args()
    chosen = {k: v for k, v in GROUPS.items() if not a.groups or any(s in k for s in a.groups)}
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load:.2f}")
    for name, variants in chosen.items():
        runs: dict[str, list[float]] = {v.label: [] for v in variants}
        for _ in range(a.rounds):
            for v in variants:  # interleaved: A B C A B C
                runs[v.label].append(images_per_second(v, a.images))
        base = statistics.median(runs[variants[0].label])
        print(f"\n### {name} (load {os.getloadavg()[0]:.2f} at the end)")
        print("| variant | batch | images/s (median) | range | ratio | mult-adds/image |")
        print("|---|---|---|---|---|---|")
        for v in variants:
            r = runs[v.label]
            med = statistics.median(r)
            print(
                f"| {v.label} | {v.batch} | {med:,.0f} | {min(r):,.0f}-{max(r):,.0f} | "
                f"{med / base:.2f} | {macs(v) / 1e6:.1f}M |"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
