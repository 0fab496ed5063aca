"""Field types shared by the policy objects: names, ports, MACs, prefixes.

Each type normalises what it accepts (``"80"`` and ``80`` are the same port,
``AA:BB:...`` and ``aa:bb:...`` the same MAC), so that comparing a stored
object with a scenario file is comparing canonical values.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, WithJsonSchema

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

# Locally administered, unicast: 0x02 in the first octet; "PF" in the next two.
GENERATED_MAC_PREFIX = "02:50:46"

Ethertype = Literal["ipv4", "ipv6", "any"]
Protocol = Literal["tcp", "udp", "icmp", "icmpv6", "any"]
PORT_PROTOCOLS = ("tcp", "udp")

# Neutron's IPv6 subnet modes (``ipv6_ra_mode``, ``ipv6_address_mode``): how hosts on the subnet get
# their addresses. slaac: from router advertisements (EUI-64 of the MAC); dhcpv6-stateless: the same,
# plus other configuration (DNS) by DHCPv6; dhcpv6-stateful: the address itself by DHCPv6.
Ipv6Mode = Literal["slaac", "dhcpv6-stateless", "dhcpv6-stateful"]
# the modes in which a host makes its own address from the prefix and its MAC (Neutron's
# ``ipv6_utils.is_auto_address_subnet``)
AUTO_ADDRESS_MODES: tuple[str, ...] = ("slaac", "dhcpv6-stateless")


def check_label(value: object) -> str:
    """A DNS-label-like name: what a name must be for every object and host."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not _LABEL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid name: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


NAME_PATTERN = _LABEL.pattern
Name = Annotated[
    str,
    BeforeValidator(check_label),
    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN, "maxLength": 63}),
]


# ---- host and interface names: what agents report, so what the store must always be able to read
_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
HOSTNAME_MAX = 253
_INTERFACE = re.compile(r"[A-Za-z0-9_.:@+-]{1,64}")
INTERFACE_MAX = 64


def check_hostname(value: object) -> str:
    """An RFC 1123 host name, one label (``h1``) or several (``compute-1.example.com``): labels of
    1-63 letters, digits and ``-`` not starting or ending with ``-``, 253 characters in all.
    DNS names are case-insensitive, so ``H1`` and ``h1`` are one host: stored lower-case. Agents
    are named after their hosts, and an agent's name is written into the endpoints it binds, so
    this is also what keeps an agent from writing a record the store cannot read back."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    # ASCII first: str.lower() maps some non-ASCII letters to ASCII ones (KELVIN SIGN -> 'k')
    name = value.lower() if value.isascii() else ""
    if not name or len(name) > HOSTNAME_MAX or not all(_HOST_LABEL.fullmatch(p) for p in name.split(".")):
        raise ValueError(
            f"{value[:80]!r} is not a host name: use labels of 1-63 letters, digits and '-' "
            f"(not starting or ending with '-') joined by '.', at most {HOSTNAME_MAX} characters"
        )
    return name


def check_interface(value: object) -> str:
    """A network interface name as Linux and Open vSwitch spell them (``tap1``, ``eth0.100``,
    ``vhu3f2a-01``): 1-64 of letters, digits and ``_.:@+-``, not ``.`` or ``..``. Agents report
    it, so it is bounded like everything an agent can write."""
    if not isinstance(value, str) or not _INTERFACE.fullmatch(value) or value in (".", ".."):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise ValueError(
            f"{shown!r} is not an interface name: use 1-{INTERFACE_MAX} letters, digits and '_.:@+-'"
        )
    return value


def is_interface(value: object) -> bool:
    """Whether ``value`` is an interface name as ``check_interface`` takes it (for the checks that
    refuse with their own message: the registry's, the agent's)."""
    try:
        check_interface(value)
    except ValueError:
        return False
    return True


_HOST_LABEL_PATTERN = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
Hostname = Annotated[
    str,
    BeforeValidator(check_hostname),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": f"^{_HOST_LABEL_PATTERN}(\\.{_HOST_LABEL_PATTERN})*$",
            "maxLength": HOSTNAME_MAX,
            "description": "RFC 1123 host name (stored lower-case)",
        }
    ),
]
InterfaceName = Annotated[
    str,
    BeforeValidator(check_interface),
    WithJsonSchema({"type": "string", "pattern": "^[A-Za-z0-9_.:@+-]{1,64}$"}),
]


def parse_port(value: object) -> int | str:
    """``N`` or ``"N-M"`` with 1 <= N <= M <= 65535; ``"N-N"`` collapses to ``N``."""
    if isinstance(value, bool):
        raise ValueError("must be a port number N or a range 'N-M'")
    if isinstance(value, int):
        low = high = value
    elif isinstance(value, str):
        text = value.strip()
        parts = text.split("-")
        if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"{value!r} is not a port: use N or 'N-M' (e.g. 80 or '8000-8080')")
        low, high = int(parts[0]), int(parts[-1])
    else:
        raise ValueError("must be a port number N or a range 'N-M'")
    for port in (low, high):
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range: ports are 1-65535")
    if low > high:
        raise ValueError(f"port range {low}-{high} is reversed: the first port must not exceed the last")
    return low if low == high else f"{low}-{high}"


def port_bounds(port: int | str) -> tuple[int, int]:
    """The inclusive (low, high) bounds of a normalised port value."""
    if isinstance(port, int):
        return port, port
    low, high = port.split("-")
    return int(low), int(high)


PortRange = Annotated[
    int | str,
    BeforeValidator(parse_port),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "pattern": "^[0-9]{1,5}(-[0-9]{1,5})?$"},
            ]
        }
    ),
]


def parse_mac(value: object) -> str:
    """A unicast MAC written as six hex octets; stored lower-case with colons."""
    if not isinstance(value, str):
        raise ValueError("must be a MAC address string like 02:00:00:00:00:01")
    mac = value.strip().lower().replace("-", ":")
    if not _MAC.match(mac):
        raise ValueError(f"{value!r} is not a MAC address: write six hex octets, e.g. 02:00:00:00:00:01")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{mac} is a multicast/broadcast MAC: an endpoint needs a unicast MAC")
    if mac == "00:00:00:00:00:00":
        raise ValueError("00:00:00:00:00:00 is not a usable MAC")
    return mac


Mac = Annotated[
    str,
    BeforeValidator(parse_mac),
    WithJsonSchema({"type": "string", "pattern": "^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$"}),
]


def generate_mac() -> str:
    """A random locally administered unicast MAC under policyfabric's prefix."""
    tail = secrets.token_bytes(3)
    return GENERATED_MAC_PREFIX + "".join(f":{b:02x}" for b in tail)


