"""Run the Policy Authority: the store, the REST API and the OpFlex server, in one event loop.

Before anything listens, ``check_exposure`` refuses what would hand the network to anyone who
reaches it: REST without ``--tokens``, or OpFlex without TLS, on an address other than loopback
(``--insecure`` accepts it, loudly). The REST listener is bounded (``edge``): body size, header
and idle deadlines, a connection cap below the file descriptor limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy.exc
import uvicorn

from policyfabric.authority import edge
from policyfabric.authority.access import Validator
from policyfabric.authority.api import MiB, create_app
from policyfabric.authority.auth import TokenError, Tokens, load_tokens
from policyfabric.authority.opflex import OpflexServer
from policyfabric.authority.service import Authority
from policyfabric.opflex.tls import server_context
from policyfabric.store.base import Change, Shared, Store, StoreError
from policyfabric.store.sqlite import SqliteStore, Sync

if TYPE_CHECKING:
    from policyfabric.store.etcd_follow import LogFollower

log = logging.getLogger(__name__)


FD_RESERVE = 64  # descriptors kept for the store, logs and the listeners themselves


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
    store: str | None = None  # etcd://HOST:PORT[,...][/PREFIX]: etcd instead of the SQLite file db
    etcd_cacert: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    listen: tuple[str, int] = ("127.0.0.1", 8700)
    sync: Sync = "full"
    opflex_listen: tuple[str, int] | None = ("127.0.0.1", 8009)
    opflex_advertise: list[str] = field(default_factory=list)
    domain: str = "policyfabric"
    keepalive: float = 10.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # the REST edge
    tokens: Path | None = None
    keystone: Path | None = None  # an oslo.config file: [keystone_authtoken] and [policyfabric]
    insecure: bool = False
    rest_tls_cert: Path | None = None
    rest_tls_key: Path | None = None
    max_body: int = MiB
    max_connections: int | None = None  # None: edge.default_max_connections(the fd limit)
    opflex_max_sessions: int | None = None  # None: the descriptors REST leaves, less a reserve
    header_timeout: float = 10.0
    idle_timeout: float = 5.0
    forget_agents_after: float | None = None  # None: the OpFlex server's default
    validator: Validator | None = None  # set by serve() from keystone
    events_window: int = 10_000  # GET /v1/events: events kept for streams that fall behind


def open_store(db: Path, sync: Sync) -> SqliteStore:
    if not db.parent.is_dir():
        raise StartupError(f"cannot create the database {db}: directory {db.parent} does not exist")
    try:
        return SqliteStore(db, sync=sync)
    except sqlalchemy.exc.DBAPIError as exc:
        raise StartupError(f"cannot open the database {db}: {exc.orig}") from None


def open_etcd_store(settings: Settings) -> Store:
    """``--store etcd://...``: the cluster must answer now (a read through a quorum)."""
    from policyfabric.store.etcd import EtcdStore
    from policyfabric.store.etcd_client import ClientTls

    assert settings.store is not None
    tls = None
    if (settings.etcd_cert is None) != (settings.etcd_key is None):
        raise StartupError("--etcd-cert and --etcd-key go together")
    if settings.etcd_cacert or settings.etcd_cert:
        tls = ClientTls(settings.etcd_cacert, settings.etcd_cert, settings.etcd_key)
    try:
        store = EtcdStore.from_url(settings.store, tls=tls)
    except ValueError as exc:
        raise StartupError(f"--store: {exc}") from None
    try:
        store.ping()
    except StoreError as exc:
        store.close()
        raise StartupError(f"cannot use the etcd store {settings.store}: {exc}") from None
    from policyfabric.store.dump import unfinished_migration  # a copy cut off half way is no store
    from policyfabric.store.etcd_client import EtcdError

    try:
        why = unfinished_migration(store)
    except EtcdError as exc:  # etcd went away between the ping and this read
        store.close()
        raise StartupError(f"cannot use the etcd store {settings.store}: {exc}") from None
    if why is not None:
        store.close()
        raise StartupError(why)
    return store


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (a name that does not resolve: no)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(str(a).partition("%")[0]).is_loopback for a in found)


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond loopback without authentication (REST) or TLS (OpFlex), unless
    ``--insecure``; then, and for tokens sent in clear, warn."""
    rest = "{}:{}".format(*settings.listen)
    authenticated = settings.tokens is not None or settings.keystone is not None
    if not authenticated and not is_loopback(settings.listen[0]):
        if not settings.insecure:
            raise StartupError(
                f"REST would listen on {rest} without --tokens or --keystone: anyone who reaches it could "
                "read and change every tenant's objects. Give --tokens FILE (docs/api.md), listen on "
                "127.0.0.1, or pass --insecure to accept that"
            )
        log.warning(
            "INSECURE: REST on %s without --tokens: anyone who reaches it can change everything", rest
        )
    elif authenticated and settings.rest_tls_cert is None and not is_loopback(settings.listen[0]):
        log.warning(
            "REST on %s without --rest-tls-cert: tokens cross the network in clear (use TLS, here or in a "
            "proxy in front)",
            rest,
        )
    if settings.opflex_listen is not None and settings.tls_cert is None:
        opflex = "{}:{}".format(*settings.opflex_listen)
        if not is_loopback(settings.opflex_listen[0]):
            if not settings.insecure:
                raise StartupError(
                    f"OpFlex would listen on {opflex} without TLS: anyone who reaches it could pose as an "
                    "agent or read every tenant's policy. Give --tls-cert/--tls-key (and --tls-ca for the "
                    "agents' certificates), listen on 127.0.0.1, or pass --insecure to accept that"
                )
            log.warning(
                "INSECURE: OpFlex on %s without TLS: anyone who reaches it can pose as an agent", opflex
            )


def _rest_tls(settings: Settings) -> None:
    if (settings.rest_tls_cert is None) != (settings.rest_tls_key is None):
        raise StartupError("--rest-tls-cert and --rest-tls-key go together")
    if settings.rest_tls_cert is not None:
        try:  # load it once here for a clear error; uvicorn loads it again
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                settings.rest_tls_cert, settings.rest_tls_key
            )
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"cannot load the REST TLS certificate: {exc}") from None


def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; raises StartupError if it cannot start."""
    if settings.tokens is not None and settings.keystone is not None:
        raise StartupError("--tokens and --keystone exclude each other: give one")
    check_exposure(settings)
    _rest_tls(settings)
    tokens = None
    if settings.tokens is not None:
        try:
            tokens = load_tokens(settings.tokens)
        except TokenError as exc:
            raise StartupError(str(exc)) from None
    if settings.keystone is not None:
        from policyfabric.authority.keystone import KeystoneAuth, KeystoneError

        try:
            settings.validator = KeystoneAuth(settings.keystone)
        except KeystoneError as exc:
            raise StartupError(str(exc)) from None
    tls = None
    if settings.tls_cert is not None:
        if settings.tls_key is None:
            raise StartupError("--tls-cert needs --tls-key")
        try:
            tls = server_context(settings.tls_cert, settings.tls_key, settings.tls_ca)
        except (OSError, ValueError) as exc:
            raise StartupError(f"cannot load the TLS certificate: {exc}") from None
    if settings.max_body < 1:
        raise StartupError("--max-body must be at least 1 byte")
    if settings.header_timeout <= 0 or settings.idle_timeout <= 0:
        raise StartupError("--header-timeout and --idle-timeout must be positive")
    fd_limit = edge.raise_fd_limit()
    if settings.max_connections is None:
        settings.max_connections = edge.default_max_connections(fd_limit)
    elif not 0 < settings.max_connections < fd_limit:
        raise StartupError(f"--max-connections must be between 1 and the open-file limit ({fd_limit})")
    spare = fd_limit - settings.max_connections - FD_RESERVE
    if settings.opflex_max_sessions is None:
        settings.opflex_max_sessions = max(1, spare)
    elif settings.opflex_max_sessions < 1:
        raise StartupError("--opflex-max-sessions must be at least 1")
    elif settings.opflex_max_sessions > spare:
        log.warning(
            "--opflex-max-sessions %d is more than the descriptors leave (%d: the open-file limit %d, "
            "less --max-connections %d and %d for the store and logs): a flood of OpFlex connections "
            "can starve REST",
            settings.opflex_max_sessions,
            spare,
            fd_limit,
            settings.max_connections,
            FD_RESERVE,
        )
    if settings.store is None and (settings.etcd_cacert or settings.etcd_cert or settings.etcd_key):
        raise StartupError("--etcd-cacert, --etcd-cert and --etcd-key go with --store etcd://...")
    store = open_etcd_store(settings) if settings.store else open_store(settings.db, settings.sync)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        asyncio.run(_run(settings, store, tls, tokens))
    finally:
        store.close()
        log.info("policyfabric authority stopped")


