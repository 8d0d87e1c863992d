"""Deprecated: moved to :mod:`deepstart.fitting.fit` (this path goes in the next release)."""

from deepstart._moved import moved

__getattr__ = moved(__name__, "deepstart.fitting.fit")
