"""Batched on-device augmentations, pure functions of (images, generator).

Every function takes a normalised float batch ``x`` of shape ``(N, C, H, W)`` on any device and
a ``torch.Generator``, draws one set of random parameters *per image* from that generator, and
returns a new batch of the same shape, dtype and device. Nothing loops over images in Python.

The geometric parts (random resized crop, zoom, shift, rotation, flip) are 3x3 affine matrices
in normalised coordinates (``[-1, 1]``, pixel centres, ``align_corners=False``). An
:class:`Augmentation` multiplies them into one matrix per image and resamples the batch once
with ``grid_sample`` — one pass, one interpolation, so less blur (as fastai does on the GPU).
Lighting (brightness, contrast) is applied afterwards in pixel units, which is why it needs the
``mean``/``std`` the batch was normalised with. Those deterministic pieces (matrices,
:func:`warp`, :func:`adjust_lighting`, test-time :class:`View` s) live in
:mod:`deepstart.data.transforms`; this module draws their random parameters.

Example:
    >>> aug = make_augment("photo", mean=data.mean, std=data.std)
    >>> batches = Batches(data.train, 128, mean=data.mean, std=data.std, augment=aug)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from deepstart.data.dataset import Augment
from deepstart.data.transforms import (
    MODES,
    PADDINGS,
    View,
    adjust_lighting,
    apply_view,  # noqa: F401  (re-exported: TTA takes it from here, with View)
    rotation_matrix,
    scale_matrix,
    warp,
)
from deepstart.errors import ConfigError

# -- the random spec -----------------------------------------------------------------------------


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    """``(N,)`` float32 uniform draws in ``[lo, hi)`` on the generator's device."""
    return torch.rand(n, generator=gen, device=gen.device) * (hi - lo) + lo


