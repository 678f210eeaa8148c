"""Host memory that the C allocator keeps after it is freed: returned to the system instead (glibc, Linux).

On CPU the arrays of a stylization live in the process's heap. XLA:CPU allocates each compiled call's
temporaries and outputs with ``malloc`` and frees them after the call; glibc serves blocks below its mmap
threshold from its heap arenas and keeps them when they are freed. That threshold is dynamic: each time a
large block is freed it rises to that block's size (up to 32 MiB), so after the first few calls every
activation-sized buffer of a small-to-medium image comes from the arenas, and what one phase (the targets,
the initial evaluation) freed stays in the process's RSS, fragmented, while the next phase allocates anew.
Measured, that is several hundred MB of a 512 px stylization's peak RSS (BENCHMARKS.md, "Where the memory
goes").

:func:`compact` fixes the mmap threshold at glibc's initial 128 KiB (which also turns the dynamic raise off),
so that every block above it is mapped on allocation and unmapped on release, and returns what the arenas
hold free now (``malloc_trim``). The pipeline calls it at the start of a stylization and between its phases.
Elsewhere (macOS, musl, Windows) it does nothing. Set ``NST_JAX_MALLOC_COMPACT=0`` to leave the allocator
as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

#: glibc's ``mallopt`` parameter for the mmap threshold (malloc.h).
M_MMAP_THRESHOLD = -3
#: The threshold set: glibc's own initial value (128 KiB).
MMAP_THRESHOLD = 128 * 1024


@functools.lru_cache(maxsize=1)
def _libc():
    if os.environ.get("NST_JAX_MALLOC_COMPACT", "1") == "0":
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def compact() -> bool:
    """Fixes glibc's mmap threshold (see the module docstring) and returns the free memory of its arenas to
    the system. Returns whether it did (False where the C library is not glibc, or when turned off)."""
    libc = _libc()
    if libc is None:
        return False
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.malloc_trim(0)
    return True
