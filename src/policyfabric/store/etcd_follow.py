"""Follow the etcd store's change log: what other authorities (replicas) commit, as it commits.

Each replica pushes to its own agents. It learns of its own writes from its commits (the
authority's listeners); of the other replicas' writes from here: a thread that watches the keys of
intent and their log (every key under the prefix but ``shared/``) through the v3 gateway's
streaming ``/v3/watch``. Each commit arrives whole (etcd never splits one revision's events across
responses): its ``log/REVISION`` entry's changes go to ``deliver``, the same callback a local
commit calls (an entry this store committed itself is skipped: its listeners ran at commit), and
its keys' new values go to the store's cache (``EtcdStore.learn``), so the replica's next read
and next write start from the newest state without reading what another replica just wrote.

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
tenant marked twice is rebuilt once, from the store). Within a stream, where it would resume is
the last event's revision + 1, never a response header's (a catch-up sent in several responses
carries the newest revision in every header); since every stream starts with that read of the
log, a break could not skip a change anyway, but the cache must not be told of a later commit
while missing an earlier one, and ``learn`` checks that too (each entry names the commit it
follows).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from policyfabric.store.base import Change, StoreError
from policyfabric.store.etcd import LOG, EtcdStore, log_changes
from policyfabric.store.etcd_client import EtcdError, unb64

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
        snap = self.store.snapshot()
        while self.delivered < snap.revision and not self._stop.is_set():
            found = self.store.changes(snap, self.delivered, PAGE)
            if not found:
                break
            self._hand(found)
        self._next_at = snap.at + 1

    def _follow(self) -> None:
        start, end = self.store.intent_range()
        self.streams += 1
        try:
            self._stream(start, end)
        finally:
            self.store.watcher = None

    def _stream(self, start: bytes, end: bytes) -> None:
        for result in self.store.client.watch(start, end, self._next_at, idle=self.idle):
            self.store.watcher = threading.get_ident()  # streaming: a snapshot may wait for it
            if self._stop.is_set():
                return
            commits: dict[int, dict[str, bytes | None]] = {}  # by etcd revision, in order
            for event in result.get("events") or []:
                kv = event["kv"]
                value = None if event.get("type") == "DELETE" else unb64(kv.get("value", ""))
                commits.setdefault(int(kv["mod_revision"]), {})[self.store.relative(unb64(kv["key"]))] = value
            changes: list[Change] = []
            for at, written in commits.items():
                self.store.learn(at, written)  # the cache moves with it: no read to write next
                changes += self._logged(written)
                # where a stream started again would resume: after the last event it delivered
                # (never the header's revision: a catch-up sent in several responses has the
                # newest revision in every header, and a break between them would skip the rest)
                self._next_at = max(self._next_at, at + 1)
            if changes:
                self._hand(changes)

    def _logged(self, written: dict[str, bytes | None]) -> list[Change]:
        """The changes of the log entries among ``written`` (one commit's keys), unless delivered
        already or committed by this store (its listeners ran at commit)."""
        changes: list[Change] = []
        for key, value in written.items():
            if not key.startswith(LOG) or value is None:
                continue
            revision = int(key[len(LOG) :])
            if revision <= self.delivered:
                continue
            entry = json.loads(value)
            if self.store.committed_here(str(entry.get("txn", ""))):
                self.delivered = revision
                continue
            changes += log_changes(revision, entry)
        return changes

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
