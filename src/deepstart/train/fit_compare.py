"""Deprecated: moved to :mod:`deepstart.fitting.compare` (this path goes in the next release)."""

from deepstart._moved import moved

__getattr__ = moved(__name__, "deepstart.fitting.compare")
