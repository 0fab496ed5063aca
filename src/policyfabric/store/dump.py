"""Copy a whole store to another (SQLite <-> etcd): what ``policyfabric migrate`` runs.

Why a store-to-store copy, offline, and not an export/import through REST: re-creating the
objects through the API would give them new ids, new revisions and new VNIs and class ids (the
store's sequences), so every agent would resync and rewrite its flows, and the change log
(``/v1/changes?since=``) would start again. This copies what the store holds, as it is: every
object with its id, revision and data, the uniqueness claims each holds, the sequences, the
global revision and the change log. Agents that reconnect to an authority on the copy find the
revision they had and nothing to change. The source is read in one consistent snapshot (an SQLite
read transaction; etcd reads at one revision); writes made after it are not copied, which is why
the authorities are stopped first.

The target must be empty, or already hold exactly what the source holds (then nothing is written:
running the copy again is harmless). Anything else is refused: it never merges two stores.

All or nothing:

- SQLite: one transaction; a failure leaves the file as it was (empty).
- etcd: one transaction cannot hold a large store (``--max-txn-ops``, 128 operations by default,
  and ``--max-request-bytes``), so the copy is written in batches under a marker key
  (``migration``): the first batch creates it on an empty prefix (a compare on the whole prefix),
  each later batch compares it, and the last batch writes the global revision and removes the
  marker together. Until that last batch the prefix holds no revision and a marker, which an
  authority refuses to start on (:func:`unfinished_migration`) and which the next copy clears
  before starting again. So a copy cut off half way (etcd down, the command killed) is never
  taken for a store: run the same command again.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import sqlalchemy.exc

from policyfabric.store.base import Change, Record, Transition
from policyfabric.store.etcd import (
    CLAIM,
    ID,
    ITEM,
    REV,
    SEQ,
    EtcdStore,
    Item,
    claim_key,
    encode,
    item_key,
    log_entry,
    log_key,
    seg,
)
from policyfabric.store.etcd_client import EtcdError, b64, prefix_end, unb64
from policyfabric.store.sqlite import SqliteStore

LIVE_REPLICAS = "shared/replica/"  # where each running authority on an etcd prefix says it lives
REPLICA_LEASE_WAIT = 5.0  # seconds: over the replicas' lease of 3 s
MARKER = "migration"  # under the etcd prefix while a copy is being written
BATCH_OPS = 100  # etcd operations per batch: under etcd's default --max-txn-ops of 128
BATCH_BYTES = 1 << 20  # and under its default --max-request-bytes of 1.5 MiB (base64 included)
MIGRATED_TXN = "migrated"  # the txn id of copied change-log entries (no replica committed them)
PAGE = 2000


Progress = Callable[[int, int], None]  # (keys or rows written so far, of how many)


class MigrationError(Exception):
    """The copy cannot be made, or was cut off; the message says what the target holds now."""


@dataclass
class Dump:
    """Everything a store holds, in a form both backends read and write."""

    revision: int = 0
    records: dict[str, tuple[Record, tuple[str, ...]]] = field(default_factory=dict)  # by id: claims held
    sequences: dict[str, int] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.revision or self.records or self.sequences or self.changes)

    def same(self, other: Dump) -> bool:
        """Whether both hold the same (Record's own equality leaves ``data`` out: compare it too)."""

        def flat(d: Dump) -> Any:
            records = {
                id: (r.kind, r.tenant, r.name, r.revision, json.dumps(r.data, sort_keys=True), sorted(c))
                for id, (r, c) in d.records.items()
            }
            return d.revision, records, d.sequences, d.changes

        return bool(flat(self) == flat(other))

    def summary(self) -> str:
        claims = sum(len(c) for _, c in self.records.values())
        return (
            f"{len(self.records)} objects, {claims} claims, {len(self.sequences)} sequences, "
            f"{len(self.changes)} logged changes, revision {self.revision}"
        )


class Side(Protocol):
    """One end of a copy."""

    def describe(self) -> str: ...

    def read(self) -> Dump: ...

    def write(self, dump: Dump, progress: Progress) -> None: ...

    def close(self) -> None: ...


# ---- SQLite ----------------------------------------------------------------------------------


class SqliteSide:
    """An SQLite file; as a source it must exist (a missing file is a mistyped path, not empty).
    A target that does not exist yet is created only when the copy is written, and removed if
    writing fails: a copy refused (the source holds an unfinished copy, authorities run on it) or
    cut off leaves no empty database behind to be taken for a store."""

    def __init__(self, path: Path, *, source: bool) -> None:
        if source and not path.is_file():
            raise MigrationError(f"no SQLite database at {path}")
        if not path.parent.is_dir():
            raise MigrationError(f"directory {path.parent} does not exist")
        self.path = path
        self._store: SqliteStore | None = None
        if path.exists():
            self._open()

    @property
    def store(self) -> SqliteStore:
        """The database (created if it was not there)."""
        return self._open()

    def _open(self) -> SqliteStore:
        if self._store is None:
            try:
                self._store = SqliteStore(self.path)
            except sqlalchemy.exc.DBAPIError as exc:  # not a database, locked, unreadable: say which
                raise MigrationError(f"cannot open the SQLite database {self.path}: {exc.orig}") from None
        return self._store

    def describe(self) -> str:
        return f"sqlite:{self.path}"

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def read(self) -> Dump:
        if self._store is None and not self.path.exists():
            return Dump()  # a target not created yet: empty
        dump = Dump()
        with self._open().engine.connect() as conn:
            cur = conn.connection.cursor()
            cur.execute("BEGIN")  # one snapshot for every table
            try:
                held: dict[str, list[str]] = {}
                for key, holder in cur.execute("SELECT key, holder FROM claims ORDER BY key"):
                    held.setdefault(holder, []).append(key)
                rows = cur.execute("SELECT kind, id, tenant, name, revision, data FROM objects")
                for kind, id, tenant, name, revision, data in rows:
                    record = Record(kind, id, tenant or None, name, revision, json.loads(data))
                    dump.records[id] = (record, tuple(held.pop(id, ())))
                if held:
                    raise MigrationError(f"claims held by objects that do not exist: {sorted(held)[:5]}")
                for key, value in cur.execute("SELECT key, value FROM meta"):
                    if key == "revision":
                        dump.revision = int(value)
                    elif key.startswith("seq:"):
                        dump.sequences[key[4:]] = int(value)
                changes = cur.execute(
                    "SELECT revision, op, kind, id, tenant, name, transition FROM changes "
                    "ORDER BY revision, seq"
                )
                dump.changes = [
                    Change(r, op, kd, i, t or None, n, Transition.decode(json.loads(m)) if m else None)
                    for r, op, kd, i, t, n, m in changes
                ]
            finally:
                cur.execute("ROLLBACK")
        return dump

    def write(self, dump: Dump, progress: Progress) -> None:
        """One transaction: all of it, or (on any error) nothing (and no file, if it made it)."""
        created = not self.path.exists()
        try:
            self._write(self._open(), dump, progress)
        except BaseException:
            if created:
                self.close()
                self._store = None
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            raise

    def _write(self, store: SqliteStore, dump: Dump, progress: Progress) -> None:
        objects = [
            (r.id, r.kind, r.tenant or "", r.name, r.revision, json.dumps(r.data, separators=(",", ":")))
            for r, _ in dump.records.values()
        ]
        claims = [(key, id) for id, (_, held) in dump.records.items() for key in held]
        seq: dict[tuple[int, int], Change] = {}
        numbered: list[tuple[Any, ...]] = []
        at, n = -1, 0
        for c in dump.changes:
            n = n + 1 if c.revision == at else 1
            at = c.revision
            seq[(c.revision, n)] = c
            moved = json.dumps(c.transition.encode()) if c.transition is not None else None
            numbered.append((c.revision, n, c.op, c.kind, c.id, c.tenant or "", c.name, moved))
        meta = [("revision", dump.revision)] + [(f"seq:{k}", v) for k, v in dump.sequences.items()]
        with store.engine.connect() as conn:
            cur = conn.connection.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany(
                    "INSERT INTO objects (id, kind, tenant, name, revision, data) VALUES (?, ?, ?, ?, ?, ?)",
                    objects,
                )
                cur.executemany("INSERT INTO claims (key, holder) VALUES (?, ?)", claims)
                cur.executemany(
                    "INSERT INTO changes (revision, seq, op, kind, id, tenant, name, transition) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    numbered,
                )
                cur.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta)
            except sqlite3.Error as exc:
                cur.execute("ROLLBACK")
                raise MigrationError(f"writing {self.path} failed, nothing was written: {exc}") from None
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        progress(len(objects), len(objects))


