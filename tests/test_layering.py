"""The layering of docs/architecture.md, enforced by reading every module's imports.

cli -> run / tune / report / serve / fitting -> train / interpret / ship -> models / data /
augment -> bottom (errors, config, device, cache). Imports inside functions and under
TYPE_CHECKING count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "deepstart"

# Each group of modules, and the groups it may import (its own group always).
BOTTOM = "bottom"
MAY_IMPORT: dict[str, set[str]] = {
    BOTTOM: set(),
    "data": {BOTTOM},
    "models": {BOTTOM},
    "augment": {BOTTOM, "data"},
    "train": {BOTTOM, "data", "augment", "models"},
    "ship": {BOTTOM, "data", "augment", "models"},
    "interpret": {BOTTOM, "data", "augment", "models", "train"},
    "run": {BOTTOM, "data", "augment", "models", "train", "ship", "interpret"},
    "cli": {BOTTOM, "data", "augment", "models", "train", "ship", "interpret", "run"},
}
# The run layer: entry points that may use each other (the report reads runs, tune runs them).
RUN_LAYER = ("run", "report", "tune", "serve", "fitting", "recipes", "recipe_table")
BOTTOM_MODULES = ("errors", "config", "device", "cache", "_moved", "display", "figures")


def group_of(module: str) -> str:
    """``deepstart.train.learner`` -> "train"; the group decides what it may import."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    if head in BOTTOM_MODULES:
        return BOTTOM
    if head in RUN_LAYER:
        return "run"
    if head in ("cli", "__init__", "__main__"):
        return "cli"
    if head in MAY_IMPORT:
        return head
    raise AssertionError(
        f"{module}: not in the layer map of tests/test_layering.py (and docs/architecture.md)"
    )


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def imports_of(text: str, module: str, is_package: bool = False) -> set[str]:
    """Every deepstart module the source ``text`` of ``module`` imports, at any depth."""
    me = module.split(".")
    package = me if is_package else me[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("deepstart"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = package[: len(package) - node.level + 1]
                name = ".".join([*up, node.module or ""])
            else:
                name = node.module or ""
            name = name.rstrip(".")
            if not name.startswith("deepstart"):
                continue
            # "from deepstart import cache" imports the module deepstart.cache
            subs = [f"{name}.{a.name}" for a in node.names if _is_module(f"{name}.{a.name}")]
            found.update(subs or [name])
    return found


def _is_module(name: str) -> bool:
    p = SRC.parent / Path(*name.split("."))
    return p.with_suffix(".py").is_file() or p.is_dir()


def violations(module: str, imported: set[str]) -> list[str]:
    mine = group_of(module)
    allowed = MAY_IMPORT[mine] | {mine}
    return sorted(
        f"{name} ({group_of(name)})"
        for name in imported
        if name != "deepstart" and group_of(name) not in allowed
    )


MODULES = sorted(p for p in SRC.rglob("*.py"))


def test_every_module_is_in_the_layer_map():
    for path in MODULES:
        group_of(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path):
    me = module_name(path)
    wrong = violations(me, imports_of(path.read_text(), me, path.name == "__init__.py"))
    assert not wrong, f"{me} ({group_of(me)}) imports {wrong}: see docs/architecture.md"


@pytest.mark.parametrize(
    ("module", "text"),
    [
        ("deepstart.train.learner", "from deepstart.report import build_report"),
        ("deepstart.train.learner", "def f():\n    from deepstart.run import runner"),
        ("deepstart.models.layers", "from deepstart.data.dataset import ImageSet"),
        ("deepstart.ship.bundle", "from ..train import learner"),
        ("deepstart.data.folder", "import deepstart.augment"),
        ("deepstart.config", "from deepstart import augment"),
    ],
)
def test_an_upward_import_is_caught(module, text):
    # The check must be able to fail, lazy and relative imports included.
    assert violations(module, imports_of(text, module))


def test_old_paths_warn_and_forward():
    import importlib

    old = importlib.import_module("deepstart.train.runner")
    with pytest.warns(DeprecationWarning, match="deepstart.run.runner.train_run"):
        fn = old.train_run
    from deepstart.run.runner import train_run

    assert fn is train_run
