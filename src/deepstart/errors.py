"""The errors deepstart raises for things a user can fix; the CLI prints them as one line."""

from __future__ import annotations


class DeepstartError(Exception):
    """Base class: a bad name, file or setting, explained in the message."""


class ConfigError(DeepstartError, ValueError):
    """A setting that cannot be used (unknown optimizer, negative epochs...)."""


class DataError(DeepstartError, ValueError):
    """A dataset could not be found or read; the message names the file and what was expected."""
