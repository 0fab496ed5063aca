"""The lab's wiring: network namespaces, bridges and veths, as small functions over its state.

Every function records what it is about to create in the lab state (and saves it) before it
creates it, so ``lab down`` (after success, after a failure half-way, after Ctrl-C) removes
exactly that. Links live in namespaces and die with them; only what is removed one by one
(an unplugged endpoint's ports) needs its names recorded.

Names: ``ID-fabric`` holds the underlay bridge ``fabric``; ``ID-<host>`` a host (``ul0``
into the fabric as ``h<N>``, ``br-phy`` with the underlay address, ``ext<N>`` into external
network N); ``ID-x<N>`` external network N (bridge ``br0`` holding its gateway address);
``ID-xh-<name>`` an external host; ``ID-ep-<endpoint>`` an endpoint (``eth0``). Interface
names stay within Linux's 15 characters.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policyfabric.lab.ovs import OvsInstance
from policyfabric.lab.plan import UNDERLAY, ExternalHost, ExternalSegment, Host, LabEndpoint, LabError
from policyfabric.lab.state import EndpointState, ExternalHostState, HostState, LabState

if TYPE_CHECKING:
    from policyfabric.lab.ports import PortConfig
from policyfabric.sh import run

UNDERLAY_PREFIX = UNDERLAY.prefixlen


def namespace(state: LabState, name: str) -> str:
    """The namespace ``ID-name`` with its loopback up; recorded before it is created."""
    netns = f"{state.id}-{name}"
    if netns not in state.namespaces:
        state.namespaces.append(netns)
        state.save()
        run(["ip", "netns", "add", netns])
        run(["ip", "link", "set", "lo", "up"], netns=netns)
    return netns


def add_fabric(state: LabState) -> None:
    """The underlay: one Linux bridge that every host's ``ul0`` joins."""
    netns = namespace(state, "fabric")
    run(["ip", "link", "add", "fabric", "type", "bridge"], netns=netns)
    run(["ip", "link", "set", "fabric", "up"], netns=netns)


def add_segment(state: LabState, seg: ExternalSegment) -> None:
    """An external network: a bridge that holds the gateway address and routes (upstream)."""
    netns = namespace(state, f"x{seg.index}")
    prefix = seg.cidr.split("/")[1]
    run(["ip", "link", "add", "br0", "type", "bridge"], netns=netns)
    run(["ip", "addr", "add", f"{seg.gateway_ip}/{prefix}", "dev", "br0"], netns=netns)
    run(["ip", "link", "set", "br0", "up"], netns=netns)
    run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], netns=netns)


def segment_link(state: LabState, seg: ExternalSegment, netns: str, inside: str, outside: str) -> None:
    """A veth from ``netns`` (named ``inside``) to the segment's bridge (named ``outside``): public, as
    what joins a namespace of a harness outside the lab (Neutron's external hosts) to a segment."""
    segns = f"{state.id}-x{seg.index}"
    run(["ip", "link", "add", inside, "netns", netns, "type", "veth", "peer", "name", outside,
         "netns", segns])  # fmt: skip
    run(["ip", "link", "set", outside, "master", "br0", "up"], netns=segns)
    run(["ip", "link", "set", inside, "up"], netns=netns)
    run(["ethtool", "-K", inside, "tx", "off"], netns=netns)  # userspace conntrack needs real checksums


def add_external_host(state: LabState, x: ExternalHost, seg: ExternalSegment) -> None:
    """A namespace on external network ``seg`` with the host's address, routed via its gateway."""
    netns = namespace(state, f"xh-{x.name}")
    state.external_hosts[x.name] = ExternalHostState(netns, x.ip, x.network)
    state.save()
    segment_link(state, seg, netns, "eth0", f"e{x.index}")
    run(["ip", "addr", "add", f"{x.ip}/{seg.cidr.split('/')[1]}", "dev", "eth0"], netns=netns)
    run(["ip", "route", "add", "default", "via", seg.gateway_ip], netns=netns)


