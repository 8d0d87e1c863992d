"""Image-folder datasets: ``root/<class>/*.jpg`` or ``root/{train,valid,test}/<class>/*.jpg``.

:func:`load_folder` finds the layout (stepping into an archive's lone top folder), decodes
every image with :func:`deepstart.data.decode.decode_image` (in threads when the files are
large) into uint8 arrays of one size and channel count, and caches the arrays under
``cache_root()/"folders"`` keyed by the files' names, sizes and mtimes: a second load of the
same tree reads a few ``.npy`` files and decodes nothing, and a tree whose files moved or went
(``deepstart clean``) is decoded afresh. ``FolderData.files`` names the file of every item.
Archives (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``) are extracted safely, once, by
:func:`deepstart.data.archive.extract_archive`. Files that fail to decode are skipped and
reported, and so are images declaring more than :func:`deepstart.data.decode.max_pixels`
pixels (the limit ``predict`` and ``serve`` apply). Symlinked folders are followed, each real
folder at most once per split, so a link looping back (``a/sub -> .``) is skipped with a note.
A tree needs at least two classes. :func:`write_folder` writes an ImageSet back out as PNGs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepstart.cache import atomic_dir, cache_root
from deepstart.data.archive import extract_archive
from deepstart.data.dataset import DataError, ImageSet
from deepstart.data.decode import (
    RESIZE_POLICIES,
    check_size,
    decode_image,
    fit,
    open_image,
    to_channels,
)

# IMAGE_EXTENSIONS is re-exported: predict and notebooks import it from here.
from deepstart.data.layout import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from deepstart.data.layout import descend, find_layout, list_split

_CACHE_VERSION = "folder-v1"  # bump whenever decoding would give different arrays
_CHUNK = 256  # files per thread-pool task: amortises scheduling, still balances the workers
_THREAD_BYTES = 16_384  # mean file size above which decoding in threads pays (see _decode_files)


@dataclass
class FolderData:
    """The splits found in an image folder.

    Attributes:
        train: the ``train/`` split, or the whole tree of a ``root/<class>/`` layout.
        valid: the ``valid/`` (or ``val/``, ``validation/``) split, if there is one.
        test: the ``test/`` split, if there is one.
        classes: sorted class folder names of train; ``classes[label]``.
        skipped: ``(file relative to root, reason)`` for every file that failed to decode.
        root: the directory the layout was found in (inside the extraction for archives).
        notes: decisions worth telling the user (mixed sizes, ignored folders).
        from_cache: True when the arrays came from the decoded cache (nothing was decoded).
        files: each split's image files relative to ``root``, in item order
            (``files["train"][i]`` is the file of ``train[i]``): what cleaning moves.
    """

    train: ImageSet
    valid: ImageSet | None
    test: ImageSet | None
    classes: list[str]
    skipped: list[tuple[str, str]]
    root: Path
    notes: list[str] = field(default_factory=list)
    from_cache: bool = False
    files: dict[str, list[str]] = field(default_factory=dict)


def load_folder(
    path: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    resize: str = "squish",
    quiet: bool = False,
) -> FolderData:
    """Load a class-folder tree (or an archive of one) into memory, decoding it only once.

    Args:
        path: a directory, or a ``.zip``/``.tar``/``.tar.gz``/``.tgz`` archive of one.
        size: ``(H, W)``, or one side for square images; None keeps the images' own size
            (the most common one when sizes are mixed).
        channels: 1 or 3; None gives 3 if any image is colour, else 1.
        resize: how other sizes reach ``size``: "squish" (stretch), "crop" (cover, then
            centre crop) or "pad" (fit inside, black borders).
        quiet: print nothing (skipped files and notes are still returned).

    Example:
        >>> data = load_folder("pets.zip", size=64, resize="crop")
        >>> data.classes, data.train.images.shape
        (['cat', 'dog'], torch.Size([200, 3, 64, 64]))
    """
    path = Path(path).expanduser()
    target = check_size(size)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None, got {channels}")
    if resize not in RESIZE_POLICIES:
        raise DataError(f"unknown resize policy {resize!r}; use one of {RESIZE_POLICIES}")
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.is_file():
        path = extract_archive(path, quiet=quiet)
    root = descend(path)
    notes: list[str] = []
    splits, classes = find_layout(root, notes)
    listing = {s: list_split(root, d, classes, notes) for s, d in splits.items()}

    cache_dir = cache_root() / "folders" / _cache_key(listing, target, channels, resize)
    data = _read_cache(cache_dir, root)
    if data is None:
        start = time.perf_counter()
        n = sum(len(files) for files in listing.values())
        if not quiet and n >= 2000:
            print(f"decoding {n} images in {root} (once; cached afterwards)")
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; the shared limit refuses there
            # (decode.open_image), as predict does. Process-wide: set here, around all threads.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            data = _decode_all(root, splits, listing, classes, target, channels, resize, notes)
        if not quiet and n >= 2000:
            print(f"decoded {n} images in {time.perf_counter() - start:.1f} s")
        _write_cache(cache_dir, data, quiet)
    if not quiet:
        for note in data.notes:
            print(note)
        if data.skipped:
            shown = ", ".join(f"{f} ({why})" for f, why in data.skipped[:3])
            more = ", ..." if len(data.skipped) > 3 else ""
            print(f"skipped {len(data.skipped)} unreadable files in {root}: {shown}{more}")
    return data


@dataclass(frozen=True)
class FolderPeek:
    """What a glance at a folder's training images shows, before decoding any of them.

    Attributes:
        root: the folder (an archive's extracted copy).
        n_images: training image files (by extension).
        classes: class names.
        size: median ``(H, W)`` of the sampled images.
        colour: share of the sampled images that are not greyscale.
        sampled: how many were opened (headers only: cheap).
    """

    root: Path
    n_images: int
    classes: list[str]
    size: tuple[int, int]
    colour: float
    sampled: int


def peek_folder(path: str | os.PathLike, *, sample: int = 48) -> FolderPeek:
    """Sizes and modes of up to ``sample`` training images spread over the classes, read
    from their headers (no pixel is decoded), to choose how to train on the folder.

    Example:
        >>> peek_folder("pets").size
        (375, 500)
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.is_file():
        path = extract_archive(path, quiet=True)
    root = descend(path)
    splits, classes = find_layout(root, [])
    files = list_split(root, splits["train"], classes, [])
    step = max(1, len(files) // sample)
    heights, widths, colour = [], [], 0
    for rel, _, _ in files[::step][:sample]:
        try:
            with open_image(root / rel) as im:
                w, h = im.size
                colour += im.mode not in ("1", "L", "LA", "I", "I;16", "F")
        except (OSError, ValueError):  # unreadable or too large: the full load reports it
            continue
        heights.append(h)
        widths.append(w)
    if not heights:
        raise DataError(f"none of the sampled images in {root} could be read")
    size = (int(np.median(heights)), int(np.median(widths)))
    return FolderPeek(root, len(files), classes, size, colour / len(heights), len(heights))


# --- decoding ---------------------------------------------------------------------------


def _try_decode(path: Path, size, channels, resize) -> np.ndarray | str:
    try:
        return decode_image(path, size=size, channels=channels, resize=resize)
    except Exception as e:  # whatever Pillow raises, the file is unreadable: report, go on
        reason = str(e).replace(f"'{path}'", "").replace(str(path), "").strip(" :")
        return reason or type(e).__name__


def _decode_files(paths: list[Path], size, channels, resize, threads: bool) -> list:
    """Each file's ``(H, W, C)`` uint8 array, or the reason it could not be read."""
    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]

    def work(chunk: list[Path]) -> list[np.ndarray | str]:
        return [_try_decode(p, size, channels, resize) for p in chunk]

    # Measured on 2 cores: for large files Pillow's decode and resize (GIL released) make 2
    # threads ~1.9x faster than 1; for tiny ones (CIFAR's 1 KB JPEGs) Python overhead rules
    # and threads are ~1.4x slower, while processes gain <20% and must pickle every array.
    workers = min(4, os.cpu_count() or 1)
    if not threads or workers == 1 or len(chunks) < 2:
        return [r for chunk in chunks for r in work(chunk)]
    with ThreadPoolExecutor(workers) as pool:
        return [r for chunk in pool.map(work, chunks) for r in chunk]


def _decode_all(root, splits, listing, classes, size, channels, resize, notes) -> FolderData:
    files = [(split, rel, label) for split, items in listing.items() for rel, label, _ in items]
    n_bytes = sum(int(st.split(":")[0]) for items in listing.values() for *_, st in items)
    paths = [root / rel for _, rel, _ in files]
    results = _decode_files(paths, size, channels, resize, n_bytes >= _THREAD_BYTES * len(files))
    skipped = [(rel, r) for (_, rel, _), r in zip(files, results) if isinstance(r, str)]
    good = [  # (split, label, array, file): the decoded ones, in listing order
        (s, label, r, rel) for (s, rel, label), r in zip(files, results) if not isinstance(r, str)
    ]
    for split, items in listing.items():
        lost = {label for _, label, _ in items} - {label for s, label, *_ in good if s == split}
        if lost:
            class_dir = splits[split] / classes[min(lost)]
            raise DataError(f"class folder {class_dir} has only unreadable files")

    channels = channels or (3 if any(a.shape[2] == 3 for _, _, a, _ in good) else 1)
    if size is None:
        sizes = Counter(a.shape[:2] for _, _, a, _ in good)
        size = sizes.most_common(1)[0][0]
        if len(sizes) > 1:
            notes.append(
                f"images in {root} come in {len(sizes)} sizes; all brought to the most common, "
                f"{size[0]}x{size[1]} (H x W), by resize={resize!r} (pass size= to choose)"
            )
    sets, names = {}, {}
    for split in listing:
        part = [(label, a) for s, label, a, _ in good if s == split]
        names[split] = [rel for s, _, _, rel in good if s == split]
        images = np.empty((len(part), channels, *size), dtype=np.uint8)  # (N, C, H, W)
        for j, (_, a) in enumerate(part):
            if a.shape[:2] != size:  # only with size=None and mixed sizes
                a = np.asarray(
                    fit(Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a), size, resize)
                )
            images[j] = to_channels(a, channels).transpose(2, 0, 1)
        labels = torch.tensor([label for label, _ in part], dtype=torch.int64)
        sets[split] = ImageSet(torch.from_numpy(images), labels, list(classes))
    test, valid = sets.get("test"), sets.get("valid")
    return FolderData(sets["train"], valid, test, list(classes), skipped, root, notes, files=names)


