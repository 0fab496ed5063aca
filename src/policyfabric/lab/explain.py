"""The lab's side of ``explain``: the packet a probe sends, and OVS's trace of it on a host.

What the probe sends is read from the source's namespace, not from the intent: its address, its
MAC and, for the destination MAC, the next hop its own routing table picks and the MAC its
neighbour table holds for it (one ping to resolve it when it has none: the ARP exchange is
local to the host). The trace runs against the host's own ``ovs-vswitchd`` (``ofproto/trace``
on ``br-int``, with every conntrack recirculation seen as a new connection, which is what a
probe opens). Naming the flows is the agent layer's (``agent/explain.py``), which the lab may
not import: the CLI joins the two.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policyfabric.client import Client
from policyfabric.lab import dhcp
from policyfabric.lab.lab import Lab, Verified, verify
from policyfabric.lab.ovs import OvsInstance
from policyfabric.lab.plan import Expect, LabError
from policyfabric.lab.probing import V6_PROBES, address_of
from policyfabric.lab.state import LabState
from policyfabric.sh import CommandFailed, run

SOURCE_PORT = 40000  # any ephemeral port: no flow matches the source port


class NoPath(LabError):
    """The probe's packet never reaches a host of the fabric: a deny decided outside it."""


def trace(state: LabState, host: str, flow: str) -> str:
    """``ofproto/trace`` of ``flow`` on ``host``'s ``br-int``: every ``ct()`` recirculation
    resumes as a new, tracked connection (a probe's first packet)."""
    info = state.hosts[host]
    ovs = OvsInstance(Path(info.rundir))
    return ovs.appctl("ofproto/trace", "br-int", flow, "--ct-next", "trk,new", "--ct-next", "trk,new")


def traceable(state: LabState, x: Expect) -> str | None:
    """Why ``x`` cannot be traced here (None: it can)."""
    src = state.endpoints.get(x.source)
    if src is None:
        if x.source in state.external_hosts:
            return None
        return f"{x.source} is not an endpoint or external host of this lab"
    return None


def on_nftables(state: LabState, hosts: list[str]) -> bool:
    """Whether any of ``hosts`` renders policy with nftables (its Open vSwitch trace is no verdict)."""
    return any(state.hosts[h].renderer != "ovs" for h in hosts)


def fabric_explain(state: LabState, x: Expect) -> dict[str, Any]:
    """``x`` explained by the lab's authority (``GET /v1/explain``), which asks the agents: what a
    path through an nftables host needs (the agent there evaluates its installed ruleset). The
    source must be an endpoint; the target is named (an endpoint) or addressed."""
    src = state.endpoints.get(x.source)
    if src is None:
        raise LabError(f"{x.source} is not an endpoint: the fabric explains from endpoints only")
    proto = x.probe.partition("/")[0]
    dst = state.endpoints.get(x.target)
    to = dst.key if dst is not None else address_of(state, x.target, v6=proto in V6_PROBES)
    params = {"from": src.key, "to": to, "probe": x.probe}
    with Client(state.url, timeout=30) as client:
        doc: dict[str, Any] = client.request("GET", "/v1/explain", params=params)
    return doc


def _ns(netns: str, *cmd: str) -> str:
    return run(["ip", "netns", "exec", netns, *cmd])


def next_hop_mac(state: LabState, netns: str, dst: str) -> tuple[str, str]:
    """(the MAC the source sends to, the source address) for ``dst``, read from the source's
    namespace: its route to ``dst`` and its neighbour entry for the next hop."""
    family = "-6" if ":" in dst else "-4"
    route = json.loads(_ns(netns, "ip", "-j", family, "route", "get", dst))[0]
    hop, dev, src = route.get("gateway", dst), route["dev"], route.get("prefsrc", "")
    for ep in state.endpoints.values():
        if hop in ep.ips:
            return ep.mac, src
    for attempt in range(2):
        neigh = json.loads(_ns(netns, "ip", "-j", family, "neigh", "show", "to", hop, "dev", dev))
        macs = [n["lladdr"] for n in neigh if n.get("lladdr")]
        if macs:
            return macs[0], src
        if attempt == 0:  # resolve it: the host answers ARP/ND for known addresses itself
            ping = ["ping", "-n", "-q", "-c", "1", "-W", "0.3", hop]  # only for its ARP or ND
            subprocess.run(["ip", "netns", "exec", netns, *ping], capture_output=True, timeout=10)
    raise LabError(f"no neighbour entry for {hop} in {netns}")


def _mac(netns: str, dev: str) -> str:
    return str(json.loads(_ns(netns, "ip", "-j", "link", "show", dev))[0]["address"])