def _exit_cleanly(signum: int, frame: object) -> None:
    """SIGTERM ends the authority like Ctrl-C does: through every ``finally`` (OpFlex sessions
    closed, the store closed, the "stopped" line) with exit status 0. uvicorn handles the signal
    while it serves, then raises it again once it has stopped; with the default handler that
    second delivery killed the process (status 143) before any of that ran. A further SIGTERM
    while it stops is ignored, so it cannot cut the closing short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(0)


def _opflex_options(settings: Settings) -> dict[str, Any]:
    """The OpFlex server's options the command line may set (its defaults otherwise)."""
    options: dict[str, Any] = {}
    if settings.forget_agents_after is not None:
        if settings.forget_agents_after <= 0:
            raise StartupError("--forget-agents-after must be positive")
        options["forget_agents_after"] = settings.forget_agents_after
    if settings.opflex_max_sessions is not None:
        options["max_sessions"] = settings.opflex_max_sessions
    return options


def shared_state(store: Store) -> Shared | None:
    """What this authority shares with the other replicas of its store (etcd); None: alone."""
    from policyfabric.store.etcd import EtcdStore
    from policyfabric.store.etcd_shared import EtcdShared

    return EtcdShared(store) if isinstance(store, EtcdStore) else None


def follow_replicas(store: Store, authority: Authority, since: int) -> LogFollower | None:
    """On etcd, where other authorities (replicas) may write: hand their commits after revision
    ``since`` to this authority's commit listeners, as if committed here (the OpFlex server marks
    the tenants dirty and pushes them to its agents). None on SQLite: one writer process."""
    from policyfabric.store.etcd import EtcdStore
    from policyfabric.store.etcd_follow import LogFollower

    if not isinstance(store, EtcdStore):
        return None

    def deliver(changes: list[Change]) -> None:
        for listener in list(authority.listeners):
            listener(list(changes))

    follower = LogFollower(store, deliver)
    follower.start(since)
    return follower


