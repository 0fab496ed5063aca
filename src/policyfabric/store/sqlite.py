"""SQLite store (the embedded default), through SQLAlchemy Core.

Durability: WAL with ``synchronous=FULL`` by default, so an acknowledged
write survives a crash of the process and of the machine. Writers are
serialised in-process by a lock and in SQLite by ``BEGIN IMMEDIATE`` (so a
second process on the same file waits instead of failing half-way); readers
run concurrently on their own snapshot.
"""

from __future__ import annotations

import builtins
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import sqlalchemy.exc
from sqlalchemy import (
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Engine

from policyfabric.model.rules import Claim
from policyfabric.store.base import Change, ClaimTaken, Op, Record, Transition

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
Sync = Literal["full", "normal"]

metadata = MetaData()
objects = Table(
    "objects",
    metadata,
    Column("id", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("tenant", String, nullable=False),  # "" for global kinds
    Column("name", String, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("data", Text, nullable=False),
    UniqueConstraint("kind", "tenant", "name"),
)
claims = Table(
    "claims",
    metadata,
    Column("key", String, primary_key=True),
    Column("holder", String, nullable=False),
    Index("claims_by_holder", "holder"),
)
changes = Table(
    "changes",
    metadata,
    Column("revision", Integer, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("op", String, nullable=False),
    Column("kind", String, nullable=False),
    Column("id", String, nullable=False),
    Column("tenant", String, nullable=False),
    Column("name", String, nullable=False),
    Column("transition", Text, nullable=True),  # an endpoint's Transition, JSON (added later)
)
meta = Table(
    "meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", Integer, nullable=False),
)


_COLUMNS = "kind, id, tenant, name, revision, data"
_GET = f"SELECT {_COLUMNS} FROM objects WHERE id = ?"
_FIND = f"SELECT {_COLUMNS} FROM objects WHERE kind = ? AND tenant = ? AND name = ?"
_LIST = f"SELECT {_COLUMNS} FROM objects WHERE kind = ?"
_ORDER = " ORDER BY tenant, name"
_REVISION = "SELECT value FROM meta WHERE key = 'revision'"
_SET_REVISION = "UPDATE meta SET value = ? WHERE key = 'revision'"
_HOLDER = "SELECT holder FROM claims WHERE key = ?"
_INSERT = "INSERT INTO objects (kind, tenant, name, revision, data, id) VALUES (?, ?, ?, ?, ?, ?)"
_UPDATE = "UPDATE objects SET kind = ?, tenant = ?, name = ?, revision = ?, data = ? WHERE id = ?"
_DROP_CLAIMS = "DELETE FROM claims WHERE holder = ?"
_CLAIM = "INSERT INTO claims (key, holder) VALUES (?, ?)"
_DELETE = "DELETE FROM objects WHERE id = ?"
_LOG = (
    "INSERT INTO changes (revision, seq, op, kind, id, tenant, name, transition) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_CHANGES = (
    "SELECT revision, op, kind, id, tenant, name, transition FROM changes WHERE revision > ? "
    "ORDER BY revision, seq LIMIT ?"
)


def _transition(text: str | None) -> Transition | None:
    return Transition.decode(json.loads(text)) if text else None


def _record(row: Any) -> Record:
    kind, id, tenant, name, revision, data = row
    return Record(kind, id, tenant or None, name, revision, json.loads(data))


class SqliteTxn:
    """Both a read snapshot and, under the store's write lock, a write transaction.

    Statements are plain SQL text on the connection's DB-API cursor (the tables are declared
    above, for the schema; SQLAlchemy keeps the engine, the pool and the connection set-up).
    Building Core expressions cost more than SQLite itself on these one-row statements, and so
    did passing them through SQLAlchemy's ``exec_driver_sql``: a batch of 10,000 endpoints runs
    about 70,000 statements and the status reports that follow 30,000, where its per-statement
    events and result wrapping were most of the time (profiled: 175,000 statements, 25 s of
    the authority's 87).
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._cur = conn.connection.cursor()  # the DB-API cursor, inside the transaction ``conn`` began
        self._revision: int | None = None
        self._seq = 0
        self.logged: list[Change] = []

    def _rows(self, sql: str, *params: Any) -> list[Any]:
        rows: list[Any] = self._cur.execute(sql, params).fetchall()
        return rows

    def _run(self, sql: str, params: Sequence[Any]) -> None:
        self._cur.execute(sql, params)

    # ---- reads
    def get(self, id: str) -> Record | None:
        rows = self._rows(_GET, id)
        return _record(rows[0]) if rows else None

    def find(self, kind: str, tenant: str | None, name: str) -> Record | None:
        rows = self._rows(_FIND, kind, tenant or "", name)
        return _record(rows[0]) if rows else None

    def list(self, kind: str, tenant: str | None = None, name: str | None = None) -> builtins.list[Record]:
        sql, params = _LIST, [kind]
        if tenant is not None:
            sql, params = sql + " AND tenant = ?", [*params, tenant]
        if name is not None:
            sql, params = sql + " AND name = ?", [*params, name]
        return [_record(r) for r in self._rows(sql + _ORDER, *params)]

    def revision(self) -> int:
        rows = self._rows(_REVISION)
        return int(rows[0][0]) if rows else 0

    def claim_holder(self, key: str) -> str | None:
        rows = self._rows(_HOLDER, key)
        return str(rows[0][0]) if rows else None

    def changes(self, since: int, limit: int) -> builtins.list[Change]:
        return [
            Change(revision, op, kind, id, tenant or None, name, _transition(moved))
            for revision, op, kind, id, tenant, name, moved in self._rows(_CHANGES, since, limit)
        ]

    # ---- writes
    def next_sequence(self, name: str) -> int:
        """The next number of a named counter (VNIs, class ids), starting at 1."""
        key = f"seq:{name}"
        rows = self._rows("SELECT value FROM meta WHERE key = ?", key)
        value = int(rows[0][0]) + 1 if rows else 1
        self._run("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        return value

    def next_revision(self) -> int:
        if self._revision is None:
            self._revision = self.revision() + 1
            self._run(_SET_REVISION, (self._revision,))
        return self._revision

    def put(
        self,
        record: Record,
        claim_list: Sequence[Claim] | None,
        op: Op,
        transition: Transition | None = None,
    ) -> None:
        values = (
            record.kind,
            record.tenant or "",
            record.name,
            record.revision,
            json.dumps(record.data, separators=(",", ":")),
            record.id,
        )
        self._run(_INSERT if op == "create" else _UPDATE, values)
        if claim_list is not None:
            self._claim(record.id, claim_list, held=op != "create")  # a new id holds nothing yet
        self._log(op, record, transition)

    def set_claims(self, id: str, claim_list: Sequence[Claim]) -> None:
        self._claim(id, claim_list, held=True)

    def _claim(self, id: str, claim_list: Sequence[Claim], held: bool) -> None:
        """Take ``claim_list`` for ``id`` (dropping what it ``held``). Each claim is one INSERT,
        refused by the key's uniqueness when the key is taken (by another object, or listed
        twice by this one): the holder is looked up only then (a statement less per claim)."""
        if held:
            self._run(_DROP_CLAIMS, (id,))
        for claim in claim_list:
            try:
                self._run(_CLAIM, (claim.key, id))
            except sqlite3.IntegrityError:
                raise ClaimTaken(claim, self.claim_holder(claim.key) or id) from None

    def delete(self, record: Record) -> None:
        self._run(_DROP_CLAIMS, (record.id,))
        self._run(_DELETE, (record.id,))
        self._log("delete", record)

    def _log(self, op: Op, record: Record, transition: Transition | None = None) -> None:
        self._seq += 1
        revision = self.next_revision()
        moved = json.dumps(transition.encode(), separators=(",", ":")) if transition is not None else None
        row = (revision, self._seq, op, record.kind, record.id, record.tenant or "", record.name, moved)
        self._run(_LOG, row)
        self.logged.append(
            Change(revision, op, record.kind, record.id, record.tenant, record.name, transition)
        )


class SqliteStore:
    """The embedded store: one SQLite file in WAL mode."""

    records_per_write: int | None = None  # a transaction may be any size

    def __init__(self, path: str | Path, sync: Sync = "full") -> None:
        self.path = Path(path)
        self.engine: Engine = create_engine(
            f"sqlite:///{self.path}",
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=24,
        )
        event.listen(self.engine, "connect", self._on_connect(sync))
        self._write_lock = threading.Lock()
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            logged = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(changes)")}
            if "transition" not in logged:  # a file made before the log kept transitions
                try:
                    conn.exec_driver_sql("ALTER TABLE changes ADD COLUMN transition TEXT")
                except sqlalchemy.exc.OperationalError as exc:
                    if "duplicate column" not in str(exc):  # another process added it just now
                        raise
            if conn.execute(select(meta.c.value).where(meta.c.key == "revision")).first() is None:
                conn.execute(insert(meta).values(key="revision", value=0))
                conn.execute(insert(meta).values(key="schema", value=SCHEMA_VERSION))
        log.info("store: sqlite %s (WAL, synchronous=%s)", self.path, sync)

    @staticmethod
    def _on_connect(sync: Sync) -> Any:
        def configure(dbapi_conn: Any, _record: Any) -> None:
            # Autocommit at the driver level: this class issues BEGIN/COMMIT itself,
            # which is the way to get BEGIN IMMEDIATE with pysqlite.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sync.upper()}")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return configure

    @contextmanager
    def _txn(self, begin: str) -> Iterator[SqliteTxn]:
        with self.engine.connect() as conn:
            conn.exec_driver_sql(begin)
            try:
                yield SqliteTxn(conn)
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")

    @contextmanager
    def read(self) -> Iterator[SqliteTxn]:
        with self._txn("BEGIN") as txn:
            yield txn

    @contextmanager
    def write(self) -> Iterator[SqliteTxn]:
        with self._write_lock, self._txn("BEGIN IMMEDIATE") as txn:
            yield txn

    def close(self) -> None:
        self.engine.dispose()
