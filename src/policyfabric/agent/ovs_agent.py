"""The Policy Agent for an Open vSwitch host: its wiring and its reconcile loop.

A single asyncio loop owns all state. Two sources wake it: OVSDB (an
interface was plugged or unplugged) and the OpFlex client (policy or
endpoint registry changed). Each wake-up runs ``reconcile``: read the
plugged interfaces in bulk, declare them and subscribe to what they need
(``declarer``, ``subscriptions``), bring the view (``view.Network``) up to
date with what changed (``viewstate``: only what a change reaches is read
again) and hand it to every renderer in turn, Open vSwitch first and the
plug-ins after it, each through the same two steps (``renderers.api``: ``compile``
pure, ``apply`` only when the result changed). Then the endpoints that now
have their dataplane are reported ACTIVE (``reports``, in the background). A
lone change is rendered at once, and so is the reconcile right after it (its
follow-up, ``pacing``); then changes that arrive during a reconcile, or within
``debounce`` of its start, share the next one; while the authority is still
answering what the agent asked for (a host's start: every endpoint's policy,
then what it leads to), the next reconcile waits for the answers (``_settle``),
so a flood is rendered once, whole, not a few answers at a time. A failed render raises
the ``render-failed`` fault and is retried every second until one works. A
renderer that watches its device (``Renderer.watch``) wakes the loop when
someone else changes it: that renderer is applied again in full at once, and
the ``drift-<renderer>`` fault is raised until it has stayed repaired
(``drift``).

While no authority answers, the cache (persisted under ``--state-dir``)
keeps driving the same flows, so the dataplane stays as it was; the client
keeps retrying and resyncs on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policyfabric.agent.declarer import Declarer
from policyfabric.agent.dhcp.responder import Responder, leases
from policyfabric.agent.drift import DriftFaults
from policyfabric.agent.locate import Locator
from policyfabric.agent.pacing import Pacer
from policyfabric.agent.renderers import api
from policyfabric.agent.renderers.ovs.applier import FlowApplier
from policyfabric.agent.renderers.ovs.ofchannel import mgmt_socket
from policyfabric.agent.renderers.ovs.ovsdb import Ovsdb, Plugged
from policyfabric.agent.renderers.ovs.renderer import NAME as OVS
from policyfabric.agent.renderers.ovs.renderer import OvsRenderer
from policyfabric.agent.reports import Reporter, RevisionSeen
from policyfabric.agent.rulelog import RuleLog
from policyfabric.agent.subscriptions import learn_routed, subscribe_external
from policyfabric.agent.values import InvalidPolicy
from policyfabric.agent.view import Network
from policyfabric.agent.viewstate import ViewState
from policyfabric.heap import settle_heap
from policyfabric.opflex.client import Peer, PolicyClient
from policyfabric.opflex.locate import METHOD as LOCATE

if TYPE_CHECKING:  # prometheus_client (3 MB resident) is loaded only with --metrics-listen
    from policyfabric.agent.metrics import AgentMetrics, FlowCount

log = logging.getLogger(__name__)
MAX_CHANGED = 100_000  # changed URIs remembered between reconciles; beyond, the next looks at everything
# requests whose answers the view reads and a held reconcile waits for: the policy, where the
# endpoints are (bare iface-ids); not the registry's bridge-domain members, answered after the
# host's own declarations (1.5 s of them at 1,000 endpoints), which the local flows do not need
ASKING = ("policy_resolve", LOCATE)
DECLARE = "endpoint_declare"
REPORT_AFTER = 0.05  # seconds: ACTIVE is looked at again this soon while declarations are in flight
SETTLE_TICK = 0.005  # seconds between looks at the requests in flight while a reconcile is held


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
    dhcp_lease: int = 86400  # seconds: the lease time the host's DHCP responder hands out
    settle_max: float = 0.3  # seconds a held reconcile waits for the next answer (see OvsAgent._settle)
    settle_cap: float = 8.0  # seconds a reconcile may be held in all (more for a flood: OvsAgent.hold_cap)
    settle_per_request: float = 0.003  # seconds of hold allowed per request in flight, past settle_cap


@dataclass
class Stats:
    syncs: int = 0
    flows: int = 0
    last_sync_s: float = 0.0
    endpoints: int = 0


@dataclass
class Rendering:
    """A renderer in the agent's list: the desired state it last applied, and the last apply that
    changed something."""

    name: str
    renderer: api.Renderer[Any]
    rendered: bool = False  # ``last`` holds what it last applied
    last: object = None
    last_change: api.Applied | None = None


def mgmt_target(ovsdb: str, bridge: str) -> str:
    """``unix:/run/x/db.sock`` → ``unix:/run/x/br-int.mgmt`` (OVS puts both in its run directory)."""
    if ovsdb.startswith("unix:"):
        return f"unix:{Path(ovsdb[5:]).parent / (bridge + '.mgmt')}"
    return bridge


def _lazy_trace(
    config: AgentConfig, seen: Callable[[], Network | None], plugins: list[tuple[str, Any]]
) -> Callable[[list[Any]], Awaitable[Any]]:
    """``pf_trace``'s handler, its module imported at the first trace: the explainer's catalog
    needs the intent model (pydantic), about 6 MB of resident memory an agent that is never asked
    to explain would carry for months."""
    service: Any = None

    async def trace(params: list[Any]) -> Any:
        nonlocal service
        if service is None:
            from policyfabric.agent import trace_rpc

            service = trace_rpc.for_agent(config, seen, plugins)
        return await service(params)

    return trace


class OvsAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.client = PolicyClient(
            config.host, config.peers, state_dir=config.state_dir, tls=config.tls, domain=config.domain
        )
        self.ovsdb: Ovsdb | None = None
        target = config.ofctl_target or mgmt_target(config.ovsdb, config.bridge)
        mgmt = mgmt_socket(target)  # DHCP answered on its own connection (None: not a local socket)
        self.rulelog = RuleLog(mgmt, config.host, config.state_dir)  # one per agent: one file writer
        context = api.RendererContext(config.host, config.state_dir, rule_log=self.rulelog.write_ip)
        self.plugins = [
            (name, api.load(name, dataclasses.replace(context, options=options)))
            for name, options in config.renderers
        ]
        self.policy_elsewhere = any(r.TAKES_OVER_POLICY for _, r in self.plugins)
        self.applier = FlowApplier(target)
        self.dhcp = Responder(mgmt) if mgmt is not None else None
        self.ovs = OvsRenderer(context, self.applier, enforce_policy=not self.policy_elsewhere)
        self.renderers = [Rendering(OVS, self.ovs), *(Rendering(name, r) for name, r in self.plugins)]
        self._ovs_rendering = self.renderers[0]
        self.declarer = Declarer(
            self.client,
            config.host,
            config.tunnel_ip,
            Locator(self.client, config.host, self.wake),
            send_later=True,
        )
        self.reports = Reporter(self.client, config.host, self.wake)
        self.invalid = InvalidPolicy(config.host)  # what the reader refused: logged once, a fault
        self.drift = DriftFaults()  # devices changed by someone else: repaired at once, a fault
        self.stats = Stats()
        self._faulted = False
        self._last_error = ""
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: set[str] | None = None  # cache URIs changed since the last reconcile (None: unknown)
        self._quiet: asyncio.TimerHandle | None = None  # the reconcile after a quiet spell
        self._deferred_since: float | None = None  # when reconciles began waiting for answers (_asked_more)
        self.view = ViewState(config.host, config.tunnel_ip, config.external)  # the renderers' input
        self.metrics: AgentMetrics | None = None  # --metrics-listen
        self.rendered_revision: int | None = None
        self.revision_seen = RevisionSeen()  # the PfRevision the view reads (what it then renders)
        self._flow_count: FlowCount | None = None  # made by the first scrape
        self.network_seen: Network | None = None  # the view last rendered: pf_trace names flows by it
        self._local_keys: tuple[object, set[str]] = ((), set())  # (net.local, its endpoints' keys)
        seen = lambda: self.network_seen  # noqa: E731
        self.client.on_trace = _lazy_trace(config, seen, self.plugins)

    # ---- wiring
    def wake(self, *_: Any) -> None:
        self._wake.set()

    def _cache_changed(self, uris: set[str]) -> None:
        """The client applied changes to these URIs: remembered for the next reconcile (what the
        declarer looks at again), which they wake."""
        if self._changed is not None:
            self._changed |= uris
            if len(self._changed) > MAX_CHANGED:  # a flood: looking at everything is cheaper
                self._changed = None
        self._wake.set()

    def _wake_threadsafe(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _drifted_threadsafe(self, name: str, what: str) -> None:
        """A renderer's watcher (its own thread) saw its device changed by someone else."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drifted, name, what)

    def _drifted(self, name: str, what: str) -> None:
        log.warning("agent %s: renderer %s: drift: %s; repairing", self.config.host, name, what)
        fault = self.drift.noted(name, what, time.monotonic(), self.client.session)
        if fault is not None:
            self.reports.fault_soon(*fault)
        self._wake.set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.ovsdb = await asyncio.to_thread(Ovsdb, self.config.ovsdb, self.config.bridge)
        if self.config.tunnel_ip:
            await asyncio.to_thread(self.ovsdb.ensure_tunnel, self.config.tunnel_ip)
        self.ovsdb.watch(self._wake_threadsafe)
        for rendering in self.renderers:  # before the first apply: nothing after it goes unseen
            watch = functools.partial(self._drifted_threadsafe, rendering.name)
            try:
                await asyncio.to_thread(rendering.renderer.watch, watch)
            except Exception as exc:  # a renderer that cannot watch still renders
                log.warning(
                    "agent %s: renderer %s cannot watch for drift: %s", self.config.host, rendering.name, exc
                )
        self.client.on_change = self._cache_changed
        if self.dhcp is not None:
            self.dhcp.start()
        if self.rulelog is not None:
            self.rulelog.on_meter_created(self._wake_threadsafe)
            self.rulelog.start()
            # the meter before the first flows: OVS resolves a logging flow's meter when it is added
            if not await asyncio.to_thread(self.rulelog.wait_ready, 3.0):
                log.warning("agent %s: rule log: no meter on the bridge yet", self.config.host)
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
            pacer = Pacer(self.config.debounce)  # a lone change and its follow-up at once, a burst paced
            while True:
                await self._wake.wait()
                await asyncio.sleep(pacer.delay(time.monotonic()))
                await self._settle()
                self._wake.clear()
                last = time.monotonic()
                pacer.started(last)
                try:
                    await self.reconcile()
                    if self.metrics is not None:
                        self.metrics.reconcile.observe(time.monotonic() - last)
                    settle_heap(time.monotonic() - last)
                    self._wake_when_quiet()
                except Exception as exc:  # keep serving; report, and retry shortly
                    if self.metrics is not None:
                        self.metrics.failures.inc()
                    if str(exc) != self._last_error:  # the traceback once; the fault stays raised
                        log.exception("agent %s: reconcile failed (retrying every second)", self.config.host)
                    self._last_error = str(exc)
                    self._faulted = True
                    await self.reports.fault("render-failed", "major", str(exc))
                    await asyncio.sleep(1)
                    self._wake.set()
                    continue
                if self._faulted:
                    self._faulted, self._last_error = False, ""
                    log.info("agent %s: rendering works again", self.config.host)
                    await self.reports.fault("render-failed", "cleared", "rendering works again")
        finally:
            client_task.cancel()
            refresher.cancel()
            if self._quiet is not None:
                self._quiet.cancel()
            if self.dhcp is not None:
                await asyncio.to_thread(self.dhcp.stop)
            if self.rulelog is not None:
                await asyncio.to_thread(self.rulelog.stop)
            for rendering in self.renderers:
                with contextlib.suppress(Exception):
                    rendering.renderer.unwatch()
            with contextlib.suppress(BaseException):
                await self.client.stop()
            self.ovsdb.close()

    def awaiting(self) -> int:
        """How many of the agent's requests for what it renders (resolutions, locations) are waiting
        for the authority's answer."""
        in_flight = getattr(self.client, "in_flight", None)
        asked = sum(in_flight[m] for m in ASKING) if in_flight is not None else 0
        return asked + getattr(self.client, "resolving", 0)  # wanted, not on the wire yet

    def declaring(self) -> bool:
        """Whether declarations are waiting for the registry's answer."""
        in_flight = getattr(self.client, "in_flight", None)
        return bool(in_flight and in_flight[DECLARE])

    async def _settle(self) -> None:
        """Hold the next reconcile while the authority is still answering the agent's own requests
        for what it renders. Why: a host's start resolves every plugged endpoint,
        then what their groups and bridge domains need, and declares them all: thousands of
        requests whose answers arrive a few at a time. Rendering after each few (measured at 10,000
        endpoints: ~90 reconciles of 100-190 ms, most of it walks of everything) competes with the
        authority for the CPU while it answers, and renders partial states (an endpoint's bridge
        domain before its routing domain and subnets: its classification flows were written twice
        and its DHCP flows came in a second wave). A change pushed by the authority, with nothing
        asked, is rendered at once as before. Held while answers keep coming: until none came for
        ``settle_max`` seconds (an authority that stopped answering), ``hold_cap`` in all."""
        waiting = self.awaiting()
        if not waiting:
            return
        start = progress = time.monotonic()
        answered, peak = self._answered(), waiting
        while waiting:
            now = time.monotonic()
            if self._answered() != answered:
                answered, progress = self._answered(), now
            if now - progress >= self.config.settle_max or now - start >= self.hold_cap(peak):
                break
            await asyncio.sleep(SETTLE_TICK)
            waiting = self.awaiting()
            peak = max(peak, waiting)
        if time.monotonic() - start >= 0.2:
            log.info(
                "agent %s: rendering held %.1f s for the answers to %d requests (%d unanswered)",
                self.config.host, time.monotonic() - start, peak, waiting,
            )  # fmt: skip

    def _answered(self) -> int:
        """Answers received to what a held reconcile waits for (``ASKING``): not declarations,
        thousands of which are answered during a host's start and would make a stuck resolve
        look like progress until ``hold_cap``."""
        answered = getattr(self.client, "answered", None)
        return sum(answered[m] for m in ASKING) if answered is not None else 0

    def hold_cap(self, requests: int) -> float:
        """How long a reconcile may be held for ``requests`` in flight: ``settle_cap``, or more for
        a flood (``settle_per_request`` each: at 10,000 endpoints the authority took 8-10 s to
        answer their policy and what it leads to, and a cap of 8 s rendered the host without its
        subnets, then 20,000 flows again as a second wave)."""
        return max(self.config.settle_cap, requests * self.config.settle_per_request)

    def _wake_when_quiet(self) -> None:
        """Reconcile once more after ``check_every`` seconds with nothing changed: the periodic
        safety nets (the view's check of every input, the declarer's full pass) then run there, at
        no change's expense, rather than on the first change after a quiet spell (0.3-0.8 s at
        10,000 endpoints). One timer, moved on by every reconcile."""
        if self._quiet is not None:
            self._quiet.cancel()
        self._quiet = asyncio.get_running_loop().call_later(self.view.check_every, self.wake)

    async def _refresh_announcements(self) -> None:
        while True:
            await asyncio.sleep(self.config.announce_every)
            await asyncio.to_thread(self.ovs.refresh_announcements)

    def _flows_by_table(self, desired: Any) -> dict[int, int]:
        if self._flow_count is None:
            from policyfabric.agent.metrics import FlowCount

            self._flow_count = FlowCount()
        return self._flow_count(desired)

    def metrics_state(self) -> dict[str, Any]:
        """What a metrics scrape reads (from its own thread: plain reads of the loop's values)."""
        ovs = self._ovs_rendering
        return {
            "flows_by_table": self._flows_by_table(ovs.last if ovs.rendered else None),
            "endpoints": self.stats.endpoints,
            "opflex_connected": int(self.client.session is not None),
            "rendered_revision": self.rendered_revision,
            "reconciles": self.stats.syncs,
        }

    # ---- the reconcile step
    def network(
        self, plugged: list[Plugged], tunnel_port: int | None = None, changed: set[str] | None = None
    ) -> Network:
        """The pure input of the renderers, from the cache, what is plugged and the bridge's ports:
        the view kept up to date with ``changed``, the cache URIs changed since the last call (None:
        unknown, built whole). See ``viewstate``."""
        assert self.ovsdb is not None
        return self.view.network(
            self.client.policy, self.client.endpoints, plugged, tunnel_port, self.ovsdb.ofports, changed
        )

    async def reconcile(self) -> None:
        assert self.ovsdb is not None
        t0 = time.perf_counter()
        plugged, tunnel_port = await asyncio.to_thread(self.ovsdb.interfaces)
        plugged = self.declarer.located(plugged)  # bare iface-ids (Neutron port UUIDs) as TENANT/NAME
        t1 = time.perf_counter()
        changed, self._changed = self._changed, set()
        try:
            for iface_id in self.declarer.sync(plugged, changed):
                self.reports.forget(iface_id)
            subscribe_external(self.client, self.config.external, self.config.gateway)
            t2 = time.perf_counter()
        except BaseException:
            self._changed = None  # not everything saw what changed: the next reconcile looks at everything
            raise
        if await self._asked_more(changed):
            return  # rendered once what was just asked for is answered (the next reconcile)
        self.declarer.send()  # (behind what was asked for: see Declarer.send)
        try:
            revision = self.revision_seen.update(self.client.policy, self.client.wanted, changed)
            net = self.network(plugged, tunnel_port, changed)
        except BaseException:
            self._changed = None  # not everything saw what changed: the next reconcile looks at everything
            raise
        fault = self.invalid.update(net.invalid, self.client.session)
        if fault is not None:
            await self.reports.fault("invalid-policy", *fault)
        if self.config.gateway:
            ports = frozenset(uri for uri, ext in net.external.items() if ext.ofport is not None)
            self.reports.gateway_ports(self.config.tunnel_ip or "", ports)
        if net is not self.network_seen:  # (the same view as last rendered: all of this is done)
            learn_routed(self.client, net)
            if self.dhcp is not None:  # before the flows that send it requests are installed
                self.dhcp.update(leases(net, self.config.dhcp_lease))
            if self.rulelog is not None:  # the names its lines give what decided
                self.rulelog.namer.update(net)
        t3 = time.perf_counter()
        compile_s = apply_s = 0.0
        for rendering in self.renderers:
            c, a = await self._render(rendering, net)
            compile_s, apply_s = compile_s + c, apply_s + a
        if self.rulelog is not None:  # a meter created under flows already there: they use it now
            self.rulelog.repoint_if_created(self.applier.installed)
        self.network_seen = net  # installed now (an apply that failed raised): pf_trace names flows by it
        t4 = time.perf_counter()
        if t4 - t0 > 0.1:
            log.info(
                "agent %s: slow reconcile %.0f ms (ovsdb %.0f, declare %.0f, view %.0f, compile %.0f, "
                "apply %.0f)",
                self.config.host,
                *(s * 1000 for s in (t4 - t0, t1 - t0, t2 - t1, t3 - t2, compile_s, apply_s)),
            )
        self.stats.syncs += 1
        self.stats.flows, self.stats.endpoints = self.ovs.flows, len(net.local)
        if self._ovs_rendering.last_change is not None:
            self.stats.last_sync_s = self._ovs_rendering.last_change.seconds
        counters = {"flows": self.stats.flows, "endpoints": self.stats.endpoints, "syncs": self.stats.syncs}
        if self.dhcp is not None:  # what the responder did so far (sent with the next status report)
            done = self.dhcp.counters
            counters |= {
                "dhcp_answered": done.answered,
                "dhcp_malformed": done.malformed,
                "dhcp_unanswered": done.unanswered,
            }
        if self._local_keys[0] is not net.local:  # a set of 10,000 keys: made when they changed
            self._local_keys = (net.local, {e.key for e in net.local})
        self._report_active(self._local_keys[1], counters)
        self.reports.rendered(revision)
        self.rendered_revision = revision
        now = time.monotonic()
        for raised in self.drift.untold(self.client.session):  # raised as the session broke, say
            await self.reports.fault(*raised)
        for cleared in self.drift.clearable(now):
            log.info("agent %s: %s cleared: %s", self.config.host, cleared[0], cleared[2])
            await self.reports.fault(*cleared)
        later = self.drift.next_clear(now)
        if later is not None:
            asyncio.get_running_loop().call_later(later + 0.01, self.wake)

    def _report_active(self, keys: set[str], counters: dict[str, int]) -> None:
        """Report the rendered endpoints ACTIVE, once no declaration waits for the registry's answer:
        the registry ignores the status of an endpoint it does not hold yet (seen at 5,000: ten
        endpoints reported before their declarations were through stayed BUILD for good). Looked
        at again ``REPORT_AFTER`` seconds later while declarations are in flight."""
        if self.declaring():
            asyncio.get_running_loop().call_later(REPORT_AFTER, self.wake)
        else:
            self.reports.endpoints_active(keys, counters)

    async def _asked_more(self, changed: set[str] | None) -> bool:
        """Whether this reconcile stops before the view because declaring just asked the authority
        for more (an endpoint's group and bridge domain, then what they refer to): it is then
        rendered by the next reconcile, once ``_settle`` saw the answers, with the changes of this
        one kept for it. At most ``hold_cap`` seconds of such deferrals in a row: a view that
        waits for ever for an answer would never be rendered."""
        for _ in range(2):  # the requests just made start (a resolution's own requests one step later)
            await asyncio.sleep(0)
        now = time.monotonic()
        if not self.awaiting():
            self._deferred_since = None
            return False
        if self._deferred_since is None:
            self._deferred_since = now
        elif now - self._deferred_since >= self.hold_cap(self.awaiting()):
            self._deferred_since = None
            return False
        if changed is None or self._changed is None:
            self._changed = None
        else:
            self._changed |= changed
        self._wake.set()
        return True

    async def _render(self, rendering: Rendering, net: Network) -> tuple[float, float]:
        """Compile; apply only when the desired state changed. Returns (compile, apply) seconds."""
        t0 = time.perf_counter()
        desired = rendering.renderer.compile(net)
        t1 = time.perf_counter()
        if rendering.rendered and rendering.last == desired and not self.drift.pending(rendering.name):
            return t1 - t0, 0.0
        # until this apply succeeds, the device's state is unknown (a failed bundle may have been
        # half-sent): the next reconcile applies again even if the desired state is back to the last
        # one applied, and the OVS applier then resyncs in full
        rendering.rendered = False
        drift = self.drift.take(rendering.name)  # a drift this apply repairs (the renderer applies in full)
        try:
            applied = await asyncio.to_thread(rendering.renderer.apply, desired)
        except BaseException:
            if drift is not None:
                self.drift.give_back(rendering.name, drift)
            raise
        rendering.rendered, rendering.last = True, desired
        if self.metrics is not None and (applied.added or applied.removed or applied.full):
            self.metrics.apply.labels(rendering.name).observe(applied.seconds)
        if drift is not None:
            now = time.monotonic()
            self.drift.repaired(rendering.name, now)
            if self.metrics is not None:
                self.metrics.repairs.labels(rendering.name).inc()
            log.info(
                "agent %s: renderer %s: drift repaired %.0f ms after it was seen (%s)",
                self.config.host,
                rendering.name,
                (now - drift[0]) * 1000,
                "; ".join(drift[1])[:500],
            )
        if applied.added or applied.removed:
            rendering.last_change = applied
        log.log(
            logging.INFO if applied.added or applied.removed or applied.full else logging.DEBUG,
            "agent %s: renderer %s: +%d -%d in %.0f ms %s",
            self.config.host,
            rendering.name,
            applied.added,
            applied.removed,
            applied.seconds * 1000,
            applied.detail,
        )
        return t1 - t0, time.perf_counter() - t1
