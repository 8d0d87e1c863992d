"""Small pictures embedded in self-contained pages: one image -> a ``data:`` URI.

Moved to :mod:`deepstart.display` (the data layer's notebook displays use it too); the names
stay importable from here.
"""

from deepstart.display import MAX_SIDE, data_uri, thumbnail

__all__ = ["MAX_SIDE", "data_uri", "thumbnail"]