def parse_network(value: object) -> IPNetwork:
    """A CIDR whose host bits are zero; the error suggests the network meant."""
    if not isinstance(value, str):
        raise ValueError("must be a CIDR string like 10.0.0.0/24")
    text = value.strip()
    _refuse_zone_id(text)
    if "/" not in text:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a valid CIDR (write e.g. 10.0.0.0/24)") from None
        example = "/24" if addr.version == 4 else "/64"
        raise ValueError(f"{value!r} is not a CIDR: add the prefix length, e.g. {text}{example}")
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not a valid CIDR ({exc})") from None
        raise ValueError(f"{value!r} has host bits set: did you mean {loose}?") from None


def parse_pair_address(value: object) -> IPNetwork:
    """An allowed address pair's ``ip``: an address (``10.1.0.100``, stored as its /32 or /128) or a
    prefix (``10.1.0.0/24``), as Neutron's ``ip_address`` takes both; host bits set are refused,
    as for any CIDR here."""
    if isinstance(value, str) and "/" not in value:
        addr = parse_address(value)
        return ipaddress.ip_network(addr)
    return parse_network(value)


def pair_text(net: IPNetwork) -> str:
    """A pair's ``ip`` as written back: the bare address for a host prefix, else the CIDR."""
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


PairAddress = Annotated[
    IPNetwork,
    BeforeValidator(parse_pair_address),
    PlainSerializer(pair_text, return_type=str),
    WithJsonSchema({"type": "string", "description": "IPv4 or IPv6 address or CIDR, e.g. 10.1.0.100"}),
]

# ICMP type and code in a security group rule (Neutron's port_range_min/max of an icmp rule)
IcmpField = Annotated[int, Field(ge=0, le=255)]

Cidr = Annotated[
    IPNetwork,
    BeforeValidator(parse_network),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "description": "CIDR, e.g. 10.0.0.0/24"}),
]


def _refuse_zone_id(text: str) -> None:
    """Python's ``ipaddress`` takes ``fd00::20%zz`` (an IPv6 zone id, RFC 4007) and compares it
    unequal to ``fd00::20``: four endpoints could hold one address, one the gateway's. A zone
    names a link of one host, never part of an address in the policy: refuse it."""
    if "%" in text.partition("/")[0]:
        bare = re.sub(r"%[^/]*", "", text)
        raise ValueError(f"{text!r} has a zone id ('%...'): write it without one ({bare})")


def parse_address(value: object) -> IPAddress:
    """An IPv4 or IPv6 address (no prefix length, no zone id)."""
    if not isinstance(value, str):
        raise ValueError("must be an IP address string")
    _refuse_zone_id(value.strip())
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        hint = " (drop the prefix length)" if "/" in value else ""
        raise ValueError(f"{value!r} is not an IP address{hint}") from None


Address = Annotated[
    IPAddress,
    BeforeValidator(parse_address),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "description": "IPv4 or IPv6 address"}),
]

SLAAC = "slaac"


def parse_endpoint_address(value: object) -> str:
    """An endpoint address: an IP, or ``slaac`` (learn the IPv6 address from RAs)."""
    if value == SLAAC:
        return SLAAC
    return str(parse_address(value))


def as_list(value: object) -> object:
    """Accept a single value where a list is expected (``ip: 10.0.0.1``)."""
    if value is None:
        return []
    if isinstance(value, str | int):
        return [value]
    return value


def unique_items(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice")
        seen.add(value)
    return values


EndpointAddresses = Annotated[
    list[Annotated[str, BeforeValidator(parse_endpoint_address)]],
    BeforeValidator(as_list),
    AfterValidator(unique_items),
]
NameList = Annotated[list[Name], BeforeValidator(as_list), AfterValidator(unique_items)]
HostnameList = Annotated[list[Hostname], BeforeValidator(as_list), AfterValidator(unique_items)]


def usable_host(net: IPNetwork, addr: IPAddress) -> str | None:
    """Why ``addr`` cannot be a host address in ``net``, or None if it can."""
    if addr.version != net.version:
        return f"{addr} is IPv{addr.version} but {net} is IPv{net.version}"
    if addr not in net:
        return f"{addr} is not inside {net}"
    if addr == net.network_address:
        return f"{addr} is the network address of {net}"
    if net.version == 4 and addr == net.broadcast_address:
        return f"{addr} is the broadcast address of {net}"
    return None


def first_host(net: IPNetwork) -> IPAddress:
    """The first usable host address: the conventional gateway (Neutron's default)."""
    return net.network_address + 1
