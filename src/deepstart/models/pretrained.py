"""Load pretrained weights (torchvision, timm, a checkpoint) into a deepstart model.

:func:`load_pretrained` reads a state dict from a file or URL without ever unpickling code
(``torch.load(..., weights_only=True)``, or safetensors), unwraps the usual containers,
adapts what can be adapted (the classes of the head, the input channels of the first conv)
and tells in a :class:`LoadReport` what loaded and what did not. :func:`pretrained_stats` gives
the normalisation the weights expect, which belongs in the model's ``Preprocess``.

Example:
    >>> model = create_model("resnet18", num_classes=37)
    >>> report = load_pretrained(model, "https://download.pytorch.org/models/resnet18-f37072fd.pth")
    >>> print(report)  # says fc was kept new for the 37 classes, and what else did not fit
    >>> mean, std = report.mean, report.std  # ImageNet's, into the Preprocess
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from deepstart.errors import DeepstartError

# What torchvision's (and most timm) ImageNet weights were trained on: per-channel RGB
# statistics in [0, 1] pixel units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Containers that training scripts wrap a state dict in, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "net")
# Prefixes added by DistributedDataParallel/DataParallel, torch.compile and Lightning-style
# ``self.model`` wrappers; stripped when that makes more keys fit the model.
_PREFIXES = ("module.", "_orig_mod.", "model.")
# torch.hub's convention: ``resnet18-f37072fd.pth`` carries the first hex digits of its sha256.
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")
# Below this fraction of the body loaded, or of the file used (in weights, head excluded), the
# file is taken to be for another architecture: resnet34 weights in a resnet18 fill all of it
# but use only 53% of the file, and the blocks they leave out make their features meaningless.
MIN_MATCH = 0.9


class PretrainedError(DeepstartError, ValueError):
    """Pretrained weights that cannot be read, are unsafe, or do not fit the model."""


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did; ``print(report)`` explains it.

    Attributes:
        source: the path or URL given.
        path: the local file read (in the cache for a URL).
        loaded: model keys set from the file.
        missing: model keys the file has no tensor for (they keep their initial values).
        unexpected: file keys the model has no place for (ignored).
        mismatched: ``(key, file_shape, model_shape)`` of keys in both with different shapes
            (not loaded).
        head_skipped: head keys not loaded because the file's head is for other classes.
        notes: adaptations made (prefix stripped, input conv adapted, head kept new).
        mean, std: the normalisation the weights expect, for the model's input channels, or
            None when unknown (keep the training data's statistics).
    """

    source: str
    path: Path
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    head_skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def complete(self) -> bool:
        """Every model key but a replaced head loaded, and every file key used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"pretrained weights from {self.source}: loaded {len(self.loaded)} tensors"]
        lines += [f"  {note}" for note in self.notes]
        for title, keys in (
            ("missing from the file (kept their initial values)", self.missing),
            ("in the file but not in the model (ignored)", self.unexpected),
        ):
            if keys:
                lines.append(f"  {len(keys)} {title}: {_short(keys)}")
        if self.mismatched:
            shapes = [f"{k} {list(a)} vs model {list(b)}" for k, a, b in self.mismatched]
            lines.append(f"  {len(shapes)} with another shape (not loaded): {_short(shapes)}")
        if self.mean is not None:
            lines.append(f"  the weights expect inputs normalised with mean {_fmt(self.mean)}")
            lines[-1] += f", std {_fmt(self.std or ())}"
        return "\n".join(lines)


def _short(items: list[str], n: int = 8) -> str:
    more = f", ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def load_pretrained(
    model: nn.Module,
    source: str | os.PathLike,
    *,
    sha256: str | None = None,
    strict_head: bool = False,
    strict: bool = False,
    min_match: float = MIN_MATCH,
    quiet: bool = False,
) -> LoadReport:
    """Load pretrained weights into ``model`` (in place) and report what happened.

    ``source`` is a local ``.safetensors`` file, a ``.pth``/``.pt``/``.bin`` file (read with
    ``torch.load(weights_only=True)``: a file that needs to run code is refused), or an
    ``http(s)://``/``file://`` URL, downloaded once into ``<cache>/weights/``. The state dict
    may be wrapped (``{"state_dict": ...}``, ``{"model": ...}``) and its keys prefixed
    (``module.`` from DDP). When the file's head (the model's last ``nn.Linear``) is for
    another number of classes, it is skipped and the model keeps its new head; when the file's
    first conv is for 3 channels and the model's is not, its kernels are summed (1 channel) or
    tiled (timm's rule). Any other mismatch is listed in the report.

    Args:
        model: the model to fill, built for the new task (e.g. ``num_classes=37``).
        source: a path or URL.
        sha256: hex digest the file must have; for a URL without it, a hash prefix in the file
            name (``resnet18-f37072fd.pth``, torch.hub's convention) is checked.
        strict_head: raise instead of skipping a head of another shape.
        strict: raise unless every model key (but a skipped head) loads and every file key
            is used.
        min_match: least fraction of the model's body weights that must load, and of the
            file's that must be used (by element count, head excluded); lower it to load a
            deliberately partial file.
        quiet: print nothing while downloading.

    Returns:
        A :class:`LoadReport`; ``report.mean``/``report.std`` is the normalisation to use.
        A :class:`~deepstart.models.registry.Classifier` records ``source`` in its
        ``pretrained_from`` (the divergence guard then lowers LRs as for fine-tuning).

    Raises:
        PretrainedError: the file cannot be fetched or read, is unsafe, fails the hash check,
            or fits the model too little (see ``min_match``). Nothing is loaded then.

    Example:
        >>> model = create_model("resnet18", in_channels=1, num_classes=10)
        >>> report = load_pretrained(model, "weights/resnet18.safetensors")
        >>> report.head_skipped, report.mean
        (['fc.weight', 'fc.bias'], (0.449,))
    """
    path = fetch(source, sha256=sha256, quiet=quiet)
    state = read_state_dict(path)
    report = LoadReport(str(source), path)
    own = model.state_dict()
    state = _strip_prefixes(state, own, report)
    head = _head_prefix(model)
    first_conv = next((k for k, v in own.items() if k.endswith("weight") and v.ndim == 4), None)

    chosen: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            if not _counter(key):
                report.unexpected.append(key)
            continue
        target = own[key]
        if value.shape == target.shape:
            chosen[key] = value
        elif key.startswith(head):
            report.head_skipped.append(key)
        elif key == first_conv and _adaptable(value, target):
            chosen[key] = _adapt_input_conv(value, target.shape[1])
            how = "summed its RGB kernels" if target.shape[1] == 1 else "tiled its kernels"
            report.notes.append(
                f"{key}: the file's first conv takes {value.shape[1]} channels, the model "
                f"{target.shape[1]}: {how} (as fastai and timm do)"
            )
        else:
            report.mismatched.append((key, tuple(value.shape), tuple(target.shape)))
    if report.head_skipped:
        key = report.head_skipped[0]
        theirs, ours = list(state[key].shape), list(own[key].shape)
        if ours[1:] == theirs[1:]:  # same features in, other classes out
            why = f"the file's is for {theirs[0]} classes, the model's for {ours[0]}"
        else:
            why = f"the file's {key} is {theirs}, the model's {ours}"
        if strict_head:
            raise PretrainedError(f"{source}: head {head.rstrip('.')}: {why} (strict_head=True)")
        report.head_skipped = [k for k in own if k.startswith(head)]  # its bias goes too
        for k in report.head_skipped:
            chosen.pop(k, None)
        report.notes.append(f"head {head.rstrip('.')}: {why}: kept the model's new head")
    report.loaded = [k for k in own if k in chosen]
    report.missing = [
        k for k in own if k not in chosen and k not in report.head_skipped and not _counter(k)
    ]
    report.mismatched = [m for m in report.mismatched if m[0] not in report.head_skipped]
    report.mean, report.std = pretrained_stats(model) or (None, None)
    _check_enough(report, own, state, head, strict, min_match, _name(model))
    # Copies into the existing tensors, so the model keeps its device and dtype.
    model.load_state_dict(chosen, strict=False)
    record_source(model, source)
    return report


def record_source(model: nn.Module, source: str | os.PathLike) -> None:
    """Note in a :class:`~deepstart.models.registry.Classifier`'s ``pretrained_from`` where its
    weights came from (the divergence guard lowers LRs as for fine-tuning then); other modules
    have no such field and are left alone."""
    if hasattr(model, "pretrained_from"):
        model.pretrained_from = str(source)


def _check_enough(
    report: LoadReport,
    own: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    head: str,
    strict: bool,
    min_match: float,
    name: str,
) -> None:
    """Raise unless the file fits the model well enough; weights counted in elements, so a
    BatchNorm bias that happens to fit weighs less than a conv kernel that does not."""

    def size(tensors: Mapping[str, torch.Tensor], keys: Iterable[str]) -> int:
        return sum(tensors[k].numel() for k in keys if not k.startswith(head) and not _counter(k))

    body, body_loaded = size(own, own), size(own, report.loaded)
    in_file, used = size(state, state), size(state, report.loaded)
    problem = None
    if not report.loaded:
        problem = "no tensor in the file fits the model"
    elif body_loaded < min_match * body:
        problem = f"the file fills only {body_loaded / body:.0%} of the model's body weights"
    elif used < min_match * in_file:
        problem = f"the model uses only {used / in_file:.0%} of the file's body weights"
    elif strict and not report.complete:
        problem = "strict=True and the file does not match the model exactly"
    if problem:
        raise PretrainedError(f"{problem}: are these weights for a {name}?\n{report}")


def _name(model: nn.Module) -> str:
    arch = getattr(model, "arch", None)
    return str(arch["name"]) if isinstance(arch, dict) else type(model).__name__


def _counter(key: str) -> bool:
    # BatchNorm's step counter: not a weight, absent from older torchvision files.
    return key.endswith("num_batches_tracked")


def _head_prefix(model: nn.Module) -> str:
    """``"fc."`` for a ResNet, ``"classifier.4."`` for a Net: the last ``nn.Linear``'s keys."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return f"{names[-1]}." if names and names[-1] else "\0"  # "\0": no key starts with it


def _adaptable(value: torch.Tensor, target: torch.Tensor) -> bool:
    # Same kernels but for the input channels: (O, C_file, kh, kw) vs (O, C_model, kh, kw).
    return (
        value.ndim == 4
        and value.shape[0] == target.shape[0]
        and value.shape[2:] == target.shape[2:]
    )


def _adapt_input_conv(w: torch.Tensor, channels: int) -> torch.Tensor:
    """``(O, C, kh, kw)`` kernels for ``channels`` inputs: summed for 1 (a grey image is R = G =
    B), else tiled over the channels and scaled by ``C / channels`` (timm's
    ``adapt_input_conv``) so the output keeps its scale."""
    if channels == 1:
        return w.sum(dim=1, keepdim=True)
    reps = -(-channels // w.shape[1])  # ceil
    return w.repeat(1, reps, 1, 1)[:, :channels] * (w.shape[1] / channels)


def pretrained_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The ``(mean, std)`` inputs must be normalised with for the model's pretrained weights.

    The model's family says which (``ResNet.pretrained_stats``: ImageNet's); the statistics
    are adapted to the model's input channels the way :func:`load_pretrained` adapts the first
    conv: averaged over RGB for 1 channel, tiled for other counts. None when the family has
    none (weights from elsewhere: keep the training data's statistics).

    Example:
        >>> pretrained_stats(create_model("resnet18"))
        ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        >>> pretrained_stats(create_model("resnet18", in_channels=1))
        ((0.449,), (0.226,))
    """
    stats = getattr(model, "pretrained_stats", None)
    if stats is None:
        return None
    mean, std = (tuple(float(v) for v in s) for s in stats)
    channels = _in_channels(model) or len(mean)  # unknown: as the weights are
    # Rounded to the 3 digits the published statistics have (0.449, not 0.44900000000000007).
    return adapt_stats(mean, std, channels, digits=3)


def adapt_stats(
    mean: tuple[float, ...], std: tuple[float, ...], channels: int, *, digits: int | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` of RGB weights adapted to ``channels`` inputs the way
    :func:`load_pretrained` adapts the first conv: averaged for grey (its RGB kernels are
    summed, so a grey pixel stands for R = G = B), tiled for other counts (as the kernels
    are). ``digits`` rounds the grey average.

    Example:
        >>> adapt_stats((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1, digits=3)
        ((0.449,), (0.226,))
    """
    if channels == len(mean):
        return mean, std
    if channels == 1:
        m, s = sum(mean) / len(mean), sum(std) / len(std)
        return ((m,), (s,)) if digits is None else ((round(m, digits),), (round(s, digits),))
    return (
        tuple(mean[i % len(mean)] for i in range(channels)),
        tuple(std[i % len(std)] for i in range(channels)),
    )


def _in_channels(model: nn.Module) -> int | None:
    arch = getattr(model, "arch", None)
    if isinstance(arch, dict) and "in_channels" in arch:
        return int(arch["in_channels"])
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


# -- fetching and reading --------------------------------------------------------------------


def fetch(source: str | os.PathLike, *, sha256: str | None = None, quiet: bool = False) -> Path:
    """The local file of ``source``: the path itself, or a URL downloaded into the cache.

    A URL goes to ``<cache>/weights/<url hash>/<file name>`` and is downloaded only once; a
    download that fails its hash check leaves nothing behind.

    Example:
        >>> fetch("https://download.pytorch.org/models/resnet18-f37072fd.pth")
        PosixPath('/home/me/.cache/deepstart/weights/1c3f.../resnet18-f37072fd.pth')
    """
    from deepstart.cache import cache_root, download, sha256_file
    from deepstart.errors import DataError

    text = os.fspath(source)
    scheme = urllib.parse.urlparse(text).scheme
    if scheme not in ("http", "https", "file"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise PretrainedError(f"no pretrained weights file {path}")
        if sha256 is not None and (got := sha256_file(path)) != sha256.lower():
            raise PretrainedError(f"{path} has sha256 {got}, expected {sha256}")
        return path

    name = Path(urllib.parse.unquote(urllib.parse.urlparse(text).path)).name or "weights"
    folder = cache_root() / "weights" / hashlib.sha256(text.encode()).hexdigest()[:16]
    dest = folder / name
    expected = sha256.lower() if sha256 else None
    if dest.is_file() and (expected is None or sha256_file(dest) == expected):
        return dest

    def check_name_hash(tmp: Path) -> str | None:
        m = HASH_IN_NAME.search(name)
        if expected is None and m and not sha256_file(tmp).startswith(m.group(1)):
            return f"sha256 does not start with {m.group(1)}, as the file name says"
        return None

    try:
        return download([text], dest, expected, verify=check_name_hash, quiet=quiet)
    except DataError as e:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # leave nothing in the cache for a failed download
        raise PretrainedError(f"could not fetch pretrained weights: {e}") from e


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or ``torch.save`` file, unwrapped, on the CPU.

    ``torch.save`` files are read with ``weights_only=True``: a file that would run code when
    unpickled is refused. A ``{"state_dict": {...}, "epoch": 3}`` checkpoint gives its state
    dict.

    Example:
        >>> sorted(read_state_dict("resnet18.pth"))[:2]
        ['bn1.bias', 'bn1.num_batches_tracked']
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors" or _is_safetensors(path):
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PretrainedError(
            f"refused to read {path}: it holds Python objects beyond tensors, and unpickling "
            f"them could run code. Save a plain state dict (or safetensors) instead. ({e})"
        ) from None
    except Exception as e:
        raise PretrainedError(f"cannot read pretrained weights from {path}: {e}") from e
    return _unwrap(obj, path)


def _is_safetensors(path: Path) -> bool:
    # An 8-byte little-endian header length, then a JSON header starting with "{".
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping) and not _all_tensors(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise PretrainedError(f"{path} holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:8]))
        raise PretrainedError(f"{path} has no tensors (its keys: {keys or 'none'})")
    return tensors


def _all_tensors(d: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in d.values())


def _strip_prefixes(
    state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], report: LoadReport
) -> dict[str, torch.Tensor]:
    """Drop a wrapper's prefix (``module.``...) from every key, or from the keys that have it
    when that makes more keys fit the model (a wrapper's own ``loss.weight`` keeps its name)."""
    for prefix in _PREFIXES * 2:  # twice: DDP around torch.compile gives module._orig_mod.
        renamed = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}
        n = sum(k.startswith(prefix) for k in state)
        wrapped = n == len(state) and not all(k.startswith(prefix) for k in own)
        fits_better = sum(k in own for k in renamed) > sum(k in own for k in state)
        if n and len(renamed) == len(state) and (wrapped or fits_better):
            report.notes.append(f"stripped the prefix {prefix!r} from {n} keys")
            state = renamed
    return state
