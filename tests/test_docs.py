"""Every ```python block in README.md and docs/*.md runs, so the examples cannot rot.

Blocks of one file share a namespace and run in order. Datasets are cut to a few hundred
items (and public ones taken from ../shared/data) so the whole file runs in seconds; the code
itself is run exactly as written.
"""

import re
from pathlib import Path

import pytest

import deepstart
from deepstart.data import catalog

from .conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DOCS = [
    p
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    if BLOCK.search(p.read_text())
]


def _small_load_dataset(name, **kwargs):
    if name == "folder" and not Path(kwargs.get("data_dir") or "").exists():
        # "pets" in the docs: a small folder of photo-like pictures in two classes
        from .test_photos import write_photos

        folder = Path.cwd() / "pets"
        if not folder.exists():
            write_photos(folder, n=12)
        kwargs["data_dir"] = folder
        kwargs["size"] = 32  # the docs' 224 px photos, as 32 px thumbnails: seconds, not minutes
    elif kwargs.get("data_dir") is not None and not Path(kwargs["data_dir"]).exists():
        kwargs["data_dir"] = SHARED_DATA
    data = catalog.load_dataset(name, **kwargs)
    for split in ("train", "valid", "test"):
        s = getattr(data, split)
        if s is not None and len(s) > 300:
            setattr(data, split, s.subset(range(300)))
    return data


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_examples_run(doc, monkeypatch, tmp_path):
    blocks = BLOCK.findall(doc.read_text())
    if "../shared/data" in "".join(blocks) and not SHARED_DATA.exists():
        pytest.skip("needs ../shared/data")
    monkeypatch.setattr(deepstart, "load_dataset", _small_load_dataset)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc_example__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{doc.name}[block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message is the point
            raise AssertionError(f"{doc.name} block {i} failed: {e!r}\n{code}") from e