def _datapath_actions(text: str) -> str:
    """What the datapath would do with the packet (the trace's last "Datapath actions:")."""
    lines = [line for line in text.splitlines() if line.startswith("Datapath actions:")]
    return lines[-1].removeprefix("Datapath actions:").strip() if lines else ""


def entry_host(state: LabState, network: str, netns: str, hop: str, src_ip: str) -> tuple[str, str] | None:
    """(host, its port) of the external network that takes a packet for ``hop``: the host whose
    installed flows answer the ARP request for it (EXT_ARP sends the answer back out: the
    datapath does something other than drop it), found by
    tracing the request on every host with a port on ``network``; None if no host answers."""
    mac = _mac(netns, "eth0")
    for name, info in sorted(state.hosts.items()):
        port = info.external.get(network)
        if port is None or info.renderer != "ovs":
            continue
        arp = (f"arp,in_port={port},dl_src={mac},dl_dst=ff:ff:ff:ff:ff:ff,arp_op=1,"
               f"arp_spa={src_ip},arp_tpa={hop},arp_sha={mac}")  # fmt: skip
        if _datapath_actions(trace(state, name, arp)) not in ("", "drop"):
            return name, port
    return None


def probe_flow(state: LabState, x: Expect) -> tuple[str, str]:
    """(the source's host, the probe's first packet in ``ofproto/trace`` flow syntax); for an
    external host, the host whose external port takes the packet. Raises LabError when the
    packet never reaches a host (the source has no route, nothing answers for its next hop)."""
    proto, _, port = x.probe.partition("/")
    v6 = proto in V6_PROBES
    dst = address_of(state, x.target, v6=v6)
    src = state.endpoints.get(x.source)
    if src is not None:
        mac, src_ip = next_hop_mac(state, src.netns, dst)
        host, in_port, src_mac = src.host, src.br_int_port, src.mac
    else:
        ext = state.external_hosts[x.source]
        family = "-6" if v6 else "-4"
        route = json.loads(_ns(ext.netns, "ip", "-j", family, "route", "get", dst))[0]
        hop, src_ip = route.get("gateway", dst), route.get("prefsrc", ext.ip)
        entry = entry_host(state, ext.network, ext.netns, hop, src_ip)
        if entry is None:
            raise NoPath(f"no host of the fabric answers for {hop}, {x.source}'s next hop to {dst}")
        host, in_port = entry
        src_mac = _mac(ext.netns, "eth0")
        mac, _ = next_hop_mac(state, ext.netns, dst)
    if not src_ip:
        src_ip = address_of(state, x.source, v6=v6)
    l3 = f"ipv6_src={src_ip},ipv6_dst={dst}" if v6 else f"nw_src={src_ip},nw_dst={dst}"
    kind = "icmp" if proto == "icmpv6" else proto.removesuffix("6")
    if kind == "icmp":
        word, l4 = ("icmp6", "icmpv6_type=128,icmpv6_code=0") if v6 else ("icmp", "icmp_type=8,icmp_code=0")
    elif kind in ("tcp", "bulk"):
        word, l4 = ("tcp6" if v6 else "tcp"), f"tp_src={SOURCE_PORT},tp_dst={port},tcp_flags=0x002"
    elif kind == "udp":
        word, l4 = ("udp6" if v6 else "udp"), f"udp_src={SOURCE_PORT},udp_dst={port}"
    else:
        raise LabError(f"probe {x.probe}: not traced")
    # the protocol word first and the ports last: OVS's parser checks prerequisites as it goes (and
    # takes UDP ports only as udp_src/udp_dst: tp_src after `udp` is refused, unlike after `tcp`)
    flow = f"{word},in_port={in_port},dl_src={src_mac},dl_dst={mac},{l3},nw_ttl=64,{l4}"
    return host, flow


def underlay(state: LabState) -> dict[str, str]:
    return {name: h.underlay_ip for name, h in state.hosts.items()}


Explainer = Callable[[Lab, Expect], dict[str, Any]]


def verify_explained(
    scenario_path: Path,
    directory: Path,
    explain: Explainer,
    say: Callable[[str], None] = lambda s: None,
    dhcp_wait: float = dhcp.DHCP_WAIT,
) -> tuple[Verified, list[dict[str, Any]]]:
    """``lab.verify`` with each expectation explained (``explain``) after the probes, before the
    lab goes down."""
    verified = verify(scenario_path, directory, say, dhcp_wait, explain)
    return verified, verified.explained or []


__all__ = [
    "CommandFailed",
    "NoPath",
    "fabric_explain",
    "on_nftables",
    "probe_flow",
    "trace",
    "traceable",
    "underlay",
    "verify_explained",
]
