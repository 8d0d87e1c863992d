"""Argument types and the data flags that several subcommands share.

The training flags are generated from the config fields: :mod:`deepstart.cli.options`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from deepstart.config import RESIZE_MODES, DataConfig, default_of
from deepstart.errors import DeepstartError


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        nums = [int(p) for p in parts if p]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(nums) == 1:
        return nums[0], nums[0]
    if len(nums) == 2:
        return nums[0], nums[1]
    raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")


def _value(text: str) -> Any:
    """A KEY=VALUE value: JSON when it parses (numbers, lists, true), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if "," in text:
            return [_value(t) for t in text.split(",")]
        return text


def _pairs(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise DeepstartError(f"{flag} wants KEY=VALUE, got {item!r}")
        key, val = item.split("=", 1)
        out[key.strip().replace("-", "_")] = _value(val.strip())
    return out


def _model(name: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``--model`` as a ModelConfig's name and options: a layer spec becomes the registry model
    ``spec`` with the option ``spec=...`` (so run directories are named ``...-spec``)."""
    from deepstart.models.registry import resolve_spec

    return resolve_spec(name, options)


# The held-out share when --valid-pct is not typed (and the recipe, if any, sets none).
VALID_PCT: float = default_of(DataConfig, "valid_pct")


def _add_data_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--data", required=required, help="dataset name (deepstart data list) or path")
    p.add_argument("--data-dir", help="directory searched first for the dataset's files")
    p.add_argument(
        "--valid-pct",
        type=float,
        help=f"share of train held out ({VALID_PCT}; a recipe may say otherwise)",
    )
    p.add_argument("--size", type=_size, help="resize images to N or HxW")
    p.add_argument("--channels", type=int, choices=(1, 3), help="convert to 1 or 3 channels")
    p.add_argument(
        "--resize",
        choices=RESIZE_MODES,
        help="how images of another size reach --size: stretch, centre crop or pad "
        "(default squish; the photos recipe crops)",
    )
    p.add_argument(
        "--data-opt",
        action="append",
        metavar="KEY=VALUE",
        help="source option, e.g. n_train=6000 or classes=circle,star (repeatable)",
    )


def _data_config(a: argparse.Namespace) -> DataConfig:
    return DataConfig(
        name=a.data,
        data_dir=a.data_dir,
        valid_pct=VALID_PCT if a.valid_pct is None else a.valid_pct,
        size=a.size,
        channels=a.channels,
        resize=a.resize or "squish",
        options=_pairs(a.data_opt, "--data-opt"),
    )
