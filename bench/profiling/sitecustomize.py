"""cProfile for the daemons a benchmark starts (bench/converge.py --profile DIR).

Python imports ``sitecustomize`` at start-up from the first directory on its path that has one:
a benchmark puts this directory first on the ``PYTHONPATH`` of the authority and the agent it
starts, with ``PF_BENCH_PROFILE`` naming where the profiles go. Unlike ``python -m cProfile``,
every thread is profiled (the daemons run their heavy steps in ``asyncio.to_thread``: the
authority's tree rebuild and status writes, the agent's OVSDB reads and flow applies), each with
its own ``cProfile.Profile``; at exit they are merged into one ``<role>-<pid>.prof`` (role: the
first argument, ``authority`` or ``agent``), for ``pstats`` or ``snakeviz``. SIGTERM becomes
``sys.exit`` so that ``atexit`` runs: the agent handles it itself, but uvicorn (the authority)
raises it again after its shutdown, and the default action would skip the dump. Without
``PF_BENCH_PROFILE`` this file does nothing.
"""

from __future__ import annotations

import atexit
import cProfile
import os
import pstats
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

_DIR = os.environ.get("PF_BENCH_PROFILE")
_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _profile_this_thread(frame: FrameType, event: str, arg: Any) -> None:
    """threading's profile hook, called once in each new thread: replaces itself by a profiler."""
    profile = cProfile.Profile()
    with _lock:
        _profiles.append(profile)
    profile.enable()


def _dump() -> None:
    assert _DIR is not None
    role = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "python"
    merged: pstats.Stats | None = None
    with _lock:
        profiles = list(_profiles)
    for profile in profiles:
        profile.create_stats()  # (disables it)
        if not getattr(profile, "stats", None):
            continue
        if merged is None:
            merged = pstats.Stats(profile)
        else:
            merged.add(profile)
    if merged is not None:
        path = Path(_DIR) / f"{role}-{os.getpid()}.prof"
        path.parent.mkdir(parents=True, exist_ok=True)
        merged.dump_stats(str(path))


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)


if _DIR:
    signal.signal(signal.SIGTERM, _exit)
    threading.setprofile(_profile_this_thread)
    _main = cProfile.Profile()
    _profiles.append(_main)
    atexit.register(_dump)
    _main.enable()
