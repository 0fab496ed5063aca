"""Run the Policy Authority: the store, the REST API and the OpFlex server, in one event loop."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy.exc
import uvicorn

from policyfabric.authority.api import create_app
from policyfabric.authority.opflex import OpflexServer
from policyfabric.authority.service import Authority
from policyfabric.opflex.tls import server_context
from policyfabric.store.sqlite import SqliteStore, Sync

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The authority cannot start; the message says why."""


def parse_listen(text: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``HOST`` or ``:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        host, port = text, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:{default_port})")
    return host, int(port)


@dataclass
class Settings:
    db: Path = Path("policyfabric.db")
    listen: tuple[str, int] = ("127.0.0.1", 8700)
    sync: Sync = "full"
    opflex_listen: tuple[str, int] | None = ("127.0.0.1", 8009)
    opflex_advertise: list[str] = field(default_factory=list)
    domain: str = "policyfabric"
    keepalive: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None


def open_store(db: Path, sync: Sync) -> SqliteStore:
    if not db.parent.is_dir():
        raise StartupError(f"cannot create the database {db}: directory {db.parent} does not exist")
    try:
        return SqliteStore(db, sync=sync)
    except sqlalchemy.exc.DBAPIError as exc:
        raise StartupError(f"cannot open the database {db}: {exc.orig}") from None


def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; raises StartupError if it cannot start."""
    tls = None
    if settings.tls_cert is not None:
        if settings.tls_key is None:
            raise StartupError("--tls-cert needs --tls-key")
        try:
            tls = server_context(settings.tls_cert, settings.tls_key, settings.tls_ca)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot load the TLS certificate: {exc}") from None
    store = open_store(settings.db, settings.sync)
    try:
        asyncio.run(_run(settings, store, tls))
    finally:
        store.close()
        log.info("policyfabric authority stopped")


async def _run(settings: Settings, store: SqliteStore, tls: object) -> None:
    authority = Authority(store)
    opflex = None
    if settings.opflex_listen is not None:
        opflex = OpflexServer(
            authority,
            domain=settings.domain,
            advertise=settings.opflex_advertise,
            keepalive=settings.keepalive,
            tls=tls,  # type: ignore[arg-type]
        )
        try:
            await opflex.start(*settings.opflex_listen)
        except OSError as exc:
            where = "{}:{}".format(*settings.opflex_listen)
            raise StartupError(f"cannot listen for OpFlex on {where}: {exc.strerror}") from None
    host, port = settings.listen
    app = create_app(authority, opflex)
    log.info(
        "policyfabric authority: REST on http://%s:%d/v1, store %s at revision %d",
        host,
        port,
        settings.db,
        authority.revision(),
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    try:
        await server.serve()
    finally:
        if opflex is not None:
            await opflex.stop()
    if not server.started:
        raise StartupError(f"cannot listen for REST on {host}:{port} (see the error above)")
