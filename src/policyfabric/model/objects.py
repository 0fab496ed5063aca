"""The policy objects operators declare (DESIGN §1), as pydantic models.

Keys are exactly those of the scenario file format (LAB.md). A model checks
what can be checked from the object alone: field shapes here, cross-field
rules in ``problems()``. Rules that need other objects (references, overlap,
uniqueness) live in :mod:`policyfabric.model.rules`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from policyfabric.model import mtu
from policyfabric.model.errors import Problem
from policyfabric.model.types import (
    AUTO_ADDRESS_MODES,
    PORT_PROTOCOLS,
    Address,
    Cidr,
    EndpointAddresses,
    Ethertype,
    Hostname,
    HostnameList,
    IcmpField,
    InterfaceName,
    IPAddress,
    Ipv6Mode,
    Mac,
    Name,
    NameList,
    PairAddress,
    PortRange,
    Protocol,
    first_host,
    pair_text,
    usable_host,
)

# Fields the server owns: accepted on input (so a client may PUT back what it
# got) and ignored. vni: a bridge domain's or l3_context's overlay id;
# classid: an endpoint group's policy class on the wire; applied_by: the file (a batch's
# ``owner``) that created the object, which ``apply --prune`` may later remove it for.
SERVER_FIELDS = ("id", "revision", "status", "vni", "classid", "applied_by")


class Strict(BaseModel):
    """Unknown keys are errors: a typo in a scenario file must not pass silently."""

    model_config = ConfigDict(extra="forbid")


class Spec(Strict):
    """What an operator declares for one object. Subclasses set KIND."""

    KIND: ClassVar[str]
    # Fields whose value the server or an agent fills in: leaving them out of
    # an update keeps the current value instead of clearing it.
    KEEP_IF_OMITTED: ClassVar[frozenset[str]] = frozenset()
    # Fields that other objects' validity depends on: changing one re-checks them.
    STRUCTURAL: ClassVar[frozenset[str]] = frozenset()

    name: Name

    @model_validator(mode="before")
    @classmethod
    def _drop_server_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in SERVER_FIELDS}
        return data

    def problems(self) -> list[Problem]:
        """Cross-field problems of this object alone (empty when fine)."""
        return []

    @property
    def scope(self) -> str | None:
        """The tenant this object lives in (None for global objects)."""
        return None


class TenantScoped(Spec):
    tenant: Name = Field(description="name of the tenant (policy space) that owns the object")

    @property
    def scope(self) -> str | None:
        return self.tenant


class GatewayedPrefix(BaseModel):
    """A prefix with a gateway address (subnets and external networks)."""

    cidr: Cidr
    gateway_ip: Address | None = Field(None, description="gateway address; default: the first host address")

    @model_validator(mode="after")
    def _default_gateway(self) -> GatewayedPrefix:
        if self.gateway_ip is None:
            self.gateway_ip = first_host(self.cidr)
        return self

    def gateway_problems(self) -> list[Problem]:
        if self.gateway_ip is not None and (why := usable_host(self.cidr, self.gateway_ip)):
            return [Problem("gateway_ip", why)]
        return []

    def why_not_host(self, addr: IPAddress, what: str) -> str | None:
        """Why ``addr`` cannot be given to a host here (``what`` names this prefix), or None."""
        why = usable_host(self.cidr, addr)
        if why is None and addr == self.gateway_ip:
            why = f"{addr} is the gateway address of {what}"
        return why


def keep_omitted(spec: Spec, current: Spec) -> Spec:
    """Fields the server or an agent fills in keep their value when an update leaves them out."""
    keep = {f: getattr(current, f) for f in spec.KEEP_IF_OMITTED - spec.model_fields_set}
    if isinstance(spec, Router) and isinstance(current, Router):
        spec = spec.kept_from(current)
    return spec.model_copy(update=keep) if keep else spec


class Tenant(Spec):
    """A policy space."""

    KIND = "tenant"


class L3Context(TenantScoped):
    """A routing domain (VRF)."""

    KIND = "l3_context"


class BridgeDomain(TenantScoped):
    """An L2 segment: one overlay VNI."""

    KIND = "bridge_domain"
    STRUCTURAL = frozenset({"l3_context"})

    l3_context: Name
    mtu: int = Field(
        mtu.DEFAULT_MTU,
        ge=mtu.MIN_MTU,
        le=mtu.MAX_MTU,
        description=f"MTU offered to endpoints (bytes); default {mtu.DEFAULT_MTU}: a "
        f"{mtu.UNDERLAY_MTU}-byte underlay less the {mtu.GENEVE_OVERHEAD} bytes of Geneve with its option",
    )


# Neutron's defaults for max_dns_nameservers and max_subnet_host_routes (neutron/conf/common.py),
# here fixed bounds: what every agent must put in a DHCP answer and a router advertisement.
MAX_DNS_NAMESERVERS = 5
MAX_HOST_ROUTES = 20


class HostRoute(Strict):
    """A route handed to the subnet's hosts (DHCPv4 classless static routes, option 121)."""

    destination: Cidr
    nexthop: Address


