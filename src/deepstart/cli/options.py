"""Command-line flags generated from config fields (:func:`deepstart.config.option`).

A field ``batch_size`` becomes ``--batch-size`` (or its Option's ``flag``), with the field's
help and default in the help text, its Option's parser or else its annotation as the type,
its choices, and ``--name/--no-name`` for a boolean. Every generated flag defaults to
"not typed" (argparse.SUPPRESS: absent from the namespace), so :func:`given_options` returns
exactly what was typed, and whoever builds the config fills in the rest (a recipe's values,
then the dataclass defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any

from deepstart.config.option import OPTION, Option


def arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse type: its ValueError becomes argparse's one-line error."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _shown(value: Any) -> str:
    """A default as the help shows it: on/off for switches and unset values, 1e-3 as 0.001."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """argparse's help, with every flag's default said: " (default: X)" is added to a help
    text that does not already name its default (generated flags do), except where there is
    nothing to say (no default, a switch that is off, a positional argument)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not action.option_strings
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or default == []
        ):
            return text
        shown = _shown(default).replace("%", "%%")  # the help is %-formatted after this
        return f"{text} (default: {shown})"


def _choices_then(choices: tuple[str, ...], parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Check ``choices`` on the text, then parse it (argparse checks them on the parsed value,
    which for ``--augment none`` is None)."""

    def parse_choice(text: str) -> Any:
        if text not in choices:
            listed = ", ".join(map(repr, choices))
            raise ValueError(f"invalid choice: {text!r} (choose from {listed})")
        return parse(text)

    return parse_choice


@functools.cache
def _hints(config: type) -> dict[str, Any]:
    return typing.get_type_hints(config)  # evaluates every annotation: once a class


def _value_type(config: type, name: str) -> type:
    """int, float, str or bool from the annotation of field ``name`` (``X | None``: X)."""
    hint = _hints(config)[name]
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] or [hint]
    if len(kinds) != 1 or kinds[0] not in (bool, int, float, str):
        raise TypeError(f"{config.__name__}.{name}: a {hint} option needs option(parse=...)")
    return kinds[0]


def add_option(parser: Any, config: type, name: str, **overrides: Any) -> None:
    """Add field ``name`` of the dataclass ``config`` as a flag to ``parser`` (a parser or an
    argument group). ``overrides`` replace attributes of its Option, e.g. ``parse=int``
    where a command takes no "auto"."""
    f = config.__dataclass_fields__[name]
    opt: Option = dataclasses.replace(f.metadata[OPTION], **overrides)
    flag = opt.flag or "--" + name.replace("_", "-")
    # argparse %-formats help texts: a literal % is written %%.
    text = f"{opt.help} (default: {_shown(f.default)})".replace("%", "%%")
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": text}
    kind = _value_type(config, name) if opt.parse is None else None
    if kind is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        return
    if opt.metavar is not None:
        kwargs["metavar"] = opt.metavar
    if opt.parse is None:
        kwargs["type"] = kind
        if opt.choices is not None:
            kwargs["choices"] = opt.choices
    elif opt.choices is not None:
        kwargs["type"] = arg_type(_choices_then(opt.choices, opt.parse))
        kwargs.setdefault("metavar", "{" + ",".join(opt.choices) + "}")
    else:
        kwargs["type"] = opt.parse if opt.parse in (int, float, str) else arg_type(opt.parse)
    parser.add_argument(flag, **kwargs)


def _title(cls: type) -> str:
    """A group title: the first line of the class's docstring, else its name."""
    doc = cls.__doc__ or ""
    if not doc or doc.startswith(cls.__name__ + "("):  # the signature dataclass writes
        return f"{cls.__name__} options"
    return doc.strip().splitlines()[0].rstrip(".")


def _owner(config: type, name: str) -> type:
    """The class of ``config``'s hierarchy that declares field ``name``."""
    for cls in config.__mro__:
        if name in inspect.get_annotations(cls):
            return cls
    return config


def add_option_groups(parser: argparse.ArgumentParser, config: type) -> None:
    """A flag for every option field of ``config``, in a group a declaring class (for
    TrainConfig: a group a concern), in field order."""
    groups: dict[type, Any] = {}
    for f in dataclasses.fields(config):
        if OPTION not in f.metadata:
            continue
        owner = _owner(config, f.name)
        if owner not in groups:
            groups[owner] = parser.add_argument_group(_title(owner))
        add_option(groups[owner], config, f.name)


def given_options(
    namespace: argparse.Namespace, config: type, names: Iterable[str] | None = None
) -> dict[str, Any]:
    """The option fields of ``config`` (those in ``names``: a command that has flags of its
    own with field names, like tune's ``--max-time``, lists the generated ones) that were
    typed on the command line, with their values.

    Example:
        >>> given_options(parser.parse_args(["--epochs", "2", "--no-report"]), TrainConfig)
        {'epochs': 2, 'report': False}
    """
    wanted = None if names is None else set(names)
    return {
        f.name: getattr(namespace, f.name)
        for f in dataclasses.fields(config)
        if OPTION in f.metadata
        and (wanted is None or f.name in wanted)
        and hasattr(namespace, f.name)
    }
