"""Test fabrics: typed builders for the agent's view of the network, and the packets tests send.

The OVS compiler is a pure function of a ``Network`` (``agent.view``): what one host's agent
knows. Unit tests build one with these helpers, compile it onto a fake switch and push packets
through it. One library, so every test spells a fabric the same way and a change to the view's
records is made here once. A fabric reads like this::

    bd = bridge_domain("bd")
    http = contract("http", rule("http.in", protocol=TCP, ports=80))
    web = group("web", 0x4001, bd, provides=[http])
    app = group("app", 0x4002, bd, consumes=[http])
    web1 = endpoint("web1", mac(1), "10.0.0.1", bd=bd, group=web, ofport=1)
    app1 = endpoint("app1", mac(2), "10.0.0.2", bd=bd, group=app, ofport=2)
    sw = switch(network(local=[web1, app1], groups=[web, app], contracts=[http], bds=[bd]))
    assert sw.send(ip_packet(app1, web1, dport=80)).ports == [1]

Records are keyed by their URI in the ``Network``; builders take records (or URIs) rather than
positional tuples, and default what the compiler does not care about. ``switch`` checks every
compiled flow against the table map (``verify.check_pipeline``) before loading it, so every
unit test also checks that its pipeline keeps to the declared tables. Addresses and MACs go through
the agent's own parsers (``agent.values``), as the reader's do: a test cannot build a view the
reader would refuse.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.renderers.ovs.simulate import FakeSwitch, Result
from policyfabric.agent.renderers.ovs.verify import check_flow, check_pipeline
from policyfabric.agent.values import parse_ip, parse_ipv4, parse_mac, parse_prefix
from policyfabric.agent.view import (
    BridgeDomain,
    Contract,
    Endpoint,
    ExternalNet,
    FloatingIp,
    Group,
    IpAddress,
    Mac,
    Network,
    Router,
    RouterGateway,
    RouterInterface,
    Rule,
    SecurityGroup,
    SgRule,
    router_identity,
)

TUNNEL = 100  # the tunnel's port number on every host of a unit test
IPV4, IPV6 = 0x0800, 0x86DD
ICMP, TCP, UDP, ICMP6 = 1, 6, 17, 58
BROADCAST = "ff:ff:ff:ff:ff:ff"

Packet = dict[str, Any]  # header fields by OVS name, as FakeSwitch.send takes them
Ports = int | tuple[int, int] | None  # a port, an inclusive range, or any


# --- the view's records ---


def mac(n: int, block: int = 0) -> Mac:
    """A locally administered MAC: ``02:00:00:00:BLOCK:N`` (a block per kind of endpoint)."""
    return parse_mac(f"02:00:00:00:{block:02x}:{n:02x}")


def bridge_domain(uri: str = "bd", vni: int = 0x10001, vrf: int = 0x10000) -> BridgeDomain:
    """A bridge domain; ``vrf`` is its routing domain (bridge domains a router joins share one)."""
    return BridgeDomain(uri, vni, vrf)


def _ports(ports: Ports) -> tuple[int, int] | None:
    return (ports, ports) if isinstance(ports, int) else ports


def rule(
    key: str,
    *,
    protocol: int | None = None,
    ports: Ports = None,
    direction: str = "in",
    allow: bool = True,
    ethertype: int | None = None,
    order: int = 0,
) -> Rule:
    """A contract rule: ``in`` opens consumer → provider, ``out`` the reverse, ``bidirectional``
    both; ``ethertype`` None means IPv4 and IPv6."""
    return Rule(key, order, allow, direction, ethertype, protocol, _ports(ports))


def contract(uri: str, *rules: Rule) -> Contract:
    return Contract(uri, rules)


def _uri(record: Any) -> str:
    """A record's URI, or the URI itself: builders take either."""
    return record if isinstance(record, str) else str(record.uri)


def _uris(records: Iterable[Any]) -> tuple[str, ...]:
    return tuple(map(_uri, records))


def group(
    uri: str,
    classid: int,
    bd: BridgeDomain | str = "bd",
    *,
    intra_allow: bool = True,
    provides: Iterable[Contract | str] = (),
    consumes: Iterable[Contract | str] = (),
) -> Group:
    """An endpoint group (EPG); ``classid`` is what registers and tunnels carry (0x4000 and up)."""
    return Group(uri, classid, _uri(bd), intra_allow, _uris(provides), _uris(consumes))


