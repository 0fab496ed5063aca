"""The agent's view of the network: what its cache says, in plain typed records.

Renderers never read OpFlex MOs: they get a ``Network`` of small frozen records (built from the
cache by ``agent/reader.py``), so the compilers that follow are pure functions of data that is
easy to build in a unit test (``tests/fabric.py``).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field


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

    @property
    def priority(self) -> int:
        """Evaluation order for every renderer: drop rules before allow rules, each by ``order``."""
        return (2000 if not self.allow else 1000) - min(self.order, 900)


@dataclass(frozen=True)
class SgRule(Rule):
    """A security group rule (always allow): ``direction`` is in (ingress) or out (egress); the
    remote side is a prefix, the members of a group (``remote_group``, a GbpSecGroup URI), or any."""

    remote_prefix: str | None = None
    remote_group: str | None = None


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
class BridgeDomain:
    uri: str
    vni: int
    vrf: int  # the routing domain's number: the conntrack zone, so tenants' addresses never collide

    @property
    def zone(self) -> int:
        """The routing domain's conntrack zone (16 bits)."""
        return self.vrf & 0xFFFF


@dataclass(frozen=True)
class Endpoint:
    """An endpoint this host serves (``ofport``) or a remote one (``vtep``)."""

    key: str  # TENANT/NAME
    mac: str
    ips: tuple[str, ...]
    bd: str
    classid: int  # 0: no group (security groups only)
    ofport: int | None = None
    vtep: str | None = None
    security_groups: tuple[str, ...] = ()  # GbpSecGroup URIs (local endpoints)
    interface: str | None = None  # its port on the integration bridge (local endpoints)

    @property
    def sg_governed(self) -> bool:
        """Security groups judge its traffic: it has some, or it has no EPG (plain Neutron mode)."""
        return bool(self.security_groups) or self.classid == 0


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
    gateway_ip: str
    prefix: str  # the subnet, e.g. 10.1.0.0/24


@dataclass(frozen=True)
class RouterGateway:
    """A router's leg on an external network: SNAT to ``ip`` on the active gateway host."""

    network: str  # PfExternalNetwork URI
    ip: str  # the router's external address
    snat: bool
    active_host: str  # elected by the authority ("" while no gateway host is alive)
    active_vtep: str


@dataclass(frozen=True)
class Router:
    """A distributed router: every host with endpoints on its subnets routes between them."""

    uri: str
    number: int  # small and stable: what reg6 carries between L2 and L3
    mac: str  # the gateway MAC, the same on every host (an overlay never learns it from two places)
    interfaces: tuple[RouterInterface, ...]
    gateway: RouterGateway | None = None

    @property
    def bds(self) -> frozenset[str]:
        return frozenset(i.bd for i in self.interfaces)


def router_identity(uri: str) -> tuple[int, str]:
    """(number, MAC) of a router, derived from its URI so every host agrees without asking."""
    h = zlib.crc32(uri.encode())
    number = (h & 0xFFFF) or 1
    return number, f"02:50:46:fe:{number >> 8:02x}:{number & 0xFF:02x}"


@dataclass(frozen=True)
class ExternalNet:
    """An external network; ``ofport`` is this host's port on it (None: not attached here)."""

    uri: str
    name: str
    cidr: str
    gateway_ip: str
    ofport: int | None = None


@dataclass(frozen=True)
class FloatingIp:
    """1:1 NAT of ``endpoint`` (TENANT/NAME) to ``ip``, done on the endpoint's host."""

    ip: str
    network: str  # PfExternalNetwork URI
    endpoint: str

    @property
    def mac(self) -> str:
        """The floating IP's MAC on the external network: derived, so it survives a restart."""
        h = zlib.crc32(self.ip.encode()) & 0xFFFFFF
        return f"02:50:47:{h >> 16:02x}:{(h >> 8) & 0xFF:02x}:{h & 0xFF:02x}"


@dataclass(frozen=True)
class Network:
    local: tuple[Endpoint, ...] = ()
    remote: tuple[Endpoint, ...] = ()
    groups: Mapping[str, Group] = field(default_factory=dict)
    contracts: Mapping[str, Contract] = field(default_factory=dict)
    bds: Mapping[str, BridgeDomain] = field(default_factory=dict)
    security_groups: Mapping[str, SecurityGroup] = field(default_factory=dict)
    address_sets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # group → member IPs
    routers: Mapping[str, Router] = field(default_factory=dict)
    external: Mapping[str, ExternalNet] = field(default_factory=dict)  # by URI
    floating_ips: tuple[FloatingIp, ...] = ()
    host: str = ""  # this host's name (is it a router's active gateway?)
    tunnel_port: int | None = None  # this host's Geneve port on the bridge (None: no tunnel)

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
