"""Giving freed memory back to the system.

glibc's allocator keeps the pages it freed (SQLite's caches of a closed
database, a burst of requests) in its arenas, where they count in the
daemon's RSS long after their use. ``release_freed_memory()`` asks it to
return them (``malloc_trim(0)``); on a C library without it (musl), it does
nothing. It takes a few milliseconds on a large heap: run it off the reactor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_freed_memory() -> bool:
    """True if memory could be given back (the C library knows how)."""
    return bool(_TRIM is not None and _TRIM(0))