# --- decoded cache ----------------------------------------------------------------------


def _cache_key(listing, size, channels, resize) -> str:
    """sha256 over every file's (split, path, size, mtime) and the decoding choices."""
    h = hashlib.sha256()
    params = {"version": _CACHE_VERSION, "size": size, "channels": channels, "resize": resize}
    h.update(json.dumps(params, sort_keys=True).encode())
    for split, files in listing.items():
        for rel, _, st in files:
            h.update(f"{split}\0{rel}\0{st}\n".encode())
    return h.hexdigest()[:32]


def _read_cache(cache_dir: Path, root: Path) -> FolderData | None:
    try:
        meta = json.loads((cache_dir / "meta.json").read_text())
        if meta.get("version") != _CACHE_VERSION or "files" not in meta:
            return None  # "files" came later: a cache without them is decoded again, once
        sets = {}
        for split in meta["splits"]:
            # allow_pickle=False: a cache file can only ever be plain numbers.
            images = np.load(cache_dir / f"{split}_images.npy", allow_pickle=False)
            labels = np.load(cache_dir / f"{split}_labels.npy", allow_pickle=False)
            sets[split] = ImageSet(
                torch.from_numpy(images), torch.from_numpy(labels), meta["classes"]
            )
    except (OSError, ValueError, KeyError, DataError):
        return None  # absent, half-deleted or from another version: decode again
    skipped = [(str(f), str(why)) for f, why in meta["skipped"]]
    files = {str(s): [str(f) for f in fs] for s, fs in meta["files"].items()}
    if any(len(files.get(s, ())) != len(v) for s, v in sets.items()):
        return None
    return FolderData(
        sets["train"], sets.get("valid"), sets.get("test"), list(meta["classes"]),
        skipped, root, list(meta["notes"]), from_cache=True, files=files,
    )  # fmt: skip


