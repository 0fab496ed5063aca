"""SQLite store (the embedded default), through SQLAlchemy Core.

Durability: WAL with ``synchronous=FULL`` by default, so an acknowledged
write survives a crash of the process and of the machine. Writers are
serialised in-process by a lock and in SQLite by ``BEGIN IMMEDIATE`` (so a
second process on the same file waits instead of failing half-way); readers
run concurrently on their own snapshot.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

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
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from policyfabric.model.rules import Claim
from policyfabric.store.base import Change, ClaimTaken, Op, Record

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
)
meta = Table(
    "meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", Integer, nullable=False),
)


def _record(row: Any) -> Record:
    return Record(
        row.kind, row.id, row.tenant or None, row.name, row.revision, json.loads(row.data)
    )


class SqliteTxn:
    """Both a read snapshot and, under the store's write lock, a write transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._revision: int | None = None
        self._seq = 0

    # ---- reads
    def get(self, id: str) -> Record | None:
        row = self.conn.execute(select(objects).where(objects.c.id == id)).first()
        return _record(row) if row else None

    def find(self, kind: str, tenant: str | None, name: str) -> Record | None:
        row = self.conn.execute(
            select(objects).where(
                objects.c.kind == kind, objects.c.tenant == (tenant or ""), objects.c.name == name
            )
        ).first()
        return _record(row) if row else None

    def list(self, kind: str, tenant: str | None = None, name: str | None = None) -> list[Record]:
        query = select(objects).where(objects.c.kind == kind)
        if tenant is not None:
            query = query.where(objects.c.tenant == tenant)
        if name is not None:
            query = query.where(objects.c.name == name)
        return [_record(r) for r in self.conn.execute(query.order_by(objects.c.tenant, objects.c.name))]

    def revision(self) -> int:
        value = self.conn.execute(select(meta.c.value).where(meta.c.key == "revision")).scalar()
        return int(value or 0)

    def claim_holder(self, key: str) -> str | None:
        return self.conn.execute(select(claims.c.holder).where(claims.c.key == key)).scalar()

    def changes(self, since: int, limit: int) -> list[Change]:
        rows = self.conn.execute(
            select(changes)
            .where(changes.c.revision > since)
            .order_by(changes.c.revision, changes.c.seq)
            .limit(limit)
        )
        return [Change(r.revision, r.op, r.kind, r.id, r.tenant or None, r.name) for r in rows]

    # ---- writes
    def next_revision(self) -> int:
        if self._revision is None:
            self._revision = self.revision() + 1
            self.conn.execute(
                update(meta).where(meta.c.key == "revision").values(value=self._revision)
            )
        return self._revision

    def put(self, record: Record, claim_list: Sequence[Claim], op: Op) -> None:
        values = {
            "kind": record.kind,
            "tenant": record.tenant or "",
            "name": record.name,
            "revision": record.revision,
            "data": json.dumps(record.data, separators=(",", ":")),
        }
        if op == "create":
            self.conn.execute(insert(objects).values(id=record.id, **values))
        else:
            self.conn.execute(update(objects).where(objects.c.id == record.id).values(**values))
        self.set_claims(record.id, claim_list)
        self._log(op, record)

    def set_claims(self, id: str, claim_list: Sequence[Claim]) -> None:
        self.conn.execute(delete(claims).where(claims.c.holder == id))
        for claim in claim_list:
            holder = self.claim_holder(claim.key)
            if holder is not None and holder != id:
                raise ClaimTaken(claim, holder)
            try:
                self.conn.execute(insert(claims).values(key=claim.key, holder=id))
            except IntegrityError:  # the same key claimed twice by this object
                raise ClaimTaken(claim, id) from None

    def delete(self, record: Record) -> None:
        self.conn.execute(delete(claims).where(claims.c.holder == record.id))
        self.conn.execute(delete(objects).where(objects.c.id == record.id))
        self._log("delete", record)

    def _log(self, op: Op, record: Record) -> None:
        self._seq += 1
        self.conn.execute(
            insert(changes).values(
                revision=self.next_revision(),
                seq=self._seq,
                op=op,
                kind=record.kind,
                id=record.id,
                tenant=record.tenant or "",
                name=record.name,
            )
        )


class SqliteStore:
    """The embedded store: one SQLite file in WAL mode."""

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
