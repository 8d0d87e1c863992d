"""``deepstart fit-function --compare``: several ways to fit one function, side by side.

Every variant trains on the same points with :func:`deepstart.fitting.fit.train_fit`;
the table gives each one's max and RMS error on the test grid, its steps and seconds, and
``compare.png`` draws them all: the fits over the truth, their errors along x, their losses.

Example:
    >>> res = compare_fits(FitConfig(), ["notes", "relu", "sine"])
    >>> [(r["name"], r["max_error"]) for r in res.rows]
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepstart.config import FIT_ACTIVATIONS, FIT_OPTIMIZERS, FitConfig
from deepstart.device import seed_everything
from deepstart.errors import ConfigError
from deepstart.fitting.expression import parse_expression
from deepstart.fitting.fit import (
    FitRecord,
    load_fit_data,
    phases,
    slug,
    train_fit,
    truth_grid,
    write_fit_config,
)
from deepstart.run.rundir import RunDir, write_json


def _say(text: str, stream: Any) -> None:
    if stream is not None:
        print(text, file=stream, flush=True)


# Variants of --compare / --compare-opt: name -> (what it is, FitConfig changes). An
# activation or optimizer name changes just that; "notes" is the beginner's setting.
NOTES = (
    "ReLU MLP 64x2, Adam at a constant 1e-3, batches of 32, 3000 steps: a first tutorial",
    dict(
        activation="relu",
        width=64,
        depth=2,
        opt="adam",
        lr=1e-3,
        schedule="constant",
        batch_size=32,
        steps=3000,
        polish=0,
    ),
)


def variant(cfg: FitConfig, name: str) -> tuple[str, FitConfig]:
    """(description, config) of a comparison variant of ``cfg``: "notes", an activation
    (relu, tanh, silu, sine), an optimizer (adam, adamw, sgd, lbfgs: no polish) or
    "adam+lbfgs"/"default" (``cfg`` itself, whose polish is LBFGS).

    Example:
        >>> variant(FitConfig(), "tanh")[1].activation
        'tanh'
    """
    if name == "notes":
        return NOTES[0], dataclasses.replace(cfg, **NOTES[1])
    if name in FIT_ACTIVATIONS:
        new = dataclasses.replace(cfg, activation=name)
    elif name == "lbfgs":
        new = dataclasses.replace(cfg, opt="lbfgs", lr=None, steps=cfg.polish or 100, polish=0)
    elif name in FIT_OPTIMIZERS:
        new = dataclasses.replace(cfg, opt=name, lr=None, polish=0)
    elif name in ("adam+lbfgs", "default"):
        new = cfg
    else:
        raise ConfigError(
            f"unknown variant {name!r}; use notes, default, adam+lbfgs, an activation "
            f"({', '.join(FIT_ACTIVATIONS)}) or an optimizer ({', '.join(FIT_OPTIMIZERS)})"
        )
    return describe_recipe(new), new


def describe_recipe(cfg: FitConfig) -> str:
    """One line: the model and how it is trained."""
    model = f"{cfg.activation} MLP {cfg.width}x{cfg.depth}"
    if cfg.fourier:
        model += f" + {cfg.fourier} Fourier features"
    batch = f"batches of {cfg.batch_size}" if cfg.batch_size else "full batch"
    parts = [f"{p.name} {p.steps} steps" for p in phases(cfg)]
    return f"{model}; {' then '.join(parts)}; {batch}"


@dataclass
class CompareResult:
    """The comparison's run directory and one row per variant."""

    run_dir: Path
    rows: list[dict[str, Any]]


def compare_fits(cfg: FitConfig, names: Sequence[str], *, quiet: bool = False) -> CompareResult:
    """Train ``cfg`` in each variant of ``names`` (see :func:`variant`) on the same points
    and print a table: max and RMS error on the test grid, steps, seconds. Writes
    config.json, compare.json and compare.png.

    Example:
        >>> compare_fits(FitConfig(), ["notes", "relu", "sine"]).rows[0]["max_error"]
    """
    stream = None if quiet else sys.stdout
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not names:
        raise ConfigError("compare needs at least one variant")
    recipes = [(n, *variant(cfg, n)) for n in names]  # fail on a bad name before training
    seed_everything(cfg.seed)
    data = load_fit_data(cfg)
    label = data.name if cfg.csv is not None else str(parse_expression(cfg.expression))
    _say(f"comparing {len(names)} ways to fit {label}: " + "; ".join(data.notes), stream)
    run_dir = RunDir.create(cfg.out, "fit", slug(label) + "-compare").path
    x_plot, truth = truth_grid(cfg, data)
    rows, plotted = [], []
    _say(format_header(), stream)
    for name, desc, vcfg in recipes:
        record = FitRecord(x_plot)
        learn, done = train_fit(vcfg, data, record=record)
        test = learn.evaluate("test")
        row = {
            "name": name,
            "recipe": desc,
            "max_error": test["max_error"],
            "rms_error": test["rms_error"],
            "steps": sum(p["steps"] for p in done),
            "seconds": round(sum(p["seconds"] for p in done), 3),
            "config": vcfg.to_dict(),
        }
        rows.append(row)
        y = record.output()
        plotted.append(
            {
                "name": name,
                "y": y,
                "error": np.abs(y - truth) if truth is not None else np.zeros_like(y),
                "losses": record.losses()[1],
            }
        )
        _say(format_row(row), stream)
    write_fit_config(run_dir, cfg, data, learn.model, variants=names)
    write_json(run_dir / "compare.json", {"data": data.name, "rows": rows})
    if cfg.pictures:
        from deepstart.fitting.plots import compare_plot

        samples = (data.train.x[:, 0].numpy(), data.train.y[:, 0].numpy())
        compare_plot(
            x_plot[:, 0].numpy(),
            plotted,
            run_dir / "compare.png",
            truth=truth,
            samples=samples,
            title=f"{label}: {len(rows)} ways to fit it",
        )
    _say(f"run directory: {run_dir}", stream)
    return CompareResult(run_dir, rows)


def format_header() -> str:
    return f"{'variant':<11} {'max error':>9} {'rms error':>9} {'steps':>6} {'seconds':>7}  recipe"


def format_row(row: dict[str, Any]) -> str:
    """One line of the comparison table."""
    err = row["max_error"]
    mark = " " if not math.isfinite(err) or err > 1e-3 else "*"
    return (
        f"{row['name']:<11} {err:>8.1e}{mark} {row['rms_error']:>9.1e} {row['steps']:>6} "
        f"{row['seconds']:>7.2f}  {row['recipe']}"
    )
