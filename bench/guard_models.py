"""The divergence guard on every registered image model (issue 20): an LR 10,000x too high for
SGD, Adam and AdamW, on the generated shapes, must end trained, with the guard's events only.

    python bench/guard_models.py                       # every model, the three optimisers
    python bench/guard_models.py mnist_cnn resnet18 --opts adamw --epochs 6 --n-train 1500

Each run: ``create_model(NAME)`` for shapes (3 classes, 1x32x32; the ImageNet nets too,
whose last feature map is then 1x1; ``spec`` as conv16-pool-conv32-pool-flat-dense64), seed
0, one-cycle at the LR a sane run of the optimiser uses times ``--factor`` (SGD 0.1, Adam and
AdamW 3e-3), batch 64, 3,000 images, 8 epochs, the default guard (sweep from the last good
state; halve the first time unless the sweep blows up below half; 8 tries). Each is paired
with the same run at the sane LR (the baseline: what the model reaches on this data in these
epochs at all). Reported per run: the guard's events (how each restore set the LR), the peak
LR it ended with, the test accuracy against the baseline's, and whether
it gave up. A model "recovers" when the guard did not give up and the test accuracy is at
least ``--floor`` (0.9; guessing is 1/3) or within 2 points of the baseline. A seed's result
repeats exactly on one CPU type, whatever the load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# One-cycle peaks that train mnist_cnn and vgg_small on the shapes here (3,000 images, 8
# epochs): Adam 1e-3 left mnist_cnn's baseline at 54-75%, 3e-3 gives 92%.
SANE = {"sgd": 0.1, "adam": 3e-3, "adamw": 3e-3}


def train(name: str, opt: str, lr: float, data, epochs: int, lines: list[str]):
    """One seed-0 run of ``name`` with ``opt`` at one-cycle peak ``lr`` under the default
    guard (its lines into ``lines``): the Learner, the guard and the test accuracy."""
    import torch

    from deepstart.models.registry import create_model
    from deepstart.train.guard import DivergenceGuard
    from deepstart.train.learner import Learner

    torch.manual_seed(0)
    model = create_model(
        name, in_channels=data.channels, num_classes=data.num_classes, input_size=data.size
    )
    guard = DivergenceGuard(log=lines.append)
    learn = Learner(
        data, model, opt=opt, batch_size=64, seed=0, guard=False, callbacks=[guard],
        log=lambda m: None, quiet=True,
    )  # fmt: skip
    learn.fit_one_cycle(epochs, lr)
    return learn, guard, learn.evaluate()["accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("models", nargs="*", help="registry names (default: every image model)")
    p.add_argument("--opts", default="sgd,adam,adamw")
    p.add_argument("--factor", type=float, default=1e4, help="LR = the sane LR x this")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--n-train", type=int, default=3000, help="shapes training images")
    p.add_argument("--floor", type=float, default=0.9, help="test accuracy that counts")
    a = p.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from deepstart.data.catalog import load_dataset
    from deepstart.models.registry import list_models
    from deepstart.recipes.results import cpu_model

    names = a.models or [m.name for m in list_models()]
    print(f"{cpu_model()}, torch {torch.__version__}, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.2f}; shapes n_train {a.n_train}, {a.epochs} epochs, "
          f"LR x {a.factor:g}\n")  # fmt: skip
    print("| model | opt | LR | guard: restores (how) | LR at the end | test accuracy | "
          "at the sane LR | recovered | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    failed = []
    data = load_dataset("shapes", n_train=a.n_train, n_test=600, seed=0)  # 1x32x32, 3 classes
    for name in names:
        if name == "spec":  # the layer-spec model stands for what a user writes
            name = "conv16-pool-conv32-pool-flat-dense64"
        for opt in a.opts.split(","):
            lr = SANE[opt] * a.factor

            lines: list[str] = []
            _, _, base = train(name, opt, SANE[opt], data, a.epochs, [])
            start = time.perf_counter()
            learn, guard, acc = train(name, opt, lr, data, a.epochs, lines)
            seconds = time.perf_counter() - start
            hows = ", ".join(e["how"] for e in guard.events) or "none"
            ok = not guard.gave_up and (acc >= a.floor or acc >= base - 0.02)
            if not ok:
                failed.append(f"{name}/{opt}")
            print(f"| {name} | {opt} | {lr:g} | {len(guard.events)} ({hows}) | "
                  f"{lr * learn.lr_mult:.2g} | {acc:.2%} | {base:.2%} | "
                  f"{'yes' if ok else '**no**'} | {seconds:.0f} |", flush=True)  # fmt: skip
            if not ok:
                print("\n".join(f"    {line}" for line in lines), flush=True)
    print(f"\nnot recovered: {', '.join(failed) or 'none'}; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
