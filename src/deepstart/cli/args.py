"""Argument types and the data flags that several subcommands share.

The training flags are generated from the config fields: :mod:`deepstart.cli.options`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from deepstart.cli.options import add_option
from deepstart.config import DataConfig, default_of
from deepstart.errors import DeepstartError


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
# DataConfig's fields that are command-line options (generated from the fields).
DATA_OPTIONS = ("data_dir", "valid_pct", "size", "channels", "resize", "normalize")


def _add_data_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    """--data, DataConfig's option fields (--data-dir, --valid-pct, --size, --channels,
    --resize: generated from the fields) and --data-opt. Untyped ones are None here, so a
    recipe can tell "not typed" from a typed default."""
    p.add_argument("--data", required=required, help="dataset name (deepstart data list) or path")
    for name in DATA_OPTIONS:
        add_option(p, DataConfig, name)
    p.set_defaults(**dict.fromkeys(DATA_OPTIONS))
    p.add_argument(
        "--data-opt",
        action="append",
        metavar="KEY=VALUE",
        help="source option, e.g. n_train=6000 or classes=circle,star (repeatable)",
    )


def _data_config(a: argparse.Namespace) -> DataConfig:
    """The DataConfig of the typed data flags; the fields' defaults fill in the rest."""
    typed = {n: getattr(a, n) for n in DATA_OPTIONS if getattr(a, n, None) is not None}
    return DataConfig(name=a.data, options=_pairs(a.data_opt, "--data-opt"), **typed)