def add_host(state: LabState, host: Host, rundir: Path, segments: Sequence[ExternalSegment]) -> HostState:
    """A lab host: its namespace and Open vSwitch (``br-int`` for endpoints, ``br-phy`` holding the
    underlay address, where OVS userspace tunnelling routes), ``ul0`` into the fabric and an
    ``ext<N>`` port on br-int into every external network (floating IPs are NATed on their
    endpoint's host, so every host has them)."""
    netns = namespace(state, host.name)
    info = HostState(netns, host.underlay_ip, str(rundir), host.renderer, host.role,
                     {s.name: s.port for s in segments})  # fmt: skip
    state.hosts[host.name] = info
    state.save()
    ovs = OvsInstance(rundir, netns)
    ovs.start()
    ovs.add_bridge("br-int")
    ovs.vsctl("--may-exist", "add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev")
    fabric_ns = f"{state.id}-fabric"
    run(["ip", "link", "add", "ul0", "netns", netns, "type", "veth", "peer", "name", f"h{host.index}",
         "netns", fabric_ns])  # fmt: skip
    run(["ip", "link", "set", f"h{host.index}", "master", "fabric", "up"], netns=fabric_ns)
    run(["ip", "link", "set", "ul0", "up"], netns=netns)
    ovs.vsctl("--may-exist", "add-port", "br-phy", "ul0")
    _underlay_address(info, "add")
    for seg in segments:
        segment_link(state, seg, netns, seg.port, f"h{host.index}")
        ovs.vsctl("--may-exist", "add-port", "br-int", seg.port)
    return info


def _underlay_address(info: HostState, verb: str) -> None:
    run(["ip", "addr", verb, f"{info.underlay_ip}/{UNDERLAY_PREFIX}", "dev", "br-phy"], netns=info.netns)
    run(["ip", "link", "set", "br-phy", "up"], netns=info.netns)


def restore_underlay(name: str, info: HostState, timeout: float = 10.0) -> None:
    """The underlay address back on ``br-phy`` of a restarted Open vSwitch: br-phy is ovs-vswitchd's
    own device, gone with it and back without its address (once vswitchd has read its database)."""
    deadline = time.monotonic() + timeout
    while run(["ip", "link", "show", "br-phy"], netns=info.netns, check=False) == "":
        if time.monotonic() > deadline:
            raise LabError(f"host {name}: br-phy did not come back")
        time.sleep(0.05)
    _underlay_address(info, "replace")


def set_host_links(info: HostState, up: bool) -> None:
    """The host's underlay and external links down (cut off the network) or up again."""
    for dev in ("ul0", *info.external.values()):
        run(["ip", "link", "set", dev, "up" if up else "down"], netns=info.netns)


def addressing(ips: Sequence[str], subnets: Sequence[dict[str, Any]]) -> tuple[list[str], str | None]:
    """An endpoint's addresses with their subnets' prefixes (host routes outside any subnet), and
    its default gateway: the first IPv4 subnet gateway among them (the distributed router)."""
    addresses, gateways = [], []
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        inside = [s for s in subnets if addr in ipaddress.ip_network(s["cidr"])]
        prefix = inside[0]["cidr"].split("/")[1] if inside else ("32" if addr.version == 4 else "128")
        addresses.append(f"{ip}/{prefix}")
        gateways += [s["gateway_ip"] for s in inside if s.get("gateway_ip") and addr.version == 4]
    return addresses, (gateways[0] if gateways else None)