@dataclass(frozen=True)
class Augmentation:
    """A random augmentation: which transforms, and how strong. Calling it augments a batch.

    The geometric transforms are drawn per image and fused into one affine resampling; a
    horizontal flip alone is done exactly (a mirror, no resampling).

    Attributes:
        flip: mirror left-right with probability 0.5 (never for digits or text).
        crop_scale: random resized crop: the crop's area as a fraction of the image, drawn
            uniformly in this range (None: no crop). The crop is resized to the input size.
        crop_ratio: the crop's width/height in pixels, drawn log-uniformly in this range.
        degrees: rotation drawn uniformly in ``[-degrees, degrees]``.
        zoom: scale drawn uniformly in this range (> 1 zooms in), at a random centre that
            keeps the view inside the image (or the image inside the view when < 1).
        shift: translation drawn uniformly in ``[-shift, shift]`` of the width / height.
        whole_pixels: shift by whole pixels only (drawn uniformly from ``-k..k``, ``k =
            round(shift * size)``), so a shifted image keeps its pixels exactly. A sub-pixel
            shift interpolates, i.e. blurs, every training image while the test images stay
            sharp: on CIFAR-10 that costs accuracy (airbench and the ResNet-9 runs shift by
            whole pixels). Only with ``shift`` alone (and ``flip``): other warps resample.
        brightness: added to every pixel, drawn in ``[-brightness, brightness]`` (pixel units).
        contrast: contrast factor drawn in ``[1 - contrast, 1 + contrast]``.
        padding: "reflection", "border" or "zeros" (black pixels) for what comes from outside.
        mode: "bilinear" or "nearest" interpolation.
        alternate_flip: with ``flip``, mirror each training image in every other epoch
            instead of on a fresh coin each time (airbench): ``Batches`` mirrors a fixed
            random half of the images in even epochs and the other half in odd ones, so any
            two epochs in a row show every image both ways. Called without that (a lone
            batch), the flip is a coin as usual.

    Example:
        >>> aug = Augmentation(flip=True, degrees=10, brightness=0.2)
        >>> y = aug(x, torch.Generator().manual_seed(0), mean=data.mean, std=data.std)
    """

    flip: bool = False
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    degrees: float = 0.0
    zoom: tuple[float, float] = (1.0, 1.0)
    shift: float = 0.0
    whole_pixels: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    padding: str = "reflection"
    mode: str = "bilinear"
    alternate_flip: bool = False

    def __post_init__(self) -> None:
        if self.padding not in PADDINGS:
            raise ConfigError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        if not 0 < self.zoom[0] <= self.zoom[1]:
            raise ConfigError(f"zoom must satisfy 0 < lo <= hi, got {self.zoom}")
        if min(self.degrees, self.shift, self.brightness, self.contrast) < 0 or self.contrast > 1:
            raise ConfigError("degrees, shift, brightness must be >= 0 and contrast in [0, 1]")
        if self.whole_pixels and (
            self.crop_scale is not None or self.degrees > 0 or self.zoom != (1.0, 1.0)
        ):
            raise ConfigError("whole_pixels shifts go with flip and shift only (no crop/turn/zoom)")
        if self.alternate_flip and not self.flip:
            raise ConfigError("alternate_flip needs flip=True")

    @property
    def warps(self) -> bool:
        """Whether anything beyond a flip moves pixels (so a resampling is needed)."""
        return bool(
            self.crop_scale is not None
            or self.degrees > 0
            or self.zoom != (1.0, 1.0)
            or self.shift > 0
        )

    @property
    def lights(self) -> bool:
        return self.brightness > 0 or self.contrast > 0

    def sample_theta(
        self,
        n: int,
        height: int,
        width: int,
        gen: torch.Generator,
        flips: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Draw ``(N, 3, 3)`` output-to-input matrices (None when nothing warps).

        Applied to the output coordinates in turn: flip, rotate, zoom, shift, then the crop
        maps into the input — i.e. the picture is cropped, shifted, zoomed, rotated, flipped.
        ``flips`` ``(N,)`` bool, when given, says which images to mirror instead of a coin.
        """
        if not self.warps and not self.flip:
            return None
        one, zero = torch.ones(n, device=gen.device), torch.zeros(n, device=gen.device)
        theta = torch.eye(3, device=gen.device).expand(n, 3, 3)
        if self.flip:
            mirror = flips.to(gen.device) if flips is not None else _uniform(gen, n, 0, 1) < 0.5
            sx = torch.where(mirror, -one, one)
            theta = scale_matrix(sx, one, zero, zero)
        if self.degrees > 0:
            angle = _uniform(gen, n, -self.degrees, self.degrees)
            theta = rotation_matrix(angle, height, width) @ theta
        if self.zoom != (1.0, 1.0):
            s = _uniform(gen, n, *self.zoom)
            # Centre drawn so a zoomed-in view stays inside the image: |t| <= 1 - 1/s.
            tx = (1 - 1 / s) * _uniform(gen, n, -1, 1)
            ty = (1 - 1 / s) * _uniform(gen, n, -1, 1)
            theta = scale_matrix(1 / s, 1 / s, tx, ty) @ theta
        if self.shift > 0 and self.whole_pixels:
            # k pixels of a side of n pixels are 2k/n in normalised units; round() of a
            # uniform draw on [-k - 1/2, k + 1/2] is uniform on the integers -k..k.
            kx, ky = round(self.shift * width), round(self.shift * height)
            tx = 2 / width * _uniform(gen, n, -kx - 0.5, kx + 0.5).round()
            ty = 2 / height * _uniform(gen, n, -ky - 0.5, ky + 0.5).round()
            theta = scale_matrix(one, one, tx, ty) @ theta
        elif self.shift > 0:
            # A shift of a fraction f of the width is 2f in normalised units.
            tx = 2 * _uniform(gen, n, -self.shift, self.shift)
            ty = 2 * _uniform(gen, n, -self.shift, self.shift)
            theta = scale_matrix(one, one, tx, ty) @ theta
        if self.crop_scale is not None:
            area = _uniform(gen, n, *self.crop_scale)  # fraction of H * W
            log_r = _uniform(gen, n, math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
            ratio = torch.exp(log_r)  # crop width / height, in pixels
            cw = torch.sqrt(area * ratio * height / width).clamp(max=1.0)  # fraction of W
            ch = torch.sqrt(area / ratio * width / height).clamp(max=1.0)  # fraction of H
            cx = (1 - cw) * _uniform(gen, n, -1, 1)  # centre, normalised
            cy = (1 - ch) * _uniform(gen, n, -1, 1)
            theta = scale_matrix(cw, ch, cx, cy) @ theta
        return theta

    def sample_lighting(
        self, n: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Draw ``(brightness, contrast)``, each ``(N,)`` (None when lighting is off)."""
        if not self.lights:
            return None
        b = _uniform(gen, n, -self.brightness, self.brightness)
        c = _uniform(gen, n, 1 - self.contrast, 1 + self.contrast)
        return b, c

    def __call__(
        self,
        x: torch.Tensor,
        gen: torch.Generator,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        flips: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Augment ``x`` ``(N, C, H, W)`` (normalised by ``mean``/``std``; None: pixels).

        ``flips`` ``(N,)`` bool: which images to mirror (``Batches`` passes them for
        ``alternate_flip``); None draws a coin per image.
        """
        n, _, h, w = x.shape
        theta = self.sample_theta(n, h, w, gen, flips)  # (flips count only with flip)
        if theta is not None and self.warps:
            # Whole-pixel shifts (and flips) land every sample on a pixel centre: "nearest"
            # copies those pixels exactly, where bilinear would only come within rounding.
            mode = "nearest" if self.whole_pixels else self.mode
            x = warp(x, theta, mode=mode, padding=self.padding, mean=mean, std=std)
        elif theta is not None:  # a flip alone: mirror exactly instead of resampling
            flipped = (theta[:, 0, 0] < 0).to(x.device).view(n, 1, 1, 1)
            x = torch.where(flipped, x.flip(3), x)
        light = self.sample_lighting(n, gen)
        if light is not None:
            x = adjust_lighting(x, *light, mean=mean, std=std)
        return x

    def views(self, height: int, width: int) -> list[View] | None:
        """Fixed test-time views standing for this augmentation's draws, or None.

        Only mirrors and whole-pixel shifts have a few views that cover them: the image
        and its mirror carry half the weight, and both shifted one pixel diagonally each
        way the other half (airbench's test-time views); a flip alone is the image and its
        mirror, equally weighted. Anything that resamples (turns, zooms, crops, sub-pixel
        shifts) or changes lighting has no such set: None, and TTA draws random copies.

        Example:
            >>> [v.mirror for v in PRESETS["flip"].views(32, 32)]
            [False, True]
        """
        if self.crop_scale is not None or self.degrees > 0 or self.zoom != (1.0, 1.0):
            return None
        if self.lights or (self.shift > 0 and not self.whole_pixels):
            return None
        mirrors = (False, True) if self.flip else (False,)
        steps = min(round(self.shift * width), round(self.shift * height), 1)
        if steps == 0:  # mirrors only (or nothing at all)
            return [View(m, 0, 0, 1 / len(mirrors)) for m in mirrors] if self.flip else None
        out = [View(m, 0, 0, 0.5 / len(mirrors)) for m in mirrors]
        for m in mirrors:
            out += [View(m, d, d, 0.25 / len(mirrors)) for d in (1, -1)]
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Augmentation:
        d = dict(d)
        for key in ("crop_scale", "crop_ratio", "zoom"):
            if d.get(key) is not None:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


# -- one transform at a time -------------------------------------------------------------------


def flip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p`` (exact, no resampling).

    Example:
        >>> flip(x, torch.Generator().manual_seed(0))
    """
    flipped = (_uniform(gen, len(x), 0, 1) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flipped, x.flip(3), x)


def random_resized_crop(
    x: torch.Tensor,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Crop a random part of each image (area fraction in ``scale``, width/height in
    ``ratio``) and resize it back to the input size.

    Example:
        >>> random_resized_crop(x, gen, scale=(0.5, 1.0))
    """
    return Augmentation(crop_scale=scale, crop_ratio=ratio)(x, gen)


def rotate(
    x: torch.Tensor,
    gen: torch.Generator,
    degrees: float = 10.0,
    *,
    padding: str = "reflection",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Rotate each image by an angle drawn in ``[-degrees, degrees]``.

    Example:
        >>> rotate(x, gen, 10, padding="zeros", mean=data.mean, std=data.std)
    """
    return Augmentation(degrees=degrees, padding=padding)(x, gen, mean=mean, std=std)


def zoom(
    x: torch.Tensor,
    gen: torch.Generator,
    scale: tuple[float, float] = (1.0, 1.1),
    *,
    padding: str = "reflection",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Zoom each image by a factor drawn in ``scale`` (> 1 zooms in) at a random centre.

    Example:
        >>> zoom(x, gen, (0.9, 1.1), padding="zeros", mean=data.mean, std=data.std)
    """
    return Augmentation(zoom=scale, padding=padding)(x, gen, mean=mean, std=std)


def lighting(
    x: torch.Tensor,
    gen: torch.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Random brightness (added, pixel units) and contrast (factor) per image; see
    :func:`adjust_lighting`.

    Example:
        >>> lighting(x, gen, 0.2, 0.2, mean=data.mean, std=data.std)
    """
    return Augmentation(brightness=brightness, contrast=contrast)(x, gen, mean=mean, std=std)


# -- presets -----------------------------------------------------------------------------------

PRESETS: dict[str, Augmentation | None] = {
    "none": None,
    "flip": Augmentation(flip=True),
    # airbench-style for 32x32 photos: mirror, and shift by whole pixels up to 1/16 (2 px),
    # edges reflected. (Sub-pixel shifts up to 4 px, this preset before 2026-11-23, blurred
    # the training images; see whole_pixels.)
    "cifar": Augmentation(flip=True, shift=0.0625, whole_pixels=True),
    # The same, each image mirrored in every other epoch (airbench's alternating flip).
    "cifar-alt": Augmentation(flip=True, shift=0.0625, whole_pixels=True, alternate_flip=True),
    # fastai aug_transforms-like for photos of things.
    "photo": Augmentation(
        flip=True,
        crop_scale=(0.35, 1.0),
        degrees=10.0,
        brightness=0.2,
        contrast=0.2,
        padding="reflection",
    ),
    # Handwriting on black: small moves only, never a mirror (a mirrored 2 is no 2), and
    # what comes in from outside is black, like the background.
    "digits": Augmentation(degrees=10.0, zoom=(0.9, 1.1), shift=0.1, padding="zeros"),
}

PRESET_DOCS: dict[str, str] = {
    "none": "no augmentation",
    "flip": "mirror left-right (p=0.5), exact",
    "cifar": "flip + shift by whole pixels up to 1/16 of the size, reflected edges (photos)",
    "cifar-alt": "cifar, each image mirrored in every other epoch instead of at random",
    "photo": "random resized crop (35-100% area) + flip + rotate +-10 deg + lighting +-0.2",
    "digits": "rotate +-10 deg + zoom 0.9-1.1 + shift +-10%, black edges, no flip",
}


def list_augments() -> dict[str, str]:
    """The preset names and what each does.

    Example:
        >>> sorted(list_augments())
        ['cifar', 'cifar-alt', 'digits', 'flip', 'none', 'photo']
    """
    return dict(PRESET_DOCS)


def resolve_augmentation(spec: str | Augmentation | dict | None) -> Augmentation | None:
    """A preset name, an :class:`Augmentation`, its dict, or None -> the spec (None: off)."""
    if spec is None or isinstance(spec, Augmentation):
        return spec
    if isinstance(spec, dict):
        return Augmentation.from_dict(spec)
    if spec not in PRESETS:
        raise ConfigError(f"unknown augmentation {spec!r}; use one of {', '.join(PRESETS)}")
    return PRESETS[spec]


def make_augment(
    spec: str | Augmentation | dict | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> Augment | None:
    """The ``Augment`` (``(x, generator) -> x``) for ``Batches``, bound to the normalisation
    the batches use; None for "none".

    Example:
        >>> aug = make_augment("photo", data.mean, data.std)
        >>> Batches(data.train, 128, mean=data.mean, std=data.std, augment=aug)
    """
    aug = resolve_augmentation(spec)
    if aug is None:
        return None
    return BoundAugment(aug, tuple(mean), tuple(std))


class BoundAugment:
    """An :class:`Augmentation` bound to the normalisation of the batches it augments:
    ``(x, generator) -> x``, and ``flips=`` for ``alternate_flip`` (which ``Batches`` reads
    to decide who is mirrored)."""

    def __init__(self, aug: Augmentation, mean: tuple[float, ...], std: tuple[float, ...]):
        self.augmentation, self.mean, self.std = aug, mean, std

    @property
    def alternate_flip(self) -> bool:
        return self.augmentation.alternate_flip

    def __call__(
        self, x: torch.Tensor, gen: torch.Generator, flips: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.augmentation(x, gen, mean=self.mean, std=self.std, flips=flips)
