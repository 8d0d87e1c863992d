"""In-memory image sets and the batches cut from them on the training device.

Every source decodes its files into an :class:`ImageSet` (uint8, ``(N, C, H, W)``) and stops
there. Conversion to float, normalisation and augmentation happen per batch, on the device,
in :class:`Batches` — so the data path is the same for every source and every device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from deepstart.data.show import DatasetDisplay, ImageSetDisplay, to_display  # noqa: F401
from deepstart.device import to_channels_last
from deepstart.errors import DataError, DeepstartError  # noqa: F401  (DataError re-exported)


@dataclass(repr=False)  # ImageSetDisplay's: sizes, never pixel values
class ImageSet(ImageSetDisplay):
    """Images and labels held in memory.

    Attributes:
        images: ``(N, C, H, W)`` uint8 tensor.
        labels: ``(N,)`` int64 tensor of class indices.
        classes: class names, ``classes[label]``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"ImageSet wants (N, C, H, W) uint8 images, got {tuple(self.images.shape)} "
                f"{self.images.dtype}"
            )
        self.labels = self.labels.to(torch.int64)
        if len(self.labels) != len(self.images):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, index: torch.Tensor | Sequence[int]) -> ImageSet:
        index = torch.as_tensor(index, dtype=torch.int64)
        return ImageSet(self.images[index], self.labels[index], list(self.classes))

    def split(self, valid_pct: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """Split off ``valid_pct`` of the items, stratified by class, reproducibly by seed."""
        if not 0.0 < valid_pct < 1.0:
            raise DataError(f"valid_pct must be in (0, 1), got {valid_pct}")
        gen = torch.Generator().manual_seed(seed)
        train_idx, valid_idx = [], []
        for c in range(len(self.classes)):
            idx = torch.nonzero(self.labels == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)]
            n_valid = round(len(idx) * valid_pct)
            if len(idx) > 1:
                n_valid = min(max(n_valid, 1), len(idx) - 1)
            valid_idx.append(idx[:n_valid])
            train_idx.append(idx[n_valid:])
        train = torch.sort(torch.cat(train_idx)).values
        valid = torch.sort(torch.cat(valid_idx)).values
        return self.subset(train), self.subset(valid)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the pixels, in [0, 1] units."""
        n, c = len(self), self.channels
        total = torch.zeros(c, dtype=torch.float64)
        total_sq = torch.zeros(c, dtype=torch.float64)
        # Chunked so a 50k x 3 x 32 x 32 set never needs a float64 copy of itself.
        for start in range(0, n, 4096):
            chunk = self.images[start : start + 4096].to(torch.float64) / 255.0
            total += chunk.sum(dim=(0, 2, 3))
            total_sq += (chunk * chunk).sum(dim=(0, 2, 3))
        count = max(n * self.size[0] * self.size[1], 1)
        mean = total / count
        std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
        return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


@dataclass(frozen=True)
class Preprocess:
    """What is done to an image before the model sees it; decided once, from the training data.

    It travels with the model into the run directory and bundle so that evaluation and
    prediction apply exactly what training applied.

    Attributes:
        size: ``(H, W)`` the model is fed.
        channels: 1 (grey) or 3 (RGB).
        resize: how other sizes are brought to ``size``: "squish", "crop" or "pad".
        mean, std: per-channel normalisation, in [0, 1] pixel units.
    """

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "squish"

    def to_dict(self) -> dict:
        return {
            "size": list(self.size),
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(
            size=(int(d["size"][0]), int(d["size"][1])),
            channels=int(d["channels"]),
            mean=tuple(float(m) for m in d["mean"]),
            std=tuple(float(s) for s in d["std"]),
            resize=str(d.get("resize", "squish")),
        )


@dataclass(repr=False)  # DatasetDisplay's: one line; a table and pictures in a notebook
class Dataset(DatasetDisplay):
    """The splits of one dataset, ready for a Learner.

    ``valid`` is what is scored every epoch; ``test`` is kept apart for the final score (it
    may be ``None``). ``mean``/``std`` come from the training split only.
    """

    name: str
    train: ImageSet
    valid: ImageSet
    test: ImageSet | None
    classes: list[str]
    mean: list[float]
    std: list[float]
    notes: list[str] = field(default_factory=list)
    resize: str = "squish"

    def __post_init__(self) -> None:
        # Scored every epoch: with no images its loss is no measurement at all, and a run
        # would keep (best.pt) whatever epoch that nothing happened to favour.
        for split in ("train", "valid"):
            if len(getattr(self, split)) == 0:
                which = "training" if split == "train" else "validation"
                raise DataError(f"{self.name}: the {which} split has no images")

    @property
    def channels(self) -> int:
        return self.train.channels

    @property
    def size(self) -> tuple[int, int]:
        return self.train.size

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(
            size=self.size,
            channels=self.channels,
            mean=tuple(self.mean),
            std=tuple(self.std),
            resize=self.resize,
        )

    def summary(self) -> dict:
        splits = {"train": self.train, "valid": self.valid, "test": self.test}
        return {
            "name": self.name,
            "classes": list(self.classes),
            "channels": self.channels,
            "size": list(self.size),
            "mean": self.mean,
            "std": self.std,
            "splits": {k: len(v) for k, v in splits.items() if v is not None},
            "class_counts": {k: v.class_counts() for k, v in splits.items() if v is not None},
            "notes": list(self.notes),
        }


def make_dataset(
    name: str,
    train: ImageSet,
    test: ImageSet | None,
    *,
    valid: ImageSet | None = None,
    valid_pct: float = 0.1,
    seed: int = 0,
    resize: str = "squish",
    normalize: str = "standardize",
) -> Dataset:
    """Assemble the splits: use a given valid split, else hold out ``valid_pct`` of train.

    ``normalize`` decides the Preprocess's mean/std: "standardize" (the training split's
    per-channel mean and std, so inputs have mean ~0 and std ~1) or "unit" (mean 0, std 1:
    pixels are only divided by 255, into [0, 1], as the Keras/TensorFlow tutorials do).

    With ``valid_pct == 0`` and no valid split the test split is scored every epoch (as the
    Keras examples do); a note says so, because choosing anything by that score leaks the test
    set into the model.
    """
    notes: list[str] = []
    if valid is None:
        if valid_pct > 0:
            train, valid = train.split(valid_pct, seed)
            notes.append(f"valid: {valid_pct:.0%} of train held out (seed {seed})")
            if len(valid) == 0:  # each class keeps its only image for training
                raise DataError(
                    f"{name}: no validation images: every class has at most one training "
                    f"image, so holding out {valid_pct:g} of each leaves none; add images (two "
                    "per class at least) or give a validation split"
                )
        elif test is not None:
            valid = test
            notes.append("valid is the test split (valid_pct=0): its score is not a clean test")
        else:
            raise DataError(f"{name}: no valid or test split and valid_pct=0")
    if normalize == "standardize":
        mean, std = train.mean_std()
    elif normalize == "unit":  # x / 255 and nothing else: the tutorials' [0, 1] pixels
        mean, std = [0.0] * train.channels, [1.0] * train.channels
        notes.append("normalize: unit (pixels / 255, in [0, 1]; not standardised)")
    else:
        raise DataError(f"normalize must be standardize or unit, got {normalize!r}")
    return Dataset(name, train, valid, test, list(train.classes), mean, std, notes, resize)


# An augmentation takes a normalised float batch (N, C, H, W) on the device and a generator and
# returns a batch; all its randomness comes from the generator (see deepstart.augment).
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of epoch ``epoch``: a pure function of (seed, epoch), so resumed and
    distributed runs see the same order."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen)


class Batches:
    """Batches of an ImageSet held on ``device`` as uint8, normalised per batch.

    In a distributed run (``world`` > 1) batch ``i`` is this ``rank``'s part of global batch
    ``i``: the global batch holds ``batch_size * world`` items of the epoch's permutation (the
    same on every rank) and is cut into ``world`` equal parts.

    Example:
        >>> batches = Batches(data.train, 128, device="cpu", mean=data.mean, std=data.std)
        >>> for x, y in batches: ...  # x (B, C, H, W) float32, y (B,) int64
    """

    def __init__(
        self,
        images: ImageSet,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        augment: Augment | None = None,
        channels_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.device = torch.device(device)
        self.rank, self.world = int(rank), int(world)
        self.images = images.images.to(self.device)  # (N, C, H, W) uint8, moved once
        self.labels = images.labels.to(self.device)
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.augment = augment
        self.channels_last = channels_last
        self.epoch, self.start = 0, 0
        c = self.images.shape[1]
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device)
        if len(self.mean) != c:
            raise DataError(f"mean has {len(self.mean)} channels, images have {c}")
        # Fold /255 and normalisation into one multiply-add per pixel.
        self._scale = (1.0 / (255.0 * self.std)).view(1, c, 1, 1)
        self._shift = (-self.mean / self.std).view(1, c, 1, 1)
        self._aug_gen = torch.Generator(device=self.device)
        # Alternating flips (an augmentation's ``alternate_flip``): a fixed random half of
        # the images is mirrored in even epochs, the other half in odd ones.
        self._flip_half: torch.Tensor | None = None
        if getattr(augment, "alternate_flip", False):
            coins = torch.rand(len(self.images), generator=torch.Generator().manual_seed(seed))
            self._flip_half = (coins < 0.5).to(self.device)

    def __len__(self) -> int:
        n, g = len(self.images), self.batch_size * self.world
        return n // g if self.drop_last else -(-n // g)

    @property
    def num_items(self) -> int:
        """Items this rank sees in one pass (all of them in a single process)."""
        n, g = len(self.images), self.batch_size * self.world
        if self.world == 1:
            return n
        if self.drop_last:
            return len(self) * self.batch_size
        rest = n - (n // g) * g  # the short last global batch, cut as tensor_split cuts it
        mine = rest // self.world + (1 if self.rank < rest % self.world else 0)
        return (n // g) * self.batch_size + mine

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the shuffle (and augmentations) of ``epoch``; the next iteration begins at
        batch ``start`` (to redo the rest of an epoch after a restore) and replays exactly the
        batches ``start..`` of a full pass, augmentations included."""
        self.epoch = int(epoch)
        self.start = int(start)

    @staticmethod
    def augment_seed(seed: int, epoch: int, batch: int) -> int:
        """The generator seed for the augmentations of batch ``batch`` of ``epoch``: a pure
        function of the three, so any batch can be replayed on its own."""
        return ((int(seed) * 1_000_003 + int(epoch)) * 1_000_033 + int(batch) + 1) % 2**63

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return x_uint8.to(torch.float32) * self._scale + self._shift

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        if self.shuffle:
            order = epoch_permutation(n, self.seed, self.epoch).to(self.device)
        else:
            order = None
        start, self.start = self.start, 0  # a start applies to one pass only
        g = self.batch_size * self.world
        for i in range(start, len(self)):
            sl = slice(i * g, min((i + 1) * g, n))
            idx: torch.Tensor | slice
            if self.world > 1:  # this rank's part of the global batch
                idx = (
                    order[sl] if order is not None else torch.arange(n, device=self.device)[sl]
                ).tensor_split(self.world)[self.rank]
                if len(idx) == 0:
                    continue  # a short last batch (evaluation only) may leave a rank nothing
            else:
                idx = sl if order is None else order[sl]
            xb, yb = self.images[idx], self.labels[idx]
            x = self.normalize(xb)
            if self.augment is not None:
                # Seeded per batch, not per epoch: a pass started at batch k (a restore)
                # draws the same augmentations as batch k of a full pass.
                # Each rank draws its own (rank 0 the single-process draws).
                seed = self.seed + 7919 * self.rank
                self._aug_gen.manual_seed(self.augment_seed(seed, self.epoch, i))
                if self._flip_half is None:
                    x = self.augment(x, self._aug_gen)
                else:
                    flips = self._flip_half[idx] ^ bool(self.epoch % 2)
                    x = self.augment(x, self._aug_gen, flips=flips)
            yield (to_channels_last(x) if self.channels_last else x), yb


