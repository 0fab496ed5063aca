"""Build a scenario for real on this machine: namespaces, Open vSwitch, agents, traffic.

``Lab`` runs a lab's life: ``up`` (apply the intent, wire hosts, external networks and
endpoints, start an agent per host, wait until every endpoint is ACTIVE), ``probe``,
``fail``/``heal`` a host, ``down``. The pieces live beside it: the wiring and its names in
``plumbing`` (``ID-fabric``, ``ID-<host>``, ``ID-x<N>``, ``ID-xh-<name>``, ``ID-ep-<name>``;
``ID`` is a random lab id, so two labs never collide), what was created in ``state``,
probing in ``probing``, a host's Open vSwitch in ``ovs``, the authority process in
``authority``.

Agents run in the root namespace and reach their host's OVS through its unix sockets.
Everything created is recorded in ``state.json`` before it is created, so ``down`` (and
the cleanup after a failure or Ctrl-C) removes exactly that, and nothing else.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from policyfabric.client import Client
from policyfabric.client import apply as applying
from policyfabric.lab import dhcp, plumbing, ports, probing, processes, readback
from policyfabric.lab import store as stores
from policyfabric.lab.authority import AuthorityProcess, authority_in
from policyfabric.lab.ovs import OvsInstance
from policyfabric.lab.plan import Expect, ExternalSegment, Host, LabEndpoint, LabError, LabPlan, plan
from policyfabric.lab.ports import PortConfig
from policyfabric.lab.probing import ProbeResult
from policyfabric.lab.state import ExternalAddress, LabState
from policyfabric.model import kinds as k
from policyfabric.model import objects as o
from policyfabric.model import scenario as sc
from policyfabric.sh import CommandFailed, run

log = logging.getLogger(__name__)

DEFAULT_STATE = Path("/tmp/policyfabric-lab")

__all__ = ["DEFAULT_STATE", "Lab", "LabState", "ProbeResult", "Verified", "checked_plan", "verify"]

# A tenant's subnets, bridge domains (by name) and endpoint groups (by name), as the authority has them
TenantIntent = tuple[list[o.Subnet], dict[str, o.BridgeDomain], dict[str, o.EndpointGroup]]


@dataclass
class Verified:
    """What ``verify`` measured: the probe results, each endpoint as its namespace held it after
    the probes (``readback.endpoints``), and warnings (a DHCP endpoint that got no lease...)."""

    results: list[ProbeResult]
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    explained: list[dict[str, Any]] | None = None  # with ``verify(explain=...)``: one per result


class Lab:
    """A lab on this machine, from its state (``create`` a new one, or load a running one's)."""

    def __init__(self, state: LabState, say: Callable[[str], None] = lambda s: None) -> None:
        self.state, self.say = state, say
        self.dir = Path(state.directory)
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.authority: AuthorityProcess | None = None
        self.ports: dict[str, PortConfig] = {}  # what each endpoint plugged by this process was given
        self.warnings: dict[str, str] = {}  # endpoint -> what ``up`` found wrong with it (no DHCP lease)
        self.dhcp_wait = dhcp.DHCP_WAIT
        self.store: str | None = None  # the embedded authority's: None (SQLite), "etcd" or etcd://...
        self.detached = False  # what it starts outlives this process (`lab up`; `lab down` stops it)
        self._intent: dict[str, TenantIntent] = {}

    # ---- bring up
    @classmethod
    def create(cls, scenario_path: Path, directory: Path, say: Callable[[str], None] = lambda s: None) -> Lab:
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / "state.json").exists():
            raise LabError(
                f"a lab is already up under {directory}: run `policyfabric lab down --state {directory}`"
            )
        state = LabState("pf" + secrets.token_hex(3), str(directory), str(scenario_path))
        state.save()
        say(f"lab {state.id}: its namespaces are named {state.id}-*, its state is in {directory}")
        return cls(state, say)

    def up(self, scenario: sc.Scenario, authority: tuple[str, str] | None = None) -> LabPlan:
        """Apply the intent (to an embedded authority, or ``authority``: URL and OpFlex address),
        build hosts, external networks and endpoints, wait until the agents rendered them."""
        lab = checked_plan(scenario)
        if authority is None:
            url = stores.start(self.state, self.store, self.dir / "etcd", self.detached, self.say)
            self.say(f"starting an embedded authority ({f'etcd {url}' if url else 'SQLite'})")
            # a silent agent (a host cut off) is dropped after 4 x 0.5 s: gateways fail over quickly
            extra = ["--keepalive", "0.5", *(["--store", url] if url else [])]
            self.authority = authority_in(self.dir / "authority", extra=extra)
            self.authority.start()
            assert self.authority.proc is not None
            self.state.pids["authority"] = self.authority.proc.pid
            self.state.url, self.state.opflex = self.authority.url, "{}:{}".format(*self.authority.opflex)
        else:
            self.state.url, self.state.opflex = authority
        self.state.save()
        self.say(f"applying the intent of {scenario.path} at {self.state.url}")
        with Client(self.state.url) as client:
            applying.execute(applying.plan(scenario, client), client, lambda step: None)
        plumbing.add_fabric(self.state)
        for seg in lab.segments:
            self.say(f"external network {seg.name}: {seg.cidr}, upstream gateway {seg.gateway_ip}")
            plumbing.add_segment(self.state, seg)
        for host in lab.hosts:
            self.say(f"host {host.name}: Open vSwitch, underlay {host.underlay_ip}, agent")
            self.add_host(host, lab.segments)
        for x in lab.external_hosts:
            plumbing.add_external_host(self.state, x, next(s for s in lab.segments if s.name == x.network))
        with Client(self.state.url) as client:
            self._record_external_addresses(client)
            for ep in lab.endpoints:
                self.plug(ep, client)
        self.say(f"{len(lab.endpoints)} endpoint(s) plugged; waiting for the agents to render them")
        self.wait_active([e.key for e in lab.endpoints])
        booting = [e.name for e in lab.endpoints if e.dhcp]
        if booting:
            self.boot(booting)
        return lab

    def boot(self, names: Sequence[str]) -> dict[str, str]:
        """Start the DHCP clients of these (plugged, ``dhcp: true``) endpoints, as a VM does once its
        port is up, and give them ``dhcp_wait`` seconds to hold their intent addresses. What is
        still missing then becomes a warning (returned and kept in ``warnings``), not a failure."""
        self.say(
            f"starting DHCP clients in {', '.join(names)}; waiting up to {self.dhcp_wait:g} s for leases"
        )
        for name in names:
            dhcp.start(self.state, name, self.ports[name], self.dir / "dhcp")
        found = dhcp.wait(self.state, {n: self.ports[n] for n in names}, self.dhcp_wait)
        for line in found.values():
            self.say(f"warning: {line}")
        self.warnings.update(found)
        return found

    def _record_external_addresses(self, client: Client) -> None:
        """Probe targets the authority allocated: floating IPs, and routers (their SNAT address)."""
        for fip in client.list(k.FLOATING_IP):
            self.state.external_addresses[fip["name"]] = ExternalAddress(fip["ip"], fip.get("endpoint"))
        for router in client.list(k.ROUTER):
            gw = router.get("external_gateway") or {}
            if gw.get("ip"):
                self.state.external_addresses[router["name"]] = ExternalAddress(gw["ip"], None)
        self.state.save()

    def add_host(self, host: Host, segments: Sequence[ExternalSegment] = ()) -> None:
        plumbing.add_host(self.state, host, self.dir / host.name / "ovs", segments)
        self.start_agent(host.name)

    def plug(self, ep: LabEndpoint, client: Client) -> PortConfig:
        """An endpoint namespace with the MAC the authority gave the endpoint, plugged into its
        host's br-int: its declared addresses, routes and bridge domain's MTU written (``slaac``
        ones are learnt), or nothing for a DHCP endpoint (``ports``)."""
        found = client.list(k.ENDPOINT, tenant=ep.tenant, name=ep.name)
        if not found:
            raise LabError(f"endpoint {ep.key} is not known to the authority")
        subnets, bridge_domains, groups = self.tenant_intent(client, ep.tenant)
        cfg = ports.port_config(found[0], subnets, bridge_domains, groups, dhcp=ep.dhcp)
        plumbing.plug(self.state, ep, cfg)
        self.ports[ep.name] = cfg
        return cfg

    def tenant_intent(self, client: Client, tenant: str) -> TenantIntent:
        """What plugging a tenant's endpoints reads, once per tenant and lab process (a lab's
        subnets and bridge domains do not change while it plugs)."""
        if tenant not in self._intent:
            self._intent[tenant] = (
                [o.Subnet.model_validate(s) for s in client.list(k.SUBNET, tenant=tenant)],
                {
                    b["name"]: o.BridgeDomain.model_validate(b)
                    for b in client.list(k.BRIDGE_DOMAIN, tenant=tenant)
                },
                {
                    g["name"]: o.EndpointGroup.model_validate(g)
                    for g in client.list(k.ENDPOINT_GROUP, tenant=tenant)
                },
            )
        return self._intent[tenant]

    def unplug(self, name: str) -> None:
        plumbing.unplug(self.state, name)

    # ---- processes: agents and the embedded authority
    def start_agent(self, host: str, extra: Sequence[str] = ()) -> None:
        """Start the host's agent (``extra``: more command-line options, e.g. ``--renderer``)."""
        info = self.state.hosts[host]
        logfile = self.dir / host / "agent.log"
        if info.renderer == "nftables":  # policy in the host namespace's nftables
            extra = ["--renderer", f"nftables:netns={info.netns}", *extra]
        for net, iface in info.external.items():
            extra = ["--external", f"{net}={iface}", *extra]
        if info.role == "gateway" and info.external:
            extra = ["--gateway", *extra]
        cmd = [
            sys.executable, "-m", "policyfabric", "agent",
            "--host", host,
            "--opflex", self.state.opflex,
            "--ovsdb", f"unix:{info.rundir}/db.sock",
            "--bridge", "br-int",
            "--state-dir", str(self.dir / host / "agent"),
            "--tunnel-ip", info.underlay_ip,
            "--log-level", "info",
            *extra,
        ]  # fmt: skip
        with logfile.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.agents[host] = proc
        self.state.pids[f"agent:{host}"] = proc.pid
        self.state.save()

    def stop_agent(self, host: str, kill: bool = False) -> None:
        pid = self.state.pids.pop(f"agent:{host}", None)
        self.state.save()
        if pid is not None:
            if kill:
                processes.kill(pid)
            processes.stop(pid)
        self.agents.pop(host, None)

    def stop_authority(self) -> None:
        """Stop the embedded authority (agents keep enforcing their cached policy)."""
        if self.authority is not None:
            self.authority.stop()
        self.state.pids.pop("authority", None)
        self.state.save()

    def start_authority(self) -> None:
        """Start the embedded authority again, on the same database and ports."""
        assert self.authority is not None, "the lab uses an external authority"
        self.authority.start()
        assert self.authority.proc is not None
        self.state.pids["authority"] = self.authority.proc.pid
        self.state.save()

    # ---- failures
    def fail(self, host: str, cut: bool = False) -> None:
        """The host dies: its agent and both Open vSwitch daemons are killed (SIGKILL), so its
        datapath stops forwarding and its OpFlex session drops. With ``cut`` it drops off the
        network instead: its underlay and external links go down and its agent freezes (SIGSTOP;
        in the lab the agent's OpFlex connection does not run over the underlay), so nobody hears
        a goodbye: the authority notices by keepalive."""
        info = self.state.hosts[host]
        if cut:
            plumbing.set_host_links(info, up=False)
            self._signal_agent(host, signal.SIGSTOP)
        else:
            self.stop_agent(host, kill=True)
            OvsInstance(Path(info.rundir)).kill()
        self.state.hosts[host] = replace(info, failed="cut" if cut else "killed")
        self.state.save()

    def heal(self, host: str) -> None:
        """Bring a failed host back. A cut host: links up, agent resumed (it reconnects and learns
        it is no longer the gateway). A killed one: Open vSwitch (its database kept the bridges and
        ports), the underlay address (it lived on br-phy, which died with ovs-vswitchd), the agent."""
        info = self.state.hosts[host]
        if info.failed == "cut":
            plumbing.set_host_links(info, up=True)
            self._signal_agent(host, signal.SIGCONT)
        else:
            OvsInstance(Path(info.rundir), info.netns).start()
            plumbing.restore_underlay(host, info)
        self.state.hosts[host] = replace(info, failed="")
        self.state.save()
        if info.failed != "cut":  # its agent was killed with it
            self.start_agent(host)

    def _signal_agent(self, host: str, sig: signal.Signals) -> None:
        pid = self.state.pids.get(f"agent:{host}")
        if pid is not None:
            os.kill(pid, sig)

    def active_gateway(self, router: str) -> str | None:
        """The host the authority elected as SNAT gateway of ``router`` (TENANT/NAME), if any."""
        with Client(self.state.url) as client:
            agents = client.request("GET", "/v1/agents")["items"]
        found = [a["name"] for a in agents if router in a.get("gateway_for", []) and a["connected"]]
        return str(found[0]) if found else None

    # ---- waiting for the agents
    def wait_active(self, keys: list[str], timeout: float = 60.0) -> None:
        """Until every endpoint is ACTIVE (its agent installed its flows), then until flows settle."""
        deadline = time.monotonic() + timeout
        pending = set(keys)
        with Client(self.state.url) as client:
            while pending:
                for obj in client.list(k.ENDPOINT):
                    key = f"{obj['tenant']}/{obj['name']}"
                    if key in pending and obj.get("status") == "ACTIVE":
                        pending.discard(key)
                if not pending:
                    break
                if time.monotonic() > deadline:
                    raise LabError(
                        f"endpoints not ACTIVE after {timeout:.0f} s: {', '.join(sorted(pending))} "
                        f"(agent logs: {self.dir}/<host>/agent.log)"
                    )
                time.sleep(0.1)
        self.settle()

    def flow_counts(self) -> dict[str, int]:
        """Flows on every host's br-int."""
        out = {}
        for name, info in self.state.hosts.items():
            ovs = OvsInstance(Path(info.rundir))
            text = ovs.ofctl("dump-aggregate", ovs.mgmt("br-int"))
            out[name] = int(text.split("flow_count=")[1].split()[0])
        return out

    def settle(self, quiet: float = 0.6, timeout: float = 30.0) -> None:
        """Wait until no host's flow count changed for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last, since = self.flow_counts(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.15)
            now = self.flow_counts()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return

    # ---- probes (see probing)
    def address_of(self, name: str, v6: bool = False) -> str:
        return probing.address_of(self.state, name, v6)

    def netns_of(self, name: str) -> str | None:
        return probing.netns_of(self.state, name)

    def probe_one(self, x: Expect) -> ProbeResult:
        return probing.probe_one(self.state, x)

    def probe(self, expects: list[Expect]) -> list[ProbeResult]:
        return probing.probe(self.state, expects)

    def endpoints(self) -> list[dict[str, Any]]:
        """Each endpoint as its namespace holds it now (LAB.md's ``endpoints``)."""
        return readback.endpoints(self.state)

    # ---- tear down
    def down(self, keep_logs: bool = False) -> list[str]:
        """Remove everything the state file lists; return what could not be removed.
        With ``keep_logs`` the directory (logs of agents, OVS and authority) stays."""
        problems = []
        for role, pid in list(self.state.pids.items()):
            if role != "authority" and not role.startswith(stores.ETCD_ROLE):
                processes.stop(pid)
        for host, info in self.state.hosts.items():
            try:
                OvsInstance(Path(info.rundir)).stop()
            except OSError as exc:
                problems.append(f"open vswitch of {host}: {exc}")
        if "authority" in self.state.pids:
            processes.stop(self.state.pids["authority"])
        if self.authority is not None:
            self.authority.stop()
        problems += stores.remove(self.state)  # the authority is gone: nothing writes there any more
        for role, pid in self.state.pids.items():
            if role.startswith(stores.ETCD_ROLE):
                processes.stop(pid)
        for netns in reversed(self.state.namespaces):
            try:
                run(["ip", "netns", "del", netns])
            except CommandFailed as exc:
                if "No such file" not in exc.output:
                    problems.append(str(exc))
                    continue
            dhcp.forget(netns)
        if problems:
            return problems
        if keep_logs:
            (self.dir / "state.json").unlink(missing_ok=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        return problems


def checked_plan(scenario: sc.Scenario) -> LabPlan:
    """The lab plan of a scenario whose intent passed ``check`` (else LabError listing every problem)."""
    problems = sc.check(scenario)
    if problems:
        raise LabError("; ".join(p.render(str(scenario.path)) for p in problems))
    return plan(scenario)


def address_warnings(lab: Lab, endpoints: list[dict[str, Any]], skip: Sequence[str] = ()) -> list[str]:
    """A warning for each endpoint (not in ``skip``) whose namespace lacks intent addresses."""
    lacking = readback.missing(lab.state, endpoints)
    return [
        f"endpoint {name} lacks {', '.join(ips)} (in its intent, not in its namespace)"
        for name, ips in lacking.items()
        if name not in skip
    ]


def verify(
    scenario_path: Path,
    directory: Path,
    say: Callable[[str], None] = lambda s: None,
    dhcp_wait: float = dhcp.DHCP_WAIT,
    explain: Callable[[Lab, Expect], dict[str, Any]] | None = None,
    store: str | None = None,
) -> Verified:
    """Up, probe every expectation, read every endpoint's namespace, ``explain`` each expectation
    from the installed dataplane if given (``lab/explain.py``), down (always, also on failure or
    Ctrl-C). ``store``: where the embedded authority keeps intent (``lab/store.py``)."""
    scenario = sc.load(scenario_path)
    lab_plan = checked_plan(scenario)
    stores.check(store)
    lab = Lab.create(scenario_path, directory, say)
    lab.dhcp_wait = dhcp_wait
    lab.store = store
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    failed = True
    try:
        lab.up(scenario)
        say(f"probing {len(lab_plan.expect)} expectation(s) with real packets")
        results = lab.probe(lab_plan.expect)
        endpoints = lab.endpoints()
        explained = None
        if explain is not None:
            say("explaining each expectation from the installed flows")
            explained = [explain(lab, x) for x in lab_plan.expect]
        warned = {**lab.warnings, **dhcp.configuration_warnings(lab.ports, endpoints)}
        warnings = [*warned.values(), *address_warnings(lab, endpoints, skip=list(warned))]
        failed = not all(r.ok for r in results)
        return Verified(results, endpoints, warnings, explained)
    finally:
        say("tearing the lab down" + (f" (logs kept in {directory})" if failed else ""))
        left = lab.down(keep_logs=failed)
        signal.signal(signal.SIGTERM, previous)
        if left:
            raise LabError("could not remove: " + "; ".join(left))
