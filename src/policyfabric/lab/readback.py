"""What an endpoint's namespace holds, read from the namespace itself (``ip -j``).

The lab reports this beside the probe results (LAB.md: ``endpoints`` in ``--json``): the global
addresses with their prefix lengths, the routes, the MTU of ``eth0`` and (``mtu6``, beside what
LAB.md asks) its IPv6 MTU, which is what a router advertisement's MTU option sets. It is read, never taken
from what the lab meant to configure, so a DHCP client that got nothing shows as an endpoint
without addresses, and a static endpoint whose SLAAC address never came shows without it.
The parsers are pure; ``read`` runs the commands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from policyfabric.lab.state import LabState
from policyfabric.sh import CommandFailed, run

DEVICE = "eth0"


@dataclass(frozen=True)
class Namespace:
    """An endpoint as its namespace has it."""

    addresses: list[str] = field(default_factory=list)  # "10.2.0.7/24", "fd00:2::7/64"
    routes: list[str] = field(default_factory=list)  # "default via 10.2.0.1", "10.9.0.0/16 via 10.2.0.254"
    mtu: int | None = None
    tentative: list[str] = field(default_factory=list)  # IPv6 addresses still in duplicate detection
    mtu6: int | None = None  # eth0's IPv6 MTU: a router advertisement's MTU option sets this, not ``mtu``

    def holds(self, address: str) -> bool:
        """Whether ``address`` (no prefix) is one of its usable global addresses."""
        return any(a.split("/")[0] == address for a in self.addresses) and address not in self.tentative


def parse_addresses(links: list[dict[str, Any]]) -> Namespace:
    """``ip -j addr show dev eth0``: its global addresses (not link-local, not failed duplicate
    detection), the tentative ones among them, and its MTU."""
    addresses, tentative, mtu = [], [], None
    for link in links:
        mtu = link.get("mtu", mtu)
        for info in link.get("addr_info", []):
            if info.get("scope") != "global" or info.get("dadfailed"):
                continue
            addresses.append(f"{info['local']}/{info['prefixlen']}")
            if info.get("tentative"):
                tentative.append(str(info["local"]))
    return Namespace(addresses, [], mtu, tentative)


def parse_routes(routes: list[dict[str, Any]]) -> list[str]:
    """``ip -j route show`` (either family) as ``DESTINATION via GATEWAY`` or ``DESTINATION dev
    DEVICE``, without the routes the kernel makes for each address's own prefix (those say
    nothing the addresses do not) and without link-local and multicast ones."""
    out = []
    for route in routes:
        dst = str(route.get("dst", ""))
        if route.get("protocol") == "kernel" or dst.startswith(("fe80:", "ff00:", "multicast")):
            continue
        if route.get("gateway"):
            out.append(f"{dst} via {route['gateway']}")
        elif route.get("nexthops"):
            out.append(f"{dst} via {', '.join(str(n.get('gateway')) for n in route['nexthops'])}")
        else:
            out.append(f"{dst} dev {route.get('dev', DEVICE)}")
    return out


def _json(argv: list[str], netns: str) -> list[dict[str, Any]]:
    text = run(argv, netns=netns).strip()
    return list(json.loads(text)) if text else []


def read(netns: str) -> Namespace:
    """The namespace's ``eth0`` now."""
    found = parse_addresses(_json(["ip", "-j", "addr", "show", "dev", DEVICE], netns))
    routes = [
        *parse_routes(_json(["ip", "-j", "-4", "route", "show"], netns)),
        *parse_routes(_json(["ip", "-j", "-6", "route", "show"], netns)),
    ]
    mtu6 = run(["cat", f"/proc/sys/net/ipv6/conf/{DEVICE}/mtu"], netns=netns).strip()
    ipv6_mtu = int(mtu6) if mtu6.isdigit() else None
    return Namespace(found.addresses, routes, found.mtu, found.tentative, ipv6_mtu)


def endpoints(state: LabState) -> list[dict[str, Any]]:
    """Every endpoint of the lab as its namespace holds it (LAB.md's ``endpoints``), in the order
    they were plugged. One whose namespace cannot be read shows with nothing and ``error``."""
    out = []
    for name, ep in state.endpoints.items():
        entry: dict[str, Any] = {"name": name, "host": ep.host}
        try:
            ns = read(ep.netns)
        except (CommandFailed, json.JSONDecodeError) as exc:
            ns, entry["error"] = Namespace(), str(exc)
        entry.update(addresses=ns.addresses, routes=ns.routes, mtu=ns.mtu, mtu6=ns.mtu6)
        out.append(entry)
    return out


def missing(state: LabState, report: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per endpoint, the intent addresses its namespace does not hold (none listed: all there)."""
    out = {}
    for entry in report:
        ep = state.endpoints.get(entry["name"])
        if ep is None:
            continue
        have = {a.split("/")[0] for a in entry["addresses"]}
        lacking = [ip for ip in ep.ips if ip not in have]
        if lacking:
            out[entry["name"]] = lacking
    return out
