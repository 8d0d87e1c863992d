"""What ``OMP_WAIT_POLICY=PASSIVE`` costs or buys: deepstart's training throughput with
OpenMP's default (spinning) wait policy and with the passive one, interleaved.

    python bench/omp_wait.py                       # both notes' models, 3 rounds
    python bench/omp_wait.py --models mnist_cnn --rounds 5
    python bench/omp_wait.py --busy 1              # with one busy process beside it

Each measurement is bench/peers.py's deepstart worker in a fresh process (the policy is
read when OpenMP starts, so it cannot change inside one). ``--busy N`` keeps N spinning
Python processes running during every measurement, as another program on a shared laptop
would. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import SHAPES

PEERS = Path(__file__).resolve().parent / "peers.py"


def measure(model: str, policy: str | None, images: int) -> float:
    args = {"model": model, "shape": list(SHAPES[model]), "batch": 128, "images": images}
    args |= {"warmup": 8, "threads": 2}
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, str(PEERS), "--worker", "deepstart", json.dumps(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mnist_cnn,keras_cifar_cnn")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=6144)
    p.add_argument("--busy", type=int, default=0, help="spinning processes alongside")
    a = p.parse_args()
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(a.busy)]
    try:
        print(f"load {os.getloadavg()[0]:.2f}, {a.busy} busy process(es) alongside")
        print("| model | default images/s | PASSIVE images/s | PASSIVE / default |")
        print("|---|---|---|---|")
        for model in a.models.split(","):
            runs: dict[str, list[float]] = {"default": [], "PASSIVE": []}
            for _ in range(a.rounds):  # interleaved: A B A B
                runs["default"].append(measure(model, None, a.images))
                runs["PASSIVE"].append(measure(model, "PASSIVE", a.images))
            d, q = (statistics.median(runs[k]) for k in ("default", "PASSIVE"))
            print(f"| {model} | {d:,.0f} | {q:,.0f} | {q / d:.2f}x |", flush=True)
    finally:
        for proc in spin:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
