"""The journal table, in Neutron's database, and writing a row in Neutron's transaction.

The table is the driver's own (``policyfabric_journal``); the driver creates it when it starts
(``ensure_table``: ``CREATE TABLE IF NOT EXISTS`` through SQLAlchemy, and the one repair an older
table needs, ``columns.widen_statements``), so no alembic branch is needed for one table. A row
is added to the session of the transaction that is committing the change (``record``): Neutron
commits both or neither.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from neutron_lib.db import api as db_api
from neutron_lib.db import model_base

from networking_policyfabric import columns, journal


class JournalRow(model_base.BASEV2):
    __tablename__ = "policyfabric_journal"

    seq = sa.Column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    resource = sa.Column(sa.String(32), nullable=False)
    object_id = sa.Column(sa.String(64), nullable=False)
    project_id = sa.Column(sa.String(255), nullable=False, default="")
    state = sa.Column(sa.String(16), nullable=False, default=journal.PENDING, index=True)
    attempts = sa.Column(sa.Integer, nullable=False, default=0)
    next_try = sa.Column(columns.time_type(), nullable=False, default=0.0)
    error = sa.Column(sa.String(1024), nullable=False, default="")
    created_at = sa.Column(columns.time_type(), nullable=False, default=time.time)


def ensure_table() -> None:
    engine = db_api.CONTEXT_WRITER.get_engine()
    JournalRow.__table__.create(engine, checkfirst=True)
    table = JournalRow.__tablename__
    statements = columns.widen_statements(table, sa.inspect(engine).get_columns(table), engine.dialect.name)
    if statements:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))


def record(context: Any, resource: str, object_id: str, project_id: str | None) -> None:
    """A row in the session of the transaction under way (call from precommit)."""
    context.session.add(
        JournalRow(resource=resource, object_id=object_id, project_id=project_id or "", state=journal.PENDING)
    )


def to_pure(row: JournalRow) -> journal.Row:
    return journal.Row(
        int(row.seq),
        row.resource,
        row.object_id,
        row.project_id,
        row.state,
        int(row.attempts),
        float(row.next_try),
        row.error,
    )
