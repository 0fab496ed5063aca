"""The Linux renderer's ruleset, compiled as a pure function: one nftables table with named sets.

For hybrid plugging (Neutron's): each endpoint's tap sits on its own Linux
bridge ``qbrX``, joined to the integration bridge by a veth whose OVS end is
``qvoX``. With ``br_netfilter`` the bridged IP traffic of ``qbrX`` crosses
the inet ``forward`` hook, where this table applies the endpoint's policy;
Open vSwitch still forwards (and still checks port security) but leaves
policy to this table.

- ``zones`` (prerouting, raw): each endpoint's bridge is its own conntrack
  zone, so a connection between two endpoints of one host is tracked (and
  checked) once per bridge it crosses.
- ``forward``: traffic on ``qbrX`` jumps to the endpoint's chain:
  invalid → drop, established/related → accept, IPv6 neighbour discovery →
  accept; from the endpoint's own addresses → its ``out`` chains, to them →
  its ``in`` chains; anything else → drop.
- Each direction has a group-policy chain (``_g``: intra-group, contracts by
  priority, default drop) and a security-group chain (``_sg``); a packet is
  accepted only when both return (every layer that applies must allow it,
  as in the OpenFlow pipeline, docs/openflow.md).
- Groups and security groups are named sets of addresses (``g<classid>_4``,
  ``sg<hash>_6`` ...): rules name sets, never one address each, so a member
  joining is one set element.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from policyfabric.agent.values import printable
from policyfabric.agent.view import Endpoint, Network, Rule, SgRule, opens

TABLE = "policyfabric"
FAMILIES = {0x0800: ("ip", "4", "ipv4"), 0x86DD: ("ip6", "6", "ipv6")}
ND = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept"


def bridge_of(interface: str | None) -> str | None:
    """The Linux bridge of a hybrid-plugged port: ``qvoX`` on OVS ↔ ``qbrX`` (Neutron's naming)."""
    return f"qbr{interface[3:]}" if interface and interface.startswith("qvo") else None


def _l4(rule: Rule) -> str:
    if rule.protocol in (6, 17):
        name = "tcp" if rule.protocol == 6 else "udp"
        if rule.ports is None:
            return f"meta l4proto {name}"
        lo, hi = rule.ports
        return f"{name} dport {lo}" if lo == hi else f"{name} dport {lo}-{hi}"
    if rule.protocol == 1:
        return "meta l4proto icmp"
    if rule.protocol == 58:
        return "meta l4proto ipv6-icmp"
    return "" if rule.protocol is None else f"meta l4proto {rule.protocol}"


def _families(ethertype: int | None) -> list[tuple[str, str, str]]:
    return [FAMILIES[ethertype]] if ethertype in FAMILIES else list(FAMILIES.values())


@dataclass(frozen=True)
class Ruleset:
    """The desired table: its named sets' elements, apart from the rest (chains and set names),
    so that a change of membership alone can be applied as set element updates."""

    sets: Mapping[str, frozenset[str]]
    chains: str

    @property
    def elements(self) -> int:
        return sum(len(e) for e in self.sets.values())

    def text(self) -> str:
        """``nft -f`` text replacing the whole table atomically (add, delete, define: one transaction)."""
        declared = []
        for name, elements in sorted(self.sets.items()):
            kind = "ipv6_addr" if name.endswith("_6") else "ipv4_addr"
            body = f" elements = {{ {', '.join(sorted(elements))} }}" if elements else ""
            declared.append(f"  set {name} {{ type {kind};{body} }}")
        head = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}", f"table inet {TABLE} {{", *declared]
        return "\n".join(head) + "\n" + self.chains

    def update_from(self, old: Ruleset) -> str | None:
        """``nft -f`` text turning ``old`` into this one with set element changes only (one
        transaction), or None when more than set contents changed."""
        if self.chains != old.chains or self.sets.keys() != old.sets.keys():
            return None
        lines = []
        for name in sorted(self.sets):
            gone, new = old.sets[name] - self.sets[name], self.sets[name] - old.sets[name]
            if gone:
                lines.append(f"delete element inet {TABLE} {name} {{ {', '.join(sorted(gone))} }}")
            if new:
                lines.append(f"add element inet {TABLE} {name} {{ {', '.join(sorted(new))} }}")
        return "\n".join(lines) + "\n" if lines else ""


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


class _Sets:
    """The named sets the rules use, with their elements."""

    def __init__(self) -> None:
        self.elements: dict[str, set[str]] = {}

    def use(self, name: str, addresses: Iterable[str]) -> str:
        addresses = list(addresses)
        for fam in ("4", "6"):
            self.elements.setdefault(f"{name}_{fam}", set()).update(
                a for a in addresses if (":" in a) == (fam == "6")
            )
        return name

    def frozen(self) -> dict[str, frozenset[str]]:
        return {name: frozenset(elements) for name, elements in self.elements.items()}


def _group_chain(
    net: Network, ep: Endpoint, inbound: bool, sets: _Sets, members: dict[int, set[str]]
) -> list[str]:
    """Group policy for one direction of one endpoint: intra-group first, then contract drop rules,
    then allow rules (the OpenFlow priorities), default drop. ``return`` = this layer allows."""
    peer_field = "saddr" if inbound else "daddr"
    me = next((g for g in net.groups.values() if g.classid == ep.classid), None)
    if me is None:  # no EPG: group policy only keeps it apart from EPG members
        every = sets.use("gall", (a for addrs in members.values() for a in addrs))
        return [f"{p} {peer_field} @{every}_{f} drop" for p, f, _ in FAMILIES.values()] + ["return"]
    lines = []
    own = sets.use(f"g{me.classid}", members[me.classid])
    verdict = "return" if me.intra_allow else "drop"
    lines += [f"{p} {peer_field} @{own}_{f} {verdict}" for p, f, _ in FAMILIES.values()]
    ranked: list[tuple[int, str]] = []
    for uri, contract in sorted(net.contracts.items()):
        for rule in contract.rules:
            priority = rule.priority
            for peer in sorted(net.groups.values(), key=lambda g: g.classid):
                allowed = opens(peer, me, uri, rule) if inbound else opens(me, peer, uri, rule)
                if not allowed:
                    continue
                name = sets.use(f"g{peer.classid}", members[peer.classid])
                for p, f, _ in _families(rule.ethertype):
                    line = _join(
                        f"{p} {peer_field} @{name}_{f}", _l4(rule), "return" if rule.allow else "drop"
                    )
                    ranked.append((priority, line))
    lines += [line for _, line in sorted(ranked, key=lambda x: -x[0])]
    return [*lines, "drop"]


def _sg_chain(net: Network, ep: Endpoint, inbound: bool, sets: _Sets) -> list[str]:
    """Security groups for one direction: default deny ingress; egress open until the groups have
    egress rules. ``return`` = this layer allows."""
    if not ep.sg_governed:
        return ["return"]
    want = "in" if inbound else "out"
    rules: list[SgRule] = [
        r
        for g in ep.security_groups
        if g in net.security_groups
        for r in net.security_groups[g].rules
        if r.direction == want
    ]
    if not inbound and not rules:
        return ["return"]
    peer_field = "saddr" if inbound else "daddr"
    lines = []
    for rule in rules:
        for p, f, _ in _families(rule.ethertype):
            if rule.remote_group is not None:
                name = sets.use(
                    f"sg{zlib.crc32(rule.remote_group.encode()):08x}",
                    net.address_sets.get(rule.remote_group, ()),
                )
                remote = f"{p} {peer_field} @{name}_{f}"
            elif rule.remote_prefix is not None:
                if (":" in rule.remote_prefix) != (f == "6"):
                    continue
                remote = "" if rule.remote_prefix.endswith("/0") else f"{p} {peer_field} {rule.remote_prefix}"
            else:
                remote = ""
            lines.append(
                _join(
                    f"meta nfproto {FAMILIES[0x0800 if f == '4' else 0x86DD][2]}", remote, _l4(rule), "return"
                )
            )
    return [*lines, "drop"]


def compile_ruleset(net: Network) -> Ruleset:
    """The desired table for this view (``.text()`` is what ``nft -f`` takes)."""
    members: dict[int, set[str]] = defaultdict(set)
    for e in (*net.local, *net.remote):
        if e.classid:
            members[e.classid].update(e.ips)
    sets = _Sets()
    zones, forward, chains = [], [], []
    for ep in sorted(net.local, key=lambda e: e.key):
        bridge = bridge_of(ep.interface)
        if bridge is None or not ep.ips:
            continue  # not hybrid-plugged: this renderer cannot see its traffic
        n = ep.ofport or 0
        zones.append(f'    iifname "{bridge}" ct zone set {n}')
        forward.append(f'    iifname "{bridge}" jump ep{n}')
        mine = {p: [ip for ip in ep.ips if (":" in ip) == (f == "6")] for p, f, _ in FAMILIES.values()}
        body = ["ct state invalid drop", "ct state established,related accept", ND]
        for p, addrs in mine.items():
            if addrs:
                body.append(f"{p} saddr {{ {', '.join(addrs)} }} jump ep{n}_out")
                body.append(f"{p} daddr {{ {', '.join(addrs)} }} jump ep{n}_in")
        body.append("drop")
        chains.append((f"ep{n}", f"endpoint {printable(ep.key)} ({bridge})", body))
        for direction, inbound in (("in", True), ("out", False)):
            layers = [f"jump ep{n}_{direction}_g", f"jump ep{n}_{direction}_sg", "accept"]
            chains.append((f"ep{n}_{direction}", "", layers))
            chains.append((f"ep{n}_{direction}_g", "", _group_chain(net, ep, inbound, sets, members)))
            chains.append((f"ep{n}_{direction}_sg", "", _sg_chain(net, ep, inbound, sets)))
    text = ["  chain zones {", "    type filter hook prerouting priority raw; policy accept;", *zones, "  }"]
    text += [
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        *forward,
        "  }",
    ]
    for name, comment, body in chains:
        text.append(f"  chain {name} {{" + (f"  # {comment}" if comment else ""))
        text += [f"    {line}" for line in body]
        text.append("  }")
    text.append("}")
    return Ruleset(sets.frozen(), "\n".join(text) + "\n")
