"""The agent's view of the network: what its cache says, in plain typed records.

Renderers never read OpFlex MOs: they get a ``Network`` of small frozen records (built from the
cache by ``agent/reader.py``), so the compilers that follow are pure functions of data that is
easy to build in a unit test (``tests/fabric.py``).

Values in the records are typed, and the types are why a renderer can write them into flow or
rule text without a second thought. Addresses and MACs are canonical strings that only a parser
makes (``Mac``, ``IpAddress``, ``Ipv4Address``, ``Prefix``: ``NewType``s over ``str``, so mypy
rejects a plain string where one is expected, and ``values.parse_*`` is the one way to get one);
numbers are ints checked against the field they go into. Canonical strings rather than
``ipaddress`` objects or a MAC class: the compilers are written over text (a flow is text, an
nftables rule is text) and test (``":" in ip``), format (``f"nw_dst={ip}"``) and hash these
values as strings; typed strings keep every compiler line as it was, keep the flows of valid
input byte for byte the same, and still make "this came from a parser" a property mypy checks.
The parsers accept only what they would write back unchanged (apart from the case of hex
digits), so nothing the wire says can carry a space, a comma or a newline into a renderer.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NewType

Mac = NewType("Mac", str)  # a unicast MAC: six lower-case hex octets, ``:``-separated
IpAddress = NewType("IpAddress", str)  # an IPv4 or IPv6 address as ``ipaddress`` writes it, no scope
Ipv4Address = NewType("Ipv4Address", str)  # a dotted quad (tunnel endpoints: 32-bit registers)
Prefix = NewType("Prefix", str)  # ADDRESS/LEN with no host bits set, as ``ipaddress`` writes it


@dataclass(frozen=True)
class Rule:
    """One classifier + action of a contract, consumer → provider unless ``direction`` says otherwise."""

    key: str  # contract.rule
    order: int
    allow: bool
    direction: str  # in | out | bidirectional
    ethertype: int | None = None  # 0x0800, 0x86DD or None for both
    protocol: int | None = None
    ports: tuple[int, int] | None = None
    log: bool = field(default=False, kw_only=True)  # its verdicts are logged (``rulelog.py``)

    @property
    def priority(self) -> int:
        """Evaluation order for every renderer: drop rules before allow rules, each by ``order``."""
        return (2000 if not self.allow else 1000) - min(self.order, 900)


@dataclass(frozen=True)
class SgRule(Rule):
    """A security group rule (always allow): ``direction`` is in (ingress) or out (egress); the
    remote side is a prefix, the members of a group (``remote_group``, a GbpSecGroup URI), or any."""

    remote_prefix: Prefix | None = None
    remote_group: str | None = None
    icmp_type: int | None = None  # ICMP (ICMPv6) type and code, 0-255 (None: any)
    icmp_code: int | None = None


@dataclass(frozen=True)
class SecurityGroup:
    uri: str
    rules: tuple[SgRule, ...]


@dataclass(frozen=True)
class Contract:
    uri: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Group:
    """An endpoint group: its class id is what the pipeline carries in registers and tunnels."""

    uri: str
    classid: int
    bd: str  # bridge domain URI
    intra_allow: bool
    provides: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DhcpSubnet:
    """An IPv4 subnet whose hosts this agent answers DHCP for (``enable_dhcp`` and a gateway): what
    the answer says besides the endpoint's own address (``agent/dhcp``)."""

    prefix: Prefix  # e.g. 10.1.0.0/24: the mask, and which endpoint address is leased from it
    gateway: Ipv4Address  # the router option and the server identifier
    dns: tuple[Ipv4Address, ...] = ()
    routes: tuple[tuple[Prefix, Ipv4Address], ...] = ()  # classless static routes (option 121)


DHCP6_MODES = ("dhcpv6-stateless", "dhcpv6-stateful")  # the address modes DHCPv6 answers in


