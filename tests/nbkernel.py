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


def _kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernelspec for this venv's Python, this tree's src first on its path."""
    pytest.importorskip("ipykernel")
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "deepstart test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("PYTHONPATH", str(SRC))
    monkeypatch.delenv("MPLBACKEND", raising=False)


def _execute(nb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cwd: Path, timeout: float):
    nbclient = pytest.importorskip("nbclient")
    _kernel(tmp_path, monkeypatch)
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return nb


def run_notebook(cells: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timeout=300):
    """Execute ``cells`` (code, one string each) in a fresh kernel; the executed notebook."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    return _execute(nb, tmp_path, monkeypatch, tmp_path, timeout)


def execute_notebook(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timeout=600):
    """Execute the notebook file ``path`` in a fresh kernel, in its own folder (as Jupyter
    does); the executed notebook (the file is left as it was)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    return _execute(nb, tmp_path, monkeypatch, Path(path).parent, timeout)


def mime_types(cell) -> list[str]:
    """Every MIME type of every rich output of a cell, in order (repeats kept)."""
    return [m for out in cell.outputs for m in out.get("data", {})]


def texts(cell) -> str:
    """All a cell printed or showed as plain text (streams and text/plain)."""
    return "".join(
        out.get("text", "") + out.get("data", {}).get("text/plain", "") for out in cell.outputs
    )
