"""The preprocessing-mismatch check: do new images look prepared the way training images were?

A model at 99% on its training data and 60% on a test set that was padded differently fails
silently: the labels are right, the pipeline runs, the accuracy is just low. This module makes
that visible. :func:`input_stats` summarises a batch of uint8 images in a few numbers (size,
channels, intensity, background level, where the content sits and how far it spreads);
training stores that summary beside the model, and :func:`check_inputs` compares any new batch
with it and says in words what differs and by how much.

How "differs" is decided. Each compared quantity is a per-image feature (the image's mean
intensity, its contrast, its border level, its centre of mass, its content radius). Over the
training images it has a mean ``mu_t`` and a spread ``sd_t`` (std across images). A new batch
of ``n`` images, with mean ``mu_n``, is flagged when

    |mu_n - mu_t| > max(0.5 * sd_t, floor) + 3 * se,   se = sqrt(sd_t²/n_t + sd²/n)

where ``sd`` is the larger of the two spreads. The first term is the effect size that matters
(half the natural spread of individual training images: a test split drawn from the same
source moves the mean by a few hundredths of that), with a small absolute floor so that
features that never vary in training (MNIST's black border) do not flag rounding; the second
term is sampling noise, so a handful of images needs a bigger difference than ten thousand,
and a single image is in effect tested as an outlier (about 3 ``sd_t`` out).

Example:
    >>> stats = input_stats(data.train.images)  # JSON-able dict, stored in model.json
    >>> for w in check_inputs(stats, data.test.images, what="test images"):
    ...     print("warning:", w)
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["STATS_VERSION", "check_inputs", "input_stats"]

STATS_VERSION = 1

MAX_IMAGES = 2000  # a sample this big pins every mean down to a few % of its spread
PIXEL_BUDGET = 30_000_000  # fewer images when they are large (224x224 RGB: ~200 images)
CHUNK_PIXELS = 4_000_000  # pixel values converted to float at a time (16 MB)
DEADBAND = 4.0 / 255.0  # differences from the background below this are noise, not content

EFFECT = 0.5  # flag a shift of the mean by half the training spread of single images...
Z = 3.0  # ...plus three standard errors of the difference of the two means


def _sample(images: torch.Tensor, max_images: int) -> torch.Tensor:
    """At most ``max_images`` images, evenly spaced (so a class-sorted set is still covered)."""
    n = len(images)
    per_image = max(int(images[0].numel()), 1) if n else 1
    k = min(n, max_images, max(16, PIXEL_BUDGET // per_image))
    if k >= n:
        return images
    idx = torch.linspace(0, n - 1, k).round().long().to(images.device)
    return images[idx]


def _per_image(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image features of a ``(B, C, H, W)`` uint8 chunk, all float64 on the CPU.

    Returns ``mean``, ``std``, ``background`` as ``(B, C)`` in [0, 1] units, and ``cx``,
    ``cy``, ``radius`` ``(B,)`` in pixels (NaN for a blank image), ``mass`` ``(B,)``.
    """
    b, _, h, w = x.shape
    f = x.to(torch.float32) / 255.0  # (B, C, H, W) in [0, 1]
    mean = f.mean(dim=(2, 3))  # (B, C)
    std = f.std(dim=(2, 3), correction=0) if h * w > 1 else torch.zeros_like(mean)
    # The background is the median of the 1-pixel frame: robust to a digit touching the edge.
    border = torch.cat(
        [f[:, :, 0, :], f[:, :, -1, :], f[:, :, 1:-1, 0], f[:, :, 1:-1, -1]], dim=2
    )  # (B, C, 2H + 2W - 4)
    background = border.median(dim=2).values  # (B, C)
    # Content is whatever differs from the background, in either direction (so dark ink on
    # white paper has a centre too), summed over channels.
    weight = ((f - background[:, :, None, None]).abs() - DEADBAND).clamp_min(0).sum(dim=1)
    mass = weight.sum(dim=(1, 2))  # (B,)
    ys = torch.arange(h, dtype=torch.float32, device=x.device).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float32, device=x.device).view(1, 1, w)
    safe = mass.clamp_min(1e-12)
    cy = (weight * ys).sum(dim=(1, 2)) / safe  # (B,) row of the centre of mass, pixels
    cx = (weight * xs).sum(dim=(1, 2)) / safe
    d2 = (ys - cy.view(b, 1, 1)) ** 2 + (xs - cx.view(b, 1, 1)) ** 2  # (B, H, W) px²
    radius = ((weight * d2).sum(dim=(1, 2)) / safe).sqrt()  # RMS distance of content, px
    blank = mass <= 0
    nan = torch.tensor(float("nan"), device=x.device)
    cx, cy, radius = (torch.where(blank, nan, v) for v in (cx, cy, radius))
    out = {
        "mean": mean,
        "std": std,
        "background": background,
        "cx": cx,
        "cy": cy,
        "radius": radius,
        "mass": mass,
    }
    return {k: v.detach().to("cpu", torch.float64) for k, v in out.items()}