async def _run(settings: Settings, store: Store, tls: ssl.SSLContext | None, tokens: Tokens | None) -> None:
    restore = edge.quiet_accept_errors(asyncio.get_running_loop())
    authority = Authority(store)
    since = authority.revision()  # before the OpFlex trees are read: the follower delivers from here
    opflex = None
    if settings.opflex_listen is not None:
        opflex = OpflexServer(
            authority,
            domain=settings.domain,
            advertise=settings.opflex_advertise,
            keepalive=settings.keepalive,
            tls=tls,
            shared=shared_state(store),
            **_opflex_options(settings),
        )
        try:
            await opflex.start(*settings.opflex_listen)
        except OSError as exc:
            where = "{}:{}".format(*settings.opflex_listen)
            raise StartupError(f"cannot listen for OpFlex on {where}: {exc.strerror}") from None
    host, port = settings.listen
    app = create_app(
        authority, opflex, tokens, settings.max_body, settings.validator, events_window=settings.events_window
    )
    assert settings.max_connections is not None
    scheme = "https" if settings.rest_tls_cert else "http"
    who = f"{len(tokens)} token(s) from {settings.tokens}" if tokens else "no --tokens: no authentication"
    if settings.validator is not None:
        who = str(settings.validator)
    log.info(
        "policyfabric authority: REST on %s://%s:%d/v1 (%s; at most %d connections), store %s at revision %d",
        scheme,
        host,
        port,
        who,
        settings.max_connections,
        f"etcd {settings.store}" if settings.store else settings.db,
        authority.revision(),
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        log_config=None,  # uvicorn's own lines through our handler: --log-format json holds for them too
        access_log=False,
        http=edge.guarded_protocol(settings.max_connections, settings.header_timeout),
        timeout_keep_alive=int(max(1, settings.idle_timeout)),
        ssl_certfile=settings.rest_tls_cert,
        ssl_keyfile=settings.rest_tls_key,
    )
    server = uvicorn.Server(config)
    follower = follow_replicas(store, authority, since)
    app.state.events.stopping = lambda: server.should_exit  # event streams end when it stops
    try:
        await server.serve()
    finally:
        if follower is not None:
            follower.stop()
        if opflex is not None:
            await opflex.stop()
        restore()
    if not server.started:
        raise StartupError(f"cannot listen for REST on {host}:{port} (see the error above)")
