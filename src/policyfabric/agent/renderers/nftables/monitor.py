"""Drift in nftables: the kernel tells ``nft monitor`` of every committed change, and by whom.

``nft monitor`` (in the renderer's network namespace) prints each change of a transaction as an
``nft`` command (``delete table inet policyfabric``, ``add rule inet policyfabric ep5_in ...``),
then one line closing the transaction with the process that committed it::

    # new generation 4 by process 13737 (nft)

The renderer's own changes are ``nft -f -`` processes it starts, so it registers each one's PID
(``own``) before giving it its input: a transaction that touched the policyfabric table and was
committed by any other process is drift. ``on_drift`` is called with what changed, and the
renderer's next apply rewrites the whole table. The monitor is a process blocked on its netlink
socket and a thread blocked reading its output: while nothing changes, neither uses the CPU
(bench/drift.py). If it exits, it is restarted and what changed meanwhile is taken as drift.
"""

from __future__ import annotations

import ctypes
import logging
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from policyfabric.agent.renderers.nftables.ruleset import TABLE
from policyfabric.sh import in_netns

log = logging.getLogger(__name__)

GENERATION = re.compile(r"^# new generation \d+ by process (\d+)")
OWN_FOR = 60.0  # seconds a PID of ours is remembered (its transaction is long read by then)


class Transactions:
    """``nft monitor`` lines in, drift out: pure (the monitor's thread feeds it)."""

    def __init__(self, table: str = TABLE) -> None:
        self.table = table
        self._changes: Counter[tuple[str, str]] = Counter()  # (verb, object) in the transaction so far
        self._own: dict[int, float] = {}

    def own(self, pid: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._own = {p: t for p, t in self._own.items() if now - t < OWN_FOR}
        self._own[pid] = now

    def feed(self, line: str) -> str | None:
        """What drifted, when ``line`` closes a transaction of someone else's that touched the table."""
        found = GENERATION.match(line)
        if found:
            changes, self._changes = self._changes, Counter()
            if not changes or int(found.group(1)) in self._own:
                return None
            return self.describe(changes, int(found.group(1)))
        words = line.split(maxsplit=4)
        if len(words) >= 4 and words[0] in ("add", "delete") and words[2:4] == ["inet", self.table]:
            self._changes[words[0], words[1]] += 1
        return None

    def describe(self, changes: Counter[tuple[str, str]], pid: int) -> str:
        if changes["delete", "table"]:
            what = f"table inet {self.table} deleted"
        else:
            parts = [
                f"{n} {obj}{'s' if n != 1 else ''} {'added' if verb == 'add' else 'deleted'}"
                for (verb, obj), n in sorted(changes.items())
            ]
            what = f"table inet {self.table}: {', '.join(parts)}"
        return f"{what} (by process {pid})"


_prctl: Any
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    """In the child: SIGTERM when the thread that started it ends (the agent killed, say)."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class NftMonitor:
    """``nft monitor`` in ``netns`` (None: this one), read by a thread of its own."""

    def __init__(self, netns: str | None, on_drift: Callable[[str], None], *, retry: float = 0.5) -> None:
        self.netns, self.on_drift, self.retry = netns, on_drift, retry
        self.transactions = Transactions()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.drifts = 0

    def own(self, pid: int) -> None:
        """``pid`` is one of the renderer's own ``nft`` processes."""
        with self._lock:
            self.transactions.own(pid)

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="nft-monitor", daemon=True)
        self._thread.start()
        ready.wait(5)

    def stop(self) -> None:
        self._stopped.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, ready: threading.Event) -> None:
        lost = False
        while not self._stopped.is_set():
            try:
                # started from this thread: PR_SET_PDEATHSIG ends it with the thread
                proc = subprocess.Popen(
                    in_netns(self.netns, ["nft", "monitor"]),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    bufsize=1,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                log.warning("nft monitor: cannot start: %s", exc)
                ready.set()
                self._stopped.wait(self.retry)
                continue
            self._proc = proc
            ready.set()
            if lost:
                self._report("nft monitor restarted: changes meanwhile unknown")
            assert proc.stdout is not None
            for line in proc.stdout:
                with self._lock:
                    what = self.transactions.feed(line)
                if what is not None:
                    self._report(what)
            proc.wait()
            if not self._stopped.is_set():
                log.warning("nft monitor exited (%s): restarting", proc.returncode)
                lost = True
                self._stopped.wait(self.retry)

    def _report(self, what: str) -> None:
        self.drifts += 1
        try:
            self.on_drift(what)
        except Exception:
            log.exception("nft monitor: drift callback failed")
