"""A config field that is also a command-line option: its help, flag and value parser.

A training option is declared once, as a dataclass field made by :func:`option`; the field's
metadata carries what ``deepstart train`` needs to offer it as a flag (the help text, the
flag's spelling when it is not ``--field-name``, a parser for values that are not a plain
number or word, the choices). :mod:`deepstart.cli.options` builds the argparse flags from it.

The parsers here raise ValueError with a message meant for the user; the CLI turns it into
an argparse error (this module does not import argparse: the config layer knows no CLI).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The key of a field's metadata under which its Option is kept.
OPTION = "deepstart.option"


@dataclass(frozen=True)
class Option:
    """How a config field is offered on the command line.

    Attributes:
        help: one line on what it does (the default is appended by the CLI).
        flag: the flag when it is not ``--`` + the field name with dashes.
        metavar: the value's name in the help (argparse's default: the name in capitals).
        choices: the values it takes (None: any the parser accepts).
        parse: text -> value, raising ValueError with a message (None: from the annotation).
    """

    help: str
    flag: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None


def option(
    default: Any,
    *,
    help: str,
    flag: str | None = None,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A dataclass field with ``default`` that is also a command-line option.

    Example:
        >>> @dataclass(frozen=True)
        ... class Knobs:
        ...     warmup: int = option(3, help="epochs of warm-up")
        >>> option_of(Knobs, "warmup").help
        'epochs of warm-up'
    """
    meta = Option(help, flag=flag, metavar=metavar, choices=choices, parse=parse)
    return dataclasses.field(default=default, metadata={OPTION: meta})


def option_of(config: type, name: str) -> Option | None:
    """The Option of field ``name`` of the dataclass ``config`` (None: not an option)."""
    return config.__dataclass_fields__[name].metadata.get(OPTION)


def default_of(config: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config``."""
    return config.__dataclass_fields__[name].default


def parse_lr(text: str) -> float | str:
    """A learning rate: a number, or "auto" (the LR finder's valley)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"lr must be a number or 'auto', got {text!r}") from None


def parse_batch_size(text: str) -> int | str:
    """A batch size: N, or "auto" (the largest that fits the accelerator)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"batch size must be N or 'auto', got {text!r}") from None


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "5m" or "1.5h"."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    scale = units.get(t[-1:])
    try:
        return float(t[:-1]) * scale if scale else float(t)
    except ValueError:
        raise ValueError(f"time must be like 90, 90s, 5m or 1.5h: {text!r}") from None


def parse_class_weights(text: str) -> str | list[float]:
    """Class weights: "balanced", or one number a class, "w1,w2,..."."""
    if text == "balanced":
        return text
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise ValueError(
            f"class weights must be 'balanced' or numbers w1,w2,...: {text!r}"
        ) from None


def parse_off(text: str) -> str | None:
    """A name where "none" means off (None), as ``--augment none`` does."""
    return None if text == "none" else text


def parse_size(text: str) -> tuple[int, int]:
    """``(H, W)`` from "N" (square) or "HxW" / "H,W"."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        nums = [int(p) for p in parts if p]
    except ValueError:
        raise ValueError(f"size must be N or HxW, got {text!r}") from None
    if len(nums) == 1:
        return nums[0], nums[0]
    if len(nums) == 2:
        return nums[0], nums[1]
    raise ValueError(f"size must be N or HxW, got {text!r}")


def parse_channels(text: str) -> int:
    """1 (grey) or 3 (colour)."""
    if text not in ("1", "3"):
        raise ValueError(f"channels must be 1 or 3, got {text!r}")
    return int(text)
