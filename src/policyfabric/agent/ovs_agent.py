"""The Policy Agent for an Open vSwitch host.

A single asyncio loop owns all state. Two sources wake it: OVSDB (an
interface was plugged or unplugged) and the OpFlex client (policy or
endpoint registry changed). Each wake-up runs ``reconcile``: read the
plugged interfaces in bulk, make sure the policy they need is resolved and
they are declared, compile the desired flows (pure) and apply the
difference (one bundle). A lone change is rendered at once; changes that
arrive during a reconcile, or within ``debounce`` of its start, share the
next one.

While no authority answers, the cache (persisted under ``--state-dir``)
keeps driving the same flows, so the dataplane stays as it was; the client
keeps retrying and resyncs on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policyfabric.agent.endpoints import bd_members_prefix, declaration
from policyfabric.agent.renderers import api
from policyfabric.agent.renderers.ovs import external
from policyfabric.agent.renderers.ovs.applier import FlowApplier
from policyfabric.agent.renderers.ovs.ovsdb import Ovsdb, Plugged
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline, routed_bds
from policyfabric.agent.view import Network, local_endpoint, policy_view, remote_endpoints
from policyfabric.opflex.client import Peer, PolicyClient
from policyfabric.opflex.gbp import endpoint_uri, external_network_uri
from policyfabric.opflex.mo import MO
from policyfabric.opflex.uri import UNIVERSE, space

log = logging.getLogger(__name__)


@dataclass
class AgentConfig:
    host: str
    peers: list[Peer]
    ovsdb: str
    bridge: str = "br-int"
    state_dir: Path | None = None
    tunnel_ip: str | None = None
    ofctl_target: str | None = None  # default: the bridge's mgmt socket next to the OVSDB socket
    tls: ssl.SSLContext | None = None
    domain: str = "policyfabric"
    debounce: float = 0.01
    renderers: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # plug-ins: (name, options)
    external: dict[str, str] = field(default_factory=dict)  # external network name -> interface on bridge
    gateway: bool = False  # may be elected SNAT gateway: learns every tenant's routers
    announce_every: float = 20.0  # seconds between ARP refreshes on external networks


@dataclass
class Stats:
    syncs: int = 0
    flows: int = 0
    last_sync_s: float = 0.0
    endpoints: int = 0


def _split_iface_id(iface_id: str) -> tuple[str, str] | None:
    tenant, sep, name = iface_id.partition("/")
    return (tenant, name) if sep and tenant and name else None


def mgmt_target(ovsdb: str, bridge: str) -> str:
    """``unix:/run/x/db.sock`` → ``unix:/run/x/br-int.mgmt`` (OVS puts both in its run directory)."""
    if ovsdb.startswith("unix:"):
        return f"unix:{Path(ovsdb[5:]).parent / (bridge + '.mgmt')}"
    return bridge


class OvsAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.client = PolicyClient(
            config.host, config.peers, state_dir=config.state_dir, tls=config.tls, domain=config.domain
        )
        self.applier = FlowApplier(config.ofctl_target or mgmt_target(config.ovsdb, config.bridge))
        self.ovsdb: Ovsdb | None = None
        context = api.RendererContext(config.host, config.state_dir)
        self.plugins = [
            (name, api.load(name, dataclasses.replace(context, options=options)))
            for name, options in config.renderers
        ]
        self._rendered: dict[str, object] = {}  # plug-in name -> desired state it last applied
        self.policy_elsewhere = any(r.TAKES_OVER_POLICY for _, r in self.plugins)
        self.stats = Stats()
        self.active: set[str] = set()  # endpoints reported ACTIVE
        self.declared: dict[str, str] = {}  # iface-id -> L2 declaration URI
        self._decl_memo: dict[str, tuple[tuple[object, ...], str]] = {}
        self._reporting: set[str] = set()  # endpoints whose ACTIVE report is in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._faulted = False
        self._last_error = ""
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._announced: set[external.Announcement] = set()
        self._gateway_report: tuple[object, frozenset[str]] | None = None  # (session, networks) told

    # ---- wiring
    def wake(self, *_: Any) -> None:
        self._wake.set()

    def _wake_threadsafe(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.ovsdb = await asyncio.to_thread(Ovsdb, self.config.ovsdb, self.config.bridge)
        if self.config.tunnel_ip:
            await asyncio.to_thread(self.ovsdb.ensure_tunnel, self.config.tunnel_ip)
        self.ovsdb.watch(self._wake_threadsafe)
        self.client.on_change = self.wake
        client_task = asyncio.create_task(self.client.run())
        refresher = asyncio.create_task(self._refresh_announcements())
        log.info(
            "agent %s: bridge %s via %s, tunnel ip %s, cache version %d; policy enforced by %s",
            self.config.host,
            self.config.bridge,
            self.config.ovsdb,
            self.config.tunnel_ip,
            self.client.version,
            ", ".join(n for n, r in self.plugins if r.TAKES_OVER_POLICY) or "Open vSwitch",
        )
        try:
            self._wake.set()
            last = float("-inf")
            while True:
                await self._wake.wait()
                # a lone change is rendered at once; in a burst, at most one reconcile per debounce
                await asyncio.sleep(max(0.0, last + self.config.debounce - time.monotonic()))
                self._wake.clear()
                last = time.monotonic()
                try:
                    await self.reconcile()
                except Exception as exc:  # keep serving; report, and retry shortly
                    if str(exc) != self._last_error:  # the traceback once; the fault stays raised
                        log.exception("agent %s: reconcile failed (retrying every second)", self.config.host)
                    self._last_error = str(exc)
                    self._faulted = True
                    await self._fault("render-failed", "major", str(exc))
                    await asyncio.sleep(1)
                    self._wake.set()
                    continue
                if self._faulted:
                    self._faulted, self._last_error = False, ""
                    log.info("agent %s: rendering works again", self.config.host)
                    await self._fault("render-failed", "cleared", "rendering works again")
        finally:
            client_task.cancel()
            refresher.cancel()
            with contextlib.suppress(BaseException):
                await self.client.stop()
            self.ovsdb.close()

    # ---- the reconcile step
    def network(self, plugged: list[Plugged]) -> Network:
        """The pure input of the compiler, from the cache and what is plugged."""
        base = policy_view(self.client.policy)
        local = []
        for p in plugged:
            key = _split_iface_id(p.iface_id)
            if key is None:
                continue
            ep = local_endpoint(
                self.client.policy, base.groups, p.iface_id, endpoint_uri(*key), p.ofport, p.name
            )
            if ep is not None:
                local.append(ep)
        keys = {e.key for e in local}
        remote = remote_endpoints(self.client.endpoints.values(), self.config.tunnel_ip or "", keys)
        assert self.ovsdb is not None
        attached = {}
        for uri, ext in base.external.items():
            iface = self.config.external.get(ext.name)
            ofport = self.ovsdb.ofports.get(iface) if iface else None
            attached[uri] = dataclasses.replace(ext, ofport=ofport) if ofport else ext
        return dataclasses.replace(
            base, local=tuple(local), remote=remote, external=attached, host=self.config.host
        )

    def _subscribe_external(self) -> None:
        """The external networks this host has a port on; on a gateway, every tenant (their routers
        may name this host)."""
        for name in self.config.external:
            self.client.resolve("PfExternalNetwork", external_network_uri(name))
        if not self.config.gateway:
            return
        self.client.resolve("PolicyUniverse", UNIVERSE)
        universe = self.client.policy.get(UNIVERSE)
        for uri in universe.children if universe else ():
            mo = self.client.policy.get(uri)
            if mo is None or mo.subject == "PolicySpace":
                self.client.resolve("PolicySpace", uri)

    def _report_gateway(self, net: Network) -> None:
        """Tell the authority (once per session, and on change) which external networks this
        gateway has a working port on: what the gateway election needs."""
        session = self.client.session
        if not self.config.gateway or session is None:
            return
        nets = frozenset(uri for uri, ext in net.external.items() if ext.ofport is not None)
        if self._gateway_report == (session, nets):
            return
        self._gateway_report = (session, nets)
        mo = MO(
            "PfGatewayPorts",
            "/PfGatewayPorts/",
            {"tunnelIp": self.config.tunnel_ip or "", "externalNetworks": sorted(nets)},
        )

        async def send() -> None:
            try:
                await self.client.report([mo])
                log.info("agent %s: gateway ports reported: %s", self.config.host, ", ".join(sorted(nets)))
            except Exception as exc:
                self._gateway_report = None
                log.info("agent %s: gateway report deferred: %s", self.config.host, exc)
                asyncio.get_running_loop().call_later(1.0, self.wake)

        task = asyncio.create_task(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, items: Iterable[external.Announcement]) -> None:
        """Gratuitous ARP for each address (the external side's switches and neighbours follow a
        floating IP or a gateway that moved here), and an ARP request for the network's gateway
        (its reply fills the neighbour table)."""
        lines = []
        for a in items:
            for target in (a.ip, a.gateway_ip):
                frame = external.arp_frame(a.mac, a.ip, target).hex()
                lines.append(f"in_port=controller packet={frame} actions=output:{a.port}")
        for line in lines:
            try:
                await asyncio.to_thread(self.applier.packet_out, line)
            except Exception as exc:
                log.warning("agent %s: ARP announcement failed: %s", self.config.host, exc)

    async def _refresh_announcements(self) -> None:
        while True:
            await asyncio.sleep(self.config.announce_every)
            await self._announce(sorted(self._announced, key=lambda a: (a.port, a.ip)))

    async def reconcile(self) -> None:
        assert self.ovsdb is not None
        t0 = time.perf_counter()
        plugged, tunnel_port = await asyncio.to_thread(self.ovsdb.interfaces)
        t1 = time.perf_counter()
        self._declare(plugged)
        self._subscribe_external()
        t2 = time.perf_counter()
        net = self.network(plugged)
        self._report_gateway(net)
        for bd in routed_bds(net):  # to route to a subnet, learn its endpoints (idempotent)
            self.client.resolve_endpoints("EprL2Ep", bd_members_prefix(bd))
        t3 = time.perf_counter()
        flows = compile_pipeline(
            net, tunnel_port if self.config.tunnel_ip else None, enforce_policy=not self.policy_elsewhere
        )
        t4 = time.perf_counter()
        applied = await asyncio.to_thread(self.applier.sync, flows)
        t5 = time.perf_counter()
        if t5 - t0 > 0.1:
            log.info(
                "agent %s: slow reconcile %.0f ms (ovsdb %.0f, declare %.0f, view %.0f, compile %.0f, "
                "apply %.0f)",
                self.config.host,
                *((b - a) * 1000 for a, b in ((t0, t5), (t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))),
            )
        self.stats.syncs += 1
        self.stats.flows, self.stats.endpoints = len(flows), len(net.local)
        if applied.added or applied.removed:
            self.stats.last_sync_s = applied.seconds
            if applied.full:
                log.info(
                    "agent %s: full sync of %d flows (OVS changes only those that differ) in %.0f ms",
                    self.config.host,
                    len(flows),
                    applied.seconds * 1000,
                )
            else:
                log.info(
                    "agent %s: delta sync: +%d -%d flows (%d in all) in %.0f ms",
                    self.config.host,
                    applied.added,
                    applied.removed,
                    len(flows),
                    applied.seconds * 1000,
                )
        announce = set(external.announcements(net))
        if announce - self._announced:
            fresh = sorted(announce - self._announced, key=lambda a: (a.port, a.ip))
            log.info(
                "agent %s: now answering on external networks for %s",
                self.config.host,
                ", ".join(a.ip for a in fresh),
            )
            await self._announce(fresh)
        self._announced = announce
        for name, renderer in self.plugins:
            await self._render_plugin(name, renderer, net)
        self._report_status({e.key for e in net.local})

    async def _render_plugin(self, name: str, renderer: api.Renderer[object], net: Network) -> None:
        """A plug-in renderer on the same view; applied only when its desired state changed."""
        desired = renderer.compile(net)
        if name in self._rendered and self._rendered[name] == desired:
            return
        applied = await asyncio.to_thread(renderer.apply, desired)
        self._rendered[name] = desired
        log.info(
            "agent %s: renderer %s: +%d -%d in %.0f ms %s",
            self.config.host,
            name,
            applied.added,
            applied.removed,
            applied.seconds * 1000,
            applied.detail,
        )

    def _declare(self, plugged: list[Plugged]) -> None:
        seen = set()
        for p in plugged:
            key = _split_iface_id(p.iface_id)
            if key is None:
                log.warning(
                    "agent %s: interface %s: iface-id %r is not TENANT/NAME",
                    self.config.host,
                    p.name,
                    p.iface_id,
                )
                continue
            tenant, name = key
            seen.add(p.iface_id)
            self.client.resolve("PolicySpace", space(tenant))
            uri = endpoint_uri(tenant, name)
            self.client.resolve("PfEndpoint", uri)
            inputs = self._declaration_inputs(uri, p.name)
            last = self._decl_memo.get(p.iface_id)
            if (
                last is not None
                and len(last[0]) == len(inputs)
                and all(
                    a is b or (isinstance(a, str) and a == b) for a, b in zip(last[0], inputs, strict=True)
                )
            ):
                continue  # same objects as last time: nothing to declare again
            decl = declaration(self.client.policy, tenant, name, p.name, self.config.tunnel_ip)
            if decl is None:
                continue
            self._decl_memo[p.iface_id] = (inputs, decl.l2.uri)
            old = self.declared.get(p.iface_id)
            if old is not None and old != decl.l2.uri:
                self.client.undeclare(old)  # the endpoint's MAC or bridge domain changed
            self.client.declare(decl.all)
            self.declared[p.iface_id] = decl.l2.uri
            self.client.resolve_endpoints("EprL2Ep", bd_members_prefix(decl.bridge_domain))
        for iface_id in list(self.declared):
            if iface_id not in seen:
                self._decl_memo.pop(iface_id, None)
                log.info("agent %s: %s unplugged", self.config.host, iface_id)
                self.client.undeclare(self.declared.pop(iface_id))
                self.active.discard(iface_id)

    def _declaration_inputs(self, uri: str, interface: str) -> tuple[object, ...]:
        """Everything a declaration is computed from: MOs are replaced, never mutated, so identity
        tells whether anything changed."""
        policy = self.client.policy
        ep = policy.get(uri)
        props = ep.properties if ep is not None else {}
        refs = [
            v.get("reference_uri")
            for v in (props.get("epg"), props.get("bridgeDomain"))
            if isinstance(v, dict)
        ]
        related = [policy.get(r) for r in refs if isinstance(r, str)]
        children = [policy.get(c) for mo in related if mo is not None for c in mo.children]
        return (ep, interface, self.config.tunnel_ip, *related, *children)

    def _report_status(self, rendered: set[str]) -> None:
        """Tell the authority which endpoints now have their flows (ACTIVE), in the background:
        the reconcile loop never waits for the authority."""
        new = rendered - self.active - self._reporting
        if not new:
            return
        if self.client.session is None:
            asyncio.get_running_loop().call_later(1.0, self.wake)  # report once connected
            return
        self._reporting |= new
        task = asyncio.create_task(self._send_status(new))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_status(self, new: set[str]) -> None:
        reports = []
        for key in sorted(new):
            uri = f"/PfEndpointStatus/{key.replace('/', '%2f')}/"
            reports.append(MO("PfEndpointStatus", uri, {"endpoint": key, "status": "ACTIVE"}))
        counters = {"flows": self.stats.flows, "endpoints": self.stats.endpoints, "syncs": self.stats.syncs}
        reports.append(MO("PfAgentCounters", "/PfAgentCounters/", counters))
        try:
            await self.client.report(reports)
            self.active |= new
        except Exception as exc:  # not connected: try again shortly
            log.info("agent %s: status report deferred: %s", self.config.host, exc)
            asyncio.get_running_loop().call_later(1.0, self.wake)
        finally:
            self._reporting -= new

    async def _fault(self, code: str, severity: str, description: str) -> None:
        with contextlib.suppress(Exception):
            await self.client.report(
                [
                    MO(
                        "PfFault",
                        f"/PfFault/{code}/",
                        {"code": code, "severity": severity, "description": description[:500]},
                    )
                ]
            )
