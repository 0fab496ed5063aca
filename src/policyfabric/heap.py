"""Long-lived state out of the cyclic garbage collector's sight, after a daemon loaded a lot of it.

Why: an agent's cache and view, and an authority's trees, are hundreds of thousands of long-lived
objects, and each full collection of the cyclic collector walks them all: a pause of 25-50 ms at
10,000 endpoints (bench/view.py measured it as the p99 of a one-endpoint change) that lands on
whatever change is being handled. ``gc.freeze`` moves everything alive now to a generation the
collector never scans; frozen objects are still freed when their last reference goes (records,
MOs and flows hold no reference cycles), only never scanned for cycles.

A big step also leaves a lot freed (a full sync's 110,000-line flow file, the frames of a
resolve, the view's old parts), which the C allocator keeps for reuse: ``malloc_trim`` gives
what it can back to the system, so that the daemon's resident size says what it holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable

BIG = 0.1  # seconds: a step this long (a first sync, a burst of endpoints, a whole build) loaded a lot


def _trimmer() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; None elsewhere (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(name), "malloc_trim", None)
    return trim


_trim = _trimmer()


def settle_heap(took: float) -> None:
    """After a step of the daemon's loop that took ``took`` seconds: freeze the heap if it was big,
    and give the memory it freed back to the system."""
    if took >= BIG:
        gc.freeze()
        if _trim is not None:
            _trim(0)
