"""What authority replicas share beside the intent (``base.Shared``), on etcd with leases.

Keys live under ``PREFIX/shared/`` of the store's prefix. Each holds ``{"by": REPLICA, "v": DOC}``
(``by``: the replica that wrote it, so a replica knows its own writes when they come back). Two
kinds of lifetime, both etcd leases:

- the replica's lease (``REPLICA_LEASE``): granted at start with a TTL of ``ttl`` seconds and kept
  alive every ``ttl / 3``; when the replica dies (or is cut off from etcd) for ``ttl`` seconds,
  etcd deletes every key under it and every other replica is told. A lease that ran out while
  the replica lived (a long pause, etcd unreachable) is granted anew and the replica's keys put
  again under it;
- seconds (an OpFlex declaration's ``prr``): keys share a lease per time bucket, granted for
  ``seconds + bucket`` (bucket: a tenth of it, 10 s at least), so a key lives at least its
  seconds, at most a bucket more, and thousands of declarations cost a few leases, not one each.
  A renewed key moves to the current bucket's lease.

Writes are queued and sent by a writer thread in order, up to ``OPS_PER_TXN`` operations per etcd
transaction (under etcd's default ``--max-txn-ops`` of 128; a key written twice in a row splits the
transaction, since etcd refuses a key twice in one); while etcd is unreachable they wait, in
order, and go when it returns. A watch thread streams what changes under the prefix (``/v3/watch``
with ``prev_kv``), and hands the events to ``deliver`` except this replica's own: its puts (their
``by``) and its deletes (counted when queued). After any break of the stream it reads the whole
prefix again and delivers the difference from what it had, so nothing is missed.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from policyfabric.store.base import REPLICA_LEASE, SharedEvent, StoreUnavailable
from policyfabric.store.etcd import EtcdStore
from policyfabric.store.etcd_client import EtcdError, b64, prefix_end, unb64

log = logging.getLogger(__name__)

OPS_PER_TXN = 100
RETRY = (0.1, 2.0)
Deliver = Callable[[list[SharedEvent]], None]


class EtcdShared:
    alone = False

    def __init__(self, store: EtcdStore, *, ttl: float = 3.0, idle: float = 15.0) -> None:
        self.store, self.client = store, store.client
        self.ttl, self.idle = max(2, round(ttl)), idle
        self.replica = uuid.uuid4().hex[:12]
        self.root = (store.prefix + "shared/").encode()
        self.lease = 0  # the replica's lease
        self._held: dict[str, Any] = {}  # key -> doc, put under the replica's lease (put again if it ends)
        self._buckets: dict[float, tuple[int, float]] = {}  # seconds -> (lease, until: monotonic)
        self._deleting: dict[str, int] = {}  # own deletes not seen back yet
        self._seen: dict[str, Any] = {}  # the prefix as the watch last had it (wrapped docs)
        self._queue: queue.Queue[tuple[str, str, Any, str | float]] = queue.Queue()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deliver: Deliver = lambda events: None
        self._next_at = 0
        self.streams = 0

    # ---- the interface
    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self.lease = self._grant(self.ttl)
        found, at = self._read_all()
        self._seen, self._next_at = found, at + 1
        self._hand([(key, doc, None) for key, doc in sorted(found.items())])  # before any later event
        for target in (self._keep_alive, self._write, self._watch):
            threading.Thread(target=target, name=f"etcd-shared-{target.__name__}", daemon=True).start()

    def put(self, key: str, value: Any, lease: str | float = REPLICA_LEASE) -> None:
        doc = {"by": self.replica, "v": value}
        with self._lock:
            if lease == REPLICA_LEASE:
                self._held[key] = doc
            else:
                self._held.pop(key, None)
        self._queue.put(("put", key, doc, lease))

    def delete(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)
            self._deleting[key] = self._deleting.get(key, 0) + 1
        self._queue.put(("delete", key, None, REPLICA_LEASE))

    def resign(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)
            self._deleting[key] = self._deleting.get(key, 0) + 1
        self._queue.put(("resign", key, None, REPLICA_LEASE))

    def campaign(self, key: str) -> bool:
        try:
            return self._campaign(key)
        except EtcdError as exc:
            raise StoreUnavailable(f"etcd: campaigning for {key}: {exc}") from None

    def _campaign(self, key: str) -> bool:
        raw = self.root + key.encode()
        doc = json.dumps({"by": self.replica, "v": self.replica}).encode()
        reply = self.client.txn(
            [{"key": b64(raw), "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
            [{"request_put": {"key": b64(raw), "value": b64(doc), "lease": self.lease}}],
            [{"request_range": {"key": b64(raw)}}],
            idempotent=True,  # a second try that finds the key ours answers the same
        )
        if reply.get("succeeded"):
            return True
        kvs = reply["responses"][0]["response_range"].get("kvs") or []
        return bool(kvs) and json.loads(unb64(kvs[0]["value"])).get("by") == self.replica

    def stop(self) -> None:
        """Stop, and give the replica's keys up at once (a clean stop need not wait for its lease)."""
        self._stop.set()
        try:
            self.client.call("lease/revoke", {"ID": self.lease}, idempotent=True)
        except EtcdError as exc:
            log.info("etcd shared: could not revoke the replica's lease (it ends by itself): %s", exc)

    # ---- leases
    def _grant(self, ttl: float) -> int:
        reply = self.client.call("lease/grant", {"TTL": int(ttl)}, idempotent=False)
        return int(reply["ID"])

    def _lease_of(self, lease: str | float) -> int:
        if lease == REPLICA_LEASE:
            return self.lease
        seconds = float(lease)
        now = time.monotonic()
        found = self._buckets.get(seconds)
        if found is not None and now + seconds <= found[1]:
            return found[0]
        bucket = max(10.0, seconds / 10)
        granted = self._grant(seconds + bucket)
        self._buckets[seconds] = (granted, now + seconds + bucket)
        return granted

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                reply = self.client.call("lease/keepalive", {"ID": self.lease}, idempotent=True)
                if int((reply.get("result") or {}).get("TTL", 0) or 0) > 0:
                    continue
                log.warning("etcd shared: replica %s's lease ran out; taking a new one", self.replica)
                self.lease = self._grant(self.ttl)
                with self._lock:
                    held = dict(self._held)
                for key, doc in held.items():
                    self._queue.put(("put", key, doc, REPLICA_LEASE))
            except (EtcdError, ValueError) as exc:
                log.warning("etcd shared: keeping replica %s alive: %s", self.replica, exc)

    # ---- writes, in order
    def _write(self) -> None:
        pending: list[tuple[str, str, Any, str | float]] = []
        delay = RETRY[0]
        while not self._stop.is_set():
            if not pending:
                try:
                    pending.append(self._queue.get(timeout=0.5))
                except queue.Empty:
                    continue
            while len(pending) < OPS_PER_TXN * 4:
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                while pending:
                    sent = self._send(pending)
                    del pending[:sent]
                delay = RETRY[0]
            except RuntimeError:
                if self._stop.is_set():
                    return  # the store was closed after stop(): what is left goes with the lease
                raise
            except (EtcdError, ValueError) as exc:
                log.warning("etcd shared: %d writes wait for etcd: %s", len(pending), exc)
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY[1])

    def _send(self, pending: list[tuple[str, str, Any, str | float]]) -> int:
        """One transaction of the first writes of ``pending`` (no key twice); how many it took."""
        if pending[0][0] == "resign":
            return self._resign(pending[0][1])
        ops: list[dict[str, Any]] = []
        keys: set[str] = set()
        for op, key, doc, lease in pending:
            if len(ops) == OPS_PER_TXN or key in keys or op == "resign":
                break
            keys.add(key)
            raw = b64(self.root + key.encode())
            if op == "delete":
                ops.append({"request_delete_range": {"key": raw}})
            else:
                value = b64(json.dumps(doc, separators=(",", ":")).encode())
                ops.append({"request_put": {"key": raw, "value": value, "lease": self._lease_of(lease)}})
        reply = self.client.txn([], ops, idempotent=True)  # whole values put or deleted: a repeat is harmless
        for (op, key, _, _), answer in zip(pending, reply.get("responses") or [], strict=False):
            if op == "delete" and not int(answer.get("response_delete_range", {}).get("deleted", 0)):
                self._seen_back(key)  # nothing was there: no event will come back for it
        return len(ops)

    def _resign(self, key: str) -> int:
        """Delete ``key`` if it is under this replica's lease, in a transaction of its own (its
        compare is its own); one write taken."""
        raw = b64(self.root + key.encode())
        reply = self.client.txn(
            [{"key": raw, "target": "LEASE", "result": "EQUAL", "lease": self.lease}],
            [{"request_delete_range": {"key": raw}}],
            idempotent=True,  # deleting what is gone, or refusing what is not ours, twice: the same
        )
        deleted = reply.get("succeeded") and int(
            (reply.get("responses") or [{}])[0].get("response_delete_range", {}).get("deleted", 0)
        )
        if not deleted:
            if reply.get("succeeded") is False:
                log.info("etcd shared: %s is not under this replica's lease (taken, or gone): left", key)
            self._seen_back(key)  # nothing deleted: no event will come back for it
        return 1

    def _seen_back(self, key: str) -> bool:
        """Count one of this replica's own deletes of ``key`` as come back; whether there was one."""
        with self._lock:
            mine = self._deleting.get(key, 0)
            if mine > 1:
                self._deleting[key] = mine - 1
            elif mine == 1:
                del self._deleting[key]
            return mine > 0

    # ---- what the others do
    def _read_all(self) -> tuple[dict[str, Any], int]:
        found: dict[str, Any] = {}
        start, end = self.root, prefix_end(self.root)
        at = 0
        while True:
            reply = self.client.range(start, end, revision=at, limit=2000)
            at = at or int(reply["header"]["revision"])
            kvs = reply.get("kvs") or []
            for kv in kvs:
                found[unb64(kv["key"])[len(self.root) :].decode()] = json.loads(unb64(kv["value"]))
            if not reply.get("more") or not kvs:
                return found, at
            start = unb64(kvs[-1]["key"]) + b"\0"

    def _watch(self) -> None:
        delay = RETRY[0]
        while not self._stop.is_set():
            try:
                self._follow()
                delay = RETRY[0]
            except RuntimeError:
                if self._stop.is_set():
                    return  # the store was closed after stop()
                raise
            except (EtcdError, ValueError) as exc:
                if self._stop.is_set():
                    return  # stopped: the stream broke because the store was closed
                log.warning("etcd shared: watch: %s; reading everything again", exc)
                self.client.rotate()
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, RETRY[1])
                try:
                    self._resync()
                except (EtcdError, ValueError) as again:
                    log.warning("etcd shared: %s", again)

    def _resync(self) -> None:
        """After a broken stream: the difference between the prefix now and what the watch had."""
        found, at = self._read_all()
        events = []
        for key in sorted(set(found) | set(self._seen)):
            old, new = self._seen.get(key), found.get(key)
            if old != new:
                events.append((key, new, old))
        self._seen, self._next_at = found, at + 1
        self._hand(events)

    def _follow(self) -> None:
        self.streams += 1
        for result in self.client.watch(
            self.root, prefix_end(self.root), self._next_at, idle=self.idle, prev_kv=True
        ):
            if self._stop.is_set():
                return
            events = []
            for event in result.get("events") or []:
                key = unb64(event["kv"]["key"])[len(self.root) :].decode()
                prev = event.get("prev_kv")
                old = json.loads(unb64(prev["value"])) if prev and prev.get("value") else None
                new = None
                if event.get("type") != "DELETE":
                    new = json.loads(unb64(event["kv"]["value"]))
                    self._seen[key] = new
                else:
                    self._seen.pop(key, None)
                events.append((key, new, old))
                # resume after the last event handed, never at the header's revision: a catch-up
                # sent in several responses has the newest one in every header, and a stream that
                # ends between them (silent for ``idle``: no error, so no resync) would skip the rest
                self._next_at = max(self._next_at, int(event["kv"]["mod_revision"]) + 1)
            self._hand(events)

    def _hand(self, events: list[tuple[str, Any, Any]]) -> None:
        out = []
        for key, new, old in events:
            if new is not None and new.get("by") == self.replica:
                continue  # its own put
            if new is None and self._seen_back(key):
                continue  # its own delete
            out.append(
                SharedEvent(
                    key, new.get("v") if new else None, old.get("v") if isinstance(old, dict) else None
                )
            )
        if out:
            try:
                self._deliver(out)
            except Exception:  # a listener's bug must not stop the watch: log it, go on
                log.exception("etcd shared: delivering %d events failed", len(out))


__all__ = ["EtcdShared"]
