"""Regression data from a formula (``sin(3*x)+0.3*x`` on a domain) or from a CSV of (x, y).

A formula gives three splits: the training samples (``samples`` points, with optional
Gaussian noise), a validation grid and a dense test grid. The grids carry the true f(x),
without noise, so their errors say how far the fit is from the function itself.

Where the training samples sit matters for the largest error. With evenly spaced points a
fit has neighbours on one side only at the ends of the domain, and that is where its error
peaks; Chebyshev points (``x = -cos(pi (i + 1/2) / n)``, scaled to the domain) are packed
toward the ends, the classical cure (it is what keeps polynomial interpolation from
Runge's wild swings at the ends), and make the error about even along x.

Example:
    >>> data = function_data("sin", domain=(-6.28, 6.28), samples=500)
    >>> len(data.train), len(data.test)
    (500, 10000)
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from deepstart.data.tensors import TensorData, TensorSet
from deepstart.errors import DataError
from deepstart.fitting.expression import Expression, parse_expression

SAMPLINGS = ("chebyshev", "uniform", "random")
DEFAULT_DOMAIN = (-2 * math.pi, 2 * math.pi)


def sample_points(
    n: int, domain: tuple[float, float], sampling: str = "chebyshev", seed: int = 0
) -> torch.Tensor:
    """``n`` x values in ``domain``, sorted, float64 ``(n,)``.

    ``sampling``: "chebyshev" (packed toward the ends, see the module note), "uniform"
    (evenly spaced, both ends included) or "random" (uniform at random, from ``seed``).

    Example:
        >>> sample_points(3, (-1.0, 1.0), "uniform")
        tensor([-1.,  0.,  1.], dtype=torch.float64)
    """
    lo, hi = _check_domain(domain)
    if n < 2:
        raise DataError(f"need at least 2 samples, got {n}")
    if sampling == "chebyshev":
        i = torch.arange(n, dtype=torch.float64)
        t = -torch.cos(math.pi * (i + 0.5) / n)  # in (-1, 1), increasing
        return lo + (t + 1) * (hi - lo) / 2
    if sampling == "uniform":
        return torch.linspace(lo, hi, n, dtype=torch.float64)
    if sampling == "random":
        gen = torch.Generator().manual_seed(int(seed))
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        return torch.sort(lo + u * (hi - lo)).values
    raise DataError(f"unknown sampling {sampling!r}; use one of {', '.join(SAMPLINGS)}")


def function_data(
    expression: str | Expression,
    *,
    domain: tuple[float, float] = DEFAULT_DOMAIN,
    samples: int = 1000,
    noise: float = 0.0,
    sampling: str = "chebyshev",
    seed: int = 0,
    valid_points: int = 1000,
    test_points: int = 10_000,
) -> TensorData:
    """Sample ``y = f(x) + noise * N(0, 1)`` on ``domain`` for training; grids of the true f
    for validation (``valid_points``) and test (``test_points``, both ends included).

    f is evaluated in float64 and stored as float32. Raises :class:`DataError` when f is not
    finite somewhere on the domain (``log(x)`` at x <= 0, say).

    Example:
        >>> data = function_data("sin(3*x) + 0.3*x", domain=(-3.0, 3.0), noise=0.05)
        >>> data.train.x.shape, data.test.y.shape
        (torch.Size([1000, 1]), torch.Size([10000, 1]))
    """
    f = expression if isinstance(expression, Expression) else parse_expression(expression)
    lo, hi = _check_domain(domain)
    if noise < 0 or not math.isfinite(noise):
        raise DataError(f"noise must be a finite number >= 0, got {noise}")
    x = sample_points(samples, (lo, hi), sampling, seed)
    y = _values(f, x)
    if noise > 0:
        gen = torch.Generator().manual_seed(int(seed) + 1)  # not the stream "random" used
        y = y + noise * torch.randn(len(x), generator=gen, dtype=torch.float64)
    grids = []
    for n in (valid_points, test_points):
        g = torch.linspace(lo, hi, n, dtype=torch.float64)
        grids.append(TensorSet(g.float(), _values(f, g).float()))
    notes = [f"{samples} {sampling} samples on [{lo:g}, {hi:g}]"]
    if noise > 0:
        notes.append(f"training y has Gaussian noise of std {noise:g}; valid/test are noise-free")
    return TensorData(f.text, TensorSet(x.float(), y.float()), grids[0], grids[1], notes=notes)


def _values(f: Expression, x: torch.Tensor) -> torch.Tensor:
    y = f(x)
    bad = ~torch.isfinite(y)
    if bad.any():
        where = float(x[bad][0])
        raise DataError(
            f"{f.text} is not finite at x = {where:g} ({int(bad.sum())} of {len(x)} points); "
            f"choose a domain where it is defined (--domain LO,HI)"
        )
    return y


def _check_domain(domain: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in domain)
    except (TypeError, ValueError):
        raise DataError(f"domain must be two numbers (lo, hi), got {domain!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise DataError(f"domain must be finite with lo < hi, got ({lo:g}, {hi:g})")
    return lo, hi


def csv_data(path: str | Path, *, valid_pct: float = 0.2, seed: int = 0) -> TensorData:
    """Points from a CSV file of two numeric columns, x and y (a header row is allowed;
    blank lines and lines starting with ``#`` are skipped). ``valid_pct`` of the rows, at
    random from ``seed``, are held out for validation; there is no test split.

    Example:
        >>> data = csv_data("measurements.csv")
        >>> data.train.x.shape
        torch.Size([80, 1])
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if not 0 < valid_pct < 1:
        raise DataError(f"valid_pct must be in (0, 1), got {valid_pct}")
    rows: list[tuple[float, float]] = []
    header: list[str] | None = None
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, cells in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in cells]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if len(cells) != 2:
                raise DataError(
                    f"{path}:{lineno}: expected 2 columns (x, y), got {len(cells)}: {cells}"
                )
            try:
                rows.append((float(cells[0]), float(cells[1])))
            except ValueError:
                if rows or header is not None:
                    raise DataError(f"{path}:{lineno}: not a number in {cells}") from None
                header = cells  # a first non-numeric row names the columns
    if len(rows) < 4:
        raise DataError(f"{path}: need at least 4 (x, y) rows, found {len(rows)}")
    points = TensorSet(*torch.tensor(rows, dtype=torch.float64).float().T)
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(rows), generator=gen)
    n_valid = min(max(round(len(rows) * valid_pct), 1), len(rows) - 2)
    valid = points.subset(torch.sort(order[:n_valid]).values)
    train = points.subset(torch.sort(order[n_valid:]).values)
    names = f" (columns {header[0]}, {header[1]})" if header else ""
    notes = [f"{len(rows)} rows from {path.name}{names}; {n_valid} held out for validation"]
    return TensorData(path.name, train, valid, None, notes=notes)
