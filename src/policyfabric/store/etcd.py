"""etcd store: the same interface as SQLite (``base``), on an etcd v3 cluster, so that several
authorities can share one source of truth (``policyfabric authority --store etcd://...``).

Client: our own thin client of etcd's v3 JSON gateway over httpx (``etcd_client``: why not
etcd3gw nor the gRPC ``etcd3`` is said there).

Keys, under a prefix (``/policyfabric/`` unless the URL names another: ``etcd://h:p/prefix``)::

    rev                       {"revision": N, "txn": id}   the global revision (a counter)
    item/KIND/TENANT/NAME     {"id", "kind", "tenant", "name", "revision", "data", "claims"}
    id/ID                     "item/KIND/TENANT/NAME"      (where an object is, by id)
    claim/KIND/.../VALUE      ID                           (who holds a uniqueness claim)
    seq/NAME                  N                            (next_sequence's counters)
    log/REVISION              {"txn": id, "changes": [[op, kind, id, tenant, name], ...],
                               "transitions": {"I": [status, host, was_status, was_host]}}

(``transitions``, by the index I of a change in ``changes``, only when an endpoint's status or
host changed, and absent when none did: entries without it read as before, and a reader that
does not know it still reads ``changes`` as it did.)

(TENANT is empty for global kinds; path segments are percent-encoded.)

Transactions. A transaction begins with a linearizable read of ``rev``: the etcd revision that
read was served at is the transaction's snapshot, and every other read is made AT that revision,
so a transaction sees one consistent state (reads are linearizable: a transaction sees every
write acknowledged before it began, whichever authority made it). Writes are buffered and sent
at commit as ONE etcd transaction that compares ``rev``'s mod_revision with the one read at the
start and, if unchanged, writes everything together with ``rev`` itself: all or nothing.

Why one compare and not the whole read set: the interface hands out the revision a write will
have before it commits (``next_revision``), so the revision is a counter every write transaction
reads and bumps; every writer therefore writes ``rev``, and "``rev`` unchanged since my
snapshot" means "no write at all since my snapshot": stronger than comparing each key read
(which would also miss a key deleted from a range read, a phantom), and one compare instead of
hundreds (compares count against ``--max-txn-ops`` too). The uniqueness claims are then atomic
for free: a claim is checked against the snapshot, and the commit fails if anything changed since.
A transaction that loses raises ``WriteConflict``; ``base.retry_conflicts`` runs the whole write
again (bounded), which is how the authority's writes are wrapped. Within one process writers are
serialised by a lock (as with SQLite), so only another authority can make one lose.

A commit whose answer is lost (the member died, a timeout) is resolved, not guessed: a fence
transaction bumps ``rev`` if it is still at the snapshot's mod_revision, which makes the lost
commit unable to apply from then on; if the fence loses instead, ``log/REVISION`` says whether the
commit that won was this one (its txn id). Only when etcd stays unreachable through that is the
outcome unknown, and the error says so.

Revisions and changes: ``rev`` counts like SQLite's revision (1, 2, 3... one per write
transaction, no gaps), and the change log is a key per revision written in the same etcd
transaction: ``changes(since, limit)`` is a range read from ``log/since+1``. Not etcd's own MVCC
history: etcd must be compacted (``--auto-compaction-*``) or it fills its quota, and compaction
would take ``/v1/changes?since=`` with it; our log is kept like SQLite's, whatever the compaction
(a transaction needs etcd's history only for the few milliseconds it runs).

Limits: one REST write, one ``/v1/batch`` included, is one etcd transaction; etcd refuses one over
``--max-txn-ops`` (default 128) or ``--max-request-bytes`` (default 1.5 MiB). Then nothing is
written and ``TxnTooLarge`` (413) names the limit and what the write needed. A write is never
split: it would not be all or nothing. docs/operations.md says what to raise for bulk batches.

Cache: what a transaction read is kept, tagged with ``rev``'s mod_revision, and used by later
transactions that find ``rev`` unchanged (no write since, by anyone: every write bumps ``rev``);
a commit of this store updates it in place. So one authority alone pays two round trips per
write (the snapshot read, the commit) plus what it never read before, and a write that starts
from the cache's snapshot pays only the commit.

Other writers' commits do not drop the cache: it follows them. Each log entry also names every
key its commit wrote (``keys``) and the mod_revision of ``rev`` it replaced (``base``), so:

- a snapshot read with a warm cache is one etcd transaction reading ``rev`` and the log entries
  since the cache's revision; if they chain (each ``base`` is the previous commit, the last is
  ``rev``'s), the cache forgets only the keys they name, and reads those again in one request
  (their new values: the next reads need them); a gap (a fence, a commit of an older version
  without ``keys``, a raw write) and it starts again;
- a commit that loses brings the same back in its own round trip (the etcd transaction's failure
  branch), so the retry starts at once from the newest state, without a snapshot read;
- a replica's change-log follower watches every intent key (``etcd_follow``): each commit of
  another replica arrives whole, with its values, and moves the cache to it (``learn``) with no
  request at all; a snapshot that finds the cache a commit behind waits a moment for the watch
  rather than reading the keys itself.

Measured (bench/replicas.py, 3 replicas, one client each): before this, a write through one
replica re-read every range it used (the tenant's endpoints, the VRF's addresses, every MAC) after
each commit of another, lost over and over while it read, and 3 replicas wrote 7-42 writes/s with
p99s of seconds; docs/operations.md has the figures since. What stays is the single counter:
every commit still changes ``rev``, so two replicas committing in the same few milliseconds still
make one lose and run again (about one loss per write with 3 replicas writing flat out).

Replicas: ``log/`` is what a replica follows to learn of other replicas' writes
(``etcd_follow.py``: a watch of every intent key, whose values feed the cache, caught up from the
log after any break), and the state replicas
share beside intent (liveness, declarations, the gateway election) lives under ``shared/`` of the
same prefix with leases (``etcd_shared.py``).
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, overload
from urllib.parse import quote

from policyfabric.model.rules import Claim
from policyfabric.store.base import (
    Change,
    ClaimTaken,
    Op,
    Record,
    StoreUnavailable,
    Transition,
    TxnTooLarge,
    WriteConflict,
)
from policyfabric.store.etcd_client import (
    Ambiguous,
    ClientTls,
    Compacted,
    EtcdClient,
    EtcdError,
    FutureRevision,
    TooLarge,
    Unreachable,
    b64,
    prefix_end,
    unb64,
)

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/policyfabric/"
PAGE = 2000  # keys per range request
CATCH_UP = 256  # log entries a snapshot reads to bring the cache up to date; more: read anew
LOOKUP_RANGE = 20_000  # a lookup reads its whole range if it has at most this many keys (then cached)
READS_PER_TXN = 64  # point reads sent together (a read-only etcd transaction), under --max-txn-ops
REV, ITEM, ID, CLAIM, SEQ, LOG = "rev", "item/", "id/", "claim/", "seq/", "log/"
SHARED = "shared/"  # etcd_shared's keys: the first key after every key of intent (and its log)
MiB = 1 << 20
WATCH_WAIT = 0.05  # seconds a snapshot behind waits for the watch to bring the cache there
RECENT = 1024  # log entries kept decoded (what a replica's next flush asks ``changes`` for)
OWN_TXNS = 4096  # own commits remembered (the follower skips them); it trails them by milliseconds


class OutcomeUnknown(StoreUnavailable):
    """A write reached etcd but its answer did not come back, and etcd could not be asked
    afterwards: it may be committed later (a proposal in a lone leader's log is committed once
    the quorum returns), or never. Retrying blindly could apply it twice; read first."""

    code: ClassVar[str] = "outcome_unknown"


@dataclass(frozen=True)
class Item:
    """What ``item/...`` holds: the record and the claims it holds."""

    record: Record
    claims: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    """Where a transaction reads: etcd revision ``at``; ``rev`` then had ``rev_mod`` and said
    ``revision`` (``rev_raw`` its bytes, None before the first write)."""

    at: int
    rev_mod: int
    revision: int
    rev_raw: bytes | None


def seg(text: str | None) -> str:
    return quote(text or "", safe="")


def item_key(kind: str, tenant: str | None, name: str) -> str:
    return f"{ITEM}{seg(kind)}/{seg(tenant)}/{seg(name)}"


def claim_key(key: str) -> str:
    """``ip/acme/vrf1/10.0.0.5`` -> ``claim/ip/acme/vrf1/10.0.0.5``: a claim's own path, so that the
    claims of one kind and scope (the addresses of a VRF, every MAC) are one range."""
    return CLAIM + "/".join(seg(part) for part in key.split("/"))


def log_entry(
    txn_id: str, changes: Sequence[Change], keys: Iterable[str] | None = None, base: int | None = None
) -> dict[str, Any]:
    """The value of ``log/REVISION`` for ``changes`` (one revision's, in order); ``keys``: every
    key the commit wrote or deleted, ``base``: the mod_revision of ``rev`` it replaced (what
    another store's cache needs to follow it, see the module docstring)."""
    entry: dict[str, Any] = {
        "txn": txn_id,
        "changes": [[c.op, c.kind, c.id, c.tenant or "", c.name] for c in changes],
    }
    if keys is not None and base is not None:
        entry["keys"], entry["base"] = sorted(keys), base
    moved = {str(i): c.transition.encode() for i, c in enumerate(changes) if c.transition is not None}
    if moved:
        entry["transitions"] = moved
    return entry


def log_changes(revision: int, entry: dict[str, Any]) -> list[Change]:
    """The changes a ``log/REVISION`` value holds (``log_entry``'s inverse)."""
    moved = entry.get("transitions") or {}
    return [
        Change(revision, op, kind, id, tenant or None, name, Transition.decode(moved.get(str(i))))
        for i, (op, kind, id, tenant, name) in enumerate(entry["changes"])
    ]


def log_key(revision: int) -> str:
    return f"{LOG}{revision:020d}"


def parents(key: str) -> Iterator[str]:
    """The ranges ``key`` is in: ``item/k/t/n`` -> ``item/``, ``item/k/``, ``item/k/t/``."""
    at = key.find("/")
    while at != -1:
        yield key[: at + 1]
        at = key.find("/", at + 1)


def encode(key: str, value: Any) -> bytes:
    if isinstance(value, Item):
        r = value.record
        doc = {
            "id": r.id,
            "kind": r.kind,
            "tenant": r.tenant or "",
            "name": r.name,
            "revision": r.revision,
            "data": r.data,
            "claims": list(value.claims),
        }
        return json.dumps(doc, separators=(",", ":")).encode()
    if key.startswith(SEQ):
        return str(int(value)).encode()
    return str(value).encode()


def decode(key: str, raw: bytes) -> Any:
    if key.startswith(ITEM):
        doc = json.loads(raw)
        tenant = doc["tenant"] or None
        record = Record(doc["kind"], doc["id"], tenant, doc["name"], doc["revision"], doc["data"])
        return Item(record, tuple(doc["claims"]))
    if key.startswith(SEQ):
        return int(raw)
    return raw.decode()


def same(a: Any, b: Any) -> bool:
    """Whether writing ``b`` over ``a`` changes nothing (Record's equality ignores ``data``)."""
    if isinstance(a, Item) and isinstance(b, Item):
        ra, rb = a.record, b.record
        return ra == rb and ra.data == rb.data and a.claims == b.claims
    return type(a) is type(b) and a == b


class Cache:
    """Decoded values by key, valid while ``rev``'s mod_revision is ``rev_mod`` (see the module
    docstring), point values and whole ranges; shared by the store's threads."""

    def __init__(self, limit: int) -> None:
        self.lock = threading.Lock()
        self.moved = threading.Condition(self.lock)  # notified whenever rev_mod moves
        self.limit = limit
        self.rev_mod = -1
        self.snap: Snapshot | None = None  # the latest snapshot known to be at rev_mod
        self.values: dict[str, Any] = {}
        self.ranges: dict[str, dict[str, Any]] = {}

    def _reset(self, snap: Snapshot | None) -> None:
        self.values, self.ranges = {}, {}
        self.rev_mod, self.snap = (snap.rev_mod, snap) if snap is not None else (-1, None)
        self.moved.notify_all()

    def wait(self, rev_mod: int, timeout: float) -> bool:
        """Wait until the cache is at ``rev_mod`` or later (the watch bringing it); whether it is."""
        with self.lock:
            return self.moved.wait_for(lambda: self.rev_mod >= rev_mod, timeout)

    def begin(self, snap: Snapshot) -> None:
        with self.lock:
            if snap.rev_mod > self.rev_mod:  # someone wrote since: start again (an older reader: no)
                self._reset(snap)
            elif snap.rev_mod == self.rev_mod and self.snap is not None and snap.at > self.snap.at:
                self.snap = snap

    def past(self, rev_mod: int) -> bool:
        """Whether the cache is at a later commit than ``rev_mod`` (someone wrote since)."""
        with self.lock:
            return self.rev_mod > rev_mod

    def warm(self) -> Snapshot | None:
        """The snapshot the cache is at, to write optimistically from (None: read one)."""
        with self.lock:
            return self.snap

    def get(self, rev_mod: int, key: str) -> tuple[bool, Any]:
        with self.lock:
            if rev_mod != self.rev_mod:
                return False, None
            if key in self.values:
                return True, self.values[key]
            for parent in parents(key):
                entries = self.ranges.get(parent)
                if entries is not None:
                    return True, entries.get(key)
            return False, None

    def get_range(self, rev_mod: int, prefix: str) -> dict[str, Any] | None:
        with self.lock:
            if rev_mod != self.rev_mod:
                return None
            entries = self.ranges.get(prefix)
            if entries is not None:
                return dict(entries)
            for parent in parents(prefix):
                entries = self.ranges.get(parent)
                if entries is not None and parent != prefix:
                    return {k: v for k, v in entries.items() if k.startswith(prefix)}
            return None

    def put(self, rev_mod: int, values: dict[str, Any]) -> None:
        with self.lock:
            if rev_mod != self.rev_mod:
                return
            if len(self.values) + len(values) > self.limit:
                self.values = {}
            self.values.update(values)

    def put_range(self, rev_mod: int, prefix: str, entries: dict[str, Any]) -> None:
        with self.lock:
            if rev_mod == self.rev_mod:
                self.ranges[prefix] = dict(entries)

    def commit(self, old_mod: int, new: Snapshot, writes: dict[str, Any]) -> None:
        """This store's commit took ``rev`` from ``old_mod`` to ``new`` writing ``writes``."""
        with self.lock:
            if self.rev_mod >= new.rev_mod:
                return  # the watch brought the commit first (``follow``), or a later one
            if self.rev_mod != old_mod:
                self._reset(new)
                return
            self.rev_mod, self.snap = new.rev_mod, new
            self.moved.notify_all()
            self._put(writes)

    def cached(self, keys: Iterable[str]) -> list[str]:
        """Those of ``keys`` the cache holds a value for (by themselves or in a range)."""
        with self.lock:
            return [
                key
                for key in keys
                if key in self.values or any(parent in self.ranges for parent in parents(key))
            ]

    def advance(self, path: set[int], new: Snapshot, written: set[str], fresh: dict[str, Any]) -> None:
        """Other writers took ``rev`` along ``path`` (mod_revisions) to ``new``, writing only
        ``written``; ``fresh``: the values at ``new`` of those the cache held. Everything else the
        cache holds is still true at ``new``: it moves there instead of starting again. A written
        key not in ``fresh`` (a range read since ``cached`` was asked) is forgotten, with its ranges."""
        with self.lock:
            if new.rev_mod <= self.rev_mod:
                if new.rev_mod == self.rev_mod and self.snap is not None and new.at > self.snap.at:
                    self.snap = new
                return
            if self.rev_mod not in path:  # not where the path starts (a commit moved it since)
                self._reset(new)
                return
            for key in written:
                known = key in fresh
                if known:
                    self.values[key] = fresh[key]
                else:
                    self.values.pop(key, None)
                for parent in parents(key):
                    entries = self.ranges.get(parent)
                    if entries is None:
                        continue
                    if not known:
                        del self.ranges[parent]
                    elif fresh[key] is None:
                        entries.pop(key, None)
                    else:
                        entries[key] = fresh[key]
            self.rev_mod, self.snap = new.rev_mod, new
            self.moved.notify_all()

    def follow(self, base: int, new: Snapshot, written: dict[str, Any]) -> bool:
        """One commit by another writer, seen whole (a watch: every key it wrote, with its value),
        that took ``rev`` from mod_revision ``base`` to ``new``: if the cache is at ``base``, it
        moves to ``new`` with these values; whether it did."""
        with self.lock:
            if self.rev_mod != base:
                return False
            if len(self.values) + len(written) > self.limit:
                self.values = {}
            self._put(written)
            self.rev_mod, self.snap = new.rev_mod, new
            self.moved.notify_all()
            return True

    def _put(self, written: Mapping[str, Any]) -> None:
        """Each key's new value (None: deleted), in ``values`` and in every cached range holding
        the key (under the lock): what a commit, this store's or another's, wrote."""
        for key, value in written.items():
            self.values[key] = value
            for parent in parents(key):
                entries = self.ranges.get(parent)
                if entries is None:
                    continue
                if value is None:
                    entries.pop(key, None)
                else:
                    entries[key] = value

    def clear(self) -> None:
        with self.lock:
            self._reset(None)


class EtcdTxn:
    """A read snapshot and, in :meth:`EtcdStore.write`, a write transaction buffering its writes."""

    def __init__(self, store: EtcdStore, snap: Snapshot, writable: bool) -> None:
        self.store = store
        self.snap = snap
        self.writable = writable
        self.seen: dict[str, Any] = {}  # values at the snapshot this transaction read (None: absent)
        self.ranges: dict[str, dict[str, Any]] = {}  # ranges it read at the snapshot
        self.writes: dict[str, Any] = {}  # what it wrote (None: deleted)
        self._written_under: dict[str, dict[str, Any]] = {}  # writes by range (for list)
        self._revision: int | None = None
        self.logged: list[Change] = []

    # ---- the snapshot, then this transaction's own writes over it
    def _base(self, key: str) -> Any:
        if key not in self.seen:
            for parent in parents(key):
                if parent in self.ranges:
                    self.seen[key] = self.ranges[parent].get(key)
                    return self.seen[key]
            hit, value = self.store.cache.get(self.snap.rev_mod, key)
            if not hit:
                self._lost()
            if not hit and self.writable and key.startswith((ITEM, CLAIM)):
                # an object by name, a claim: read its range whole (the kind in the tenant, the
                # addresses of the VRF, every MAC...) in one round trip as for the one key, unless
                # it is large; the next lookups there (names and values being checked free) are
                # then answered from the cache. Only in a write: its checks look up many names
                # and values of one range; a read (a replica's flush reading the few records
                # another replica changed, after that write emptied its cache) reads the key
                parent = key[: key.rfind("/") + 1]
                entries = self.store.get_range(self.snap, parent, LOOKUP_RANGE)
                if entries is not None:
                    self.ranges[parent] = entries
                    hit, value = True, entries.get(key)
            self.seen[key] = value if hit else self.store.get(self.snap, key)
        return self.seen[key]

    def _range_base(self, prefix: str) -> dict[str, Any]:
        if prefix not in self.ranges:
            self._lost()
            self.ranges[prefix] = self.store.get_range(self.snap, prefix)
        return self.ranges[prefix]

    def _lost(self) -> None:
        """A write about to read etcd at its snapshot stops if the cache has moved past it: another
        writer committed since, so its commit would lose anyway; the cache is where the retry
        starts (without this, every read of the doomed attempt is a round trip: the cache no
        longer answers for its snapshot)."""
        if self.writable and self.store.cache.past(self.snap.rev_mod):
            raise WriteConflict("another writer committed since this transaction's snapshot")

    def _value(self, key: str) -> Any:
        if key in self.writes:
            return self.writes[key]
        return self._base(key)

    def _prefetch(self, keys: Iterable[str]) -> None:
        """Read ``keys`` not read yet (nor in a range read) in one round trip."""
        wanted = [k for k in dict.fromkeys(keys) if k not in self.writes and k not in self.seen]
        wanted = [k for k in wanted if not any(p in self.ranges for p in parents(k))]
        if len(wanted) > 1:
            self.seen.update(self.store.get_many(self.snap, wanted))

    def _range(self, prefix: str) -> dict[str, Any]:
        entries = self._range_base(prefix)
        written = self._written_under.get(prefix)
        if not written:
            return entries
        merged = dict(entries)
        for key, value in written.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def _write(self, key: str, value: Any) -> None:
        if not self.writable:
            raise RuntimeError("a read transaction cannot write")
        self.writes[key] = value
        if key.startswith(ITEM):
            for parent in parents(key):
                self._written_under.setdefault(parent, {})[key] = value

    # ---- reads
    def get(self, id: str) -> Record | None:
        where = self._value(ID + id)
        item = self._value(where) if where is not None else None
        return item.record if item is not None else None

    def find(self, kind: str, tenant: str | None, name: str) -> Record | None:
        item = self._value(item_key(kind, tenant, name))
        return item.record if item is not None else None

    def list(self, kind: str, tenant: str | None = None, name: str | None = None) -> builtins.list[Record]:
        if tenant is not None and name is not None:
            found = self.find(kind, tenant, name)
            return [found] if found is not None else []
        prefix = f"{ITEM}{seg(kind)}/" + (f"{seg(tenant)}/" if tenant is not None else "")
        records = [item.record for item in self._range(prefix).values()]
        if name is not None:
            records = [r for r in records if r.name == name]
        return sorted(records, key=lambda r: (r.tenant or "", r.name))

    def revision(self) -> int:
        return self._revision if self._revision is not None else self.snap.revision

    def claim_holder(self, key: str) -> str | None:
        holder = self._value(claim_key(key))
        return str(holder) if holder is not None else None

    def changes(self, since: int, limit: int) -> builtins.list[Change]:
        found = self.store.changes(self.snap, since, limit) if since < self.snap.revision else []
        found += [c for c in self.logged if c.revision > since]
        return found[:limit]

    # ---- writes
    def next_sequence(self, name: str) -> int:
        key = SEQ + seg(name)
        value = int(self._value(key) or 0) + 1
        self._write(key, value)
        return value

    def next_revision(self) -> int:
        if self._revision is None:
            self._revision = self.snap.revision + 1
        return self._revision

    def put(
        self, record: Record, claims: Sequence[Claim] | None, op: Op, transition: Transition | None = None
    ) -> None:
        key = item_key(record.kind, record.tenant, record.name)
        held: tuple[str, ...] = ()
        if op == "create":  # a new id (a uuid4): nothing to read, but the name must be free
            if self._value(key) is not None:
                raise ValueError(f"{record.kind} {record.name!r} exists already (the caller checks first)")
        else:
            where = self._value(ID + record.id)
            old = self._value(where) if where is not None else None
            if old is not None:
                held = old.claims
                if where != key:  # renamed
                    self._write(where, None)
        self._write(ID + record.id, key)
        self._write(key, Item(record, held))
        if claims is not None:
            self.set_claims(record.id, claims)
        self._log(op, record, transition)

    def set_claims(self, id: str, claims: Sequence[Claim]) -> None:
        where = self._value(ID + id)
        item = self._value(where) if where is not None else None
        if item is None:
            raise KeyError(f"no object with id {id!r} to hold claims")
        self._prefetch([claim_key(c) for c in item.claims] + [claim_key(c.key) for c in claims])
        for old in item.claims:
            self._write(claim_key(old), None)
        new: list[str] = []
        for claim in claims:
            holder = self.claim_holder(claim.key)
            if holder is not None:  # held by another object, or listed twice by this one
                raise ClaimTaken(claim, holder)
            self._write(claim_key(claim.key), id)
            new.append(claim.key)
        self._write(where, Item(item.record, tuple(new)))

    def delete(self, record: Record) -> None:
        where = self._value(ID + record.id)
        item = self._value(where) if where is not None else None
        if item is not None:
            for claim in item.claims:
                self._write(claim_key(claim), None)
        if where is not None:
            self._write(where, None)
        self._write(ID + record.id, None)
        self._log("delete", record)

    def _log(self, op: Op, record: Record, transition: Transition | None = None) -> None:
        revision = self.next_revision()
        self.logged.append(
            Change(revision, op, record.kind, record.id, record.tenant, record.name, transition)
        )


class EtcdStore:
    """Intent in an etcd cluster (``endpoints``: its members' HOST:PORT)."""

    # a record written costs one or two operations (its item, its id key), a transaction two more
    # (rev, its log entry): 50 stays under etcd's default --max-txn-ops of 128
    records_per_write: int | None = 50

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        tls: ClientTls | None = None,
        timeout: float = 5.0,
        cache_limit: int = 1_000_000,
    ) -> None:
        self.client = EtcdClient(endpoints, tls, timeout)
        self.prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
        self._raw_prefix = self.prefix.encode()
        self._write_lock = threading.Lock()
        self.cache = Cache(cache_limit)
        self._large: set[str] = set()  # ranges over LOOKUP_RANGE keys (not read whole for a lookup)
        self._own: deque[str] = deque(maxlen=OWN_TXNS)  # txn ids this store committed, newest last
        self._own_set: set[str] = set()
        self._recent: dict[int, list[Change]] = {}  # log entries by revision, the newest RECENT
        self._recent_lock = threading.Lock()
        self.watcher: int | None = None  # the thread whose watch stream feeds ``learn``, while it runs
        log.info("store: etcd %s, prefix %s", ",".join(self.client.endpoints), self.prefix)

    @classmethod
    def from_url(cls, url: str, tls: ClientTls | None = None, **options: Any) -> EtcdStore:
        """``etcd://HOST:PORT,HOST:PORT,.../PREFIX`` (the prefix optional)."""
        endpoints, prefix = parse_url(url)
        return cls(endpoints, prefix=prefix, tls=tls, **options)

    def close(self) -> None:
        self.client.close()

    # ---- transactions
    @contextmanager
    def read(self) -> Iterator[EtcdTxn]:
        snap = self.snapshot()
        warm = self.cache.warm()
        if warm is not None and warm.rev_mod > snap.rev_mod:
            # the watch brought a later commit meanwhile (``learn``): reading there is as
            # linearizable (it was applied after this read began) and answered from the cache
            snap = warm
        yield EtcdTxn(self, snap, writable=False)

    @contextmanager
    def write(self) -> Iterator[EtcdTxn]:
        """A write transaction. It starts from the cache's snapshot when there is one (no round
        trip): the commit's compare on ``rev`` validates it; a transaction that ends without a
        commit (an error, or nothing to write) checks ``rev`` instead, since its answer came from
        that snapshot too. A stale snapshot is a WriteConflict: the caller's retry reads anew."""
        with self._write_lock:
            cached = self.cache.warm()
            txn = EtcdTxn(self, cached or self.snapshot(), writable=True)
            try:
                yield txn
            except WriteConflict:
                raise  # lost already (``_lost``): the cache is past the snapshot, the retry starts there
            except Exception:
                if cached is not None:
                    self._check_current(txn.snap)
                raise
            try:
                if not self._commit(txn) and cached is not None:
                    self._check_current(txn.snap)
            except WriteConflict:
                moved = self.cache.warm()
                if moved is None or moved.rev_mod <= txn.snap.rev_mod:
                    self.cache.clear()  # not brought up to date by the lost commit (compacted...)
                raise

    def _check_current(self, snap: Snapshot) -> None:
        """Raise WriteConflict if anyone wrote since ``snap`` (what was answered from it is stale);
        the cache is then up to date for the retry."""
        if self.snapshot().rev_mod != snap.rev_mod:
            raise WriteConflict("another writer committed since the cached snapshot this write read")

    def committed_here(self, txn_id: str) -> bool:
        """Whether the commit ``txn_id`` (a log entry's) was made by this store, among its last
        ``OWN_TXNS`` (recorded as it is sent, applied or not: an id that never applied is never
        asked about): a replica's follower skips its own writes (their listeners ran at commit)."""
        return txn_id in self._own_set

    def _committed(self, txn_id: str) -> None:
        if len(self._own) == self._own.maxlen:
            self._own_set.discard(self._own[0])
        self._own.append(txn_id)
        self._own_set.add(txn_id)

    def transact(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], *, idempotent: bool
    ) -> dict[str, Any]:
        """One etcd transaction of raw operations (keys under the prefix, ``key``), outside this
        store's own transactions: no revision, no log entry. For a whole copy into a prefix no
        authority runs on (``dump``), batched under etcd's limits by the caller. The cache is
        dropped: what it held of these keys may be stale now. Raises the client's errors."""
        self.cache.clear()
        try:
            return self.client.txn(compare, success, idempotent=idempotent)
        finally:
            self.cache.clear()

    def key(self, key: str) -> bytes:
        """The etcd key of ``key`` (relative to the prefix)."""
        return self._key(key)

    def learn(self, at: int, written: dict[str, bytes | None]) -> bool:
        """Another writer's commit at etcd revision ``at``, as a watch of the intent keys
        (``intent_range``) delivers it: every key it put (the value) or deleted (None), relative to
        the prefix, ``rev`` and its log entry included. The cache moves to it if it was at the
        commit's base (no round trip: a write that follows starts from the newest state and does
        not lose to a commit it could have known of); whether it did. Anything else (a fence, a
        commit without a log entry, a cache elsewhere) is left to the next snapshot. A commit it
        cannot read (a value of another shape) drops the cache, logged, rather than end the
        watch: the next snapshot reads what it needs again."""
        try:
            return self._learn(at, written)
        except (KeyError, TypeError, ValueError, AttributeError):
            log.exception("etcd: a commit at revision %d could not be followed; the cache is dropped", at)
            self.cache.clear()
            return False

    def _learn(self, at: int, written: dict[str, bytes | None]) -> bool:
        raw_rev = written.get(REV)
        logged = [(k, v) for k, v in written.items() if k.startswith(LOG) and v is not None]
        if raw_rev is None or len(logged) != 1:
            return False
        revision, entry = int(logged[0][0][len(LOG) :]), json.loads(logged[0][1])
        self._remember({revision: log_changes(revision, entry)})
        base = entry.get("base")
        if not isinstance(base, int):
            return False
        snap = Snapshot(at, at, int(json.loads(raw_rev)["revision"]), raw_rev)
        values = {
            key: None if raw is None else decode(key, raw)
            for key, raw in written.items()
            if key != REV and not key.startswith(LOG)
        }
        return self.cache.follow(base, snap, values)

    def intent_range(self) -> tuple[bytes, bytes]:
        """The etcd keys of intent and its log (everything under the prefix but ``shared/``)."""
        return self._raw_prefix, self._key(SHARED)

    def relative(self, raw_key: bytes) -> str:
        """An etcd key under the prefix, as the store names it."""
        return raw_key[len(self._raw_prefix) :].decode()

    def ping(self) -> int:
        """The current revision (reaching a quorum of the cluster), for a check at start."""
        return self.snapshot().revision

    # ---- reading at a snapshot
    def _key(self, key: str) -> bytes:
        return self._raw_prefix + key.encode()

    def snapshot(self) -> Snapshot:
        """A linearizable read of ``rev``: where a transaction (or a whole copy, ``dump``) reads.
        With a warm cache, the log entries since the cache's revision come in the same read (one
        etcd transaction), and the cache moves to the new snapshot forgetting only what they wrote."""
        warm = self.cache.warm()
        if warm is None:
            reply = self._call(lambda: self.client.range(self._key(REV)))  # linearizable
            snap = self._snap_of(reply, int(reply["header"]["revision"]))
            self.cache.begin(snap)
            return snap
        ops = self._catch_up_ops(warm.revision)
        reply = self._call(lambda: self.client.txn([], ops, idempotent=True))  # read-only: linearizable
        snap = self._caught_up(warm, reply)
        return snap

    def _catch_up_ops(self, revision: int) -> list[dict[str, Any]]:
        """Read ``rev`` and the log after ``revision`` (at most CATCH_UP entries)."""
        start, end = self._key(log_key(revision + 1)), prefix_end(self._key(LOG))
        return [
            {"request_range": {"key": b64(self._key(REV))}},
            {"request_range": {"key": b64(start), "range_end": b64(end), "limit": CATCH_UP}},
        ]

    def _snap_of(self, rev_reply: dict[str, Any], at: int) -> Snapshot:
        kvs = rev_reply.get("kvs") or []
        if not kvs:
            return Snapshot(at, 0, 0, None)
        raw = unb64(kvs[0]["value"])
        return Snapshot(at, int(kvs[0]["mod_revision"]), int(json.loads(raw)["revision"]), raw)

    def _caught_up(self, old: Snapshot, reply: dict[str, Any]) -> Snapshot:
        """The snapshot a ``_catch_up_ops`` transaction read (from ``old``), the cache moved to it."""
        rev_reply, log_reply = (r["response_range"] for r in reply["responses"])
        new = self._snap_of(rev_reply, int(reply["header"]["revision"]))
        if new.rev_mod <= old.rev_mod:
            self.cache.begin(new)
            return new
        walked = self._walk(old, new, log_reply)
        if walked is None:  # a gap, an entry without its keys (migrated, fenced): read anew
            self.cache.begin(new)
            return new
        path, written = walked
        watcher = self.watcher
        waits = watcher is not None and watcher != threading.get_ident()  # never for itself
        if waits and self.cache.wait(new.rev_mod, WATCH_WAIT):
            return new  # the watch brought those commits (their values with them): no read
        # what the cache held of it, or all of it when that is one read anyway: the next reads (a
        # flush reading what another replica wrote, a write's retry) then ask etcd nothing
        wanted = sorted(written) if len(written) <= READS_PER_TXN else self.cache.cached(written)
        fresh = self._read_fresh(new, wanted) if wanted else {}
        self.cache.advance(path, new, written, fresh)
        return new

    def _walk(
        self, old: Snapshot, new: Snapshot, log_reply: dict[str, Any]
    ) -> tuple[set[int], set[str]] | None:
        """The mod_revisions ``rev`` went through from ``old`` to ``new`` and the keys written on
        the way, from the log entries between them; None unless they chain without a gap: each
        entry's ``base`` is the previous one's commit (the first's, ``old``), the last is ``new``."""
        kvs = log_reply.get("kvs") or []
        if log_reply.get("more") or len(kvs) != new.revision - old.revision:
            return None
        base, path, written = old.rev_mod, {old.rev_mod}, set()
        for kv in kvs:
            doc = json.loads(unb64(kv["value"]))
            revision = int(unb64(kv["key"])[len(self._raw_prefix) + len(LOG) :])
            self._remember({revision: log_changes(revision, doc)})
            keys = doc.get("keys")
            if doc.get("base") != base or not isinstance(keys, list):
                return None
            base = int(kv["mod_revision"])
            path.add(base)
            written.update(keys)
        return (path, written) if base == new.rev_mod else None

    def _read_fresh(self, snap: Snapshot, keys: Sequence[str]) -> dict[str, Any]:
        """The values of ``keys`` at ``snap`` (None: absent), bypassing the cache."""
        fetched: dict[str, Any] = {}
        for at in range(0, len(keys), READS_PER_TXN):
            chunk = keys[at : at + READS_PER_TXN]
            fetched.update(dict.fromkeys(chunk))
            for kv in self._read_keys(snap, chunk):
                key = unb64(kv["key"])[len(self._raw_prefix) :].decode()
                fetched[key] = decode(key, unb64(kv.get("value", "")))
        return fetched

    def get(self, snap: Snapshot, key: str) -> Any:
        hit, value = self.cache.get(snap.rev_mod, key)
        if hit:
            return value
        return self.get_many(snap, [key])[key]

    def get_many(self, snap: Snapshot, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        missing = []
        for key in keys:
            hit, value = self.cache.get(snap.rev_mod, key)
            if hit:
                found[key] = value
            else:
                missing.append(key)
        fetched = self._read_fresh(snap, missing)
        self.cache.put(snap.rev_mod, fetched)
        return found | fetched

    def _read_keys(self, snap: Snapshot, keys: Sequence[str]) -> list[dict[str, Any]]:
        """The key-values of ``keys`` at the snapshot (absent ones are not in the answer)."""

        def ranges(serializable: bool) -> list[dict[str, Any]]:
            if len(keys) == 1:
                reply = self.client.range(self._key(keys[0]), revision=snap.at, serializable=serializable)
                return list(reply.get("kvs") or [])
            at, ser = snap.at, serializable
            ops = [{"request_range": {"key": b64(self._key(k)), "revision": at, "serializable": ser}}
                   for k in keys]  # fmt: skip
            reply = self.client.txn([], ops, idempotent=True)
            return [kv for r in reply.get("responses") or [] for kv in r["response_range"].get("kvs") or []]

        found: list[dict[str, Any]] = self._at_snapshot(ranges)
        return found

    @overload
    def get_range(self, snap: Snapshot, prefix: str) -> dict[str, Any]: ...

    @overload
    def get_range(self, snap: Snapshot, prefix: str, cap: int) -> dict[str, Any] | None: ...

    def get_range(self, snap: Snapshot, prefix: str, cap: int | None = None) -> dict[str, Any] | None:
        """Every key under ``prefix`` at the snapshot; with ``cap``, None if there are more."""
        cached = self.cache.get_range(snap.rev_mod, prefix)
        if cached is not None:
            return cached
        if cap is not None and prefix in self._large:
            return None
        start, end = self._key(prefix), prefix_end(self._key(prefix))
        entries: dict[str, Any] = {}
        while True:

            def page(serializable: bool, first: bytes = start) -> dict[str, Any]:
                return self.client.range(first, end, revision=snap.at, limit=PAGE, serializable=serializable)

            reply = self._at_snapshot(page)
            if cap is not None and not entries and int(reply.get("count", 0)) > cap:
                self._large.add(prefix)  # point lookups there from now on
                return None
            kvs = reply.get("kvs") or []
            for kv in kvs:
                raw_key = unb64(kv["key"])
                key = raw_key[len(self._raw_prefix) :].decode()
                entries[key] = decode(key, unb64(kv.get("value", "")))
            if not reply.get("more") or not kvs:
                break
            start = unb64(kvs[-1]["key"]) + b"\0"
        self.cache.put_range(snap.rev_mod, prefix, entries)
        return entries

    def _remember(self, entries: dict[int, list[Change]]) -> None:
        """Log entries seen (committed here, caught up with, watched): a log entry never changes
        once written, so ``changes`` answers from them without a round trip."""
        with self._recent_lock:
            self._recent.update(entries)
            while len(self._recent) > RECENT:
                del self._recent[min(self._recent)]

    def changes(self, snap: Snapshot, since: int, limit: int) -> list[Change]:
        last = min(snap.revision, since + limit)
        with self._recent_lock:
            if all(r in self._recent for r in range(since + 1, last + 1)):
                return [c for r in range(since + 1, last + 1) for c in self._recent[r]]
        start, end = self._key(log_key(since + 1)), prefix_end(self._key(LOG))
        reply = self._at_snapshot(
            lambda s: self.client.range(start, end, revision=snap.at, limit=limit, serializable=s)
        )
        found: list[Change] = []
        for kv in reply.get("kvs") or []:
            revision = int(unb64(kv["key"])[len(self._raw_prefix) + len(LOG) :])
            found += log_changes(revision, json.loads(unb64(kv["value"])))
        return found

    def _at_snapshot(self, read: Any) -> Any:
        """``read(serializable)``: served by the member at hand (it has the snapshot's revision,
        having served the read that began it) unless it is another, behind: then linearizable."""
        try:
            return self._call(lambda: read(True))
        except FutureRevision:
            return self._call(lambda: read(False))

    def _call(self, fn: Any) -> Any:
        """Run a client call, turning outages into the store's errors."""
        try:
            return fn()
        except Unreachable as exc:
            raise StoreUnavailable(f"etcd cannot be reached: {exc}") from None
        except Compacted as exc:
            raise WriteConflict(f"etcd compacted the revision this transaction reads at: {exc}") from None

    # ---- commit
    def _commit(self, txn: EtcdTxn) -> bool:
        """Send the transaction's writes; False if it has none (then nothing is sent)."""
        changed = {k: v for k, v in txn.writes.items() if not (k in txn.seen and same(txn.seen[k], v))}
        if not changed and not txn.logged:
            return False  # wrote nothing (a no-op update, or only reads)
        snap = txn.snap
        txn._lost()  # a commit the watch already showed this one cannot follow: no round trip
        revision = txn.revision()
        txn_id = uuid.uuid4().hex
        rev_doc = json.dumps({"revision": revision, "txn": txn_id}).encode()
        ops = [_put(self._key(REV), rev_doc)]
        for key, value in changed.items():
            if value is None:
                ops.append({"request_delete_range": {"key": b64(self._key(key))}})
            else:
                ops.append(_put(self._key(key), encode(key, value)))
        if txn.logged:
            entry = log_entry(txn_id, txn.logged, changed, snap.rev_mod)
            ops.append(_put(self._key(log_key(revision)), json.dumps(entry, separators=(",", ":")).encode()))
        compare = [_unchanged(self._key(REV), snap.rev_mod)]
        self._committed(txn_id)  # before it is sent: the watch may see the commit before its answer
        try:
            # lost: the same round trip brings what won (rev, the log since), for the retry
            reply = self.client.txn(compare, ops, self._catch_up_ops(snap.revision))
        except TooLarge as exc:
            size = len(json.dumps({"compare": compare, "success": ops}))
            limit = (
                "--max-txn-ops (default 128)"
                if "operations" in str(exc)
                else "--max-request-bytes (default 1.5 MiB)"
            )
            raise TxnTooLarge(
                f"this write is {len(ops)} etcd operations and {size / MiB:.2f} MiB in one transaction, "
                f"over the etcd cluster's {limit} ({exc}): raise it on every etcd member, or write less "
                "at once (a smaller /v1/batch); nothing was written"
            ) from None
        except Unreachable as exc:
            raise StoreUnavailable(f"etcd cannot be reached; nothing was written: {exc}") from None
        except Ambiguous as exc:
            self.cache.clear()
            if not self._resolve(snap, revision, txn_id, exc):
                raise WriteConflict(f"the commit was not applied ({exc})") from None
            return True
        if not reply.get("succeeded"):
            self._caught_up(snap, reply)
            raise WriteConflict("another writer committed since this transaction's snapshot")
        at = int(reply["header"]["revision"])
        self.cache.commit(snap.rev_mod, Snapshot(at, at, revision, rev_doc), changed)
        if txn.logged:
            self._remember({revision: list(txn.logged)})
        return True

    def _resolve(self, snap: Snapshot, revision: int, txn_id: str, cause: EtcdError) -> bool:
        """Whether the commit ``txn_id`` whose answer was lost applied: fence ``rev`` (if it is
        still at the snapshot, bump it: the lost commit cannot apply after that) or read the
        log entry of ``revision``."""
        fence = snap.rev_raw if snap.rev_raw is not None else json.dumps({"revision": 0}).encode()
        entry = {"request_range": {"key": b64(self._key(log_key(revision)))}}
        try:
            reply = self.client.txn(
                [_unchanged(self._key(REV), snap.rev_mod)],
                [_put(self._key(REV), fence)],
                [entry],
                idempotent=True,  # a second fence changes nothing the first did not
            )
        except EtcdError as exc:
            raise OutcomeUnknown(
                f"the outcome of this write is unknown: etcd failed during its commit ({cause}) and "
                f"then could not be asked ({exc}); it may still be applied when etcd recovers: read "
                "the object back before writing it again"
            ) from None
        if reply.get("succeeded"):
            log.warning("etcd: a commit's answer was lost (%s); fenced: it was not applied", cause)
            return False
        kvs = reply["responses"][0]["response_range"].get("kvs") or []
        ours = bool(kvs) and json.loads(unb64(kvs[0]["value"])).get("txn") == txn_id
        outcome = "applied" if ours else "did not apply"
        log.warning("etcd: a commit's answer was lost (%s); it %s", cause, outcome)
        return ours


def _put(key: bytes, value: bytes) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def _unchanged(key: bytes, mod_revision: int) -> dict[str, Any]:
    """Compare: ``key`` was last written at ``mod_revision`` (0: it does not exist)."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision}


def parse_url(url: str) -> tuple[list[str], str]:
    """``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`` -> (["HOST:PORT", ...], "/PREFIX/")."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "etcd":
        raise ValueError(f"{url!r} is not etcd://HOST:PORT,HOST:PORT,.../PREFIX (the prefix optional)")
    hosts, _, path = rest.partition("/")
    endpoints = [h.strip() for h in hosts.split(",") if h.strip()]
    if not endpoints:
        raise ValueError(f"{url!r} names no etcd member (etcd://HOST:PORT,HOST:PORT,...)")
    for endpoint in endpoints:
        host, colon, port = endpoint.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{endpoint!r} in {url!r} is not HOST:PORT (etcd's client port, e.g. 2379)")
    prefix = "/" + path.strip("/") + "/" if path.strip("/") else DEFAULT_PREFIX
    return endpoints, prefix
