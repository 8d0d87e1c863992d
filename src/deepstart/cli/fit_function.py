"""``deepstart fit-function``: learn y = f(x) from a formula or a CSV."""

from __future__ import annotations

import argparse
import math
from typing import Any

from deepstart.config import (
    FIT_ACTIVATIONS,
    FIT_COMPARE,
    FIT_COMPARE_OPT,
    FIT_OPTIMIZERS,
    PROGRESS_MODES,
    SCHEDULES,
)
from deepstart.errors import DeepstartError


def add_parsers(sub: Any) -> None:
    """Register ``fit-function`` on the top-level subparsers."""
    ff = sub.add_parser(
        "fit-function",
        help="learn y = f(x) from a formula or a CSV, with pictures of it converging",
        description="Fit a network to a formula of x (parsed safely: numbers, x, pi, e, "
        "+ - * / ** and sin cos tan exp log sqrt abs tanh sinh cosh ...) or to a CSV of (x, y) "
        "rows. Writes a run directory with fit_progress.png/.gif, loss.png and error.png. The "
        "defaults (a sine-activation MLP, Adam one-cycle then an LBFGS polish) fit sin on "
        "[-2 pi, 2 pi] to a max error below 1e-3 in a few seconds. A formula that starts with "
        "a minus goes after --, e.g. deepstart fit-function -- '-x**2'.",
    )
    ff.add_argument(
        "expression", nargs="?", help="formula of x, e.g. sin or 'sin(3*x)+0.3*x' (quote it)"
    )
    fd = ff.add_argument_group("data")
    fd.add_argument("--csv", metavar="FILE", help="fit the (x, y) rows of a CSV file instead")
    fd.add_argument(
        "--domain",
        type=_domain,
        default=(-2 * math.pi, 2 * math.pi),
        metavar="LO,HI",
        help="x range of the formula; numbers or formulas of pi: --domain=-2*pi,2*pi (default)",
    )
    fd.add_argument("--samples", type=int, default=1000, help="training points (1000)")
    fd.add_argument(
        "--sampling",
        default="chebyshev",
        choices=("chebyshev", "uniform", "random"),
        help="where the samples sit: chebyshev (packed toward the ends, where errors peak; "
        "default), uniform (evenly spaced) or random",
    )
    fd.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise on y (0)")
    fm = ff.add_argument_group("model")
    fm.add_argument("--model", default="fit_mlp", help="regression model (deepstart models)")
    fm.add_argument(
        "--activation",
        default="sine",
        choices=FIT_ACTIVATIONS,
        help="sine (SIREN, default), tanh, silu or relu (the notes' choice: fits are polylines)",
    )
    fm.add_argument("--width", type=int, default=64, help="units per hidden layer (64)")
    fm.add_argument("--depth", type=int, default=3, help="hidden layers (3)")
    fm.add_argument(
        "--fourier", type=int, default=0, metavar="K", help="K Fourier features of x (0: none)"
    )
    fm.add_argument("--w0", type=float, default=30.0, help="frequency scale of sine (30)")
    ft = ff.add_argument_group("training")
    ft.add_argument(
        "--opt",
        default="adam",
        choices=FIT_OPTIMIZERS,
        help="main optimizer (adam); lbfgs suits small full-batch fits",
    )
    ft.add_argument(
        "--lr",
        type=float,
        help="peak LR (default: adam 1e-3 with sine, 1e-2 with the others; sgd 10x; lbfgs 1)",
    )
    ft.add_argument(
        "--schedule",
        default="one_cycle",
        choices=SCHEDULES,
        help="LR schedule of the main optimizer (one_cycle); lbfgs always runs constant",
    )
    ft.add_argument("--steps", type=int, default=300, help="main optimizer steps (300)")
    ft.add_argument(
        "--batch-size", type=int, help="points per step (default: all of them, full batch)"
    )
    ft.add_argument(
        "--polish",
        type=int,
        default=100,
        metavar="STEPS",
        help="LBFGS steps after the main optimizer (100; 0: none)",
    )
    ft.add_argument("--loss", default="mse", choices=("mse", "mae"), help="loss (mse)")
    fc = ft.add_mutually_exclusive_group()
    fc.add_argument(
        "--compare",
        nargs="?",
        const=FIT_COMPARE,
        metavar="NAMES",
        help=f"train variants side by side and print a table (default list: {FIT_COMPARE}; "
        "give the formula first: fit-function sin --compare); "
        "names: notes (the beginner's ReLU setting), relu, tanh, silu, sine, sgd, adam, adamw, "
        "lbfgs, adam+lbfgs",
    )
    fc.add_argument(
        "--compare-opt",
        nargs="?",
        const=FIT_COMPARE_OPT,
        metavar="NAMES",
        help=f"the same, over optimizers (default list: {FIT_COMPARE_OPT})",
    )
    ft.add_argument("--seed", type=int, default=0, help="seed of the points and the weights")
    ft.add_argument(
        "--device", default="cpu", help="cpu (default: fastest for tiny fits), cuda, mps, auto"
    )
    ft.add_argument("--out", default="runs", help="parent of the run directory")
    ft.add_argument(
        "--progress",
        default="auto",
        choices=PROGRESS_MODES,
        help="rich live bar, plain lines (CI, logs), none; auto picks by terminal",
    )
    ft.add_argument("--no-pictures", action="store_true", help="skip the PNGs and the GIF")
    ft.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: a tiny fit gains little from more, and loses a lot when "
        "another process holds a core)",
    )
    ff.set_defaults(func=cmd_fit_function)


def _domain(text: str) -> tuple[float, float]:
    """``LO,HI``: numbers or constant formulas such as -2*pi (read by the safe parser)."""
    import torch

    from deepstart.fitting.expression import ExpressionError, parse_expression

    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"domain must be LO,HI, got {text!r}")
    try:
        # Evaluated at x = nan: a bound that uses x comes out nan and is refused.
        nan = torch.tensor(math.nan, dtype=torch.float64)
        lo, hi = (float(parse_expression(p)(nan)) for p in parts)
    except ExpressionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise argparse.ArgumentTypeError(f"domain bounds must be finite numbers: {text!r}")
    return lo, hi


def cmd_fit_function(a: argparse.Namespace) -> int:
    from deepstart.config import FitConfig
    from deepstart.fitting.compare import compare_fits
    from deepstart.fitting.fit import fit_function

    if (a.expression is None) == (a.csv is None):
        raise DeepstartError("give a formula of x (e.g. sin) or --csv FILE, not both")
    cfg = FitConfig(
        expression=a.expression or "",
        csv=a.csv,
        domain=a.domain,
        samples=a.samples,
        sampling=a.sampling,
        noise=a.noise,
        model=a.model,
        activation=a.activation,
        width=a.width,
        depth=a.depth,
        fourier=a.fourier,
        w0=a.w0,
        opt=a.opt,
        lr=a.lr,
        schedule=a.schedule,
        steps=a.steps,
        batch_size=a.batch_size,
        polish=a.polish,
        loss=a.loss,
        seed=a.seed,
        device=a.device,
        out=a.out,
        progress=a.progress,
        pictures=not a.no_pictures,
        threads=a.threads,
    )
    names = a.compare or a.compare_opt
    if names:
        compare_fits(cfg, names.split(","))
    else:
        fit_function(cfg)
    return 0
