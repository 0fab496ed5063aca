"""Follow the etcd store's change log: what other authorities (replicas) commit, as it commits.

Each replica pushes to its own agents. It learns of its own writes from its commits (the
authority's listeners); of the other replicas' writes from here: a thread that watches the
``log/`` keys (one per revision, written in the same etcd transaction as the objects, see
``etcd.py``) through the v3 gateway's streaming ``/v3/watch``, and hands each entry's changes to
``deliver``, the same callback a local commit calls. An entry this store committed itself is
skipped (its listeners ran at commit).

Why the watch stream and not polling the log: a poll costs a linearizable read (a quorum round
trip) every period per replica even when nothing changes, and adds half a period of latency to
every change; the stream delivers an event within the commit's own round trip (measured in
bench/replicas.py's fan-out) and costs nothing when idle.

What a stream cannot promise is handled by the log, which is ours and never compacted: the
follower remembers the last revision it delivered, and whenever it (re)starts a stream (at start,
after a member died, after a silent stream timed out, after etcd compacted the revision it asked
for) it first reads the log from there at a fresh linearizable snapshot and delivers what it
missed, then watches from that snapshot's etcd revision + 1. So no change is lost, whatever fails;
a change may be delivered twice (around a reconnection), which the listeners tolerate (a dirty
tenant marked twice is rebuilt once, from the store).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from policyfabric.store.base import Change, StoreError
from policyfabric.store.etcd import LOG, EtcdStore
from policyfabric.store.etcd_client import EtcdError, prefix_end, unb64

log = logging.getLogger(__name__)

Deliver = Callable[[list[Change]], None]
PAGE = 1000  # changes read at once when catching up
RETRY = (0.1, 2.0)  # back-off between streams that fail at once (first, most)


class LogFollower:
    """Delivers the changes committed to ``store`` by others, from a revision on, in a thread."""

    def __init__(self, store: EtcdStore, deliver: Deliver, *, idle: float = 15.0) -> None:
        self.store, self.deliver, self.idle = store, deliver, idle
        self.delivered = 0  # the last store revision handed over (or known to be)
        self.streams = 0  # streams opened (for tests: a reconnection opens another)
        self._next_at = 0  # the etcd revision the next stream starts at
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, since: int) -> None:
        """Deliver every change after store revision ``since``, then follow; returns at once."""
        self.delivered = since
        self._thread = threading.Thread(target=self._run, name="etcd-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following. The thread notices within ``idle`` seconds (a stream's read is not
        interruptible); it is a daemon and delivers nothing after this returns."""
        self._stop.set()

    # ---- the thread
    def _run(self) -> None:
        delay = RETRY[0]
        while not self._stop.is_set():
            try:
                self._catch_up()
                self._follow()
                delay = RETRY[0]
            except RuntimeError:
                if self._stop.is_set():
                    return  # the store was closed after stop()
                raise
            except (StoreError, EtcdError, ValueError) as exc:
                if self._stop.is_set():
                    return  # stopped: the stream broke because the store was closed
                log.warning("etcd follow: %s; catching up from revision %d again", exc, self.delivered)
                self.store.client.rotate()
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY[1])

    def _catch_up(self) -> None:
        """Deliver what the log holds after ``delivered``, at one linearizable snapshot; the next
        stream starts after that snapshot."""
        snap = self.store._begin()
        while self.delivered < snap.revision and not self._stop.is_set():
            found = self.store.changes(snap, self.delivered, PAGE)
            if not found:
                break
            self._hand(found)
        self._next_at = snap.at + 1

    def _follow(self) -> None:
        start = self.store._key(LOG)
        self.streams += 1
        for result in self.store.client.watch(start, prefix_end(start), self._next_at, idle=self.idle):
            if self._stop.is_set():
                return
            changes: list[Change] = []
            for event in result.get("events") or []:
                if event.get("type") == "DELETE":
                    continue
                kv = event["kv"]
                revision = int(unb64(kv["key"])[len(start) :])
                if revision <= self.delivered:
                    continue
                entry = json.loads(unb64(kv["value"]))
                if self.store.committed_here(str(entry.get("txn", ""))):
                    self.delivered = revision  # its listeners ran at commit
                    continue
                for op, kind, id, tenant, name in entry["changes"]:
                    changes.append(Change(revision, op, kind, id, tenant or None, name))
            if changes:
                self._hand(changes)
            header = result.get("header") or {}
            if header.get("revision"):
                self._next_at = max(self._next_at, int(header["revision"]) + 1)

    def _hand(self, changes: list[Change]) -> None:
        started = time.monotonic()
        try:
            self.deliver(changes)
        except Exception:  # a listener's bug must not stop the follower: log it, go on
            log.exception("etcd follow: delivering %d changes failed", len(changes))
        self.delivered = max(self.delivered, changes[-1].revision)
        took = time.monotonic() - started
        if took > 1.0:
            log.warning("etcd follow: delivering %d changes took %.1f s", len(changes), took)


__all__ = ["LogFollower"]
