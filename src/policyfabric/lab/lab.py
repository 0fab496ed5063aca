"""Build a scenario for real on this machine: namespaces, Open vSwitch, agents, traffic.

Layout (``ID`` is a random lab id, so two labs never collide):

- ``ID-fabric``: the underlay, a Linux bridge joining every host's ``ul0``;
- ``ID-<host>``: a lab host: its own ovsdb-server and ovs-vswitchd, ``br-int``
  for endpoints and ``br-phy`` holding the host's underlay address (OVS
  userspace tunnelling routes through it); the agent runs in the root
  namespace and reaches OVS through its unix sockets;
- ``ID-ep-<endpoint>``: an endpoint: ``eth0`` with its MAC and addresses,
  veth-paired with a port on its host's ``br-int``;
- ``ID-x<N>``: external network N: a Linux bridge that every lab host's
  ``ext<N>`` port (on its ``br-int``) and the external hosts join; the
  bridge holds the network's gateway address and forwards (the upstream
  router);
- ``ID-xh-<name>``: an external host, on its external network.

Everything created is recorded in ``state.json`` before it is created, so
``down`` (and the cleanup after a failure or Ctrl-C) removes exactly that,
and nothing else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from policyfabric.client import Client
from policyfabric.client import apply as applying
from policyfabric.lab.authority import AuthorityProcess, authority_in
from policyfabric.lab.ovs import OvsInstance
from policyfabric.lab.plan import (
    Expect,
    ExternalHost,
    ExternalSegment,
    Host,
    LabEndpoint,
    LabError,
    LabPlan,
    plan,
)
from policyfabric.model import kinds as k
from policyfabric.model import scenario as sc
from policyfabric.sh import CommandFailed, run

log = logging.getLogger(__name__)

DEFAULT_STATE = Path("/tmp/policyfabric-lab")
PROBE_TIMEOUT = 1.0
PROBE_ATTEMPTS = 2


@dataclass
class LabState:
    """What a lab created; written before each creation so cleanup is exact."""

    id: str
    directory: str
    scenario: str
    url: str = ""
    opflex: str = ""
    namespaces: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid (authority, agents)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> netns, ips, mac, host
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> netns, rundir, ...
    external_hosts: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> netns, ip
    # probe targets outside the fabric's own addresses: floating IPs (name -> ip, endpoint) and
    # routers (name -> their SNAT address, no endpoint)
    external_addresses: dict[str, dict[str, Any]] = field(default_factory=dict)

    def save(self) -> None:
        path = Path(self.directory) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, directory: Path) -> LabState:
        try:
            data = json.loads((directory / "state.json").read_text())
        except FileNotFoundError:
            raise LabError(f"no lab is up under {directory} (no state.json)") from None
        known = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in known})  # older files: extra keys


@dataclass(frozen=True)
class ProbeResult:
    expect: Expect
    measured: str  # allow | deny | error: ...

    @property
    def ok(self) -> bool:
        return self.measured == self.expect.result

    def to_json(self) -> dict[str, Any]:
        e = self.expect
        return {
            "from": e.source,
            "to": e.target,
            "probe": e.probe,
            "expected": e.result,
            "measured": self.measured,
            "ok": self.ok,
        }


def _kill_pid(pid: int, timeout: float = 5.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (lab down from another process)
                done = 0 if _exists(pid) else pid
            if done:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


class Lab:
    def __init__(self, state: LabState, say: Callable[[str], None] = lambda s: None) -> None:
        self.state, self.say = state, say
        self.dir = Path(state.directory)
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.authority: AuthorityProcess | None = None

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

    def ns(self, name: str) -> str:
        netns = f"{self.state.id}-{name}"
        if netns not in self.state.namespaces:
            self.state.namespaces.append(netns)
            self.state.save()
            run(["ip", "netns", "add", netns])
            run(["ip", "link", "set", "lo", "up"], netns=netns)
        return netns

    def up(self, scenario: sc.Scenario, authority: tuple[str, str] | None = None) -> LabPlan:
        lab = checked_plan(scenario)
        if authority is None:
            self.say("starting an embedded authority (SQLite)")
            # a silent agent (a host cut off) is dropped after 4 x 0.5 s: gateways fail over quickly
            self.authority = authority_in(self.dir / "authority", extra=["--keepalive", "0.5"])
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
        fabric = self.ns("fabric")
        run(["ip", "link", "add", "fabric", "type", "bridge"], netns=fabric)
        run(["ip", "link", "set", "fabric", "up"], netns=fabric)
        for seg in lab.segments:
            self.add_segment(seg)
        for host in lab.hosts:
            self.say(f"host {host.name}: Open vSwitch, underlay {host.underlay_ip}, agent")
            self.add_host(host, lab.segments)
        for x in lab.external_hosts:
            self.add_external_host(x, next(s for s in lab.segments if s.name == x.network))
        with Client(self.state.url) as client:
            for fip in client.list(k.FLOATING_IP):
                self.state.external_addresses[fip["name"]] = {
                    "ip": fip["ip"],
                    "endpoint": fip.get("endpoint"),
                }
            for router in client.list(k.ROUTER):  # a router as a probe target: its SNAT address
                gw = router.get("external_gateway") or {}
                if gw.get("ip"):
                    self.state.external_addresses[router["name"]] = {"ip": gw["ip"], "endpoint": None}
            self.state.save()
            for ep in lab.endpoints:
                self.plug(ep, client)
        self.say(f"{len(lab.endpoints)} endpoint(s) plugged; waiting for the agents to render them")
        self.wait_active([e.key for e in lab.endpoints])
        return lab

    def add_segment(self, seg: ExternalSegment) -> None:
        """An external network: a bridge that holds the gateway address and routes (upstream)."""
        netns = self.ns(f"x{seg.index}")
        self.say(f"external network {seg.name}: {seg.cidr}, upstream gateway {seg.gateway_ip}")
        prefix = seg.cidr.split("/")[1]
        run(["ip", "link", "add", "br0", "type", "bridge"], netns=netns)
        run(["ip", "addr", "add", f"{seg.gateway_ip}/{prefix}", "dev", "br0"], netns=netns)
        run(["ip", "link", "set", "br0", "up"], netns=netns)
        run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], netns=netns)

    def _segment_link(self, seg: ExternalSegment, netns: str, inside: str, outside: str) -> None:
        """A veth from ``netns`` (named ``inside``) to the segment's bridge (named ``outside``)."""
        segns = f"{self.state.id}-x{seg.index}"
        run(["ip", "link", "add", inside, "netns", netns, "type", "veth", "peer", "name", outside,
             "netns", segns])  # fmt: skip
        run(["ip", "link", "set", outside, "master", "br0", "up"], netns=segns)
        run(["ip", "link", "set", inside, "up"], netns=netns)
        run(["ethtool", "-K", inside, "tx", "off"], netns=netns)  # userspace conntrack needs real checksums

    def add_external_host(self, x: ExternalHost, seg: ExternalSegment) -> None:
        netns = self.ns(f"xh-{x.name}")
        self.state.external_hosts[x.name] = {"netns": netns, "ip": x.ip, "network": x.network}
        self.state.save()
        self._segment_link(seg, netns, "eth0", f"e{x.index}")
        run(["ip", "addr", "add", f"{x.ip}/{seg.cidr.split('/')[1]}", "dev", "eth0"], netns=netns)
        run(["ip", "route", "add", "default", "via", seg.gateway_ip], netns=netns)

    def add_host(self, host: Host, segments: Sequence[ExternalSegment] = ()) -> None:
        netns = self.ns(host.name)
        rundir = self.dir / host.name / "ovs"
        self.state.hosts[host.name] = {"netns": netns, "underlay_ip": host.underlay_ip, "rundir": str(rundir),
                                       "renderer": host.renderer, "role": host.role,
                                       "external": {s.name: s.port for s in segments}}  # fmt: skip
        self.state.save()
        ovs = OvsInstance(rundir, netns)
        ovs.start()
        ovs.add_bridge("br-int")
        ovs.vsctl("--may-exist", "add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev")
        run(
            [
                "ip",
                "link",
                "add",
                "ul0",
                "netns",
                netns,
                "type",
                "veth",
                "peer",
                "name",
                f"h{host.index}",
                "netns",
                f"{self.state.id}-fabric",
            ]
        )
        run(
            ["ip", "link", "set", f"h{host.index}", "master", "fabric", "up"], netns=f"{self.state.id}-fabric"
        )
        run(["ip", "link", "set", "ul0", "up"], netns=netns)
        ovs.vsctl("--may-exist", "add-port", "br-phy", "ul0")
        run(["ip", "addr", "add", f"{host.underlay_ip}/24", "dev", "br-phy"], netns=netns)
        run(["ip", "link", "set", "br-phy", "up"], netns=netns)
        for seg in segments:  # every host: floating IPs are NATed on their endpoint's host
            self._segment_link(seg, netns, seg.port, f"h{host.index}")
            ovs.vsctl("--may-exist", "add-port", "br-int", seg.port)
        self.start_agent(host.name)

    def start_agent(self, host: str, extra: Sequence[str] = ()) -> None:
        """Start the host's agent (``extra``: more command-line options, e.g. ``--renderer``)."""
        info = self.state.hosts[host]
        logfile = self.dir / host / "agent.log"
        if info.get("renderer") == "nftables":  # policy in the host namespace's nftables
            extra = ["--renderer", f"nftables:netns={info['netns']}", *extra]
        for net, iface in info.get("external", {}).items():
            extra = ["--external", f"{net}={iface}", *extra]
        if info.get("role") == "gateway" and info.get("external"):
            extra = ["--gateway", *extra]
        cmd = [
            sys.executable, "-m", "policyfabric", "agent",
            "--host", host,
            "--authority", self.state.opflex,
            "--ovsdb", f"unix:{info['rundir']}/db.sock",
            "--bridge", "br-int",
            "--state-dir", str(self.dir / host / "agent"),
            "--tunnel-ip", info["underlay_ip"],
            "--log-level", "info",
            *extra,
        ]  # fmt: skip
        with logfile.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.agents[host] = proc
        self.state.pids[f"agent:{host}"] = proc.pid
        self.state.save()

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

    def fail(self, host: str, cut: bool = False) -> None:
        """The host dies: its agent and both Open vSwitch daemons are killed (SIGKILL), so its
        datapath stops forwarding and its OpFlex session drops. With ``cut`` it drops off the
        network instead: its underlay and external links go down and its agent freezes (SIGSTOP;
        in the lab the agent's OpFlex connection does not run over the underlay), so nobody hears
        a goodbye: the authority notices by keepalive."""
        info = self.state.hosts[host]
        if cut:
            for dev in ("ul0", *info.get("external", {}).values()):
                run(["ip", "link", "set", dev, "down"], netns=info["netns"])
            pid = self.state.pids.get(f"agent:{host}")
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)
        else:
            self.stop_agent(host, kill=True)
            OvsInstance(Path(info["rundir"])).kill()
        info["failed"] = "cut" if cut else "killed"
        self.state.save()

    def heal(self, host: str) -> None:
        """Bring a failed host back. A cut host: links up, agent resumed (it reconnects and learns
        it is no longer the gateway). A killed one: Open vSwitch (its database kept the bridges and
        ports), the underlay address (it lived on br-phy, which died with ovs-vswitchd), the agent."""
        info = self.state.hosts[host]
        if info.get("failed") == "cut":
            for dev in ("ul0", *info.get("external", {}).values()):
                run(["ip", "link", "set", dev, "up"], netns=info["netns"])
            pid = self.state.pids.get(f"agent:{host}")
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
            info["failed"] = False
            self.state.save()
            return
        ovs = OvsInstance(Path(info["rundir"]), info["netns"])
        ovs.start()
        deadline = time.monotonic() + 10
        while run(["ip", "link", "show", "br-phy"], netns=info["netns"], check=False) == "":
            if time.monotonic() > deadline:
                raise LabError(f"host {host}: br-phy did not come back")
            time.sleep(0.05)
        run(["ip", "addr", "replace", f"{info['underlay_ip']}/24", "dev", "br-phy"], netns=info["netns"])
        run(["ip", "link", "set", "br-phy", "up"], netns=info["netns"])
        info["failed"] = False
        self.state.save()
        self.start_agent(host)

    def active_gateway(self, router: str) -> str | None:
        """The host the authority elected as SNAT gateway of ``router`` (TENANT/NAME), if any."""
        with Client(self.state.url) as client:
            agents = client.request("GET", "/v1/agents")["items"]
        found = [a["name"] for a in agents if router in a.get("gateway_for", []) and a["connected"]]
        return str(found[0]) if found else None

    def stop_agent(self, host: str, kill: bool = False) -> None:
        pid = self.state.pids.pop(f"agent:{host}", None)
        self.state.save()
        if pid is not None:
            if kill:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _kill_pid(pid)
        self.agents.pop(host, None)

    def plug(self, ep: LabEndpoint, client: Client) -> None:
        """An endpoint namespace with the endpoint's MAC and addresses, plugged into its host's br-int."""
        found = client.list(k.ENDPOINT, tenant=ep.tenant, name=ep.name)
        if not found:
            raise LabError(f"endpoint {ep.key} is not known to the authority")
        obj = found[0]
        subnets = client.list(k.SUBNET, tenant=ep.tenant)
        netns = self.ns(f"ep-{ep.name}")
        host = self.state.hosts[ep.host]
        ips = [ip for ip in obj.get("ip", []) if ip != "slaac"]
        self.state.endpoints[ep.name] = {"netns": netns, "host": ep.host, "mac": obj["mac"], "ips": ips,
                                         "key": ep.key, "port": ep.port}  # fmt: skip
        self.state.save()
        run(["ip", "link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", ep.port,
             "netns", host["netns"]])  # fmt: skip
        run(["ip", "link", "set", "eth0", "address", obj["mac"]], netns=netns)
        for ip in ips:
            addr = ipaddress.ip_address(ip)
            prefix = next(
                (s["cidr"].split("/")[1] for s in subnets if addr in ipaddress.ip_network(s["cidr"])),
                "32" if addr.version == 4 else "128",
            )
            nodad = ["nodad"] if addr.version == 6 else []
            run(["ip", "addr", "add", f"{ip}/{prefix}", "dev", "eth0", *nodad], netns=netns)
        run(["ip", "link", "set", "eth0", "up"], netns=netns)
        run(["ethtool", "-K", "eth0", "tx", "off"], netns=netns)  # userspace conntrack needs real checksums
        gateways = [
            s["gateway_ip"]
            for ip in ips
            for s in subnets
            if s.get("gateway_ip")
            and ipaddress.ip_address(ip) in ipaddress.ip_network(s["cidr"])
            and ipaddress.ip_address(ip).version == 4
        ]
        if gateways:  # off-subnet traffic goes to the subnet's gateway: the distributed router
            run(["ip", "route", "add", "default", "via", gateways[0]], netns=netns)
        run(["ip", "link", "set", ep.port, "up"], netns=host["netns"])
        port = ep.port
        if host.get("renderer") == "nftables":
            port = self._hybrid(ep, host["netns"])
        OvsInstance(Path(host["rundir"])).vsctl(
            "--may-exist", "add-port", "br-int", port,
            "--", "set", "Interface", port, f"external_ids:iface-id={ep.key}",
        )  # fmt: skip

    def _hybrid(self, ep: LabEndpoint, netns: str) -> str:
        """Neutron's hybrid plugging: the endpoint's port on its own Linux bridge ``qbrN``, joined
        to br-int by the veth ``qvbN``/``qvoN`` (where the nftables renderer sees its traffic).
        Returns the OVS port's name."""
        bridge, veth, ovs_port = f"qbr{ep.index}", f"qvb{ep.index}", f"qvo{ep.index}"
        self.state.endpoints[ep.name].update(bridge=bridge, ovs_port=ovs_port)
        self.state.save()
        run(["ip", "link", "add", bridge, "type", "bridge"], netns=netns)
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", ovs_port], netns=netns)
        for dev in (ep.port, veth):
            run(["ip", "link", "set", dev, "master", bridge], netns=netns)
        for dev in (bridge, veth, ovs_port):
            run(["ip", "link", "set", dev, "up"], netns=netns)
        for dev in (ep.port, veth, ovs_port):  # userspace conntrack in OVS needs real checksums
            run(["ethtool", "-K", dev, "tx", "off"], netns=netns)
        return ovs_port

    def unplug(self, name: str) -> None:
        ep = self.state.endpoints[name]
        host = self.state.hosts[ep["host"]]
        port = ep.get("ovs_port", ep["port"])
        OvsInstance(Path(host["rundir"])).vsctl("--if-exists", "del-port", "br-int", port)
        for dev in (ep["port"], port, ep.get("bridge")):
            if dev:
                run(["ip", "link", "del", dev], netns=host["netns"], check=False)

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
        out = {}
        for name, info in self.state.hosts.items():
            text = OvsInstance(Path(info["rundir"])).ofctl(
                "dump-aggregate", f"unix:{info['rundir']}/br-int.mgmt"
            )
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

    # ---- probes
    def address_of(self, name: str, v6: bool = False) -> str:
        """The address probes aim at: an endpoint's, a floating IP's or an external host's."""
        if name in self.state.external_addresses:
            return str(self.state.external_addresses[name]["ip"])
        if name in self.state.external_hosts:
            return str(self.state.external_hosts[name]["ip"])
        ep = self.state.endpoints.get(name)
        if ep is None:
            raise LabError(f"{name!r} is not an endpoint, floating IP or external host of this lab")
        for ip in ep["ips"]:
            if (":" in ip) == v6:
                return str(ip)
        raise LabError(f"endpoint {name} has no IPv{'6' if v6 else '4'} address")

    def netns_of(self, name: str) -> str | None:
        """Where traffic to or from ``name`` starts or ends: an endpoint's or external host's
        namespace; a floating IP's endpoint's."""
        fip = self.state.external_addresses.get(name)
        if fip is not None:
            name = str(fip.get("endpoint"))
        found = self.state.endpoints.get(name) or self.state.external_hosts.get(name)
        return str(found["netns"]) if found else None

    def probe_one(self, x: Expect) -> ProbeResult:
        try:
            src = self.state.endpoints.get(x.source) or self.state.external_hosts.get(x.source)
            if src is None:
                raise LabError(f"{x.source!r} is not an endpoint or external host of this lab")
            proto, _, port = x.probe.partition("/")
            dst = self.address_of(x.target, v6=proto == "icmpv6")
            for _ in range(PROBE_ATTEMPTS):
                if proto in ("icmp", "icmpv6"):
                    cmd = ["ping", "-n", "-q", "-c", "1", "-W", str(int(PROBE_TIMEOUT)), dst]
                else:
                    cmd = [
                        sys.executable,
                        "-m",
                        "policyfabric.lab.probe",
                        proto,
                        dst,
                        port,
                        str(PROBE_TIMEOUT),
                    ]
                done = subprocess.run(
                    ["ip", "netns", "exec", src["netns"], *cmd], capture_output=True, timeout=30
                )
                if done.returncode == 0:
                    return ProbeResult(x, "allow")
            return ProbeResult(x, "deny")
        except (LabError, CommandFailed, subprocess.TimeoutExpired) as exc:
            return ProbeResult(x, f"error: {exc}")

    def probe(self, expects: list[Expect]) -> list[ProbeResult]:
        servers = []
        try:
            wanted = {
                (netns, *x.probe.partition("/")[::2])
                for x in expects
                if x.probe.startswith(("tcp/", "udp/")) and (netns := self.netns_of(x.target)) is not None
            }  # one server per namespace and port (an endpoint and its floating IP share it)
            for netns, proto, port in sorted(wanted):
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", netns, sys.executable, "-m", "policyfabric.lab.probe",
                     "serve", proto, port],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                servers.append(proc)
                assert proc.stdout is not None
                proc.stdout.readline()  # "ready"
            with ThreadPoolExecutor(4) as pool:
                return list(pool.map(self.probe_one, expects))
        finally:
            for proc in servers:
                proc.kill()
                proc.wait()

    # ---- tear down
    def down(self, keep_logs: bool = False) -> list[str]:
        """Remove everything the state file lists; return what could not be removed.
        With ``keep_logs`` the directory (logs of agents, OVS and authority) stays."""
        problems = []
        for role, pid in list(self.state.pids.items()):
            if role != "authority":
                _kill_pid(pid)
        for host, info in self.state.hosts.items():
            try:
                OvsInstance(Path(info["rundir"])).stop()
            except OSError as exc:
                problems.append(f"open vswitch of {host}: {exc}")
        if "authority" in self.state.pids:
            _kill_pid(self.state.pids["authority"])
        if self.authority is not None:
            self.authority.stop()
        for netns in reversed(self.state.namespaces):
            try:
                run(["ip", "netns", "del", netns])
            except CommandFailed as exc:
                if "No such file" not in exc.output:
                    problems.append(str(exc))
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


def verify(
    scenario_path: Path, directory: Path, say: Callable[[str], None] = lambda s: None
) -> list[ProbeResult]:
    """Up, probe every expectation, down (always, also on failure or Ctrl-C)."""
    scenario = sc.load(scenario_path)
    lab_plan = checked_plan(scenario)
    lab = Lab.create(scenario_path, directory, say)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    failed = True
    try:
        lab.up(scenario)
        say(f"probing {len(lab_plan.expect)} expectation(s) with real packets")
        results = lab.probe(lab_plan.expect)
        failed = not all(r.ok for r in results)
        return results
    finally:
        say("tearing the lab down" + (f" (logs kept in {directory})" if failed else ""))
        left = lab.down(keep_logs=failed)
        signal.signal(signal.SIGTERM, previous)
        if left:
            raise LabError("could not remove: " + "; ".join(left))
