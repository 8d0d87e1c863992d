"""deepstart against its peers: training throughput of the same model, in one interleaved run.

    python bench/peers.py                       # both models, 3 rounds
    python bench/peers.py --models mnist_cnn --rounds 5 --images 6144
    python bench/peers.py --no-keras            # skip Keras (no virtualenv needed)

The same architecture (the notes' ``mnist_cnn`` and deepstart's ``keras_cifar_cnn``) is
trained, batch 128, Adam, on random uint8 images of the dataset's shape, by:

    deepstart     ``Learner.fit`` as a user calls it (uint8 held on the device, normalised per
                  batch, ``--precision auto``: bf16 autocast on this CPU)
    plain         a minimal hand-written PyTorch loop: float32 tensors in memory, a shuffled
                  index per epoch, forward, loss, backward, step (what a tutorial writes)
    plain+bf16    the same loop inside ``torch.autocast("cpu", torch.bfloat16)``: where
                  deepstart's lead comes from
    plain+bf16+cl the bf16 loop with the model and batches in channels-last memory format
                  (what PyTorch's CPU performance guide recommends for convolutions)
    plain+compile the bf16 loop with ``torch.compile(model)`` (inductor; compiled in the
                  warm-up, which is not timed)
    keras         Keras 3 on TensorFlow-CPU, ``model.fit`` on float32 arrays (XLA where
                  Keras turns it on), in the benchmark-only virtualenv bench/.venv-keras
                  (created on first use; TensorFlow is never a deepstart dependency)
    keras+bf16    the same with Keras's ``mixed_bfloat16`` policy

A peer's best configuration is the fastest of its kinds; the table gives deepstart's ratio to
each kind and to the best of each peer (issue 20 asks >= 1.5x the best Keras and >= 1.2x the
best plain PyTorch).

Each measurement is a fresh process (so no framework inherits another's threads or memory),
run A B C D A B C D ...; the tables give medians, ratios, and the share of the machine's
matmul ceiling (bench/ceiling.py) each reaches. The notes' own recipes' time to accuracy is
extrapolated from the measured throughput (epochs x images per epoch / images per second).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERAS_VENV = ROOT / "bench" / ".venv-keras"
KERAS_PY = KERAS_VENV / "bin" / "python"
SHAPES = {"mnist_cnn": (1, 28, 28), "keras_cifar_cnn": (3, 32, 32)}
FRAMEWORKS = (
    "deepstart", "plain", "plain+bf16", "plain+bf16+cl", "plain+compile", "keras", "keras+bf16"
)  # fmt: skip
# The options of each plain PyTorch kind: bf16 autocast, channels-last, torch.compile.
PLAIN = {
    "plain": set(),
    "plain+bf16": {"bf16"},
    "plain+bf16+cl": {"bf16", "cl"},
    "plain+compile": {"bf16", "compile"},
}


# -- the workers (each runs in its own process) ----------------------------------------------


def plain_model(name: str, shape: tuple[int, int, int]):
    """The architecture written out in plain PyTorch (no deepstart), as a tutorial would."""
    from torch import nn

    c, h, w = shape
    if name == "mnist_cnn":
        return nn.Sequential(
            nn.Conv2d(c, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
            nn.Linear(64 * ((h - 4) // 2) * ((w - 4) // 2), 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, 10),
        )  # fmt: skip
    layers, c_in, side = [], c, h
    for width in (32, 64):
        layers += [
            nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3),
            nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        ]  # fmt: skip
        c_in, side = width, (side - 2) // 2
    return nn.Sequential(
        *layers, nn.Flatten(), nn.Linear(c_in * side * side, 512), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(512, 10),
    )  # fmt: skip


def worker(kind: str, args: dict) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args["threads"])
    c, h, w = args["shape"]
    batch, n, warm = args["batch"], args["images"], args["warmup"] * args["batch"]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    torch.manual_seed(0)
    if kind == "deepstart":
        from deepstart.data.dataset import ImageSet, make_dataset
        from deepstart.models.registry import count_parameters, create_model
        from deepstart.train.learner import Learner

        s = ImageSet(images, labels, [str(i) for i in range(10)])
        small = s.subset(range(batch))  # validation after the epoch: one batch
        model = create_model(args["model"], in_channels=c, num_classes=10, input_size=(h, w))
        learn = Learner(
            make_dataset("warm", s.subset(range(warm)), None, valid=small),
            model,
            opt="adam",
            lr=1e-3,
            batch_size=batch,
            device="cpu",
            log=lambda m: None,
            quiet=True,  # timed: no progress display
        )
        learn.fit(1)  # warm-up
        learn.data = make_dataset("timed", s, None, valid=small)
        start = time.perf_counter()
        learn.fit(1)
        seconds = time.perf_counter() - start
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(learn.amp_dtype, "fp32")
        return {"images_per_s": n / seconds, "params": count_parameters(model), "dtype": precision}
    options = PLAIN[kind]
    model = plain_model(args["model"], (c, h, w))
    x = images.float() / 255  # (N, C, H, W) float32 in [0, 1], as ToTensor gives
    if "cl" in options:  # NHWC in memory, same logical shape: oneDNN's preferred layout
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bf16 = "bf16" in options
    net = torch.compile(model) if "compile" in options else model

    def epoch(count: int) -> None:
        model.train()
        order = torch.randperm(count)
        for i in range(0, count - batch + 1, batch):
            idx = order[i : i + batch]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(net(x[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    epoch(warm)
    start = time.perf_counter()
    epoch(n)
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    return {"images_per_s": n / seconds, "params": params, "dtype": "bf16" if bf16 else "fp32"}


# -- the driver --------------------------------------------------------------------------------


def ensure_keras_venv() -> None:
    """Create bench/.venv-keras with tensorflow-cpu and keras from PyPI (once)."""
    if KERAS_PY.exists():
        return
    print(f"creating {KERAS_VENV} (tensorflow-cpu, keras; benchmark only) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(KERAS_VENV)], check=True)
    pip = [str(KERAS_PY), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "tensorflow-cpu", "keras"], check=True)


def measure(kind: str, args: dict) -> dict:
    payload = json.dumps({**args, "kind": kind})
    if kind.startswith("keras"):
        cmd = [str(KERAS_PY), str(ROOT / "bench" / "peers_keras.py"), payload]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, payload]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("payload", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--models", default="mnist_cnn,keras_cifar_cnn")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=8192, help="timed training images per run")
    p.add_argument("--warmup", type=int, default=8, help="warm-up steps before timing")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-keras", action="store_true")
    p.add_argument("--kinds", help=f"a comma list of: {', '.join(FRAMEWORKS)} (default all)")
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, json.loads(a.payload))))
        return

    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from ceiling import matmul_gflops

    kinds = [k for k in FRAMEWORKS if not (a.no_keras and k.startswith("keras"))]
    if a.kinds:
        kinds = ["deepstart", *(k for k in a.kinds.split(",") if k != "deepstart")]
        unknown = set(kinds) - set(FRAMEWORKS)
        if unknown:
            raise SystemExit(f"unknown --kinds {sorted(unknown)}; known: {', '.join(FRAMEWORKS)}")
    if any(k.startswith("keras") for k in kinds):
        ensure_keras_venv()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {a.threads} threads, batch {a.batch}, load at start "
        f"{os.getloadavg()[0]:.2f}",
        flush=True,
    )
    ceiling = {"fp32": matmul_gflops(torch.float32, threads=a.threads)}
    ceiling["bf16"] = matmul_gflops(torch.bfloat16, threads=a.threads)
    print(f"matmul ceiling: fp32 {ceiling['fp32']:,.0f} GFLOP/s, bf16 {ceiling['bf16']:,.0f}")
    results: dict[str, dict[str, list[dict]]] = {}
    for name in a.models.split(","):
        shape = SHAPES[name]
        args = {"model": name, "shape": list(shape), "batch": a.batch, "images": a.images}
        args |= {"warmup": a.warmup, "threads": a.threads}
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for r in range(a.rounds):
            for kind in kinds:  # interleaved: A B C D A B C D
                runs[kind].append(measure(kind, args))
                ips = runs[kind][-1]["images_per_s"]
                print(f"  {name} round {r + 1} {kind}: {ips:,.0f} images/s", flush=True)
        results[name] = runs
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    report(results, ceiling, kinds)


def report(results: dict, ceiling: dict, kinds: list[str]) -> None:
    print("\n| model | framework | params | precision | images/s (median) | range | "
          "deepstart / it | MFLOP/image | GFLOP/s | share of ceiling |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    from ceiling import train_flops_per_image

    medians: dict[tuple[str, str], float] = {}
    for name, runs in results.items():
        flops = train_flops_per_image(name, SHAPES[name])
        ds = statistics.median(r["images_per_s"] for r in runs["deepstart"])
        for kind in kinds:
            ips = [r["images_per_s"] for r in runs[kind]]
            med = statistics.median(ips)
            medians[name, kind] = med
            dtype = runs[kind][0].get("dtype", "fp32")
            gflops = med * flops / 1e9
            share = gflops / ceiling["bf16" if dtype == "bf16" else "fp32"]
            print(
                f"| {name} | {kind} | {runs[kind][0]['params']:,} | {dtype} | {med:,.0f} | "
                f"{min(ips):,.0f}-{max(ips):,.0f} | {ds / med:.2f}x | {flops / 1e6:.1f} | "
                f"{gflops:,.0f} | {share:.0%} of {dtype} |"
            )
        for peer in ("plain", "keras"):
            mine = [k for k in kinds if k.startswith(peer)]
            if mine:
                best = max(mine, key=lambda k: medians[name, k])
                print(f"| {name} | best {peer}: {best} | | | {medians[name, best]:,.0f} | | "
                      f"**{ds / medians[name, best]:.2f}x** | | | |")  # fmt: skip
        keras = next((k for k in kinds if k.startswith("keras")), None)
        if keras:
            print(f"| | keras versions: {runs[keras][0]['versions']} | | | | | | | | |")
    # The notes' recipes, extrapolated from throughput: epochs x train images / (images/s).
    print("\n| recipe (the notes') | framework | epochs | images/epoch | time (extrapolated) |")
    print("|---|---|---|---|---|")
    plans = [
        ("Keras MNIST CNN to ~99.2%", "mnist_cnn", 12, 60_000),
        ("Keras CIFAR-10 CNN, 100 epochs (~79%)", "keras_cifar_cnn", 100, 50_000),
    ]
    for label, name, epochs, n in plans:
        for kind in kinds:
            if (name, kind) in medians:
                secs = epochs * n / medians[name, kind]
                print(f"| {label} | {kind} | {epochs} | {n:,} | {secs / 60:.1f} min |")


if __name__ == "__main__":
    main()