# ---- etcd ------------------------------------------------------------------------------------


class EtcdSide:
    """A key prefix of an etcd cluster (``etcd://HOST:PORT,.../PREFIX``)."""

    def __init__(self, store: EtcdStore, batch_ops: int = BATCH_OPS, batch_bytes: int = BATCH_BYTES) -> None:
        self.store = store
        self.batch_ops = batch_ops
        self.batch_bytes = batch_bytes

    def describe(self) -> str:
        return f"etcd://{','.join(self.store.client.endpoints)}{self.store.prefix}"

    def close(self) -> None:
        self.store.close()

    def key(self, key: str) -> bytes:
        return self.store.key(key)

    def marker(self) -> str | None:
        """The id of an unfinished copy into this prefix, or None."""
        reply = self._call(lambda: self.store.client.range(self.key(MARKER)))
        kvs = reply.get("kvs") or []
        return unb64(kvs[0]["value"]).decode() if kvs else None

    def live_replicas(self) -> int:
        """Authorities running on this prefix now: each keeps ``shared/replica/ID`` under a lease
        of a few seconds (``authority/opflex/replicas.py``)."""
        return self.count(LIVE_REPLICAS)

    def count(self, under: str = "") -> int:
        start = self.key(under)
        reply = self._call(lambda: self.store.client.range(start, prefix_end(start), keys_only=True, limit=1))
        return int(reply.get("count", 0))

    def read(self) -> Dump:
        snap = self.store.snapshot()  # a linearizable read: the revision everything is read at
        dump = Dump(revision=snap.revision)
        items = self.store.get_range(snap, ITEM)
        for value in items.values():
            assert isinstance(value, Item)
            dump.records[value.record.id] = (value.record, value.claims)
        for key, value in self.store.get_range(snap, SEQ).items():
            dump.sequences[unquote(key[len(SEQ) :])] = int(value)
        since = 0
        while True:
            page = self.store.changes(snap, since, PAGE)
            if not page:
                break
            dump.changes += page
            since = page[-1].revision
        claims = self.store.get_range(snap, CLAIM)
        expected = {claim_key(c): id for id, (_, held) in dump.records.items() for c in held}
        if claims != expected:
            stray = sorted(set(claims.items()) ^ set(expected.items()))[:5]
            raise MigrationError(f"the claims under {CLAIM} do not match the objects' own lists: {stray}")
        return dump

    def operations(self, dump: Dump) -> Iterator[tuple[bytes, bytes]]:
        """Every key to put, the global revision last."""
        for id, (record, held) in dump.records.items():
            where = item_key(record.kind, record.tenant, record.name)
            yield self.key(where), encode(where, Item(record, held))
            yield self.key(ID + id), where.encode()
            for claim in held:
                yield self.key(claim_key(claim)), id.encode()
        for name, value in dump.sequences.items():
            yield self.key(SEQ + seg(name)), str(value).encode()
        by_revision: dict[int, list[Change]] = {}
        for c in dump.changes:
            by_revision.setdefault(c.revision, []).append(c)
        for revision, logged in by_revision.items():
            doc = log_entry(MIGRATED_TXN, logged)
            yield self.key(log_key(revision)), json.dumps(doc, separators=(",", ":")).encode()

    def write(self, dump: Dump, progress: Progress) -> None:
        txn = uuid.uuid4().hex
        puts = list(self.operations(dump))
        marker_key = self.key(MARKER)
        start = self.key("")
        # the first batch: only on an empty prefix (no key under it was ever created)
        empty = {"key": b64(start), "range_end": b64(prefix_end(start)), "target": "CREATE",
                 "result": "EQUAL", "create_revision": 0}  # fmt: skip
        ours = _holds(marker_key, txn)
        batches = list(self._batches(puts))
        rev = json.dumps({"revision": dump.revision, "txn": txn}).encode()
        done = 0
        last = len(batches) - 1
        for index, batch in enumerate(batches):
            ops = [_put(k, v) for k, v in batch]
            if index == 0 and last > 0:  # one batch alone is all or nothing by itself: no marker
                ops.append(_put(marker_key, txn.encode()))
            if index == last:
                if dump.revision:
                    ops.append(_put(self.key(REV), rev))
                if last > 0:
                    ops.append({"request_delete_range": {"key": b64(marker_key)}})
            compare = [empty] if index == 0 else [ours]
            try:
                reply = self.store.transact(compare, ops, idempotent=index > 0)
            except EtcdError as exc:
                raise MigrationError(
                    f"etcd failed after {index} of {len(batches)} batches ({exc}); the prefix holds "
                    f"a partial copy under the marker key {MARKER!r}, which authorities refuse to "
                    "start on: run the same command again (it clears the partial copy first)"
                ) from None
            if not reply.get("succeeded"):
                what = "is no longer empty" if index == 0 else "lost the copy's marker (another copy?)"
                raise MigrationError(f"the target prefix {what}: stopped after {index} batches")
            done += len(batch)
            progress(done, len(puts))

    def _batches(self, puts: list[tuple[bytes, bytes]]) -> Iterator[list[tuple[bytes, bytes]]]:
        """Groups of puts under the per-transaction limits, leaving room for the marker, the
        revision and the marker's removal (the last batch may be empty: a store with nothing)."""
        room = self.batch_ops - 3
        batch: list[tuple[bytes, bytes]] = []
        size = 0
        for key, value in puts:
            cost = (len(key) + len(value)) * 4 // 3 + 64  # base64 and JSON framing
            if batch and (len(batch) >= room or size + cost > self.batch_bytes):
                yield batch
                batch, size = [], 0
            batch.append((key, value))
            size += cost
        yield batch

    def clear_partial(self, txn: str) -> None:
        """Remove an unfinished copy (only while its marker is still ``txn``)."""
        start = self.key("")
        ours = _holds(self.key(MARKER), txn)
        wipe = {"request_delete_range": {"key": b64(start), "range_end": b64(prefix_end(start))}}
        reply = self._call(lambda: self.store.transact([ours], [wipe], idempotent=True))
        if not reply.get("succeeded"):
            raise MigrationError("the unfinished copy's marker changed while clearing it (another copy?)")

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except EtcdError as exc:
            raise MigrationError(f"etcd: {exc}") from None