def endpoint(
    name: str,
    mac: str,
    *ips: str,
    bd: BridgeDomain | str = "bd",
    group: Group | None = None,
    ofport: int | None = None,
    vtep: str | None = None,
    security_groups: Iterable[SecurityGroup | str] = (),
    tenant: str = "acme",
    interface: str | None = None,
) -> Endpoint:
    """An endpoint: local to the host being compiled with ``ofport``, on another host with ``vtep``
    (that host's tunnel address). Without ``group`` it is in no EPG (class 0): security groups
    alone judge it, as in plain Neutron. ``interface`` names its port device (hybrid plugging, where
    the nftables renderer sees its traffic)."""
    return Endpoint(
        f"{tenant}/{name}",
        parse_mac(mac),
        tuple(map(parse_ip, ips)),
        _uri(bd),
        group.classid if group else 0,
        ofport,
        parse_ipv4(vtep) if vtep is not None else None,
        _uris(security_groups),
        interface,
    )


def as_remote(ep: Endpoint, vtep: str) -> Endpoint:
    """``ep`` as another host sees it: behind the tunnel to ``vtep``."""
    return replace(ep, ofport=None, vtep=parse_ipv4(vtep))


def as_local(ep: Endpoint, ofport: int) -> Endpoint:
    """``ep`` as its own host sees it: on port ``ofport``."""
    return replace(ep, ofport=ofport, vtep=None)


def sg_rule(
    key: str,
    direction: str = "in",
    *,
    protocol: int | None = None,
    ports: Ports = None,
    ethertype: int = IPV4,
    remote_group: SecurityGroup | str | None = None,
    remote_prefix: str | None = None,
    order: int = 0,
) -> SgRule:
    """A security group rule (always allow): ``in`` is ingress, ``out`` egress; IPv4 unless
    ``ethertype`` says otherwise (Neutron's rules name one); the remote side is a prefix, the
    members of a group (often the rule's own), or anyone."""
    remote = remote_group if remote_group is None or isinstance(remote_group, str) else remote_group.uri
    prefix = parse_prefix(remote_prefix) if remote_prefix is not None else None
    return SgRule(key, order, True, direction, ethertype, protocol, _ports(ports), prefix, remote)


def security_group(uri: str, *rules: SgRule) -> SecurityGroup:
    return SecurityGroup(uri, rules)


def members(
    endpoints: Iterable[Endpoint], groups: Iterable[SecurityGroup | str]
) -> dict[str, tuple[IpAddress, ...]]:
    """The address sets of ``groups``: their member endpoints' addresses (what the agent resolves
    from ``PfSecGroupMember``), empty for a group without members."""
    sets: dict[str, set[IpAddress]] = {g: set() for g in _uris(groups)}
    for ep in endpoints:
        for g in ep.security_groups:
            sets.setdefault(g, set()).update(ep.ips)
    return {g: tuple(sorted(ips)) for g, ips in sets.items()}


def leg(bd: BridgeDomain | str, prefix: str, gateway_ip: str | None = None) -> RouterInterface:
    """A router's leg on a subnet; its gateway address defaults to the subnet's first address."""
    gw = gateway_ip or str(next(ipaddress.ip_network(prefix).hosts()))
    return RouterInterface(_uri(bd), parse_ip(gw), parse_prefix(prefix))


def router(uri: str, *legs: RouterInterface, gateway: RouterGateway | None = None) -> Router:
    """A distributed router; its number and MAC derive from ``uri`` as the agent's do, and its legs
    are in the agent's order."""
    number, router_mac = router_identity(uri)
    ordered = tuple(sorted(legs, key=lambda i: (i.bd, i.gateway_ip)))
    return Router(uri, number, router_mac, ordered, gateway)


def external_network(
    uri: str, cidr: str, gateway_ip: str | None = None, *, ofport: int | None = None
) -> ExternalNet:
    """An external network; ``ofport`` is the compiled host's port on it (None: not attached)."""
    gw = gateway_ip or str(next(ipaddress.ip_network(cidr).hosts()))
    name = uri.strip("/").rpartition("/")[2] or uri
    return ExternalNet(uri, name, parse_prefix(cidr, version=4), parse_ipv4(gw), ofport)


def gateway(
    network: ExternalNet | str, ip: str, *, active_host: str = "", active_vtep: str = "", snat: bool = True
) -> RouterGateway:
    """A router's leg on an external network, with the elected active SNAT gateway host."""
    vtep = parse_ipv4(active_vtep) if active_vtep else None
    return RouterGateway(_uri(network), parse_ipv4(ip), snat, active_host, vtep)


def floating_ip(ip: str, network: ExternalNet | str, ep: Endpoint) -> FloatingIp:
    return FloatingIp(parse_ipv4(ip), _uri(network), ep.key)


