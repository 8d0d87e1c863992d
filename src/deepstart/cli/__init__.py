"""The command line: subcommands map flags onto config dataclasses and call the library.

deepstart train --data shapes --model vgg_small --epochs 5
deepstart data list | data show NAME | data make shapes --out DIR
deepstart models
deepstart evaluate RUN_DIR [--data NAME]
deepstart fit-function 'sin(3*x)+0.3*x' [--compare]
deepstart export RUN_DIR --out model.zip [--onnx model.onnx]
deepstart predict model.zip photos/ 'more/*.jpg' [--top-k 3] [--json | --csv]
deepstart serve model.zip [--host 127.0.0.1 --port 8000]
deepstart clean RUN_DIR [--top 200] | --apply clean-plan.json | --undo
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

from deepstart.cli import clean, data, fit_function, models, ship, train, tune
from deepstart.cli.options import DefaultsHelpFormatter
from deepstart.errors import DeepstartError

__all__ = ["build_parser", "entry", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepstart",
        description="Train, understand and ship an image classifier on your own data.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Registration order is the order `deepstart --help` lists the commands in.
    train.add_parsers(sub)
    data.add_parsers(sub)
    models.add_parsers(sub)
    tune.add_parsers(sub)
    ship.add_parsers(sub)
    clean.add_parsers(sub)
    fit_function.add_parsers(sub)
    _set_every_parser(parser)
    return parser


def _set_every_parser(parser: argparse.ArgumentParser) -> None:
    """Give the top parser and every subcommand's the formatter that shows defaults, and no
    abbreviated flags (subparsers inherit neither). An abbreviation binds to whichever flag
    it prefixes today: ``--lr-f 0.5`` would quietly become a new flag's value tomorrow, and
    scripts and notes that use one break, or worse, change meaning, when a flag is added."""
    parser.formatter_class = DefaultsHelpFormatter
    parser.allow_abbrev = False  # read at parse time
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _set_every_parser(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to start it again (torchrun)
    try:
        return int(args.func(args) or 0)
    except DeepstartError as e:
        print(f"deepstart: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepstart: interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """The ``deepstart`` command and ``python -m deepstart``: :func:`main`, then ready for the
    process to end.

    Python ends with a garbage collection over every object still alive; after a training
    run (torch, its compiler's modules that the optimisers import, the data) that pass took
    0.6-0.7 s of a shapes-fast run's 8.8 s on a Zen 4, after the last line was printed.
    Freezing the objects moves them out of the collector's reach, and the exit takes 0.1 s.
    Nothing is lost: the atexit handlers, which close files and remove temporary
    directories, run as before, and the operating system takes the memory back. Only here,
    not in :func:`main`, which programs and tests call and go on after.
    """
    code = main()
    gc.freeze()
    return code
