"""The lab part of a scenario file, read into a plan (pure: no I/O beyond the file).

``hosts``, ``endpoints``, ``external_hosts`` and ``expect`` (LAB.md) become
typed records with the names the lab will use for namespaces and links, so
errors in the file are reported before anything is created.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from policyfabric.model import scenario as sc

UNDERLAY = ipaddress.IPv4Network("192.0.2.0/24")  # TEST-NET-1: nothing real uses it
# icmp | icmpv6 | tcp/N | udp/N | tcp6/N | udp6/N | bulk/N | bulk6/N (LAB.md)
PROBE = re.compile(r"^(icmp|icmpv6|(tcp|udp|tcp6|udp6|bulk|bulk6)/(?P<port>\d{1,5}))$")
PROBES = "icmp, icmpv6, tcp/N, udp/N, tcp6/N, udp6/N, bulk/N or bulk6/N"
RENDERERS = ("ovs", "nftables")  # nftables: hybrid plugging, policy in nftables (Open vSwitch forwards)


class LabError(Exception):
    """The scenario cannot be built as a lab (reported before anything is created)."""


@dataclass(frozen=True)
class Host:
    name: str
    index: int
    role: str = "compute"
    renderer: str = "ovs"

    @property
    def underlay_ip(self) -> str:
        return str(UNDERLAY.network_address + 1 + self.index)


@dataclass(frozen=True)
class LabEndpoint:
    name: str
    tenant: str
    host: str
    index: int
    dhcp: bool = False  # the lab configures nothing; a DHCP client runs in the namespace (LAB.md)

    @property
    def key(self) -> str:
        return f"{self.tenant}/{self.name}"

    @property
    def port(self) -> str:
        """The host-side interface name (15 characters at most)."""
        return f"pf{self.index}-{self.name}"[:15]


@dataclass(frozen=True)
class ExternalSegment:
    """An external network as a lab segment: a bridge in its own namespace that also plays the
    upstream router (it holds the network's gateway address)."""

    name: str
    index: int
    cidr: str
    gateway_ip: str

    @property
    def port(self) -> str:
        """Each lab host's interface on it (inside the host's namespace)."""
        return f"ext{self.index}"


@dataclass(frozen=True)
class ExternalHost:
    name: str
    network: str
    ip: str
    index: int


@dataclass(frozen=True)
class Expect:
    source: str
    target: str
    probe: str
    result: str
    line: int = 0


@dataclass
class LabPlan:
    hosts: list[Host] = field(default_factory=list)
    endpoints: list[LabEndpoint] = field(default_factory=list)
    expect: list[Expect] = field(default_factory=list)
    segments: list[ExternalSegment] = field(default_factory=list)
    external_hosts: list[ExternalHost] = field(default_factory=list)

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)


def _list(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise LabError(f"{key}: must be a list")
    return value


def plan(scenario: sc.Scenario) -> LabPlan:
    raw = scenario.raw
    out = LabPlan()
    problems = []
    for i, h in enumerate(_list(raw, "hosts")):
        if not isinstance(h, dict) or not isinstance(h.get("name"), str):
            problems.append(f"hosts[{i}]: needs a name")
            continue
        renderer = str(h.get("renderer", "ovs"))
        if renderer not in RENDERERS:
            have = ", ".join(RENDERERS)
            problems.append(f"hosts[{i}] ({h['name']}): renderer {renderer!r} is not available ({have})")
        out.hosts.append(Host(h["name"], i, str(h.get("role", "compute")), renderer))
    if len(out.hosts) > 250:
        problems.append("hosts: at most 250 lab hosts")
    host_names = {h.name for h in out.hosts}
    for i, e in enumerate(_list(raw, "endpoints")):
        if not isinstance(e, dict):
            continue
        if e.get("host") not in host_names:
            problems.append(f"endpoints[{i}] ({e.get('name')}): host {e.get('host')!r} is not in hosts:")
            continue
        dhcp = e.get("dhcp", False)
        if not isinstance(dhcp, bool):
            problems.append(f"endpoints[{i}] ({e.get('name')}): dhcp {dhcp!r}: use true or false")
            continue
        out.endpoints.append(LabEndpoint(str(e.get("name")), str(e.get("tenant")), str(e["host"]), i, dhcp))
    problems += _external(raw, out)
    for i, x in enumerate(_list(raw, "expect")):
        if not isinstance(x, dict):
            problems.append(f"expect[{i}]: must be a mapping with from, to, probe, result")
            continue
        probe, result = str(x.get("probe", "")), str(x.get("result", ""))
        found = PROBE.match(probe)
        if not found:
            problems.append(f"expect[{i}]: probe {probe!r}: use {PROBES}")
        elif found["port"] is not None and not 1 <= int(found["port"]) <= 65535:
            problems.append(f"expect[{i}]: probe {probe!r}: ports are 1-65535")
        if result not in ("allow", "deny"):
            problems.append(f"expect[{i}]: result {result!r}: use allow or deny")
        out.expect.append(Expect(str(x.get("from")), str(x.get("to")), probe, result))
    if problems:
        raise LabError("; ".join(problems))
    return out


def _external(raw: dict[str, Any], out: LabPlan) -> list[str]:
    """External networks (from the intent) become segments; external hosts sit on them."""
    problems = []
    for i, n in enumerate(_list(raw, "external_networks")):
        if not isinstance(n, dict) or "cidr" not in n:
            continue  # the intent check reports it
        net = ipaddress.ip_network(str(n["cidr"]), strict=False)
        if net.version != 4:
            problems.append(f"external_networks[{i}]: the lab builds IPv4 external networks only")
            continue
        gateway = str(n.get("gateway_ip") or next(net.hosts()))
        out.segments.append(ExternalSegment(str(n.get("name")), i, str(net), gateway))
    by_name = {s.name: s for s in out.segments}
    for i, x in enumerate(_list(raw, "external_hosts")):
        if not isinstance(x, dict) or not isinstance(x.get("name"), str):
            problems.append(f"external_hosts[{i}]: needs a name, a network and an ip")
            continue
        seg = by_name.get(str(x.get("network")))
        if seg is None:
            problems.append(
                f"external_hosts[{i}] ({x['name']}): network {x.get('network')!r} is not in external_networks"
            )
            continue
        try:
            ip = ipaddress.ip_address(str(x.get("ip")))
        except ValueError:
            problems.append(f"external_hosts[{i}] ({x['name']}): ip {x.get('ip')!r} is not an address")
            continue
        if ip not in ipaddress.ip_network(seg.cidr) or str(ip) == seg.gateway_ip:
            problems.append(
                f"external_hosts[{i}] ({x['name']}): {ip} must be inside {seg.cidr}, and not its gateway"
            )
            continue
        out.external_hosts.append(ExternalHost(x["name"], seg.name, str(ip), i))
    return problems
