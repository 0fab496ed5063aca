"""Stopping processes by PID, never by name: other labs, tests and people share this machine.

Two kinds of process end here: the lab's own children (agents, the authority), which are
reaped so they leave no zombie, and processes that are not our children (detached Open
vSwitch daemons, or agents when ``lab down`` runs in another process than ``lab up``),
which are polled until they are gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone: it only waits to be reaped)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def _gone(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: nothing to reap, look it up
        return not alive(pid)
    return done != 0


def stop(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, and SIGKILL if it is still there after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _gone(pid):
                return
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)


def kill(pid: int) -> None:
    """SIGKILL: the crash case (no chance to clean up)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
