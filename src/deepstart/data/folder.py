"""Image-folder datasets: ``root/<class>/*.jpg`` or ``root/{train,valid,test}/<class>/*.jpg``.

:func:`load_folder` finds the layout (stepping into an archive's lone top folder), decodes
every image with Pillow (in threads when the files are large) into uint8 arrays of one size and
channel count, and caches the arrays under ``cache_root()/"folders"`` keyed by the files'
names, sizes and mtimes: a second load of the same tree reads a few ``.npy`` files and decodes
nothing.
Archives (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``) are extracted safely, once, into
``cache_root()/"extracted"``. Files that fail to decode are skipped and reported.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from deepstart.data.cache import cache_root
from deepstart.data.dataset import DataError, ImageSet

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
RESIZE_POLICIES = ("squish", "crop", "pad")
# Accepted directory names of each split, compared case-insensitively.
SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "val", "validation"), "test": ("test",)}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_CACHE_VERSION = "folder-v1"  # bump whenever decoding would give different arrays
_CHUNK = 256  # files per thread-pool task: amortises scheduling, still balances the workers
_THREAD_BYTES = 16_384  # mean file size above which decoding in threads pays (see _decode_files)
_IGNORED = (".", "__MACOSX")  # hidden entries and macOS zip debris are never data


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
    """

    train: ImageSet
    valid: ImageSet | None
    test: ImageSet | None
    classes: list[str]
    skipped: list[tuple[str, str]]
    root: Path
    notes: list[str] = field(default_factory=list)
    from_cache: bool = False


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
    target = _check_size(size)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None, got {channels}")
    if resize not in RESIZE_POLICIES:
        raise DataError(f"unknown resize policy {resize!r}; use one of {RESIZE_POLICIES}")
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.is_file():
        path = extract_archive(path, quiet=quiet)
    root = _descend(path)
    notes: list[str] = []
    splits, classes = _find_layout(root, notes)
    listing = {s: _list_split(root, d, classes) for s, d in splits.items()}

    cache_dir = cache_root() / "folders" / _cache_key(listing, target, channels, resize)
    data = _read_cache(cache_dir, root)
    if data is None:
        start = time.perf_counter()
        n = sum(len(files) for files in listing.values())
        if not quiet and n >= 2000:
            print(f"decoding {n} images in {root} (once; cached afterwards)")
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


def _check_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, numbers.Integral) and v > 0 for v in hw):
        raise DataError(f"size must be a positive int or (H, W), got {size!r}")
    return int(hw[0]), int(hw[1])


# --- layout -----------------------------------------------------------------------------


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(_IGNORED))


def _descend(root: Path) -> Path:
    """Step into a lone top folder (an archive's ``cifar10-jpeg/``) until the layout shows."""
    while True:
        entries = [p for p in root.iterdir() if not p.name.startswith(_IGNORED)]
        if len(entries) != 1 or not entries[0].is_dir():
            return root
        child = entries[0]
        is_split = any(child.name.lower() in names for names in SPLIT_NAMES.values())
        # A lone folder without subfolders is the one class of a one-tree layout.
        if is_split or not _subdirs(child):
            return root
        root = child


def _find_layout(root: Path, notes: list[str]) -> tuple[dict[str, Path], list[str]]:
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
    return found, classes


def _list_split(root: Path, split_dir: Path, classes: list[str]) -> list[tuple[str, int, str]]:
    """``(file relative to root, label, "size:mtime_ns")`` of every image, sorted by class
    then name; the stat goes into the cache key, so it is read here, once."""
    base = split_dir.relative_to(root).as_posix()
    prefix = "" if base == "." else f"{base}/"
    files = []
    for label, name in enumerate(classes):
        if not (split_dir / name).is_dir():
            continue  # a class missing from valid/test is fine
        found = sorted(_walk_images(split_dir / name, f"{prefix}{name}/"))
        if not found:
            raise DataError(f"class folder {split_dir / name} is empty (no image files)")
        files.extend((rel, label, st) for rel, st in found)
    return files


def _walk_images(d: Path, prefix: str) -> list[tuple[str, str]]:
    out = []
    with os.scandir(d) as entries:
        for e in entries:
            if e.name.startswith(_IGNORED):
                continue
            if e.is_dir():
                out.extend(_walk_images(Path(e.path), f"{prefix}{e.name}/"))
            elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file():
                st = e.stat()
                out.append((prefix + e.name, f"{st.st_size}:{st.st_mtime_ns}"))
    return out


# --- decoding ---------------------------------------------------------------------------