def _ms(v: torch.Tensor, dim: int = 0) -> tuple[list[float] | float, list[float] | float]:
    """Mean and std (across images) of a feature, ignoring NaN (blank images)."""
    ok = ~torch.isnan(v)
    cnt = ok.sum(dim=dim).clamp_min(1)
    z = torch.where(ok, v, torch.zeros_like(v))
    m = z.sum(dim=dim) / cnt
    var = (torch.where(ok, (v - m) ** 2, torch.zeros_like(v))).sum(dim=dim) / cnt
    s = var.sqrt()
    if m.ndim == 0:
        return round(float(m), 6), round(float(s), 6)
    return [round(float(a), 6) for a in m], [round(float(a), 6) for a in s]


def input_stats(images: torch.Tensor, *, max_images: int = MAX_IMAGES) -> dict:
    """A JSON-able summary of how a batch of images is prepared.

    Args:
        images: ``(N, C, H, W)`` uint8, on any device. At most ``max_images`` of them (evenly
            spaced, fewer when they are large) are looked at, so this stays cheap.
        max_images: the sample size cap.

    Returns:
        A dict: ``n`` (images looked at), ``size`` ``[H, W]``, ``channels``; per channel in
        [0, 1] units: ``mean`` and ``std`` of the pixels, ``image_mean`` / ``image_std``
        (mean and spread across images of each image's mean and std), ``background`` and
        ``background_spread`` (each image's border median); in pixels: ``centre`` ``[x, y]``
        (mean centre of mass of what differs from the background, 0-based pixel indices, so
        a centred 40×40 image has 19.5) and ``centre_spread``, ``radius`` and
        ``radius_spread`` (RMS distance of the content from its centre); ``blank`` (share of
        images with no content). ``centre``/``radius`` are None when every image is blank.

    Example:
        >>> s = input_stats(torch.zeros(8, 1, 28, 28, dtype=torch.uint8))
        >>> s["size"], s["channels"], s["background"], s["blank"]
        ([28, 28], 1, [0.0], 1.0)
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"input_stats wants (N, C, H, W) images, got {_shape_of(images)}")
    if images.dtype != torch.uint8:
        raise ValueError(f"input_stats wants uint8 pixels (0-255), got {images.dtype}")
    n_all, c, h, w = images.shape
    x = _sample(images, max_images)
    chunk = max(1, CHUNK_PIXELS // max(c * h * w, 1))
    parts = [_per_image(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    if not parts:
        raise ValueError("input_stats needs at least one image")
    feat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    n = len(x)
    image_mean, image_mean_sd = _ms(feat["mean"])
    image_std, image_std_sd = _ms(feat["std"])
    background, background_sd = _ms(feat["background"])
    # Pixel std of the whole sample from per-image means and stds (law of total variance).
    pix_var = (feat["std"] ** 2).mean(0) + feat["mean"].var(0, correction=0)
    blank = float((feat["mass"] <= 0).double().mean())
    if blank < 1.0:
        cx, cx_sd = _ms(feat["cx"])
        cy, cy_sd = _ms(feat["cy"])
        radius, radius_sd = _ms(feat["radius"])
        centre, centre_sd = [cx, cy], [cx_sd, cy_sd]
    else:
        centre = centre_sd = radius = radius_sd = None
    return {
        "version": STATS_VERSION,
        "n": n,
        "n_total": int(n_all),
        "size": [int(h), int(w)],
        "channels": int(c),
        "mean": image_mean,
        "std": [round(float(v), 6) for v in pix_var.sqrt()],
        "image_mean": {"mean": image_mean, "std": image_mean_sd},
        "image_std": {"mean": image_std, "std": image_std_sd},
        "background": background,
        "background_spread": background_sd,
        "centre": centre,
        "centre_spread": centre_sd,
        "radius": radius,
        "radius_spread": radius_sd,
        "blank": round(blank, 6),
    }


def _shape_of(x: Any) -> str:
    shape = getattr(x, "shape", None)
    return str(tuple(shape)) if shape is not None else type(x).__name__


def _differs(
    mu_new: float, sd_new: float, n_new: int, mu_tr: float, sd_tr: float, n_tr: int, floor: float
) -> bool:
    """Whether two means differ by more than the effect size that matters plus noise."""
    sd = max(sd_new, sd_tr)
    se = math.sqrt(sd_tr**2 / max(n_tr, 1) + sd**2 / max(n_new, 1))
    return abs(mu_new - mu_tr) > max(EFFECT * sd_tr, floor) + Z * se


def _grey(v: list[float] | float) -> float:
    """A per-channel list as one number (its average), for comparing across channel counts."""
    return float(sum(v) / len(v)) if isinstance(v, list) else float(v)


def _channel_pairs(
    a: list[float] | float, b: list[float] | float
) -> list[tuple[str, float, float]]:
    """``(label, new, train)`` per channel, or one grey pair when the channel counts differ."""
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        if len(a) == 1:
            return [("", a[0], b[0])]
        names = ["red", "green", "blue"] if len(a) == 3 else [f"channel {i}" for i in range(len(a))]
        return [(f" ({nm})", x, y) for nm, x, y in zip(names, a, b)]
    return [("", _grey(a), _grey(b))]


def _compare_channels(
    new_m: list[float],
    new_sd: list[float],
    tr_m: list[float],
    tr_sd: list[float],
    n_new: int,
    n_tr: int,
    floor: float,
) -> list[tuple[str, float, float, float]]:
    """``(label, new mean, train mean, train spread)`` of each channel whose mean differs."""
    means, sds = _channel_pairs(new_m, tr_m), _channel_pairs(new_sd, tr_sd)
    return [
        (label, m_n, m_t, s_t)
        for (label, m_n, m_t), (_, s_n, s_t) in zip(means, sds)
        if _differs(m_n, s_n, n_new, m_t, s_t, n_tr, floor=floor)
    ]


def _size(s: dict) -> str:
    return f"{s['size'][1]}×{s['size'][0]}"  # width×height, as image sizes are said


def _channels(c: int) -> str:
    return {1: "1 channel (grey)", 3: "3 channels (RGB)"}.get(c, f"{c} channels")


def check_inputs(
    train_stats: dict | None, images: torch.Tensor, *, what: str = "new images"
) -> list[str]:
    """Compare ``images`` with the training images' :func:`input_stats`; say what differs.

    Args:
        train_stats: the dict :func:`input_stats` gave for the training images (stored in
            ``model.json`` as ``input_stats``), or None (nothing to compare: no warnings).
        images: ``(N, C, H, W)`` uint8, the batch about to be evaluated or predicted.
        what: how to name ``images`` in the messages, e.g. "test images".

    Returns:
        One human-readable warning per difference (an empty list when the batch looks
        prepared like the training images): size, channel count, where the content sits,
        how far it spreads, background level (with a hint when the images look inverted),
        mean intensity and contrast.

    Example:
        >>> train = input_stats(data.train.images)
        >>> check_inputs(train, shifted_test_images, what="test images")
        ['test images are centred at (14.0, 14.1) of 40×40; training images at (19.6, 19.5) ...']
    """
    if not train_stats:
        return []
    new = input_stats(images)
    tr = train_stats
    n_new, n_tr = new["n"], int(tr.get("n", 1))
    warnings: list[str] = []

    same_size = list(new["size"]) == list(tr["size"])
    if not same_size:
        warnings.append(
            f"{what} are {_size(new)} pixels; training images were {_size(tr)} "
            "(the model sees them resized, which moves and scales the content)"
        )
    if new["channels"] != tr["channels"]:
        warnings.append(
            f"{what} have {_channels(new['channels'])}; training images had "
            f"{_channels(tr['channels'])}"
        )

    # Where the content sits. Across sizes, compare in fractions of the frame.
    if new.get("centre") is not None and tr.get("centre") is not None:
        hn, wn = new["size"]
        ht, wt = tr["size"]
        scale = (wt / wn, ht / hn)  # new pixels -> training pixels, per axis
        off = []
        for axis in (0, 1):
            mu_n = new["centre"][axis] * scale[axis]
            sd_n = new["centre_spread"][axis] * scale[axis]
            mu_t, sd_t = tr["centre"][axis], tr["centre_spread"][axis]
            off.append(_differs(mu_n, sd_n, n_new, mu_t, sd_t, n_tr, floor=1.0))
        if any(off):
            cx, cy = new["centre"]
            tx, ty = tr["centre"]
            sx, sy = tr["centre_spread"]
            dist = math.hypot(cx * scale[0] - tx, cy * scale[1] - ty)
            warnings.append(
                f"{what} are centred at ({cx:.1f}, {cy:.1f}) of {_size(new)}; training images "
                f"at ({tx:.1f}, {ty:.1f}) of {_size(tr)} ((x, y) centre of mass in pixels: "
                f"{dist:.1f} px apart, where single training images vary by "
                f"±({sx:.1f}, {sy:.1f}) px) — padded or cropped differently?"
            )
        rn, rt = new["radius"] * (scale[0] * scale[1]) ** 0.5, tr["radius"]
        rsd_n = new["radius_spread"] * (scale[0] * scale[1]) ** 0.5
        if _differs(rn, rsd_n, n_new, rt, tr["radius_spread"], n_tr, floor=0.1 * rt):
            warnings.append(
                f"{what} have their content spread {rn:.1f} px around its centre (RMS, in "
                f"training pixels); training images {rt:.1f} ± {tr['radius_spread']:.1f} px — "
                "scaled or resized differently?"
            )
    elif new.get("centre") is None and tr.get("centre") is not None:
        warnings.append(f"{what} are blank: every pixel equals the border level")

    # Background level: each image's border median.
    inverted = False
    for label, b_n, b_t, _ in _compare_channels(
        new["background"],
        new["background_spread"],
        tr["background"],
        tr["background_spread"],
        n_new,
        n_tr,
        floor=0.03,
    ):
        # Inverted: the new background sits where the old one would after x -> 1 - x.
        inverted = inverted or (abs(b_n - (1 - b_t)) < 0.1 and abs(b_n - b_t) > 0.5)
        hint = (
            "inverted (dark content on a light background, or the reverse)?"
            if inverted
            else "a different background, scaling or normalisation?"
        )
        warnings.append(
            f"{what} have a background level{label} of {b_n * 255:.0f}/255; training images "
            f"{b_t * 255:.0f}/255 — {hint}"
        )

    # Intensity: each image's mean (brightness) and its pixels' std (contrast).
    for key, noun in (("image_mean", "a mean intensity"), ("image_std", "a contrast")):
        a, b = new[key], tr[key]
        for label, m_n, m_t, s_t in _compare_channels(
            a["mean"], a["std"], b["mean"], b["std"], n_new, n_tr, floor=0.02
        ):
            unit = "pixel std within an image" if key == "image_std" else "mean pixel"
            warnings.append(
                f"{what} have {noun}{label} of {m_n:.3f} ({unit}, pixels in [0, 1]); "
                f"training images {m_t:.3f} ± {s_t:.3f} — "
                + ("inverted?" if inverted else "scaled or normalised differently?")
            )
    return warnings
