"""Where the images of a class-folder tree are: its splits, its classes, its image files.

``root/<class>/*.jpg`` or ``root/{train,valid,test}/<class>/*.jpg``, found after stepping into
an archive's lone top folder. Files are listed with their size and mtime (the decoded cache's
key) and never decoded here. Symlinked folders are followed, but each real folder at most once
per split: a link up the tree (``a/sub -> .``) would loop forever, a second link to one folder
would count its images twice, so both are skipped with a note; a class folder that is itself
such a loop is refused. A tree needs at least two classes.
"""

from __future__ import annotations

import os
from pathlib import Path

from deepstart.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Accepted directory names of each split, compared case-insensitively.
SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "val", "validation"), "test": ("test",)}
_IGNORED = (".", "__MACOSX")  # hidden entries and macOS zip debris are never data


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(_IGNORED))


def descend(root: Path) -> Path:
    """Step into a lone top folder (an archive's ``cifar10-jpeg/``) until the layout shows."""
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(_IGNORED)]
        if len(entries) != 1 or not entries[0].is_dir():
            return root
        child = entries[0]
        if _real(child) in _ancestors(root):
            return root  # a link to its own folder (top/again -> .): no deeper for real
        is_split = any(child.name.lower() in names for names in SPLIT_NAMES.values())
        # A lone folder without subfolders is the one class of a one-tree layout.
        if is_split or not _subdirs(child):
            return root
        root = child


def find_layout(root: Path, notes: list[str]) -> tuple[dict[str, Path], list[str]]:
    """Split folders (``{"train": root}`` for a one-tree layout) and the class names."""
    found: dict[str, Path] = {}
    for d in _subdirs(root):
        for split, names in SPLIT_NAMES.items():
            if d.name.lower() in names:
                if split in found:
                    raise DataError(f"{root} has both {found[split].name}/ and {d.name}/")
                found[split] = d
    if found and "train" not in found:
        names = ", ".join(f"{d.name}/" for d in found.values())
        raise DataError(f"{root} has {names} but no train/ folder")
    found = found or {"train": root}
    classes = [d.name for d in _subdirs(found["train"])]
    if not classes:
        raise DataError(
            f"no class folders in {found['train']}: expected <class>/ folders of images, "
            "as in root/<class>/x.jpg or root/train/<class>/x.jpg"
        )
    for split in ("valid", "test"):
        if split in found:
            names = [d.name for d in _subdirs(found[split])]
            if not names:
                notes.append(f"{found[split]} has no class folders (unlabelled?); ignored")
                del found[split]
            elif extra := sorted(set(names) - set(classes)):
                raise DataError(f"{found[split]} has class folder {extra[0]!r}; train has not")
    if len(classes) < 2:
        # One class trains a model that is "100%" right by answering it every time.
        raise DataError(
            f"{found['train']} has one class folder ({classes[0]}/): a classifier needs at "
            "least 2 classes; add a folder of images for each other class"
        )
    return found, classes


def list_split(
    root: Path, split_dir: Path, classes: list[str], notes: list[str]
) -> list[tuple[str, int, str]]:
    """``(file relative to root, label, "size:mtime_ns")`` of every image, sorted by class
    then name; the stat goes into the cache key, so it is read here, once.

    Each real folder is walked at most once per split: ``seen`` starts with the split's
    folder and every folder above it, so a link up the tree is a loop, never followed.
    """
    base = split_dir.relative_to(root).as_posix()
    prefix = "" if base == "." else f"{base}/"
    seen = _ancestors(split_dir)
    links: list[str] = []  # linked folders not followed (loops or repeats), relative to root
    files = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue  # a class missing from valid/test is fine
        if (real := _real(class_dir)) in _ancestors(split_dir):
            raise DataError(
                f"class folder {class_dir} is a symlink to {real}, a folder holding it (a "
                "loop); remove the link or point it at a folder of images"
            )
        seen.add(real)
        found = sorted(_walk_images(class_dir, f"{prefix}{name}/", seen, links))
        if not found:
            raise DataError(f"class folder {class_dir} is empty (no image files)")
        files.extend((rel, label, st) for rel, st in found)
    if links:
        more = ", ..." if len(links) > 3 else ""
        notes.append(
            f"skipped {len(links)} linked folders in {split_dir} that loop back or lead to a "
            f"folder already read: {', '.join(links[:3])}{more}"
        )
    return files


def _walk_images(
    top: Path, top_prefix: str, seen: set[str], links: list[str]
) -> list[tuple[str, str]]:
    """``(path relative to root, "size:mtime_ns")`` of the images under ``top``. A folder
    whose real path is in ``seen`` (or a link that cannot be resolved) goes to ``links``."""
    out = []
    stack = [(top, top_prefix)]  # a stack, not recursion: a deep crafted tree cannot overflow
    while stack:
        d, prefix = stack.pop()
        with os.scandir(d) as entries:
            for e in entries:
                if e.name.startswith(_IGNORED):
                    continue
                try:
                    if e.is_dir():
                        real = _real(Path(e.path))
                        if real in seen:
                            links.append(prefix + e.name)
                        else:
                            seen.add(real)
                            stack.append((Path(e.path), f"{prefix}{e.name}/"))
                    elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file():
                        st = e.stat()
                        out.append((prefix + e.name, f"{st.st_size}:{st.st_mtime_ns}"))
                except OSError:  # ELOOP (a link to itself), a dangling or unreadable entry
                    if e.is_symlink():
                        links.append(prefix + e.name)
                    else:
                        raise
    return out


def _real(p: Path) -> str:
    return os.path.realpath(p)


def _ancestors(d: Path) -> set[str]:
    """The real paths of ``d`` and of every folder above it."""
    real = Path(_real(d))
    return {str(real), *(str(p) for p in real.parents)}
