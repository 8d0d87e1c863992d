"""Wall time of each example notebook (examples/*.ipynb), run in full in a real kernel.

    python bench/examples.py                  # all five
    python bench/examples.py 01_shapes_vgg    # some

Each notebook runs in a fresh ipykernel (this venv's Python) in a temporary copy of
examples/, with DEEPSTART_DATA pointing at ../shared/data; the time is from the kernel's
start to the last cell's end. The accuracies each notebook printed are listed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]


def run(book: Path, work: Path) -> tuple[float, dict[str, float]]:
    spec = work / "jupyter" / "kernels" / "bench"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "bench"}))
    os.environ["JUPYTER_PATH"] = str(work / "jupyter")
    nb = nbformat.read(book, as_version=4)
    t = time.perf_counter()
    client = nbclient.NotebookClient(
        nb, timeout=3600, kernel_name="bench", resources={"metadata": {"path": str(work)}}
    )
    client.execute()
    wall = time.perf_counter() - t
    text = "\n".join(
        o.get("text", "") or o.get("data", {}).get("text/plain", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    found = re.finditer(r"^([a-z_ ]*accuracy) (\d\.\d+)", text, re.M)
    return wall, {m[1]: float(m[2]) for m in found}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    a = p.parse_args()
    os.environ["DEEPSTART_DATA"] = str(a.data.resolve())
    os.environ.pop("DEEPSTART_QUICK", None)
    books = sorted((ROOT / "examples").glob("*.ipynb"))
    books = [b for b in books if not a.names or b.stem in a.names]
    print(f"load average {os.getloadavg()[0]:.2f}")
    for book in books:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / book.name
            shutil.copy(book, copy)
            wall, acc = run(copy, Path(tmp))
        shown = ", ".join(f"{k} {v:.4f}" for k, v in acc.items())
        print(f"{book.stem:<22} {wall:7.1f}s  {shown}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
