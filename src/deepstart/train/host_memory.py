"""Host memory between training steps: keep what a step frees for the next step (glibc).

A training step on the CPU allocates and frees the same large blocks every step: activations,
their gradients and oneDNN's reorder buffers (cifar10-fast, batch 256: 256 x 32 channels x
31x31 pixels in bf16 is 16 MB a map). glibc's malloc serves a block over its *mmap threshold*
with a fresh ``mmap``, and gives the free top of its heap back to the OS once it exceeds its
*trim threshold*; both adapt (up to 32 MB and 64 MB) but not to this pattern. So every step
maps fresh pages again, and the kernel zeroes each on its first touch: 5,000 to 28,000 page
faults a cifar10-fast step, more at cifar10-90's batch of 1024, whose epoch took 1.25x as long
for it on a 2-core Zen 4 (docs/benchmarks.md, "The allocator").

:func:`keep_freed_memory` raises both thresholds to 1 GiB (``mallopt``) once per process, so
freed blocks stay in the heap and the next step reuses them; the peak memory is the same, the
process just stops giving it back between steps. :func:`give_back_memory` returns the free
heap at the end of a fit (``malloc_trim``), so a notebook's kernel does not keep it.

Only glibc (Linux) has these knobs; elsewhere (macOS, Windows, musl) both are no-ops, and so
is :func:`keep_freed_memory` when the user set the thresholds (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``): their choice stands. (With jemalloc or
tcmalloc preloaded, glibc's malloc serves nothing, and its thresholds do not matter.)
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import cache

THRESHOLD = 1 << 30  # bytes: above any one tensor a CPU training step allocates here
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (<malloc.h>)
_USER_CHOICES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


@cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``gnu_get_libc_version``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process
    except OSError:
        return None
    needed = ("gnu_get_libc_version", "mallopt", "malloc_trim")
    return libc if all(hasattr(libc, name) for name in needed) else None


@cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to :data:`THRESHOLD`, once per process; True
    when they were set (glibc, and the user had not chosen for themselves)."""
    libc = _glibc()
    if libc is None or any(os.environ.get(name) for name in _USER_CHOICES):
        return False
    # Both, or neither: setting one switches off glibc's adaptation of the other (alone, the
    # trim threshold made it worse: 40,000 faults a step, as every block over 128 KiB was
    # then mapped afresh).
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, THRESHOLD)
    )


def give_back_memory() -> None:
    """Return the heap's free memory to the OS (after a fit); a no-op off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