def _write_cache(cache_dir: Path, data: FolderData, quiet: bool) -> None:
    """Write into a temp folder and rename it into place, so a killed write is never read."""
    splits = {"train": data.train, "valid": data.valid, "test": data.test}
    meta = {
        "version": _CACHE_VERSION,
        "classes": data.classes,
        "splits": [s for s, v in splits.items() if v is not None],
        "skipped": data.skipped,
        "notes": data.notes,
        "files": data.files,
    }
    try:
        # A folder already there is an unreadable leftover (we only write after a miss).
        with atomic_dir(cache_dir, replace=True) as tmp:
            for split, images in splits.items():
                if images is not None:
                    np.save(tmp / f"{split}_images.npy", images.images.numpy(), allow_pickle=False)
                    np.save(tmp / f"{split}_labels.npy", images.labels.numpy(), allow_pickle=False)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    except OSError as e:  # a read-only or full cache costs speed, not correctness
        if not quiet:
            print(f"could not cache decoded images in {cache_dir}: {e}")


# --- writing ----------------------------------------------------------------------------


def write_folder(images: ImageSet, out_dir: str | os.PathLike, split: str = "train") -> Path:
    """Write an ImageSet as PNGs in ``out_dir/split/<class>/00000.png``; return that folder.

    PNG is lossless, so :func:`load_folder` reads back exactly the same pixels.

    Example:
        >>> write_folder(make_shapes(30), "shapes-png", "train")
        PosixPath('shapes-png/train')
    """
    split_dir = Path(out_dir) / split
    if split_dir.exists() and any(split_dir.iterdir()):
        raise DataError(f"{split_dir} already exists and is not empty; choose a new folder")
    if images.channels not in (1, 3):
        raise DataError(f"PNG folders hold 1 or 3 channels, got {images.channels}")
    counts = [0] * len(images.classes)
    for img, label in zip(images.images.numpy(), images.labels.tolist()):  # img (C, H, W)
        class_dir = split_dir / images.classes[label]
        if counts[label] == 0:
            class_dir.mkdir(parents=True, exist_ok=True)
        pixels = img[0] if images.channels == 1 else img.transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(pixels)).save(class_dir / f"{counts[label]:05d}.png")
        counts[label] += 1
    return split_dir
