"""The journal table's time columns, and the one repair an older table needs (no Neutron here).

Times are ``time.time()`` seconds (about 1.8e9). SQLAlchemy's ``Float`` is MySQL's and MariaDB's
``FLOAT``, single precision: 24 bits of mantissa, so at 1.8e9 it keeps a multiple of 128 s. A
retry ``next_try = now + 0.5`` was stored up to 64 s late (the head row, and every row behind it,
then waited that long: the journal seemed to stall after the authority came back) or up to 64 s
early (the row was retried at once, over and over, with no backoff). ``DOUBLE`` keeps
microseconds. A table made by an older driver is widened when the driver starts
(``widen_statements``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

TIME_COLUMNS = ("next_try", "created_at")


def time_type() -> sa.types.TypeEngine[float]:
    """A column type that holds epoch seconds to well under a millisecond on every backend."""
    return sa.Double()


def widen_statements(table: str, reflected: Iterable[Mapping[str, Any]], dialect: str) -> list[str]:
    """The ``ALTER TABLE`` statements that turn an older table's single-precision time columns
    into ``DOUBLE`` (``reflected``: ``sqlalchemy.inspect(engine).get_columns(table)``). Only MySQL
    and MariaDB have a single-precision ``FLOAT`` to repair; PostgreSQL's ``Float`` was already
    double precision."""
    if dialect != "mysql":
        return []
    narrow = [
        c["name"]
        for c in reflected
        if c["name"] in TIME_COLUMNS and type(c["type"]).__name__.upper() in ("FLOAT", "REAL")
    ]
    if not narrow:
        return []
    return [f"ALTER TABLE {table} " + ", ".join(f"MODIFY {name} DOUBLE NOT NULL" for name in narrow)]