@dataclass(frozen=True)
class Ipv6Subnet:
    """An IPv6 subnet whose hosts this agent configures (``agent/dhcp``): router advertisements
    when ``ra_mode`` is set (Neutron's ``ipv6_ra_mode``), DHCPv6 when ``address_mode`` is
    dhcpv6-stateless (name servers only) or dhcpv6-stateful (the endpoint's intent address too).
    Either mode may be unset (Neutron allows RAs from elsewhere, or addresses from elsewhere)."""

    prefix: Prefix  # e.g. fd00:1::/64: the prefix advertised, and which endpoint address is leased
    gateway: IpAddress  # the subnet's gateway: advertised only when a router on it serves it
    ra_mode: str | None = None  # slaac | dhcpv6-stateless | dhcpv6-stateful
    address_mode: str | None = None
    dns: tuple[IpAddress, ...] = ()  # DHCPv6 option 23 (and RDNSS is not sent: Neutron's radvd omits it)


@dataclass(frozen=True)
class BridgeDomain:
    uri: str
    vni: int
    vrf: int  # the routing domain's number: the conntrack zone, so tenants' addresses never collide
    mtu: int = 0  # what DHCP tells its endpoints (0: not said, the option is left out)
    dhcp: tuple[DhcpSubnet, ...] = ()  # its IPv4 subnets answered by DHCP
    slaac: tuple[Prefix, ...] = ()  # its SLAAC /64s: a ``slaac`` endpoint holds its EUI-64 address in each

    @property
    def zone(self) -> int:
        """The routing domain's conntrack zone (16 bits)."""
        return self.vrf & 0xFFFF

    # its IPv6 subnets answered by RAs and/or DHCPv6 (a field: after the others, set by keyword)
    ipv6: tuple[Ipv6Subnet, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    """An endpoint this host serves (``ofport``) or a remote one (``vtep``)."""

    key: str  # TENANT/NAME
    mac: Mac
    ips: tuple[IpAddress, ...]
    bd: str
    classid: int  # 0: no group (security groups only)
    ofport: int | None = None
    vtep: Ipv4Address | None = None
    security_groups: tuple[str, ...] = ()  # GbpSecGroup URIs (local endpoints)
    interface: str | None = None  # its port on the integration bridge (local endpoints)
    # its allowed address pairs (local endpoints): (prefix, MAC) it may also send from; a host
    # prefix (/32, /128) is also delivered to it (``pair_hosts``)
    allowed_pairs: tuple[tuple[Prefix, Mac], ...] = ()

    @property
    def pair_macs(self) -> tuple[Mac, ...]:
        """The MACs of its pairs other than its own, each once: it is reached at them too."""
        return tuple(dict.fromkeys(m for _, m in self.allowed_pairs if m != self.mac))

    @property
    def source_prefixes(self) -> tuple[str, ...]:
        """Every source address or prefix it may send from (at any of its MACs): its addresses and
        its pairs' prefixes, host prefixes written as addresses (what nftables sets take)."""
        pairs = (bare(p) for p, _ in self.allowed_pairs)
        return tuple(dict.fromkeys((*self.ips, *pairs)))

    @property
    def pair_hosts(self) -> tuple[IpAddress, ...]:
        """Its pairs' single addresses (not its own): traffic to them is delivered to it."""
        hosts = (bare(p) for p, _ in self.allowed_pairs if p.endswith(("/32", "/128")))
        return tuple(IpAddress(h) for h in dict.fromkeys(hosts) if h not in self.ips)

    @property
    def sg_governed(self) -> bool:
        """Security groups judge its traffic: it has some, or it has no EPG (plain Neutron mode)."""
        return bool(self.security_groups) or self.classid == 0


def bare(prefix: str) -> str:
    """A host prefix as its address (``10.1.0.5/32`` → ``10.1.0.5``), any other prefix unchanged."""
    return prefix.rsplit("/", 1)[0] if prefix.endswith(("/32", "/128")) else prefix


def opens(src: Group, dst: Group, contract: str, rule: Rule) -> bool:
    """Whether ``rule`` of ``contract`` lets group ``src`` open connections to group ``dst``:
    consumer → provider for ``in``, provider → consumer for ``out``, both for ``bidirectional``."""
    if contract in src.consumes and contract in dst.provides and rule.direction in ("in", "bidirectional"):
        return True
    return (
        contract in src.provides and contract in dst.consumes and rule.direction in ("out", "bidirectional")
    )


@dataclass(frozen=True)
class RouterInterface:
    """A router's leg on a bridge domain: its subnet's gateway address (answered on every host)."""

    bd: str  # bridge domain URI
    gateway_ip: IpAddress
    prefix: Prefix  # the subnet, e.g. 10.1.0.0/24


@dataclass(frozen=True)
class RouterGateway:
    """A router's leg on an external network: SNAT to ``ip`` on the active gateway host."""

    network: str  # PfExternalNetwork URI
    ip: Ipv4Address  # the router's external address (ARP answers it: IPv4)
    snat: bool
    active_host: str  # elected by the authority ("" while no gateway host is alive)
    active_vtep: Ipv4Address | None  # that host's tunnel address


@dataclass(frozen=True)
class Router:
    """A distributed router: every host with endpoints on its subnets routes between them."""

    uri: str
    number: int  # small and stable: what reg6 carries between L2 and L3
    mac: Mac  # the gateway MAC, the same on every host (an overlay never learns it from two places)
    interfaces: tuple[RouterInterface, ...]
    gateway: RouterGateway | None = None

    @property
    def bds(self) -> frozenset[str]:
        return frozenset(i.bd for i in self.interfaces)


def router_identity(uri: str) -> tuple[int, Mac]:
    """(number, MAC) of a router, derived from its URI so every host agrees without asking."""
    h = zlib.crc32(uri.encode())
    number = (h & 0xFFFF) or 1
    return number, Mac(f"02:50:46:fe:{number >> 8:02x}:{number & 0xFF:02x}")


@dataclass(frozen=True)
class ExternalNet:
    """An external network; ``ofport`` is this host's port on it (None: not attached here)."""

    uri: str
    name: str
    cidr: Prefix  # IPv4: external networks are ARP's, and their next hops sit in a 32-bit register
    gateway_ip: Ipv4Address
    ofport: int | None = None


@dataclass(frozen=True)
class FloatingIp:
    """1:1 NAT of ``endpoint`` (TENANT/NAME) to ``ip``, done on the endpoint's host."""

    ip: Ipv4Address
    network: str  # PfExternalNetwork URI
    endpoint: str

    @property
    def mac(self) -> Mac:
        """The floating IP's MAC on the external network: derived, so it survives a restart."""
        h = zlib.crc32(self.ip.encode()) & 0xFFFFFF
        return Mac(f"02:50:47:{h >> 16:02x}:{(h >> 8) & 0xFF:02x}:{h & 0xFF:02x}")


@dataclass(frozen=True)
class Invalid:
    """A value the reader refused, so that the object holding it was left out of the view: the
    object's URI, the property, the value as ``repr`` writes it (shortened) and why."""

    uri: str
    field: str
    value: str
    why: str

    def __str__(self) -> str:
        return f"{self.uri}: {self.field} {self.value}: {self.why}"


@dataclass(frozen=True)
class Network:
    local: tuple[Endpoint, ...] = ()
    remote: tuple[Endpoint, ...] = ()
    groups: Mapping[str, Group] = field(default_factory=dict)
    contracts: Mapping[str, Contract] = field(default_factory=dict)
    bds: Mapping[str, BridgeDomain] = field(default_factory=dict)
    security_groups: Mapping[str, SecurityGroup] = field(default_factory=dict)
    address_sets: Mapping[str, tuple[IpAddress, ...]] = field(default_factory=dict)  # group → member IPs
    routers: Mapping[str, Router] = field(default_factory=dict)
    external: Mapping[str, ExternalNet] = field(default_factory=dict)  # by URI
    floating_ips: tuple[FloatingIp, ...] = ()
    host: str = ""  # this host's name (is it a router's active gateway?)
    tunnel_port: int | None = None  # this host's Geneve port on the bridge (None: no tunnel)
    invalid: tuple[Invalid, ...] = ()  # what the reader refused to put in this view

    def is_active_gateway(self, router: Router) -> bool:
        """This host is the router's elected SNAT gateway."""
        gw = router.gateway
        return bool(gw and gw.snat and self.host and gw.active_host == self.host)

    def routed_bds(self) -> set[str]:
        """Every bridge domain a router joins to one that has local endpoints (or of a router this
        host is the gateway of: it routes replies back): the agent learns their endpoints from the
        registry, to route to them."""
        local_bds = {e.bd for e in self.local}
        routers = [r for r in self.routers.values() if r.bds & local_bds or self.is_active_gateway(r)]
        return {bd for r in routers for bd in r.bds}