def plug(state: LabState, ep: LabEndpoint, cfg: PortConfig) -> None:
    """An endpoint namespace: ``eth0`` with the endpoint's MAC, veth-paired with a port on its
    host's br-int (tagged ``iface-id`` TENANT/NAME, which is how the agent finds it). A static
    endpoint gets its addresses, default routes and MTU written; a DHCP one nothing (its client
    starts once it is plugged). Both accept router advertisements. On a host whose renderer is
    nftables the port goes through ``_hybrid``."""
    netns = namespace(state, f"ep-{ep.name}")
    hostns = state.hosts[ep.host].netns
    state.endpoints[ep.name] = EndpointState(
        netns, ep.host, cfg.mac, cfg.addresses, ep.key, ep.port, dhcp=cfg.dhcp
    )
    state.save()
    run(["ip", "link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", ep.port,
         "netns", hostns])  # fmt: skip
    run(["ip", "link", "set", "eth0", "address", cfg.mac], netns=netns)
    # before the link is up: its first router solicitation already says what it accepts
    run(["sysctl", "-q", "-w", "net.ipv6.conf.eth0.accept_ra=1",
         f"net.ipv6.conf.eth0.autoconf={int(cfg.autoconf)}"], netns=netns)  # fmt: skip
    if cfg.mtu is not None and not cfg.dhcp:
        run(["ip", "link", "set", "eth0", "mtu", str(cfg.mtu)], netns=netns)
    for address in cfg.configured:
        nodad = ["nodad"] if ipaddress.ip_interface(address).version == 6 else []
        run(["ip", "addr", "add", address, "dev", "eth0", *nodad], netns=netns)
    run(["ip", "link", "set", "eth0", "up"], netns=netns)
    run(["ethtool", "-K", "eth0", "tx", "off"], netns=netns)  # userspace conntrack needs real checksums
    if (
        cfg.gateway and not cfg.dhcp
    ):  # off-subnet traffic goes to the subnet's gateway: the distributed router
        run(["ip", "route", "add", "default", "via", cfg.gateway], netns=netns)
    if cfg.gateway6 and not cfg.dhcp:  # metric 2048: one learnt from router advertisements (1024) wins
        run(["ip", "-6", "route", "add", "default", "via", cfg.gateway6, "metric", "2048"], netns=netns)
    run(["ip", "link", "set", ep.port, "up"], netns=hostns)
    port = _hybrid(state, ep) if state.hosts[ep.host].renderer == "nftables" else ep.port
    OvsInstance(Path(state.hosts[ep.host].rundir)).vsctl(
        "--may-exist", "add-port", "br-int", port,
        "--", "set", "Interface", port, f"external_ids:iface-id={ep.key}",
    )  # fmt: skip


def _hybrid(state: LabState, ep: LabEndpoint) -> str:
    """Neutron's hybrid plugging: the endpoint's port on its own Linux bridge ``qbrN``, joined
    to br-int by the veth ``qvbN``/``qvoN`` (where the nftables renderer sees its traffic).
    Returns the OVS port's name."""
    netns = state.hosts[ep.host].netns
    bridge, veth, ovs_port = f"qbr{ep.index}", f"qvb{ep.index}", f"qvo{ep.index}"
    state.endpoints[ep.name] = replace(state.endpoints[ep.name], bridge=bridge, ovs_port=ovs_port)
    state.save()
    run(["ip", "link", "add", bridge, "type", "bridge"], netns=netns)
    run(["ip", "link", "add", veth, "type", "veth", "peer", "name", ovs_port], netns=netns)
    for dev in (ep.port, veth):
        run(["ip", "link", "set", dev, "master", bridge], netns=netns)
    for dev in (bridge, veth, ovs_port):
        run(["ip", "link", "set", dev, "up"], netns=netns)
    for dev in (ep.port, veth, ovs_port):  # userspace conntrack in OVS needs real checksums
        run(["ethtool", "-K", dev, "tx", "off"], netns=netns)
    return ovs_port


def unplug(state: LabState, name: str) -> None:
    """Take the endpoint's port off br-int and delete its host-side links (its namespace stays,
    so plugging it again reuses it)."""
    ep = state.endpoints[name]
    info = state.hosts[ep.host]
    OvsInstance(Path(info.rundir)).vsctl("--if-exists", "del-port", "br-int", ep.br_int_port)
    for dev in (ep.port, ep.br_int_port, ep.bridge):
        if dev:
            run(["ip", "link", "del", dev], netns=info.netns, check=False)