class Subnet(GatewayedPrefix, TenantScoped):
    """An IPv4 or IPv6 prefix on a bridge domain, with Neutron's subnet keys for what its hosts are
    told (DHCP, router advertisements). The rules between them are Neutron's
    (``NeutronDbPluginV2._validate_subnet`` and ``_validate_ipv6_attributes`` in
    neutron/db/db_base_plugin_v2.py): the IPv6 modes only on IPv6 subnets, equal when both are
    set, only with ``enable_dhcp``, and a /64 when hosts make their own (EUI-64) addresses;
    name servers and routes of the subnet's IP version."""

    KIND = "subnet"
    STRUCTURAL = frozenset({"bridge_domain", "cidr", "gateway_ip", "ipv6_ra_mode", "ipv6_address_mode"})

    bridge_domain: Name
    enable_dhcp: bool = Field(True, description="answer DHCP (and DHCPv6) requests of its hosts")
    dns_nameservers: list[Address] = Field(
        default_factory=list, max_length=MAX_DNS_NAMESERVERS, description="name servers handed to hosts"
    )
    host_routes: list[HostRoute] = Field(
        default_factory=list, max_length=MAX_HOST_ROUTES, description="routes handed to hosts"
    )
    ipv6_ra_mode: Ipv6Mode | None = Field(None, description="what router advertisements tell hosts")
    ipv6_address_mode: Ipv6Mode | None = Field(None, description="how hosts get their IPv6 address")

    @property
    def auto_address(self) -> bool:
        """Whether hosts make their own address here from its prefix and their MAC (SLAAC, EUI-64):
        either mode is slaac or dhcpv6-stateless (Neutron's ``is_auto_address_subnet``)."""
        return self.ipv6_ra_mode in AUTO_ADDRESS_MODES or self.ipv6_address_mode in AUTO_ADDRESS_MODES

    def problems(self) -> list[Problem]:
        found: list[Problem] = []
        net = self.cidr
        if net.version == 4 and net.prefixlen > 30:
            found.append(Problem("cidr", f"{net} is too small: an IPv4 subnet needs /30 or larger"))
        if net.version == 6 and net.prefixlen > 126:
            found.append(Problem("cidr", f"{net} is too small: an IPv6 subnet needs /126 or larger"))
        found += self.gateway_problems()
        found += self._ipv6_mode_problems()
        seen: set[str] = set()
        for i, server in enumerate(self.dns_nameservers):
            if server.version != net.version:
                found.append(
                    Problem(
                        f"dns_nameservers[{i}]",
                        f"{server} is IPv{server.version} but {net} is IPv{net.version}",
                    )
                )
            if str(server) in seen:
                found.append(Problem(f"dns_nameservers[{i}]", f"{server} is listed twice"))
            seen.add(str(server))
        routes: set[tuple[str, str]] = set()
        for i, route in enumerate(self.host_routes):
            for key, value in (("destination", route.destination), ("nexthop", route.nexthop)):
                if value.version != net.version:
                    found.append(
                        Problem(
                            f"host_routes[{i}].{key}",
                            f"{value} is IPv{value.version} but {net} is IPv{net.version}",
                        )
                    )
            pair = (str(route.destination), str(route.nexthop))
            if pair in routes:
                found.append(
                    Problem(f"host_routes[{i}]", f"the route to {pair[0]} via {pair[1]} is listed twice")
                )
            routes.add(pair)
        return found

    def _ipv6_mode_problems(self) -> list[Problem]:
        net, ra, address = self.cidr, self.ipv6_ra_mode, self.ipv6_address_mode
        if net.version == 4:
            return [
                Problem(key, f"{key} is not valid on an IPv4 subnet ({net}): it is for IPv6 /64 subnets")
                for key, mode in (("ipv6_ra_mode", ra), ("ipv6_address_mode", address))
                if mode is not None
            ]
        found = []
        if ra is not None and address is not None and ra != address:
            found.append(
                Problem(
                    "ipv6_address_mode",
                    f"ipv6_ra_mode {ra!r} with ipv6_address_mode {address!r} is not valid: "
                    "when both are set they must be the same",
                )
            )
        if (ra is not None or address is not None) and not self.enable_dhcp:
            field = "ipv6_ra_mode" if ra is not None else "ipv6_address_mode"
            found.append(Problem(field, f"{field} cannot be set when enable_dhcp is false"))
        if self.auto_address and net.prefixlen != 64:
            field = "ipv6_ra_mode" if ra in AUTO_ADDRESS_MODES else "ipv6_address_mode"
            mode = ra if ra in AUTO_ADDRESS_MODES else address
            found.append(
                Problem(
                    field,
                    f"{mode} needs an IPv6 /64 subnet (hosts make EUI-64 addresses), and {net} is not one",
                )
            )
        return found


