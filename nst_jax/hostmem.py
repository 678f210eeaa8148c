"""Host memory that the C allocator keeps after it is freed: returned to the system instead (glibc, Linux).

On CPU the arrays of a stylization live in the process's heap. XLA:CPU allocates each compiled call's
temporaries and outputs with ``malloc`` and frees them after the call; glibc serves blocks below its
(dynamic, up to 32 MiB) mmap threshold from its heap arenas and keeps them when they are freed, so what one
phase of a stylization (loading the params, the targets, the initial evaluation) freed stays in the process's
RSS while the next phase allocates anew.

:func:`compact` returns the free memory of the arenas to the system (``malloc_trim``); the pipeline calls it
at the start of a stylization and between its phases. It leaves the allocator's mmap threshold alone: fixing
it low (so that every large block is mapped and unmapped) saved a little more memory but made every step
fault its temporaries in anew, a slowdown of the L-BFGS step (BENCHMARKS.md, "Peak memory brought down").
Elsewhere (macOS, musl, Windows) it does nothing. Set ``NST_JAX_MALLOC_COMPACT=0`` to leave the allocator
alone.

XLA's compiler is the other large user of the heap: compiling the L-BFGS step of VGG-19 allocates a few
hundred MB of its own that it frees when done, and glibc keeps them, so the step's first execution (whose
temporaries are the run's peak) comes on top of them. :func:`compacting_after_compiles` trims after every
compilation that took long enough to have used much memory; the pipeline runs inside it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading

import jax


@functools.lru_cache(maxsize=1)
def _libc():
    if os.environ.get("NST_JAX_MALLOC_COMPACT", "1") == "0":
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def compact() -> bool:
    """Returns the free memory of glibc's arenas to the system. Returns whether it did (False where the C
    library is not glibc, or when turned off by ``NST_JAX_MALLOC_COMPACT=0``)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


#: The event jax records (with the duration) after each compilation by XLA.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

#: Compilations shorter than this (seconds) are not followed by a trim: small programs free little, and
#: a trim walks the whole heap.
COMPILE_TRIM_SECONDS = 0.25

_listening = 0
_lock = threading.Lock()


def _after_compile(event: str, duration: float, **kwargs) -> None:
    if event == BACKEND_COMPILE_EVENT and duration >= COMPILE_TRIM_SECONDS:
        compact()


@contextlib.contextmanager
def compacting_after_compiles():
    """Within this context, the memory that XLA's compiler freed is returned to the system after each
    compilation taking at least :data:`COMPILE_TRIM_SECONDS` (a ``jax.monitoring`` listener of
    :data:`BACKEND_COMPILE_EVENT`), before the compiled program first runs. Nestable and thread-safe; does
    nothing where :func:`compact` does nothing."""
    global _listening
    if _libc() is None:
        yield
        return
    with _lock:
        if _listening == 0:
            jax.monitoring.register_event_duration_secs_listener(_after_compile)
        _listening += 1
    try:
        yield
    finally:
        with _lock:
            _listening -= 1
            if _listening == 0:
                jax.monitoring.unregister_event_duration_listener(_after_compile)
