"""How much time a run's report may take, and which of its slow panels fit.

``deepstart train`` writes the report after the last epoch. Its core (tables, the training
curves, the clickable confusion matrix, the pictures the page draws itself) costs well under
a second; the panels drawn with matplotlib and those that run the model again (filters by
activation maximisation: 48 forward and backward passes; SmoothGrad: 25) can cost more than a
short training did. So each slow panel is drawn only while the report stays within
``SHARE`` of the training time, in order of cost, and the page lists what it left out with
the command that draws everything (``deepstart report RUN_DIR``).

Costs are estimated before a panel is drawn, from what this machine has shown: the time of
one figure (a prior until one is drawn) and of one forward and backward pass of the model on
the report's example pictures (timed on the cheapest panel that needs it).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SHARE = 0.10  # of the training time: issue 22's target for the report after training
PANELS = ("auto", "all", "core")

# Priors for one matplotlib figure and for importing pyplot, on a 2-core laptop CPU (seconds);
# replaced by what is measured as soon as a figure has been drawn.
FIGURE_PRIOR = 0.3
IMPORT_PRIOR = 1.0


class Budget:
    """Seconds the report may still spend; ``seconds=None`` means no limit (all panels).

    Example:
        >>> b = Budget(2.0)
        >>> b.allows("filters", 5.0)
        False
        >>> b.skipped
        [('filters', 5.0)]
    """

    def __init__(
        self,
        seconds: float | None,
        clock: Callable[[], float] = time.perf_counter,
        log: Callable[[str], None] = lambda m: None,
    ) -> None:
        self.seconds = seconds
        self.log = log
        self.clock = clock
        self.start = clock()
        self.drawn: list[tuple[str, float]] = []  # (panel, seconds it took)
        # (panel, seconds it would have taken; None: unknown, the budget was spent)
        self.skipped: list[tuple[str, float | None]] = []
        self._figures: list[float] = []  # seconds per figure drawn so far
        self.pass_seconds: float | None = None  # one forward+backward on the examples

    @classmethod
    def for_run(
        cls, panels: str, train_seconds: float | None, log: Callable[[str], None] = lambda m: None
    ) -> Budget:
        """``panels``: "all" (no limit), "core" (no slow panel) or "auto" (``SHARE`` of
        ``train_seconds``; no limit when the training time is unknown)."""
        if panels not in PANELS:
            raise ValueError(f"report panels must be one of {', '.join(PANELS)}: {panels!r}")
        if panels == "all" or (panels == "auto" and train_seconds is None):
            return cls(None, log=log)
        return cls(0.0 if panels == "core" else SHARE * float(train_seconds), log=log)

    @property
    def unlimited(self) -> bool:
        return self.seconds is None

    def left(self) -> float:
        if self.seconds is None:
            return math.inf
        return self.seconds - (self.clock() - self.start)

    def allows(self, panel: str, estimate: float) -> bool:
        """True when ``panel``, expected to take ``estimate`` seconds, still fits; a panel
        that does not fit is remembered in :attr:`skipped`."""
        if estimate <= self.left():
            return True
        self.skipped.append((panel, estimate))
        return False

    def skip(self, panel: str) -> None:
        """Leave ``panel`` out without an estimate (the budget is spent before it)."""
        self.skipped.append((panel, None))

    def figure_seconds(self, n: int = 1) -> float:
        """Expected seconds for ``n`` more figures (the first pays for importing pyplot)."""
        each = sum(self._figures) / len(self._figures) if self._figures else FIGURE_PRIOR
        first = IMPORT_PRIOR if "matplotlib.pyplot" not in sys.modules else 0.0
        return first + n * each

    @contextmanager
    def panel(self, name: str, figures: int = 0) -> Iterator[None]:
        """Time a panel as it is drawn; ``figures`` teaches the per-figure estimate."""
        t = self.clock()
        yield
        took = self.clock() - t
        self.drawn.append((name, took))
        self.log(f"report: {name} {took:.1f}s")
        if figures:
            self._figures.append(took / figures)

    def summary(self) -> str:
        """What was left out, with the estimates: "left out ...: filters (~12s), ..."."""
        left = ", ".join(name if s is None else f"{name} (~{s:.0f}s)" for name, s in self.skipped)
        return f"left out to stay within {SHARE:.0%} of the training time: {left}"
