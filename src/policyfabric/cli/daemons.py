"""`policyfabric authority`, `agent` and `renderers`: the long-running processes and their
options. Each imports its daemon only when run, so `policyfabric --help` and the REST commands
start fast and never load the agent or the authority."""

from __future__ import annotations

import contextlib
import errno
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from policyfabric.cli.console import err, fail, out, setup_logging


def authority(
    db: Annotated[Path, typer.Option(help="SQLite database file (created if absent).")] = Path(
        "policyfabric.db"
    ),
    store: Annotated[
        str | None,
        typer.Option(
            help="etcd://HOST:PORT,HOST:PORT,...: keep intent in an etcd cluster (its members' client "
            "addresses; /PREFIX after them: a key prefix other than /policyfabric/) instead of --db's "
            "SQLite file; --db and --sync are then not used (docs/operations.md, 'Running on etcd')."
        ),
    ] = None,
    etcd_cacert: Annotated[Path | None, typer.Option(help="CA of the etcd members' certificates.")] = None,
    etcd_cert: Annotated[Path | None, typer.Option(help="Client certificate for etcd (PEM).")] = None,
    etcd_key: Annotated[Path | None, typer.Option(help="Key of --etcd-cert.")] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT for the REST API.")] = "127.0.0.1:8700",
    opflex_listen: Annotated[
        str, typer.Option(help="HOST:PORT for OpFlex ('off' to disable).")
    ] = "127.0.0.1:8009",
    opflex_advertise: Annotated[
        str,
        typer.Option(
            help="Comma-separated HOST:PORT list of OpFlex peers to tell agents about (default: this one)."
        ),
    ] = "",
    domain: Annotated[str, typer.Option(help="OpFlex policy domain agents must name.")] = "policyfabric",
    keepalive: Annotated[
        float,
        typer.Option(help="OpFlex echo after this many idle seconds; peers silent 4x as long are dropped."),
    ] = 10.0,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate for OpFlex over TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM key of --tls-cert.")] = None,
    tls_ca: Annotated[
        Path | None, typer.Option(help="CA that must have signed agents' client certificates.")
    ] = None,
    sync: Annotated[
        str,
        typer.Option(help="SQLite durability: 'full' (survives power loss) or 'normal' (survives a crash)."),
    ] = "full",
    tokens: Annotated[
        Path | None,
        typer.Option(
            help="YAML file of REST bearer tokens: `tokens: [{token, role: admin|member|reader, tenant}]` "
            "(docs/api.md). Without it (or --keystone) REST has no authentication and listens on "
            "loopback only."
        ),
    ] = None,
    keystone: Annotated[
        Path | None,
        typer.Option(
            help="Validate OpenStack Keystone tokens (X-Auth-Token) instead of --tokens: a config file with "
            "[keystone_authtoken] (keystonemiddleware's options) and [policyfabric] (project and role "
            "mapping); docs/operations.md. Needs policyfabric[keystone]."
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            help="Allow REST without --tokens, or OpFlex without --tls-cert, on a non-loopback address."
        ),
    ] = False,
    rest_tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate for REST over HTTPS.")] = None,
    rest_tls_key: Annotated[Path | None, typer.Option(help="PEM key of --rest-tls-cert.")] = None,
    max_body: Annotated[
        int, typer.Option(help="Largest REST request body in bytes; larger ones get 413.")
    ] = 1 << 20,
    max_connections: Annotated[
        int | None,
        typer.Option(
            help="Most REST connections at once; more get 503. Default: min(1000, open-file limit / 2)."
        ),
    ] = None,
    opflex_max_sessions: Annotated[
        int | None,
        typer.Option(
            help="Most OpFlex sessions at once; more are closed at once. Default: the open-file limit "
            "less --max-connections and a reserve."
        ),
    ] = None,
    header_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a REST client has to send a request's headers (and longest pause in a body)."
        ),
    ] = 10.0,
    idle_timeout: Annotated[
        float, typer.Option(help="Seconds an idle keep-alive REST connection is kept open.")
    ] = 5.0,
    forget_agents_after: Annotated[
        float | None,
        typer.Option(
            help="Forget an OpFlex agent disconnected for this many seconds (default: the server's)."
        ),
    ] = None,
    events_window: Annotated[
        int,
        typer.Option(
            min=1,
            help="GET /v1/events: the events kept in memory; a stream that falls further behind is cut "
            "(it resumes from its revision).",
        ),
    ] = 10_000,
    log_format: Annotated[
        str, typer.Option(help="text, or json: one JSON object a line (time, level, logger, message, ...).")
    ] = "text",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the Policy Authority: the policy store, its REST API (under /v1) and its OpFlex server."""
    from policyfabric.authority.server import Settings, StartupError, parse_listen, serve

    setup_logging(log_level, log_format)
    if sync not in ("full", "normal"):
        raise fail(f"--sync must be 'full' or 'normal', not {sync!r}")
    try:
        settings = Settings(
            db=db,
            store=store,
            etcd_cacert=etcd_cacert,
            etcd_cert=etcd_cert,
            etcd_key=etcd_key,
            listen=parse_listen(listen, 8700),
            sync=sync,  # type: ignore[arg-type]
            opflex_listen=None if opflex_listen == "off" else parse_listen(opflex_listen, 8009),
            opflex_advertise=[a.strip() for a in opflex_advertise.split(",") if a.strip()],
            domain=domain,
            keepalive=keepalive,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_ca=tls_ca,
            tokens=tokens,
            keystone=keystone,
            insecure=insecure,
            rest_tls_cert=rest_tls_cert,
            rest_tls_key=rest_tls_key,
            max_body=max_body,
            max_connections=max_connections,
            opflex_max_sessions=opflex_max_sessions,
            header_timeout=header_timeout,
            idle_timeout=idle_timeout,
            forget_agents_after=forget_agents_after,
            events_window=events_window,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    _check_free(*settings.listen)
    try:
        serve(settings)
    except StartupError as exc:
        raise fail(str(exc)) from None


def _check_free(host: str, port: int) -> None:
    """Refuse a REST address another process listens on, before anything starts or logs (uvicorn
    would log its own raw error after the authority had announced itself)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise fail(
                    f"cannot listen for REST on {host}:{port}: address already in use (another authority? "
                    "choose another with --listen)"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise fail(
                    f"cannot listen for REST on {host}:{port}: no interface has that address"
                ) from None
            raise fail(f"cannot listen for REST on {host}:{port}: {exc.strerror}") from None


def agent(
    host: Annotated[str, typer.Option(help="This host's name: the agent's OpFlex name.")],
    opflex: Annotated[
        str | None,
        typer.Option(
            "--opflex",
            help="OpFlex HOST:PORT of the authority; several, comma-separated, to fail over. "
            "[default: 127.0.0.1:8009]",
            show_default=False,
        ),
    ] = None,
    authority_addr: Annotated[
        str | None,
        typer.Option(
            "--authority",
            hidden=True,
            help="Deprecated spelling of --opflex (--authority is the REST URL everywhere else).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(help="No dataplane: resolve, declare and print what the agent would hold.")
    ] = False,
    endpoint: Annotated[
        list[str] | None, typer.Option(help="TENANT/NAME of a local endpoint (dry run; repeatable).")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Where the agent keeps its policy cache.")] = None,
    once: Annotated[bool, typer.Option(help="Print what was resolved and exit (dry run).")] = False,
    domain: Annotated[str, typer.Option(help="OpFlex policy domain.")] = "policyfabric",
    tls_ca: Annotated[Path | None, typer.Option(help="CA to verify the authority (enables TLS).")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Client certificate (PEM) for mutual TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Key of --tls-cert.")] = None,
    ovsdb: Annotated[
        str, typer.Option(help="OVSDB of the local Open vSwitch, e.g. unix:/var/run/openvswitch/db.sock.")
    ] = "unix:/var/run/openvswitch/db.sock",
    bridge: Annotated[
        str, typer.Option(help="The integration bridge the endpoints are plugged into.")
    ] = "br-int",
    tunnel_ip: Annotated[
        str | None,
        typer.Option(
            help="This host's underlay IPv4 address: Geneve to and from other hosts. Without it, no tunnels."
        ),
    ] = None,
    renderer: Annotated[
        list[str] | None,
        typer.Option(
            help="A plug-in renderer to run beside Open vSwitch, as NAME[:KEY=VALUE,...] (repeatable; "
            "`policyfabric renderers` lists them), e.g. configfile:path=/etc/pf-firewall.conf."
        ),
    ] = None,
    external: Annotated[
        list[str] | None,
        typer.Option(
            help="NETWORK=IFACE: this host's port on external network NETWORK is interface IFACE on "
            "--bridge (repeatable). Floating IPs of local endpoints are NATed there."
        ),
    ] = None,
    gateway: Annotated[
        bool,
        typer.Option(
            help="This host may be elected SNAT gateway of routers that list it in external_gateway.hosts "
            "(it then learns every tenant's routers). Needs --external and --tunnel-ip."
        ),
    ] = False,
    log_format: Annotated[
        str, typer.Option(help="text, or json: one JSON object a line (time, level, logger, message, ...).")
    ] = "text",
    metrics_listen: Annotated[
        str | None,
        typer.Option(
            help="ADDR:PORT: serve Prometheus metrics at http://ADDR:PORT/metrics (reconcile and apply "
            "durations, flows by table, OpFlex state, drift repairs)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run a Policy Agent: discover endpoints on the bridge, resolve their policy, program Open vSwitch.

    Endpoints are interfaces on --bridge whose external_ids:iface-id is TENANT/NAME. The agent
    declares them to the authority, resolves their policy, compiles it into OpenFlow and keeps
    the bridge in sync. With --dry-run it only resolves and prints (no Open vSwitch needed)."""
    import asyncio

    from policyfabric.agent.dryrun import run_dry
    from policyfabric.opflex.client import parse_peers
    from policyfabric.opflex.tls import client_context

    setup_logging(log_level, log_format)
    if authority_addr is not None:
        if opflex is not None:
            raise fail("--authority is the old spelling of --opflex: give only --opflex")
        err.print(
            "[yellow]warning: agent --authority is deprecated and will be removed: it is --opflex now "
            "(--authority is the REST URL for every other command)[/]",
            highlight=False,
        )
    address = opflex or authority_addr or "127.0.0.1:8009"
    try:
        peers = parse_peers(address)
    except ValueError as exc:
        raise fail(f"--opflex: {exc}") from None
    eps = []
    for item in endpoint or []:
        tenant, sep, name = item.partition("/")
        if not sep or not tenant or not name:
            raise fail(f"--endpoint {item!r}: write TENANT/NAME")
        eps.append((tenant, name))
    tls = client_context(tls_ca, tls_cert, tls_key) if (tls_ca or tls_cert) else None
    if not dry_run:
        plugins = [_renderer_spec(r) for r in renderer or []]
        ports = {}
        for item in external or []:
            net, sep, iface = item.partition("=")
            if not sep or not net or not iface:
                raise fail(f"--external {item!r}: write NETWORK=IFACE")
            ports[net] = iface
        if gateway and not (ports and tunnel_ip):
            raise fail("--gateway needs --external (the port SNAT goes out of) and --tunnel-ip")
        config = dict(renderers=plugins, external=ports, gateway=gateway, tls=tls, domain=domain)
        listen = None
        if metrics_listen is not None:
            from policyfabric.authority.server import parse_listen

            try:
                listen = parse_listen(metrics_listen, 9700)
            except ValueError as exc:
                raise fail(f"--metrics-listen: {exc}") from None
        raise typer.Exit(_run_ovs_agent(host, peers, ovsdb, bridge, state_dir, tunnel_ip, config, listen))
    if metrics_listen is not None:
        raise fail("--metrics-listen needs a running agent, not --dry-run")
    try:
        code = asyncio.run(run_dry(host, peers, eps, state_dir, once, tls, domain, out))
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


def _run_ovs_agent(
    host: str,
    peers: list[tuple[str, int]],
    ovsdb: str,
    bridge: str,
    state_dir: Path | None,
    tunnel_ip: str | None,
    options: dict[str, Any],
    metrics_listen: tuple[str, int] | None = None,
) -> int:
    import asyncio
    import ipaddress
    import signal

    from policyfabric.agent.ovs_agent import AgentConfig, OvsAgent
    from policyfabric.agent.renderers.api import RendererError

    if tunnel_ip is not None:
        try:
            ipaddress.IPv4Address(tunnel_ip)
        except ValueError:
            raise fail(f"--tunnel-ip {tunnel_ip!r} is not an IPv4 address") from None
    config = AgentConfig(host, peers, ovsdb, bridge, state_dir, tunnel_ip, **options)
    try:
        agent = OvsAgent(config)
    except RendererError as exc:
        raise fail(f"--renderer: {exc}") from None
    if metrics_listen is not None:
        from policyfabric.agent.metrics import AgentMetrics

        agent.metrics = AgentMetrics(agent.metrics_state)
        try:
            agent.metrics.serve(*metrics_listen)
        except OSError as exc:
            raise fail(f"--metrics-listen {metrics_listen[0]}:{metrics_listen[1]}: {exc.strerror}") from None

    async def main() -> None:
        task = asyncio.create_task(agent.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    except Exception as exc:
        err.print(f"[red]agent {host}: {exc}[/]")
        return 1
    return 0


def _renderer_spec(text: str) -> tuple[str, dict[str, str]]:
    """``NAME[:KEY=VALUE,...]`` → (name, options)."""
    name, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--renderer {text!r}: options are KEY=VALUE, comma-separated")
        options[key.strip()] = value.strip()
    if not name:
        raise fail(f"--renderer {text!r}: give the renderer's name first")
    return name, options


def renderers() -> None:
    """List the renderer plug-ins installed (entry points in the group `policyfabric.renderers`)."""
    from policyfabric.agent.renderers.api import RendererError, installed, renderer_class

    table = Table(title="renderer plug-ins (use: policyfabric agent --renderer NAME[:KEY=VALUE,...])")
    for column in ("name", "class", "options"):
        table.add_column(column)
    table.add_row(
        "(built in)", "Open vSwitch: policyfabric.agent.renderers.ovs", "--ovsdb, --bridge, --tunnel-ip"
    )
    for name, target in sorted(installed().items()):
        try:
            cls = renderer_class(name)
            options = "; ".join(f"{k}: {v}" for k, v in cls.OPTIONS.items()) or "-"
        except RendererError as exc:
            options = f"[red]{exc}[/]"
        table.add_row(name, target, options)
    out.print(table)