def to_uint8_nchw(array: np.ndarray) -> torch.Tensor:
    """Bring an ``(N, H, W)`` or ``(N, H, W, C)`` uint8 array to an ``(N, C, H, W)`` tensor."""
    if array.ndim == 3:
        array = array[:, None, :, :]
    elif array.ndim == 4 and array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))


def conform_images(images: ImageSet, prep: Preprocess) -> ImageSet:
    """Bring ``images`` to the channel count and size of ``prep`` (a no-op when they match).

    Grey becomes RGB by repeating the channel; RGB becomes grey by ITU-R 601 luma. Sizes
    follow ``prep.resize``: "squish" stretches, "crop" scales the short side then centre
    crops, "pad" scales the long side then pads with black.
    """
    x = images.images  # (N, C, H, W) uint8
    if x.shape[1] != prep.channels:
        if x.shape[1] == 1 and prep.channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        elif x.shape[1] == 3 and prep.channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            raise DataError(f"cannot convert {x.shape[1]}-channel images to {prep.channels}")
    if tuple(x.shape[2:]) != tuple(prep.size):
        x = resize_batch(x, prep.size, prep.resize)
    if x is images.images:
        return images
    return ImageSet(x, images.labels, list(images.classes))


def resize_batch(x: torch.Tensor, size: tuple[int, int], policy: str = "squish") -> torch.Tensor:
    """Resize ``(N, C, H, W)`` uint8 images to ``size`` by ``policy`` (squish, crop, pad)."""
    th, tw = size
    h, w = x.shape[2:]
    if policy == "squish":
        new_h, new_w = th, tw
    elif policy == "crop":
        s = max(th / h, tw / w)
        new_h, new_w = max(th, round(h * s)), max(tw, round(w * s))
    elif policy == "pad":
        s = min(th / h, tw / w)
        new_h, new_w = min(th, round(h * s)), min(tw, round(w * s))
    else:
        raise DataError(f"unknown resize policy {policy!r}; use squish, crop or pad")
    out = []
    for start in range(0, len(x), 1024):  # chunked: a float copy of 60k images is large
        chunk = x[start : start + 1024].float()
        if (new_h, new_w) != (h, w):
            chunk = torch.nn.functional.interpolate(
                chunk, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
            )
        out.append(chunk.round().clamp(0, 255).to(torch.uint8))
    y = torch.cat(out) if out else x.new_zeros((0, x.shape[1], new_h, new_w))
    if policy == "crop":
        top, left = (new_h - th) // 2, (new_w - tw) // 2
        y = y[:, :, top : top + th, left : left + tw]
    elif policy == "pad":
        top, left = (th - new_h) // 2, (tw - new_w) // 2
        y = torch.nn.functional.pad(y, (left, tw - new_w - left, top, th - new_h - top))
    return y.contiguous()
