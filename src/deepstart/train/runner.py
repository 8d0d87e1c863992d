"""Deprecated: moved to :mod:`deepstart.run.runner` (this path goes in the next release)."""

from deepstart._moved import moved

__getattr__ = moved(__name__, "deepstart.run.runner")