class Classifier(Strict):
    """What traffic a contract rule matches. Direction is relative to the provider:
    ``in`` is consumer -> provider (GBP's convention)."""

    protocol: Protocol = "any"
    port: PortRange | None = Field(None, description="destination port N or range 'N-M'")
    ethertype: Ethertype = "any"
    direction: Literal["in", "out", "bidirectional"] = "in"

    def problems(self, at: str) -> list[Problem]:
        return protocol_problems(at, self.protocol, self.port, self.ethertype)


def protocol_problems(at: str, protocol: str, port: object, ethertype: str | None) -> list[Problem]:
    """Port/protocol/ethertype combinations that cannot match anything."""
    found = []
    if port is not None and protocol not in PORT_PROTOCOLS:
        found.append(Problem(f"{at}port", f"a port needs protocol tcp or udp, not {protocol!r}"))
    if protocol == "icmpv6" and ethertype == "ipv4":
        found.append(Problem(f"{at}protocol", "icmpv6 needs ethertype ipv6 or any, not ipv4"))
    if protocol == "icmp" and ethertype == "ipv6":
        found.append(Problem(f"{at}protocol", "icmp is IPv4's; with ethertype ipv6 use icmpv6"))
    return found


class ContractRule(Strict):
    name: Name
    classifier: Classifier = Field(default_factory=Classifier)
    action: Literal["allow", "drop", "log"] = "allow"
    log: bool = Field(False, description="log each new connection it decides (action log: allow, and log)")


class Contract(TenantScoped):
    """A policy rule set: a consumer EPG may reach a provider EPG as the rules say."""

    KIND = "contract"

    rules: list[ContractRule] = Field(default_factory=list)

    def problems(self) -> list[Problem]:
        found = []
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.name in seen:
                found.append(Problem(f"rules[{i}].name", f"rule name {rule.name!r} is used twice"))
            seen.add(rule.name)
            found += rule.classifier.problems(f"rules[{i}].classifier.")
        return found


class EndpointGroup(TenantScoped):
    """Endpoints sharing policy; contracts they provide and consume."""

    KIND = "endpoint_group"
    STRUCTURAL = frozenset({"bridge_domain"})

    bridge_domain: Name
    provides: NameList = Field(default_factory=list)
    consumes: NameList = Field(default_factory=list)
    intra_group: Literal["allow", "deny"] = "allow"


class SecurityGroupRule(Strict):
    """A Neutron security group rule; ethertype defaults from the remote prefix or protocol."""

    direction: Literal["ingress", "egress"]
    ethertype: Literal["ipv4", "ipv6"] | None = None
    protocol: Protocol = "any"
    port: PortRange | None = None
    remote_ip_prefix: Cidr | None = None
    remote_group: Name | None = None
    icmp_type: IcmpField | None = Field(None, description="ICMP (ICMPv6) type 0-255; protocol icmp or icmpv6")
    icmp_code: IcmpField | None = Field(None, description="ICMP (ICMPv6) code 0-255; needs icmp_type")

    @model_validator(mode="after")
    def _default_ethertype(self) -> SecurityGroupRule:
        if self.ethertype is None:
            v6 = self.protocol == "icmpv6" or (
                self.remote_ip_prefix is not None and self.remote_ip_prefix.version == 6
            )
            self.ethertype = "ipv6" if v6 else "ipv4"
        return self

    def problems(self, at: str) -> list[Problem]:
        found = protocol_problems(at, self.protocol, self.port, self.ethertype)
        found += self.icmp_problems(at)
        if self.remote_ip_prefix is not None and self.remote_group is not None:
            found.append(Problem(f"{at}remote_group", "give remote_ip_prefix or remote_group, not both"))
        prefix = self.remote_ip_prefix
        if prefix is not None and f"ipv{prefix.version}" != self.ethertype:
            found.append(
                Problem(
                    f"{at}remote_ip_prefix",
                    f"{prefix} is IPv{prefix.version} but the rule's ethertype is {self.ethertype}",
                )
            )
        return found

    def icmp_problems(self, at: str) -> list[Problem]:
        """ICMP type and code match only ICMP (Neutron's rule: ``port_range_min``/``max`` of an
        icmp rule), and a code means nothing without its type."""
        found = []
        for key in ("icmp_type", "icmp_code"):
            if getattr(self, key) is not None and self.protocol not in ("icmp", "icmpv6"):
                found.append(
                    Problem(f"{at}{key}", f"{key} needs protocol icmp or icmpv6, not {self.protocol!r}")
                )
        if self.icmp_code is not None and self.icmp_type is None:
            found.append(Problem(f"{at}icmp_code", "icmp_code needs icmp_type: a code is a code of a type"))
        return found


