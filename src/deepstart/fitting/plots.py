"""Pictures of a function fit: the fit at chosen steps over the truth (a PNG grid and an
animated GIF), the loss curve, the error ``|f(x) - y|`` along x, and a comparison overlay.

Inputs are plain arrays along a sorted x grid, so these work for any 1-D fit; matplotlib is
imported only when a picture is drawn, and draws without pyplot (:mod:`deepstart.figures`:
nothing is left open, nothing is shown twice in a notebook); the GIF is put together with
Pillow.

Example:
    >>> frames = [Frame(0, "start", y0), Frame(300, "adam", y1)]
    >>> fit_progress_grid(x, frames, "fit_progress.png", truth=np.sin(x))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from deepstart.interpret.plots import _figures, _save

TRUTH = dict(color="#9a9a9a", lw=3.0, alpha=0.6)  # the function itself, drawn under the fit
FIT = dict(color="#1f5fa8", lw=1.4)
SAMPLES = dict(color="#e07b00", s=4, alpha=0.5, lw=0)
PHASE_COLORS = ("#6639ba", "#1a7f37", "#cf222e", "#8a6d00")
TARGET = 1e-3  # the max error the defaults aim for, drawn as a dashed line
FLOOR = 1e-9  # |error| is drawn on a log scale; an exact 0 is shown here


class Frame(NamedTuple):
    """The fit at one moment: after ``step`` optimizer steps, in phase ``label``."""

    step: int
    label: str
    y: np.ndarray  # (M,) the model's output on the picture grid


def _limits(truth: np.ndarray | None, samples: tuple | None, frames: Sequence[Frame]) -> tuple:
    """Fixed y limits for every frame: the truth and samples with a margin (fits far off
    leave the picture rather than squash it)."""
    parts = [truth] if truth is not None else []
    if samples is not None:
        parts.append(np.asarray(samples[1]))
    if not parts:
        parts = [f.y for f in frames]
    lo = float(min(np.nanmin(p) for p in parts))
    hi = float(max(np.nanmax(p) for p in parts))
    pad = 0.15 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _draw_fit(ax, x, frame: Frame, truth, samples, ylim) -> Any:
    if truth is not None:
        ax.plot(x, truth, **TRUTH)
    if samples is not None:
        ax.scatter(samples[0], samples[1], **SAMPLES)
    (line,) = ax.plot(x, frame.y, **FIT)
    ax.set_ylim(*ylim)
    ax.set_xlim(float(x[0]), float(x[-1]))
    return line


def _frame_title(frame: Frame, truth: np.ndarray | None) -> str:
    text = f"step {frame.step} ({frame.label})"
    if truth is not None:
        text += f"  max err {np.nanmax(np.abs(frame.y - truth)):.1e}"
    return text


def fit_progress_grid(
    x: np.ndarray,
    frames: Sequence[Frame],
    path: str | Path,
    *,
    truth: np.ndarray | None = None,
    samples: tuple[np.ndarray, np.ndarray] | None = None,
    title: str = "",
) -> Path:
    """Save a grid of small plots, one per frame: the fit (blue) over the truth (grey) and
    the training samples (orange dots), titled with its step and max error.

    Example:
        >>> fit_progress_grid(x, frames, "fit_progress.png", truth=np.sin(x))
    """
    n = len(frames)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = _figures().subplots(
        rows, cols, figsize=(4.2 * cols, 2.8 * rows), sharex=True, sharey=True
    )
    ylim = _limits(truth, samples, frames)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        _draw_fit(ax, x, frames[i], truth, samples, ylim)
        ax.set_title(_frame_title(frames[i], truth), fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def fit_progress_gif(
    x: np.ndarray,
    frames: Sequence[Frame],
    path: str | Path,
    *,
    truth: np.ndarray | None = None,
    samples: tuple[np.ndarray, np.ndarray] | None = None,
    title: str = "",
    ms_per_frame: int = 200,
) -> Path:
    """Save an animated GIF of the fit converging, one frame per entry of ``frames`` (the
    last is held for a second). One figure is redrawn, so each frame costs one draw.

    Example:
        >>> fit_progress_gif(x, frames, "fit_progress.gif", truth=np.sin(x))
    """
    from PIL import Image

    fig, ax = _figures().subplots(figsize=(6.4, 3.6), squeeze=True)
    fig.set_dpi(80)
    line = _draw_fit(ax, x, frames[0], truth, samples, _limits(truth, samples, frames))
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    images = []
    for frame in frames:
        line.set_ydata(frame.y)
        ax.set_title(_frame_title(frame, truth), fontsize=9)
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())  # (H, W, 4) uint8
        images.append(Image.fromarray(rgba[:, :, :3]).convert("P", palette=Image.ADAPTIVE))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [ms_per_frame] * (len(images) - 1) + [1000]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=False
    )
    return path


def loss_plot(
    steps: np.ndarray,
    losses: np.ndarray,
    epochs: Sequence[dict],
    path: str | Path,
    *,
    phases: Sequence[tuple[str, int]] = (),
    loss_name: str = "loss",
) -> Path:
    """Save the training loss per step and, per epoch, the valid loss and the max and RMS
    error (log scales); ``phases`` are (name, last step) pairs, drawn as separators.

    ``epochs`` rows need step, valid_loss, max_error and rms_error.
    """
    fig, (ax, ax2) = _figures().subplots(1, 2, figsize=(11, 3.8), squeeze=True)
    ax.plot(steps, np.maximum(losses, FLOOR), color="#8fb4d9", lw=0.8, label="train (per step)")
    e_steps = np.array([r["step"] for r in epochs], dtype=float)
    ax.plot(e_steps, [r["valid_loss"] for r in epochs], "o-", ms=3, color="#e07b00", label="valid")
    ax.set(title=f"Loss ({loss_name})", xlabel="step", yscale="log")
    ax2.plot(e_steps, [r["max_error"] for r in epochs], "o-", ms=3, color="#cf222e", label="max")
    ax2.plot(e_steps, [r["rms_error"] for r in epochs], "o-", ms=3, color="#1a7f37", label="rms")
    ax2.axhline(TARGET, color="gray", ls="--", lw=1, label=f"{TARGET:g}")
    ax2.set(title="|f(x) - y| on the validation points", xlabel="step", yscale="log")
    start = 0
    for i, (name, end) in enumerate(phases):
        for a in (ax, ax2):
            a.axvspan(start, end, color=PHASE_COLORS[i % len(PHASE_COLORS)], alpha=0.06, lw=0)
        ax.text(
            (start + end) / 2,
            0.97,
            name,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=8,
            color=PHASE_COLORS[i % len(PHASE_COLORS)],
        )
        start = end
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    return _save(fig, path)


def error_plot(
    x: np.ndarray,
    error: np.ndarray,
    path: str | Path,
    *,
    sample_x: np.ndarray | None = None,
    earlier: tuple[str, np.ndarray] | None = None,
    label: str = "final",
    title: str = "",
) -> Path:
    """Save ``|f(x) - y|`` along x on a log scale: where the network struggles. The sample
    positions are ticks along the bottom; ``earlier`` = (label, error) adds a curve, e.g. the
    error before the LBFGS polish.
    """
    fig, ax = _figures().subplots(figsize=(9, 3.6), squeeze=True)
    if earlier is not None:
        ax.plot(x, np.maximum(earlier[1], FLOOR), color="#8fb4d9", lw=1, label=earlier[0])
    ax.plot(x, np.maximum(error, FLOOR), color="#1f5fa8", lw=1.2, label=label)
    i = int(np.nanargmax(error))
    ax.plot([x[i]], [error[i]], "o", color="#cf222e", ms=5, label=f"max {error[i]:.1e}")
    ax.axhline(TARGET, color="gray", ls="--", lw=1, label=f"{TARGET:g}")
    if sample_x is not None:
        ax.plot(
            sample_x,
            np.full(len(sample_x), 0.02),
            "|",
            color="#e07b00",
            ms=6,
            alpha=0.4,
            transform=ax.get_xaxis_transform(),
            label="samples",
        )
    rms = float(np.sqrt(np.nanmean(error**2)))
    # Exact zeros of the error (where the fit crosses f) would stretch the axis far down.
    low = max(float(np.nanmin([np.nanmax(error), TARGET])) * 1e-4, FLOOR)
    ax.set(yscale="log", xlabel="x", ylabel="|f(x) - y|", ylim=(low, None))
    ax.set_title(title or f"error along x: max {error[i]:.1e} at x = {x[i]:.3g}, rms {rms:.1e}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def compare_plot(
    x: np.ndarray,
    rows: Sequence[dict],
    path: str | Path,
    *,
    truth: np.ndarray | None = None,
    samples: tuple[np.ndarray, np.ndarray] | None = None,
    title: str = "",
) -> Path:
    """Save one overlay of several fits: the fits over the truth, their errors along x, and
    their training losses per step. ``rows`` hold name, y (on ``x``), error (on ``x``),
    losses (per step).
    """
    import matplotlib

    fig, axes = _figures().subplots(1, 3, figsize=(16, 4.4), squeeze=True)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    ax = axes[0]
    if truth is not None:
        ax.plot(x, truth, **{**TRUTH, "label": "truth"})
    elif samples is not None:
        ax.scatter(samples[0], samples[1], **{**SAMPLES, "label": "data"})
    ylim = _limits(truth, samples, [Frame(0, "", r["y"]) for r in rows])
    for i, r in enumerate(rows):
        c = colors[i % len(colors)]
        ax.plot(x, r["y"], color=c, lw=1.1, label=r["name"])
        axes[1].plot(x, np.maximum(r["error"], FLOOR), color=c, lw=1, label=r["name"])
        axes[2].plot(
            np.arange(1, len(r["losses"]) + 1),
            np.maximum(r["losses"], FLOOR),
            color=c,
            lw=0.9,
            label=r["name"],
        )
    ax.set(title="fits", xlabel="x", ylim=ylim)
    axes[1].axhline(TARGET, color="gray", ls="--", lw=1)
    axes[1].set(title="|f(x) - y| along x", xlabel="x", yscale="log")
    axes[2].set(title="training loss", xlabel="step", xscale="log", yscale="log")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
