"""Run a small notebook in a real Jupyter kernel (ipykernel via nbclient), as a user would.

The kernel is this venv's Python with this tree's ``src`` first on its path, through a
kernelspec written to a temporary ``JUPYTER_PATH``; ``MPLBACKEND`` is removed so matplotlib
starts on the kernel's own default (matplotlib-inline), and ``IPYTHONDIR`` is empty so no
user profile runs. (The lead may merge this with tests/kernel.py.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
KERNEL = "deepstart-test"


def run_notebook(cells: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timeout=300):
    """Execute ``cells`` (code, one string each) in a fresh kernel; the executed notebook."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "deepstart test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("PYTHONPATH", str(SRC))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    return nb


def mime_types(cell) -> list[str]:
    """Every MIME type of every rich output of a cell, in order (repeats kept)."""
    return [m for out in cell.outputs for m in out.get("data", {})]


def texts(cell) -> str:
    """All a cell printed or showed as plain text (streams and text/plain)."""
    return "".join(
        out.get("text", "") + out.get("data", {}).get("text/plain", "") for out in cell.outputs
    )