def _holds(key: bytes, value: str) -> dict[str, Any]:
    """Compare: ``key`` exists and holds ``value``."""
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value.encode())}


def _put(key: bytes, value: bytes) -> dict[str, Any]:
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def unfinished_migration(store: EtcdStore) -> str | None:
    """Why an authority must not start on ``store``'s prefix (a copy into it was cut off), or None."""
    reply = store.client.range(store.prefix.encode() + MARKER.encode())
    if reply.get("kvs"):
        return (
            f"the etcd prefix {store.prefix} holds an unfinished copy (policyfabric migrate was cut "
            f"off: its marker key {MARKER!r} is there); run the migrate command again to finish it"
        )
    return None


# ---- the copy --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    copied: bool  # False: the target held the same already
    summary: str
    cleared_partial: bool = False


def migrate(source: Side, target: Side, progress: Progress | None = None) -> Outcome:
    """Copy ``source`` into ``target`` (empty, or holding the same: then nothing is written), then
    read the target back and check it holds what the source does."""
    if isinstance(source, EtcdSide):
        if source.marker() is not None:
            raise MigrationError(f"{source.describe()} holds an unfinished copy: redo it first")
        if (running := _replicas_after_leases(source)) > 0:
            raise MigrationError(
                f"{running} authorities run on {source.describe()}: stop them first (writes made during "
                "the copy would not be in it)"
            )
    dump = source.read()
    cleared = False
    if isinstance(target, EtcdSide):
        partial = target.marker()
        if partial is not None:
            target.clear_partial(partial)
            cleared = True
        elif target.count():
            return _already(dump, target)
    else:
        if not target.read().empty:
            return _already(dump, target)
    target.write(dump, progress or (lambda done, total: None))
    back = target.read()
    if not back.same(dump):
        raise MigrationError(
            f"read back, {target.describe()} does not hold what was copied ({back.summary()}; "
            f"copied {dump.summary()})"
        )
    return Outcome(True, dump.summary(), cleared)


