"""The dataset catalogue: ``load_dataset(name)`` and ``list_datasets()``.

Each source module only decodes files into ImageSets; here they become a :class:`Dataset`
with train / valid / test splits, training-split mean and std, and (when asked) a common size
and channel count.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepstart.data.dataset import DataError, Dataset, ImageSet, Preprocess, make_dataset
from deepstart.data.dataset import conform_images as _conform


@dataclass(frozen=True)
class DatasetInfo:
    """A catalogue entry.

    Attributes:
        name: what ``--data`` takes.
        description: one line for ``deepstart data list``.
        where: where its files are looked for, for humans.
        local: whether it needs no files at all (generated).
    """

    name: str
    description: str
    where: str
    local: bool = False


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "shapes",
            "circles, squares, triangles (and more) drawn with scikit-image; generated",
            "generated in memory, deterministic by seed",
            local=True,
        ),
        DatasetInfo("mnist", "handwritten digits, 28x28 grey, 60k/10k", "IDX files: mnist/"),
        DatasetInfo(
            "affnist",
            "MNIST digits affinely moved in a 40x40 frame (affNIST-style); generated",
            "generated from the MNIST IDX files: mnist/ (cached)",
        ),
        DatasetInfo(
            "fashion_mnist",
            "Zalando clothing pictures, 28x28 grey, 60k/10k",
            "IDX files: fashion-mnist/",
        ),
        DatasetInfo(
            "kmnist", "Kuzushiji (cursive Japanese) characters, 28x28 grey", "IDX files: kmnist/"
        ),
        DatasetInfo(
            "cifar10", "10 object classes, 32x32 RGB, 50k/10k", "cifar-10-binary.tar.gz: cifar10/"
        ),
        DatasetInfo(
            "folder",
            "your images: class sub-folders, optional train/ valid/ test/ splits",
            "--data-dir DIR (or a .zip / .tar.gz of it), or --data DIR",
        ),
    ]
}


def list_datasets() -> list[DatasetInfo]:
    """The catalogue, in a stable order."""
    return list(DATASETS.values())


def _source(name: str, data_dir: str | None, seed: int, download: bool, options: dict) -> tuple:
    """(train, valid or None, test or None, notes) from the named source."""
    if name == "shapes":
        from deepstart.data.shapes import load_shapes

        _takes(name, load_shapes, options)
        train, test = load_shapes(seed=options.pop("seed", seed), **options)
        return train, None, test, []
    if name in ("mnist", "fashion_mnist", "kmnist"):
        from deepstart.data.mnist import load_mnist

        _takes(name, None, options)
        train, test = load_mnist(name, data_dir=data_dir, download=download)
        return train, None, test, []
    if name == "affnist":
        from deepstart.data.affnist import load_affnist

        _takes(name, load_affnist, options)
        train, valid, test = load_affnist(
            data_dir, download=download, seed=options.pop("seed", seed), **options
        )
        return train, valid, test, []
    if name == "cifar10":
        from deepstart.data.cifar10 import load_cifar10

        _takes(name, None, options)
        train, test = load_cifar10(data_dir=data_dir, download=download)
        return train, None, test, []
    if name == "folder":
        from deepstart.data.folder import load_folder

        path = options.pop("path", None) or data_dir
        if not path:
            raise DataError("folder needs a directory: --data-dir DIR (or --data DIR)")
        _takes(name, load_folder, options)
        fd = load_folder(path, **options)
        notes = [f"skipped {len(fd.skipped)} unreadable files"] if fd.skipped else []
        return fd.train, fd.valid, fd.test, notes
    known = ", ".join(DATASETS)
    raise DataError(f"unknown dataset {name!r}; known datasets: {known} (or a folder path)")


# Options every source takes (load_dataset applies them) and arguments the catalogue passes
# itself: neither is a source option a user can give.
COMMON_OPTIONS = ("classes", "train_per_class")
_PASSED = {"data_dir", "download", "path", "root"}


def _takes(name: str, loader: Any, options: dict) -> None:
    """Refuse, in one line, source options ``loader`` has no parameter for (a typo in
    ``--data-opt`` would otherwise end in a TypeError, or be ignored without a word)."""
    known: list[str] = []
    if loader is not None:
        params = inspect.signature(loader).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return
        known = [p.name for p in params if p.name not in _PASSED and p.kind is not p.VAR_POSITIONAL]
        # load_folder's first parameter, the folder, is "path": _PASSED has already left it out
    unknown = sorted(set(options) - set(known) - {"seed"})
    if unknown:
        takes = ", ".join(sorted({*known, *COMMON_OPTIONS} - {"seed"}))
        raise DataError(f"{name} has no option {', '.join(unknown)}; its options: {takes}")


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    valid_pct: float = 0.1,
    seed: int = 0,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    resize: str = "squish",
    normalize: str = "standardize",
    download: bool = True,
    **options: Any,
) -> Dataset:
    """Load a dataset by name into memory, split and described.

    Args:
        name: "shapes", "mnist", "affnist", "fashion_mnist", "kmnist", "cifar10", "folder",
            or the path of an image folder.
        data_dir: directory searched first for the files (then ``$DEEPSTART_DATA``, then
            the cache); for "folder", the folder itself.
        valid_pct: share of train held out for validation when there is no valid split;
            0 scores the test split every epoch.
        seed: seeds the split (and generated data such as shapes).
        size, channels, resize: bring every split to this size / channel count.
        normalize: "standardize" (the training split's mean/std, the default) or "unit"
            (pixels / 255 only, in [0, 1], like the Keras tutorials; see docs/training.md).
        download: fetch missing public datasets into the cache.
        **options: source settings, e.g. ``n_train=3000, classes=("circle", "star")`` for
            shapes, ``copies=4, test_pad="corner"`` for affnist. For every other source,
            ``classes`` keeps only those classes (in that order) and ``train_per_class``
            keeps the first N training images of each, to try transfer learning on little
            data.

    Example:
        >>> data = load_dataset("mnist", data_dir="../shared/data/mnist")
        >>> len(data.train), len(data.valid), len(data.test)
        (54000, 6000, 10000)
    """
    options = dict(options)
    if name not in DATASETS and Path(name).exists():
        options["path"], name = str(name), "folder"
    if isinstance(size, int):
        size = (size, size)
    data_dir_s = str(data_dir) if data_dir is not None else None
    if name == "shapes" and size is not None:
        if size[0] != size[1]:
            raise DataError(f"shapes are square; got size {size}")
        options.setdefault("size", size[0])
        size = None
    if name == "affnist":
        # Held out as whole originals (with all their copies), inside the generator.
        options.setdefault("valid_pct", valid_pct)
    if name == "folder":
        options.setdefault("size", size)
        options.setdefault("channels", channels)
        options.setdefault("resize", resize)
    keep = options.pop("classes", None) if name != "shapes" else None
    per_class = options.pop("train_per_class", None)
    train, valid, test, notes = _source(name, data_dir_s, seed, download, options)
    if keep is not None:
        keep = [c.strip() for c in keep.split(",")] if isinstance(keep, str) else list(keep)
        train, valid, test = (_only(s, keep) for s in (train, valid, test))
        notes.append(f"classes: only {', '.join(keep)}")
    if per_class is not None:
        train = _first_per_class(train, int(per_class))
        notes.append(f"train: the first {int(per_class)} images of each class")
    if size is not None or channels is not None:
        target = Preprocess(
            size=tuple(size) if size is not None else train.size,
            channels=channels or train.channels,
            mean=(0.0,),
            std=(1.0,),
            resize=resize,
        )
        train, valid, test = (_conform_opt(s, target) for s in (train, valid, test))
    data = make_dataset(
        name,
        train,
        test,
        valid=valid,
        valid_pct=valid_pct,
        seed=seed,
        resize=resize,
        normalize=normalize,
    )
    data.notes[:0] = notes
    return data


def _only(s: ImageSet | None, keep: list[str]) -> ImageSet | None:
    """The items of ``keep``'s classes, relabelled ``0..len(keep)-1`` in that order."""
    if s is None:
        return None
    missing = [c for c in keep if c not in s.classes]
    if missing:
        raise DataError(f"no class {', '.join(missing)}; the classes are {', '.join(s.classes)}")
    old = torch.tensor([s.classes.index(c) for c in keep])
    mask = s.labels[:, None] == old[None, :]  # (N, K') which kept class each item is
    idx = torch.nonzero(mask.any(dim=1)).flatten()
    labels = mask[idx].float().argmax(dim=1)
    return ImageSet(s.images[idx], labels, list(keep))


def _first_per_class(s: ImageSet, n: int) -> ImageSet:
    if n < 1:
        raise DataError(f"train_per_class must be at least 1, got {n}")
    idx = torch.cat([torch.nonzero(s.labels == c).flatten()[:n] for c in range(len(s.classes))])
    return s.subset(torch.sort(idx).values)


def _conform_opt(s: ImageSet | None, target: Preprocess) -> ImageSet | None:
    return None if s is None else _conform(s, target)


def locate(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """Where ``name``'s files would be read from, for ``deepstart data list``."""
    from deepstart.cache import find_files
    from deepstart.data import cifar10, mnist

    if name == "shapes":
        return "generated"
    if name == "folder":
        return "your directory"
    if name == "cifar10":
        found = cifar10.find_cifar10(data_dir)
    else:
        subdirs = mnist.SUBDIRS["mnist" if name == "affnist" else name]
        found = find_files(mnist.FILES, subdirs, data_dir)
    return str(found) if found else "not found: downloads into the cache on first use"