def decode_image(
    path: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    resize: str = "squish",
) -> np.ndarray:
    """Decode one image file exactly as :func:`load_folder` does.

    The EXIF orientation is applied, alpha is composited over black, any mode (palette,
    CMYK, 16-bit, ...) becomes grey or RGB, and ``size`` is reached by ``resize``.

    Returns:
        ``(H, W, C)`` uint8; C is ``channels``, or the image's own 1 or 3 when None.

    Example:
        >>> decode_image("cat.jpg", size=64, channels=3).shape
        (64, 64, 3)
    """
    size = _check_size(size)
    with Image.open(path) as im:
        if size is not None and im.format == "JPEG":
            # JPEG decodes at 1/2, 1/4 or 1/8 scale almost for free; draft never goes below
            # the requested size, and a square request is safe under any EXIF rotation.
            im.draft(None, (max(size), max(size)))
        ImageOps.exif_transpose(im, in_place=True)
        im = _canonical_mode(im)
        if size is not None:
            im = fit(im, size, resize)
        return to_channels(np.asarray(im), channels)


def _canonical_mode(im: Image.Image) -> Image.Image:
    """The image as L, LA, RGB or RGBA (the modes Pillow resizes well)."""
    mode, transparent = im.mode, "transparency" in im.info
    if mode in ("L", "LA", "RGB", "RGBA") and not transparent:
        return im
    if mode.startswith("I") or mode == "F":
        # 16/32-bit grey: Pillow's convert("L") clips at 255; scale the range instead.
        a = np.asarray(im, dtype=np.float64)
        a = a * 255 if mode == "F" and a.max() <= 1 else a
        a = a / 257 if mode.startswith("I;16") or (mode == "I" and a.max() > 255) else a
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    alpha = transparent or mode in ("PA", "La", "RGBa")
    if mode in ("P", "PA"):
        palette = np.asarray(im.getpalette() or [0, 0, 0], dtype=np.uint8).reshape(-1, 3)
        colour = bool((palette != palette[:, :1]).any())
    else:
        colour = mode not in ("1", "L", "LA", "La")
    return im.convert(("RGBA" if alpha else "RGB") if colour else ("LA" if alpha else "L"))