def _replicas_after_leases(source: EtcdSide, wait: float = REPLICA_LEASE_WAIT) -> int:
    """Authorities running on ``source``, once a just-stopped one's key has had time to go (a
    stop that could not revoke its lease, or a kill, leaves the key until the lease ends)."""
    deadline = time.monotonic() + wait
    while (running := source.live_replicas()) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    return running


def _already(dump: Dump, target: Side) -> Outcome:
    try:
        there = target.read()
    except (MigrationError, KeyError, ValueError) as exc:
        what = f"{target.describe()} is not empty and not a store this can read"
        raise MigrationError(f"{what}: {exc}") from None
    if there.same(dump):
        return Outcome(False, dump.summary())
    raise MigrationError(
        f"{target.describe()} is not empty and holds something else ({there.summary()}; the source "
        f"holds {dump.summary()}): a copy never merges stores; give an empty target"
    )


def open_side(url: str, *, source: bool, tls: Any = None, batch_ops: int = BATCH_OPS) -> Side:
    """``sqlite:FILE`` (or a plain path) or ``etcd://HOST:PORT,.../PREFIX``."""
    if url.startswith("etcd://"):
        try:
            store = EtcdStore.from_url(url, tls=tls)
        except ValueError as exc:
            raise MigrationError(str(exc)) from None
        return EtcdSide(store, batch_ops=batch_ops)
    path = url.removeprefix("sqlite:")
    if not path:
        raise MigrationError(f"{url!r}: sqlite:FILE or etcd://HOST:PORT,.../PREFIX")
    return SqliteSide(Path(path), source=source)

