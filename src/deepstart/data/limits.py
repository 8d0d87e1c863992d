"""How much unpacking an input may produce: the defence against zip, tar and gzip bombs.

A few kilobytes of deflate can hold gigabytes of zeros, so the headers of an archive are
never trusted alone: :class:`Budget` counts the bytes as they are written (or read into
memory) and refuses, in one line, the moment one of three limits is passed. Each is raised
by an environment variable when the user trusts the file:

- ``DEEPSTART_MAX_EXTRACT_GB`` (default 200): decimal GB written by one extraction. ImageNet-1k
  (~150 GB of JPEGs, the largest folder a learner plausibly unpacks) fits; a bomb filling the
  disk does not.
- ``DEEPSTART_MAX_EXTRACT_FILES`` (default 2,000,000): members of one archive. ImageNet-1k's
  1.33 M files fit; millions of empty files exhausting inodes do not.
- ``DEEPSTART_MAX_EXTRACT_RATIO`` (default 200): uncompressed / compressed bytes, checked only
  past :data:`FLOOR` (so a small, very compressible file is fine). Images compress about 1:1,
  raw pixel arrays (IDX, BMP) 3-20:1; deflate peaks near 1032:1, which only zeros reach.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deepstart.errors import ConfigError, DataError

GB_ENV = "DEEPSTART_MAX_EXTRACT_GB"
FILES_ENV = "DEEPSTART_MAX_EXTRACT_FILES"
RATIO_ENV = "DEEPSTART_MAX_EXTRACT_RATIO"
ENV = (GB_ENV, FILES_ENV, RATIO_ENV)
DEFAULTS = {GB_ENV: 200.0, FILES_ENV: 2_000_000.0, RATIO_ENV: 200.0}
# Bytes below which the ratio is not checked: a 1 MB black BMP compresses ~1000:1 and harms
# nobody; past 8 MiB at over 200:1 it is almost surely a bomb.
FLOOR = 8 * 2**20


@dataclass(frozen=True)
class Limits:
    """The three limits in force, read from the environment by :meth:`from_env`.

    Attributes:
        bytes: most bytes one extraction (or one decompressed file) may produce.
        files: most members one archive may hold.
        ratio: most uncompressed bytes per compressed byte, past :data:`FLOOR`.
    """

    bytes: int
    files: int
    ratio: float

    @classmethod
    def from_env(cls) -> Limits:
        """The limits as the environment sets them now (defaults where unset).

        Raises:
            ConfigError: a variable that is not a positive number.
        """
        values = {name: _positive(name) for name in ENV}
        return cls(int(values[GB_ENV] * 1e9), int(values[FILES_ENV]), values[RATIO_ENV])


def _positive(name: str) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return DEFAULTS[name]
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(
            f"{name} must be a positive number, got {raw!r}; unset it for the default"
        )
    return value


class Budget:
    """Counts what one input unpacks into and refuses it once past a limit.

    Args:
        source: the archive or file, named in every refusal.
        compressed: its size on disk in bytes, for the overall ratio (None: no overall check).
        limits: default :meth:`Limits.from_env`.

    Example:
        >>> budget = Budget(Path("pets.zip"), compressed=10_000)
        >>> budget.member("pets/cat/1.jpg")
        >>> budget.wrote(4096, "pets/cat/1.jpg")  # raises DataError once past a limit
    """

    def __init__(
        self, source: Path, compressed: int | None = None, limits: Limits | None = None
    ) -> None:
        self.source, self.compressed = source, compressed
        self.limits = limits or Limits.from_env()
        self.members = 0
        self.total = 0  # bytes written so far, all members

    def member(self, name: str) -> None:
        """Count one more member (file, folder or other)."""
        self.members += 1
        if self.members > self.limits.files:
            raise DataError(
                f"{self.source}: more than {self.limits.files:,} members (at {name!r}); "
                f"if you trust this archive, set {FILES_ENV} higher"
            )

    def declared(self, n_bytes: int, n_members: int) -> None:
        """Refuse before writing anything when the headers alone already pass a limit."""
        if n_members > self.limits.files:
            raise DataError(
                f"{self.source}: {n_members:,} members, over the limit of "
                f"{self.limits.files:,}; if you trust this archive, set {FILES_ENV} higher"
            )
        if n_bytes > self.limits.bytes:
            raise DataError(self._too_big(f"declares {n_bytes / 1e9:.3g} GB of files, over"))

    def wrote(self, n: int, name: str, member_bytes: int = 0, member_compressed: int = 0) -> None:
        """Count ``n`` more bytes written for member ``name``.

        Args:
            n: bytes just written.
            name: the member, named in a refusal.
            member_bytes: bytes written for this member so far (``n`` included).
            member_compressed: the member's compressed size when known (zip), for a
                per-member ratio; 0 for none (tar: only the whole stream's ratio is known).
        """
        self.total += n
        if self.total > self.limits.bytes:
            raise DataError(self._too_big(f"unpacks (at {name!r}) to more than"))
        if member_compressed and self._over_ratio(member_bytes, member_compressed):
            raise DataError(
                self._bomb(f"member {name!r} unpacks to {member_bytes:,} bytes", member_compressed)
            )
        if self.compressed is not None and self._over_ratio(self.total, self.compressed):
            raise DataError(
                self._bomb(f"unpacks to {self.total:,} bytes (at {name!r})", self.compressed)
            )

    def promised(self, n_bytes: int, what: str) -> None:
        """Refuse a decompressed size announced by a header (IDX) before reading it."""
        if n_bytes > self.limits.bytes:
            raise DataError(self._too_big(f"{what} promises {n_bytes / 1e9:.3g} GB, over"))
        if self.compressed is not None and self._over_ratio(n_bytes, self.compressed):
            raise DataError(self._bomb(f"{what} promises {n_bytes:,} bytes", self.compressed))

    def _over_ratio(self, unpacked: int, compressed: int) -> bool:
        return unpacked > FLOOR and unpacked > self.limits.ratio * max(compressed, 1)

    def _too_big(self, detail: str) -> str:
        return (
            f"{self.source}: {detail} the limit of {self.limits.bytes / 1e9:g} GB; "
            f"if you trust this file and have the disk space, set {GB_ENV} higher"
        )

    def _bomb(self, detail: str, compressed: int) -> str:
        return (
            f"{self.source}: {detail} from {compressed:,} compressed, over "
            f"{self.limits.ratio:g}:1 (a possible decompression bomb); if you trust this file, set "
            f"{RATIO_ENV} higher"
        )