def network(
    *,
    local: Iterable[Endpoint] = (),
    remote: Iterable[Endpoint] = (),
    groups: Iterable[Group] = (),
    contracts: Iterable[Contract] = (),
    bds: Iterable[BridgeDomain] = (),
    security_groups: Iterable[SecurityGroup] = (),
    address_sets: Mapping[str, tuple[str, ...]] | None = None,
    routers: Iterable[Router] = (),
    external: Iterable[ExternalNet] = (),
    floating_ips: Iterable[FloatingIp] = (),
    host: str = "",
) -> Network:
    """One host's view: ``local`` endpoints on its ports, ``remote`` ones on other hosts, and the
    policy records by URI. Address sets default to the members among ``local`` and ``remote``;
    ``host`` is this host's name (which routers' SNAT gateway it is)."""
    local, remote, sgs = tuple(local), tuple(remote), tuple(security_groups)
    return Network(
        local,
        remote,
        {g.uri: g for g in groups},
        {c.uri: c for c in contracts},
        {b.uri: b for b in bds},
        {g.uri: g for g in sgs},
        members(local + remote, sgs)
        if address_sets is None
        else {g: tuple(map(parse_ip, ips)) for g, ips in address_sets.items()},
        {r.uri: r for r in routers},
        {e.uri: e for e in external},
        tuple(floating_ips),
        host,
    )


def pipeline(net: Network, tunnel: int | None = TUNNEL, *, enforce_policy: bool = True) -> list[Flow]:
    """The compiled flows of ``net``, checked against the table map."""
    flows = compile_pipeline(net, tunnel, enforce_policy)
    check_pipeline(flows)
    return flows


def switch(net: Network, tunnel: int | None = TUNNEL, *, enforce_policy: bool = True) -> FakeSwitch:
    """A fake switch holding ``net``'s checked pipeline; flows it learns are checked too."""
    return FakeSwitch(pipeline(net, tunnel, enforce_policy=enforce_policy), verify=check_flow)


# --- packets ---


def ip_packet(
    src: Endpoint, dst: Endpoint, proto: int = TCP, dport: int = 80, sport: int = 40000, **extra: Any
) -> Packet:
    """An IPv4 packet from ``src``'s port to ``dst`` (their first addresses); ``extra`` overrides."""
    return {
        "in_port": src.ofport,
        "eth_type": "ip",
        "dl_src": src.mac,
        "dl_dst": dst.mac,
        "nw_src": src.ips[0],
        "nw_dst": dst.ips[0],
        "nw_proto": proto,
        "tp_src": sport,
        "tp_dst": dport,
        **extra,
    }


def reply(packet: Packet, in_port: int | None) -> Packet:
    """The answer to ``packet``, sent from ``in_port``: addresses and ports swapped."""
    return {
        **packet,
        "in_port": in_port,
        "dl_src": packet["dl_dst"],
        "dl_dst": packet["dl_src"],
        "nw_src": packet["nw_dst"],
        "nw_dst": packet["nw_src"],
        "tp_src": packet["tp_dst"],
        "tp_dst": packet["tp_src"],
    }


def arp_request(src: Endpoint, target_ip: str, **extra: Any) -> Packet:
    """A broadcast "who has ``target_ip``" from ``src``'s port and first address."""
    return {
        "in_port": src.ofport,
        "eth_type": "arp",
        "dl_src": src.mac,
        "dl_dst": BROADCAST,
        "arp_op": 1,
        "arp_sha": src.mac,
        "arp_spa": src.ips[0],
        "arp_tpa": target_ip,
        **extra,
    }


def routed(src: Endpoint, via: Router, dst_ip: str, dport: int = 80, ttl: int = 64, **extra: Any) -> Packet:
    """A packet from ``src`` to an off-subnet address: to the router's (its gateway's) MAC."""
    return ip_packet(src, src, dport=dport, **{"dl_dst": via.mac, "nw_dst": dst_ip, "nw_ttl": ttl, **extra})


def from_tunnel(packet: Packet, vni: int, source_group: int) -> Packet:
    """``packet`` as it arrives from the tunnel: VNI and source group (the Geneve option) set."""
    return {**packet, "in_port": TUNNEL, "tun_id": vni, "tun_metadata0": source_group}


def cross_host(packet: Packet, sender: FakeSwitch, receiver: FakeSwitch) -> Result:
    """Send ``packet`` on ``sender``; what leaves it by the tunnel arrives on ``receiver`` with the
    tunnel header the sender wrote. Anything else (a drop, a local port) is the sender's result."""
    out = sender.send(packet)
    if out.ports != [TUNNEL]:
        return out
    header = out.outputs[0][1]
    return receiver.send(from_tunnel(packet, header["tun_id"], header["tun_metadata0"]))
