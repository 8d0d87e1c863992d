"""Identical and near-identical pictures: a perceptual hash, and groups by Hamming distance.

A photo folder gathered from the web holds the same picture twice (once per class, as often
as not), resized or re-encoded copies, and copies shared between train and test, which make a
test score read too high. :func:`perceptual_hash` gives every image 64 bits that survive
resizing, JPEG and small brightness changes (a DCT hash: the signs of the lowest 8×8
frequencies of a 32×32 grey thumbnail against their median); :func:`duplicate_groups` joins
images whose hashes differ in at most ``max_distance`` bits, without comparing every pair,
and whose thumbnails correlate above ``min_similarity``.

Example:
    >>> groups = duplicate_groups(data.train.images)
    >>> groups[0]  # indices of one group of look-alikes, the first-listed first
    [17, 2042]
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

HASH_SIDE = 32  # the grey thumbnail the DCT is taken of, in pixels
LOW = 8  # the lowest LOW x LOW frequencies make the hash: 64 bits
# The 64-bit hashes of an MNIST digit and of its copy resized to 40 px and saved as JPEG at
# quality 75 differ in 0 bits (median), 2 (99th percentile), 4 (worst of 500); two different
# digits in 27 on average. 3 catches nearly every copy and leaves 5x fewer candidate pairs to
# check than 4 (124k against 641k among MNIST's 70k digits).
MAX_DISTANCE = 3
# ... and a candidate pair counts only if its 32x32 grey thumbnails correlate this well: MNIST
# digits of one class reach 0.989 with a close hash; a copy resized and saved as JPEG at
# quality 75 keeps above 0.98 at 28 px, above 0.99 from 32 px photos up.
MIN_SIMILARITY = 0.99
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _dct_matrix(n: int) -> torch.Tensor:
    """``(n, n)`` orthonormal DCT-II matrix: ``D @ x`` is the DCT of the column ``x``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi / n * (i + 0.5) * k) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