class SecurityGroup(TenantScoped):
    """Neutron semantics: default deny ingress, allow egress unless rules say otherwise."""

    KIND = "security_group"

    rules: list[SecurityGroupRule] = Field(default_factory=list)
    log: bool = Field(False, description="log each new connection its rules allow or its default deny drops")

    def problems(self) -> list[Problem]:
        found = []
        for i, rule in enumerate(self.rules):
            found += rule.problems(f"rules[{i}].")
        return found


# Neutron's default ``max_allowed_address_pair`` (neutron/conf/extensions/allowedaddresspairs.py)
MAX_ALLOWED_ADDRESS_PAIRS = 10


class AllowedAddressPair(Strict):
    """An extra (address, MAC) an endpoint may send from and is reached at: Neutron's allowed
    address pair (``ip_address``, ``mac_address``), e.g. a VRRP virtual address."""

    ip: PairAddress = Field(description="an address, or a prefix (every source address in it)")
    mac: Mac | None = Field(None, description="unicast MAC; default: the endpoint's own")

    def key(self, own_mac: str | None) -> tuple[str, str | None]:
        return pair_text(self.ip), self.mac or own_mac


class Endpoint(TenantScoped):
    """A VM or container interface. ``host`` and ``interface`` are set by the agent
    that binds it (a lab file may name the host it should live on)."""

    KIND = "endpoint"
    KEEP_IF_OMITTED = frozenset({"mac", "host", "interface"})
    STRUCTURAL = frozenset({"ip"})

    epg: Name | None = None
    subnet: Name | None = None
    ip: EndpointAddresses = Field(
        default_factory=list, description="addresses; 'slaac' = learn IPv6 from RAs"
    )
    mac: Mac | None = Field(None, description="unicast MAC; generated when left out")
    security_groups: NameList = Field(default_factory=list)
    host: Hostname | None = Field(None, description="the host it is bound to (an RFC 1123 name)")
    interface: InterfaceName | None = None
    allowed_address_pairs: list[AllowedAddressPair] = Field(
        default_factory=list,
        max_length=MAX_ALLOWED_ADDRESS_PAIRS,
        description="extra (ip, mac) pairs port security admits (Neutron's allowed address pairs)",
    )

    def problems(self) -> list[Problem]:
        if self.epg is None and self.subnet is None:
            return [Problem("epg", "an endpoint needs an epg, or (security groups only) a subnet")]
        return self.pair_problems()

    def pair_problems(self) -> list[Problem]:
        """A pair listed twice (Neutron's ``DuplicateAddressPairInRequest``). Any family and any
        prefix is taken, as Neutron takes them (``0.0.0.0/0`` is how its users turn source checks
        off for one MAC); the pair's address makes no claim (rules: a shared VIP is the point)."""
        found = []
        seen: set[tuple[str, str | None]] = set()
        for i, pair in enumerate(self.allowed_address_pairs):
            key = pair.key(self.mac)
            if key in seen:
                mac = key[1] or "the endpoint's own"
                found.append(
                    Problem(
                        f"allowed_address_pairs[{i}].ip", f"the pair {key[0]} with MAC {mac} is listed twice"
                    )
                )
            seen.add(key)
        return found


class ExternalGateway(Strict):
    network: Name
    snat: bool = True
    hosts: HostnameList = Field(default_factory=list, description="gateway hosts, for HA (one is active)")
    ip: Address | None = Field(
        None, description="its address on the external network (the SNAT source); allocated if left out"
    )


class Router(TenantScoped):
    """A logical router joining subnets of one l3_context, routed on every host (DVR)."""

    KIND = "router"

    l3_context: Name
    interfaces: NameList = Field(default_factory=list, description="subnet names")
    external_gateway: ExternalGateway | None = None

    def kept_from(self, current: Router) -> Router:
        """An allocated external gateway address stays when an update leaves it out."""
        mine, theirs = self.external_gateway, current.external_gateway
        if mine is None or mine.ip is not None or theirs is None or theirs.network != mine.network:
            return self
        return self.model_copy(update={"external_gateway": mine.model_copy(update={"ip": theirs.ip})})


class FloatingIp(TenantScoped):
    """1:1 NAT between an external address and an endpoint."""

    KIND = "floating_ip"
    KEEP_IF_OMITTED = frozenset({"ip"})

    network: Name
    ip: Address | None = Field(None, description="allocated from the network when left out")
    endpoint: Name | None = None


class ExternalNetwork(GatewayedPrefix, Spec):
    """The provider side, shared by all tenants."""

    KIND = "external_network"
    STRUCTURAL = frozenset({"cidr", "gateway_ip"})

    physical_network: Name | None = None

    def problems(self) -> list[Problem]:
        return self.gateway_problems()
