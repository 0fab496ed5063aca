"""Run the Policy Authority: the store, the REST API (and, later, OpFlex)."""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy.exc
import uvicorn

from policyfabric.authority.api import create_app
from policyfabric.authority.service import Authority
from policyfabric.store.sqlite import SqliteStore, Sync

log = logging.getLogger(__name__)


def parse_listen(text: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``HOST`` or ``:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:{default_port})")
    return host, int(port)


class StartupError(Exception):
    """The authority cannot start; the message says why."""


def open_store(db: Path, sync: Sync) -> SqliteStore:
    if not db.parent.is_dir():
        raise StartupError(f"cannot create the database {db}: directory {db.parent} does not exist")
    try:
        return SqliteStore(db, sync=sync)
    except sqlalchemy.exc.DBAPIError as exc:
        raise StartupError(f"cannot open the database {db}: {exc.orig}") from None


def serve(db: Path, host: str, port: int, sync: Sync = "full") -> None:
    """Run until SIGTERM/SIGINT; raises StartupError if the store cannot be opened."""
    store = open_store(db, sync)
    authority = Authority(store)
    app = create_app(authority)
    log.info(
        "policyfabric authority: REST on http://%s:%d/v1, store %s at revision %d",
        host,
        port,
        db,
        authority.revision(),
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run()  # exits non-zero by itself if it cannot bind
    finally:
        store.close()
        log.info("policyfabric authority stopped")