def fit(im: Image.Image, size: tuple[int, int], resize: str = "squish") -> Image.Image:
    """Bring ``im`` to ``size`` = (H, W) by "squish", "crop" (centre) or "pad" (black).

    Example:
        >>> fit(Image.new("RGB", (64, 32)), (16, 16), "pad").size
        (16, 16)
    """
    (h, w), (w0, h0) = size, im.size
    if (h0, w0) == (h, w):
        return im
    if resize == "pad":
        scale = min(w / w0, h / h0)
        inner = fit(im, (max(1, round(h0 * scale)), max(1, round(w0 * scale))))
        out = Image.new(im.mode, (w, h), 0)  # black, and transparent if there is alpha
        out.paste(inner, ((w - inner.width) // 2, (h - inner.height) // 2))
        return out
    box = (0.0, 0.0, float(w0), float(h0))
    if resize == "crop":
        # The centred window of the source with the target's aspect ratio.
        scale = max(w / w0, h / h0)
        cw, ch = w / scale, h / scale
        box = ((w0 - cw) / 2, (h0 - ch) / 2, (w0 + cw) / 2, (h0 + ch) / 2)
    if w * h < (box[2] - box[0]) * (box[3] - box[1]):
        # Downscale: Lanczos, after a cheap integer reduce() down to 3x the target.
        return im.resize((w, h), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    return im.resize((w, h), Image.Resampling.BICUBIC, box=box)


def to_channels(pixels: np.ndarray, channels: int | None) -> np.ndarray:
    """``(H, W)`` or ``(H, W, 1-4)`` uint8 to ``(H, W, channels)``, alpha over black.

    Example:
        >>> to_channels(np.full((2, 2, 4), 200, np.uint8), 1)[0, 0]  # 78% alpha over black
        array([157], dtype=uint8)
    """
    a = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if a.shape[2] in (2, 4):
        alpha = a[:, :, -1:].astype(np.uint16)
        a = ((a[:, :, :-1] * alpha + 127) // 255).astype(np.uint8)
    if channels == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif channels == 1 and a.shape[2] == 3:
        # Pillow's own RGB -> L weights (ITU-R 601-2 luma, 16-bit fixed point).
        rgb = a.astype(np.uint32)
        luma = rgb[:, :, 0] * 19595 + rgb[:, :, 1] * 38470 + rgb[:, :, 2] * 7471 + 0x8000
        a = (luma >> 16).astype(np.uint8)[:, :, None]
    return a


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
    good = [(s, label, r) for (s, _, label), r in zip(files, results) if not isinstance(r, str)]
    for split, items in listing.items():
        lost = {label for _, label, _ in items} - {label for s, label, _ in good if s == split}
        if lost:
            class_dir = splits[split] / classes[min(lost)]
            raise DataError(f"class folder {class_dir} has only unreadable files")

    channels = channels or (3 if any(a.shape[2] == 3 for *_, a in good) else 1)
    if size is None:
        sizes = Counter(a.shape[:2] for *_, a in good)
        size = sizes.most_common(1)[0][0]
        if len(sizes) > 1:
            notes.append(
                f"images in {root} come in {len(sizes)} sizes; all brought to the most common, "
                f"{size[0]}x{size[1]} (H x W), by resize={resize!r} (pass size= to choose)"
            )
    sets = {}
    for split in listing:
        part = [(label, a) for s, label, a in good if s == split]
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
    return FolderData(sets["train"], valid, test, list(classes), skipped, root, notes)


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
        if meta.get("version") != _CACHE_VERSION:
            return None
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
    return FolderData(
        sets["train"], sets.get("valid"), sets.get("test"), list(meta["classes"]),
        skipped, root, list(meta["notes"]), from_cache=True,
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
    }
    tmp = None
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.", dir=cache_dir.parent))
        for split, images in splits.items():
            if images is not None:
                np.save(tmp / f"{split}_images.npy", images.images.numpy(), allow_pickle=False)
                np.save(tmp / f"{split}_labels.npy", images.labels.numpy(), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if cache_dir.exists():  # an unreadable leftover (we only write after a miss)
            shutil.rmtree(cache_dir)
        os.rename(tmp, cache_dir)
    except OSError as e:  # a read-only or full cache costs speed, not correctness
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not quiet:
            print(f"could not cache decoded images in {cache_dir}: {e}")


# --- archives ---------------------------------------------------------------------------


def extract_archive(archive: str | os.PathLike, *, quiet: bool = False) -> Path:
    """Extract a ``.zip``/``.tar``/``.tar.gz``/``.tgz`` safely into the cache, once.

    Members with absolute paths or ``..``, links leaving the archive and device files are
    refused (:class:`DataError`, nothing kept). The extraction goes to a temp folder renamed
    into place at the end, so an interrupted one is never mistaken for a complete one.

    Returns:
        ``cache_root()/"extracted"/<stem>-<hash of path, size, mtime>``.

    Example:
        >>> extract_archive("pets.tar.gz").name
        'pets-3f2a9c0d1e4b'
    """
    archive = Path(archive).expanduser()
    name = archive.name.lower()
    suffix = next((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise DataError(f"{archive} is neither a folder nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")
    st = archive.stat()
    ident = f"{archive.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    stem = archive.name[: -len(suffix)]
    dest = cache_root() / "extracted" / f"{stem}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"
    if dest.is_dir():
        return dest
    if not quiet:
        print(f"extracting {archive} -> {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        if suffix == ".zip":
            _extract_zip(archive, tmp)
        else:
            _extract_tar(archive, tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
            shutil.rmtree(tmp)  # another process finished the same extraction first
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError)):
            raise DataError(f"cannot extract {archive}: {e}") from e
        raise
    return dest


def _check_member(archive: Path, name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise DataError(f"{archive}: refusing unsafe member {name!r} (absolute path or '..')")


def _safe_tar_members(tar: tarfile.TarFile, archive: Path):
    for m in tar:
        _check_member(archive, m.name)
        if m.isdev():
            raise DataError(f"{archive}: refusing device or fifo member {m.name!r}")
        if m.issym() or m.islnk():
            # Symlinks resolve from their own folder, hard links from the archive root.
            base = posixpath.dirname(m.name) if m.issym() else ""
            target = posixpath.normpath(posixpath.join(base, m.linkname))
            if m.linkname.startswith("/") or target == ".." or target.startswith("../"):
                raise DataError(f"{archive}: refusing link {m.name!r} -> {m.linkname!r}")
        yield m


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        members = _safe_tar_members(tar, archive)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: a second line of defence
            tar.extractall(dest, members=members, filter="data")
        else:
            tar.extractall(dest, members=members)


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_member(archive, info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no type
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise DataError(f"{archive}: refusing link or special member {info.filename!r}")
            out = zf.extract(info, dest)
            if not info.is_dir():
                # Keep the archived mtime, so a re-extraction maps to the same decoded cache.
                t = time.mktime((*info.date_time, 0, 0, -1))
                os.utime(out, (t, t))


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
