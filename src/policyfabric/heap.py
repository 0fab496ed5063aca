"""Long-lived state out of the cyclic garbage collector's sight, after a daemon loaded a lot of it.

Why: an agent's cache and view, and an authority's trees, are hundreds of thousands of long-lived
objects, and each full collection of the cyclic collector walks them all: a pause of 25-50 ms at
10,000 endpoints (bench/view.py measured it as the p99 of a one-endpoint change) that lands on
whatever change is being handled. ``gc.freeze`` moves everything alive now to a generation the
collector never scans; frozen objects are still freed when their last reference goes (records,
MOs and flows hold no reference cycles), only never scanned for cycles.
"""

from __future__ import annotations

import gc

BIG = 0.1  # seconds: a step this long (a first sync, a burst of endpoints, a whole build) loaded a lot


def settle_heap(took: float) -> None:
    """After a step of the daemon's loop that took ``took`` seconds: freeze the heap if it was big."""
    if took >= BIG:
        gc.freeze()