def perceptual_hash(images: torch.Tensor, *, chunk: int = 2048) -> np.ndarray:
    """``(N, 8)`` uint8: 64 bits per image of ``(N, C, H, W)`` uint8 ``images``.

    Bit ``(u, v)`` says whether the DCT coefficient at frequency ``(u, v)`` of the image's
    32×32 grey thumbnail is above the median of the 64 lowest ones, so the hash follows the
    picture's coarse layout of light and dark and ignores its size, exposure and fine noise.
    """
    dct = _dct_matrix(HASH_SIDE)
    out = np.zeros((len(images), LOW * LOW // 8), dtype=np.uint8)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    for start in range(0, len(images), chunk):  # chunked: a float copy of 60k images is large
        x = images[start : start + chunk].float()  # (B, C, H, W) in 0..255
        x = (x * luma).sum(1, keepdim=True) if x.shape[1] == 3 else x.mean(1, keepdim=True)
        x = torch.nn.functional.interpolate(
            x, size=(HASH_SIDE, HASH_SIDE), mode="bilinear", align_corners=False, antialias=True
        )[:, 0]  # (B, 32, 32)
        coef = (dct @ x @ dct.T)[:, :LOW, :LOW].reshape(len(x), -1)  # (B, 64)
        bits = coef > coef.median(dim=1, keepdim=True).values
        out[start : start + len(x)] = np.packbits(bits.numpy(), axis=1)
    return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(n, m)`` bits that differ between the ``(n, 8)`` hashes ``a`` and ``(m, 8)`` ``b``."""
    x = a.view(np.uint64)[:, 0][:, None] ^ b.view(np.uint64)[:, 0][None, :]  # (n, m)
    if hasattr(np, "bitwise_count"):  # numpy >= 2: one instruction per pair
        return np.bitwise_count(x)
    return _POPCOUNT[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=2, dtype=np.int32)


def pixel_digest(images: torch.Tensor) -> list[bytes]:
    """A 16-byte digest of each image's exact pixels: equal digests, identical pictures."""
    flat = images.reshape(len(images), -1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def thumbnails(images: torch.Tensor, *, chunk: int = 2048) -> torch.Tensor:
    """``(N, 1024)`` float32: each image as a 32×32 grey thumbnail with zero mean and unit
    norm, so the dot product of two rows is their correlation (1.0: the same picture)."""
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].float()
        x = (x * luma).sum(1, keepdim=True) if x.shape[1] == 3 else x.mean(1, keepdim=True)
        x = torch.nn.functional.interpolate(
            x, size=(HASH_SIDE, HASH_SIDE), mode="bilinear", align_corners=False, antialias=True
        ).reshape(len(x), -1)
        x = x - x.mean(dim=1, keepdim=True)
        out.append(x / x.norm(dim=1, keepdim=True).clamp_min(1e-6))
    return torch.cat(out) if out else torch.zeros(0, HASH_SIDE * HASH_SIDE)


def duplicate_groups(
    images: torch.Tensor | Sequence[torch.Tensor],
    *,
    max_distance: int = MAX_DISTANCE,
    min_similarity: float = MIN_SIMILARITY,
) -> list[list[int]]:
    """Groups (two or more indices, ascending) of look-alike images, ordered by their first
    index: identical pixels, or hashes at most ``max_distance`` bits apart *and* 32×32 grey
    thumbnails correlated at least ``min_similarity`` (two different handwritten 1s can
    share a hash; they are not 0.99 alike pixel for pixel). A chain of look-alikes is one group.

    Every pair is never compared: the 64 bits are cut into ``max_distance + 1`` blocks, and
    two hashes that differ in at most ``max_distance`` bits agree exactly on at least one
    block (pigeonhole), so only hashes sharing a block value are compared.

    ``images`` is one ``(N, C, H, W)`` uint8 tensor or several of one size (splits), indexed
    one after the other, so that no copy of them all is ever made.
    """
    parts = [images] if isinstance(images, torch.Tensor) else list(images)
    n = sum(len(x) for x in parts)
    if n < 2:
        return []
    h = np.concatenate([perceptual_hash(x) for x in parts])
    pairs = [_identical_pairs([d for x in parts for d in pixel_digest(x)])]
    bits = np.unpackbits(h, axis=1)  # (N, 64) of 0/1
    edges = np.linspace(0, bits.shape[1], max_distance + 2).round().astype(int)
    candidates = []
    for lo, hi in itertools.pairwise(edges):
        keys = bits[:, lo:hi].astype(np.int64) @ (1 << np.arange(hi - lo, dtype=np.int64))
        order = np.argsort(keys, kind="stable")
        runs = np.flatnonzero(np.diff(keys[order])) + 1
        candidates += [
            _close_pairs(h, bucket, max_distance)
            for bucket in np.split(order, runs)
            if len(bucket) > 1
        ]
    if candidates:
        # a pair found in several blocks counts once: unique over a * n + b (a < b)
        code = np.unique(np.concatenate(candidates) @ np.array([n, 1], dtype=np.int64))
        found = torch.from_numpy(np.stack([code // n, code % n], axis=1))  # (P, 2)
        thumbs = torch.cat([thumbnails(x) for x in parts])  # (N, 1024): 4 KB an image
        for start in range(0, len(found), 65536):
            part = found[start : start + 65536]
            sim = (thumbs[part[:, 0]] * thumbs[part[:, 1]]).sum(dim=1)
            pairs.append(part[sim >= min_similarity].numpy())
    return _components(n, np.concatenate(pairs))


def _identical_pairs(digests: list[bytes]) -> np.ndarray:
    """``(P, 2)`` index pairs with exactly the same pixels (each to the first such image)."""
    first: dict[bytes, int] = {}
    pairs = []
    for i, d in enumerate(digests):
        j = first.setdefault(d, i)
        if j != i:
            pairs.append((j, i))
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _components(n: int, pairs: np.ndarray) -> list[list[int]]:
    """The groups of two or more that the ``(P, 2)`` pairs join (union-find)."""
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for a, b in pairs.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in np.unique(pairs).tolist():
        groups.setdefault(find(i), []).append(i)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def _close_pairs(h: np.ndarray, bucket: np.ndarray, max_distance: int, chunk: int = 512):
    """``(P, 2)`` pairs ``a < b`` of ``bucket``'s indices at most ``max_distance`` bits apart,
    compared ``chunk`` rows at a time: a bucket of thousands of look-alike digits needs
    ``chunk × len(bucket) × 8`` bytes, not the square."""
    hb = h[bucket]
    out = []
    for start in range(0, len(bucket), chunk):
        d = hamming(hb[start : start + chunk], hb)  # (chunk, len(bucket))
        rows, cols = np.nonzero(d <= max_distance)
        a, b = bucket[rows + start], bucket[cols]
        keep = a < b
        out.append(np.stack([a[keep], b[keep]], axis=1))
    return np.concatenate(out)
