"""The Linux renderer's ruleset: one nftables table of named sets, two maps and chains, as values.

For hybrid plugging (Neutron's): each endpoint's tap sits on its own Linux
bridge ``qbrX``, joined to the integration bridge by a veth whose OVS end is
``qvoX``. With ``br_netfilter`` the bridged IP traffic of ``qbrX`` crosses
the inet ``forward`` hook, where this table applies the endpoint's policy;
Open vSwitch still forwards (and still checks port security) but leaves
policy to this table.

- ``zones`` (prerouting, raw): each endpoint's bridge is its own conntrack
  zone (the map ``zones``: bridge → zone), so a connection between two
  endpoints of one host is tracked (and checked) once per bridge it crosses.
- ``forward``: traffic on ``qbrX`` jumps to the endpoint's chain through the
  verdict map ``ports`` (bridge → ``jump epN``): invalid → drop,
  established/related → accept, IPv6 neighbour discovery → accept; from the
  endpoint's own port (its MAC: ``endpoint_chains`` says why not its
  addresses) → its ``out`` chain, which drops a source that is not its own
  (port security); the agent's DHCP answers toward it → accept; to its
  addresses → its ``in`` chain; anything else → drop. An endpoint coming or
  going is one element of each map, not a rewrite of the base chains.
- Each direction has a group-policy chain (``_g``: intra-group, contracts by
  priority, default drop) and a security-group chain (``_sg``); a packet is
  accepted only when both return (every layer that applies must allow it,
  as in the OpenFlow pipeline, docs/openflow.md).
- Groups and security groups are named sets of addresses (``g<classid>_4``,
  ``sg<hash>_6`` ...): rules name sets, never one address each, so a member
  joining is one set element.

This module holds the values (``Chain``, ``Ruleset``), their ``nft`` text,
and the pure functions that write one chain's rules. ``compiler.py`` puts a
view's ruleset together from them, memoised by part; ``delta.py`` turns one
ruleset into another with the fewest commands.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from policyfabric.agent.renderers.logcodes import DEFAULT_DENY_IN, DEFAULT_DENY_OUT, RULE, rule_id
from policyfabric.agent.renderers.nftables.addresses import destinations, sources
from policyfabric.agent.renderers.nftables.icmp import icmp_match
from policyfabric.agent.values import printable
from policyfabric.agent.view import (
    DHCP6_MODES,
    BridgeDomain,
    Contract,
    Endpoint,
    Group,
    IpAddress,
    Network,
    Rule,
    SgRule,
    opens,
)

TABLE = "policyfabric"
FAMILIES = {0x0800: ("ip", "4", "ipv4"), 0x86DD: ("ip6", "6", "ipv6")}
ND = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept"
# What the agent itself answers on Open vSwitch (DHCPv4, DHCPv6): an endpoint booting has no
# address yet (0.0.0.0, or only its link-local one), and the answers come from no group member, so
# neither direction may meet the policy. Each is accepted one way only, and only on a bridge domain
# the agent serves: the client's request from the endpoint's own port to the server (broadcast,
# the gateway, All_DHCP_Relay_Agents_and_Servers), the answer toward the port from the agent's
# responder (the subnet's gateway, sport 67; the router's link-local address, sport 547). Open
# vSwitch drops what an endpoint sends from the server side (a rogue server), so only the
# responder's answers arrive from br-int with these ports.
DHCP6_SERVERS = "ff02::1:2"
EVERY = "gall"  # the set of every EPG member (what an endpoint without an EPG is kept apart from)


def bridge_of(interface: str | None) -> str | None:
    """The Linux bridge of a hybrid-plugged port: ``qvoX`` on OVS ↔ ``qbrX`` (Neutron's naming)."""
    return f"qbr{interface[3:]}" if interface and interface.startswith("qvo") else None


def group_set(classid: int) -> str:
    return f"g{classid}"


def address_set(uri: str) -> str:
    """A security group's member set, named by a hash of its URI (set names are short)."""
    return f"sg{zlib.crc32(uri.encode()):08x}"


@dataclass(frozen=True)
class Chain:
    """One chain's rules (``hook``: a base chain's declaration). Chains are the unit of change for
    rules: a chain whose rules differ is flushed and written again."""

    rules: tuple[str, ...]
    comment: str = ""
    hook: str = ""
    # what each rule is, for explain (empty: named by the explain's own reading); not compared:
    # two chains of the same rules are the same chain to the kernel
    labels: tuple[str, ...] = field(default=(), compare=False)

    def block(self, name: str) -> list[str]:
        """The chain as it appears inside ``table inet policyfabric { ... }``."""
        head = f"  chain {name} {{" + (f"  # {self.comment}" if self.comment else "")
        return [head, *([f"    {self.hook}"] if self.hook else []), *(f"    {r}" for r in self.rules), "  }"]


ZONES = Chain(
    ("ct zone set iifname map @zones",), hook="type filter hook prerouting priority raw; policy accept;"
)
FORWARD = Chain(("iifname vmap @ports",), hook="type filter hook forward priority filter; policy accept;")


def set_declaration(name: str, elements: Iterable[IpAddress], table: str = "") -> str:
    """``set NAME { ... }`` inside a table block; ``add set inet TABLE NAME { ... }`` after ``add``
    with ``table`` given."""
    kind = "ipv6_addr" if name.endswith("_6") else "ipv4_addr"
    listed = sorted(elements)
    body = f" elements = {{ {', '.join(listed)} }}" if listed else ""
    return f"set {table + ' ' if table else ''}{name} {{ type {kind};{body} }}"


def ports_element(bridge: str, n: int) -> str:
    return f'"{bridge}" : jump ep{n}'


def zones_element(bridge: str, n: int) -> str:
    return f'"{bridge}" : {n}'


def map_declarations(bridges: Mapping[str, int]) -> list[str]:
    """The two maps keyed by endpoint bridge: its chain (``ports``) and its conntrack zone."""
    out = []
    for name, kind, element in (
        ("zones", "typeof iifname : ct zone", zones_element),
        ("ports", "type ifname : verdict", ports_element),
    ):
        listed = ", ".join(element(b, n) for b, n in sorted(bridges.items()))
        out.append(f"map {name} {{ {kind};" + (f" elements = {{ {listed} }}" if listed else "") + " }")
    return out


@dataclass(frozen=True)
class Ruleset:
    """The desired table, by part: each named set's elements, the endpoint bridges (bridge → the
    endpoint's number: its chain ``epN`` and conntrack zone N), and the chains by name. Parts
    that did not change between two compiles are the same objects, so comparing two rulesets, and
    finding what to send the kernel (``delta.py``), looks only at what changed."""

    sets: Mapping[str, frozenset[IpAddress]]
    bridges: Mapping[str, int]
    chain_map: Mapping[str, Chain]

    @property
    def elements(self) -> int:
        return sum(len(e) for e in self.sets.values())

    @property
    def rules(self) -> int:
        return sum(len(c.rules) for c in self.chain_map.values())

    @property
    def chains(self) -> str:
        """The chains' part of the table's text (what operators read back with ``nft list``)."""
        lines = [line for name, chain in self.chain_map.items() for line in chain.block(name)]
        return "\n".join([*lines, "}"]) + "\n"

    def text(self) -> str:
        """``nft -f`` text replacing the whole table atomically (add, delete, define: one transaction)."""
        declared = [f"  {set_declaration(name, e)}" for name, e in sorted(self.sets.items())]
        declared += [f"  {m}" for m in map_declarations(self.bridges)]
        head = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}", f"table inet {TABLE} {{", *declared]
        return "\n".join(head) + "\n" + self.chains

    def update_from(self, old: Ruleset) -> str | None:
        """``nft -f`` text turning ``old`` into this one when only set contents changed, else None
        (``delta.changes`` handles every change; this says whether one was membership alone)."""
        from policyfabric.agent.renderers.nftables.delta import changes

        delta = changes(old, self)
        return delta.text if delta.elements_only else None


@dataclass(frozen=True)
class Body:
    """A chain's rules and the sets they name, by where the elements come from: the members of
    groups (class ids), of every group (``every``), of security groups (URIs)."""

    rules: tuple[str, ...]
    groups: frozenset[int] = frozenset()
    every: bool = False
    address_sets: frozenset[str] = frozenset()


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _l4(rule: Rule) -> str:
    if rule.protocol in (6, 17):
        name = "tcp" if rule.protocol == 6 else "udp"
        if rule.ports is None:
            return f"meta l4proto {name}"
        lo, hi = rule.ports
        return f"{name} dport {lo}" if lo == hi else f"{name} dport {lo}-{hi}"
    if rule.protocol in (1, 58):  # a type (and code) narrows it: icmp.py
        return icmp_match(rule) or ("meta l4proto icmp" if rule.protocol == 1 else "meta l4proto ipv6-icmp")
    return "" if rule.protocol is None else f"meta l4proto {rule.protocol}"


def _families(ethertype: int | None) -> list[tuple[str, str, str]]:
    return [FAMILIES[ethertype]] if ethertype in FAMILIES else list(FAMILIES.values())


def endpoint_chains(
    ep: Endpoint, n: int, bridge: str, bd: BridgeDomain | None = None
) -> list[tuple[str, Chain]]:
    """The endpoint's own chain and the two that chain each direction's layers (the layers'
    chains, ``_g`` and ``_sg``, are written apart), each rule with what it is (``Chain.labels``).

    The direction is the port a packet enters the endpoint's bridge from, never its addresses: an
    allowed address pair may cover peers' addresses (``0.0.0.0/0``, the endpoint's own subnet),
    so a peer's packet to the endpoint would match "from its addresses". With ``br_netfilter`` the
    forward hook sees the bridge (``qbrX``) as both interfaces and nftables has no physdev match;
    the Ethernet source tells the port apart: the endpoint's MAC (and its pairs') is what its tap
    sends from, while what comes from br-int carries a peer's or the router's MAC (Open vSwitch's
    port security drops a peer's frame from another MAC before it reaches this bridge). The way
    out then checks the source address (port security: its addresses and pairs' prefixes), the way
    in the destination (its addresses and pairs' hosts)."""
    key = printable(ep.key)
    served4 = tuple(s.gateway for s in bd.dhcp) if bd is not None else ()
    served6 = bd is not None and any(s.address_mode in DHCP6_MODES for s in bd.ipv6)
    macs = ", ".join(sorted({ep.mac.lower(), *(m.lower() for m in ep.pair_macs)}))
    own: list[tuple[str, str]] = [
        ("ct state invalid drop", "conntrack: invalid"),
        ("ct state established,related accept", "an established connection"),
        (ND, "neighbour discovery"),
        (f"ether saddr {{ {macs} }} jump ep{n}_out", f"endpoint {key}: from its port"),
    ]
    for gateway in sorted(set(served4)):
        own.append((f"ip saddr {gateway} udp sport 67 udp dport 68 accept", "DHCP: the agent's answer"))
    if served6:
        own.append(("ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept", "DHCPv6: the agent's answer"))
    out: list[tuple[str, str]] = []
    if served4:
        servers = ", ".join(["255.255.255.255", *sorted(set(served4))])
        out.append((f"udp sport 68 udp dport 67 ip daddr {{ {servers} }} accept", "DHCP: a request"))
    if served6:
        out.append((f"udp sport 546 udp dport 547 ip6 daddr {DHCP6_SERVERS} accept", "DHCPv6: a request"))
    for p, f, nfproto in FAMILIES.values():
        if addrs := destinations(ep, f == "6"):  # its allowed address pairs' too: addresses.py
            to = f"{p} daddr {{ {', '.join(addrs)} }} jump ep{n}_in"
            own.append((to, f"endpoint {key}: to its address"))
        spoofed = "port-security (not the endpoint's address)"
        if srcs := sources(ep, f == "6"):
            out.append((f"{p} saddr != {{ {', '.join(srcs)} }} drop", spoofed))
        else:
            out.append((f"meta nfproto {nfproto} drop", spoofed))
    own.append(("drop", "not to the endpoint's address"))
    layers = [(f"jump ep{n}_{{}}_g", "group policy"), (f"jump ep{n}_{{}}_sg", "security groups")]
    layers.append(("accept", "every layer passed"))
    chains = [(f"ep{n}", _labelled(own, f"endpoint {key} ({bridge})"))]
    for direction, head in (("in", []), ("out", out)):
        lines = [*head, *((line.format(direction), what) for line, what in layers)]
        chains.append((f"ep{n}_{direction}", _labelled(lines)))
    return chains


def _labelled(lines: Sequence[tuple[str, str]], comment: str = "") -> Chain:
    return Chain(tuple(line for line, _ in lines), comment, labels=tuple(what for _, what in lines))


def group_rules(
    me: Group | None, contracts: Sequence[tuple[str, Contract]], peers: Sequence[Group], inbound: bool
) -> Body:
    """Group policy for one direction of an endpoint of group ``me``: intra-group first, then
    contract drop rules, then allow rules (the OpenFlow priorities), default drop. ``return`` = this
    layer allows. ``contracts`` (by URI) and ``peers`` (by class id) need only be those ``me``
    shares a contract with: no other can open anything to or from it."""
    peer_field = "saddr" if inbound else "daddr"
    if me is None:  # no EPG: group policy only keeps it apart from EPG members
        drops = tuple(f"{p} {peer_field} @{EVERY}_{f} drop" for p, f, _ in FAMILIES.values())
        return Body((*drops, "return"), every=True)
    own = group_set(me.classid)
    verdict = "return" if me.intra_allow else "drop"
    lines = [f"{p} {peer_field} @{own}_{f} {verdict}" for p, f, _ in FAMILIES.values()]
    named = {me.classid}
    ranked: list[tuple[int, str]] = []
    for uri, contract in contracts:
        for rule in contract.rules:
            for peer in peers:
                allowed = opens(peer, me, uri, rule) if inbound else opens(me, peer, uri, rule)
                if not allowed:
                    continue
                named.add(peer.classid)
                for p, f, _ in _families(rule.ethertype):
                    match = _join(f"{p} {peer_field} @{group_set(peer.classid)}_{f}", _l4(rule))
                    # judged in both directions: an allow is logged on the way in (once), a drop
                    # wherever it drops (the way out, on the sender's host, never reaches the way in)
                    if rule.log and (inbound or not rule.allow):
                        ranked.append(
                            (rule.priority, log_line(match, RULE, rule.allow, rule_id(uri, rule.key)))
                        )
                    ranked.append((rule.priority, _join(match, "return" if rule.allow else "drop")))
    lines += [line for _, line in sorted(ranked, key=lambda x: -x[0])]
    return Body((*lines, "drop"), groups=frozenset(named))


def sg_rules(governed: bool, rules: Sequence[SgRule], inbound: bool) -> Body:
    """Security groups for one direction (``rules``: the endpoint's groups' rules of that
    direction): default deny ingress; egress open until the groups have egress rules. ``return`` =
    this layer allows."""
    if not governed or (not inbound and not rules):
        return Body(("return",))
    peer_field = "saddr" if inbound else "daddr"
    lines, remote_sets = [], set()
    for rule in rules:
        for p, f, nfproto in _families(rule.ethertype):
            if rule.remote_group is not None:
                remote_sets.add(rule.remote_group)
                remote = f"{p} {peer_field} @{address_set(rule.remote_group)}_{f}"
            elif rule.remote_prefix is not None:
                if (":" in rule.remote_prefix) != (f == "6"):
                    continue
                remote = "" if rule.remote_prefix.endswith("/0") else f"{p} {peer_field} {rule.remote_prefix}"
            else:
                remote = ""
            match = _join(f"meta nfproto {nfproto}", remote, _l4(rule))
            if rule.log:
                lines.append(log_line(match, RULE, True, rule_id(rule.key)))
            lines.append(_join(match, "return"))
    if any(r.log for r in rules):  # the default deny of a logging group's ports
        lines.append(log_line("", DEFAULT_DENY_IN if inbound else DEFAULT_DENY_OUT, False, 0))
    return Body((*lines, "drop"), address_sets=frozenset(remote_sets))


NFLOG_GROUP = 20556  # the netlink log group the agent's rule log reads (``nflog.py``)
LOG_RATE, LOG_BURST = 100, 200  # a second, at once: as the Open vSwitch meter


def log_line(match: str, kind: int, allowed: bool, ident: int) -> str:
    """A rule that logs what the next one (same ``match``) decides, for the first packet of a
    connection (only new ones get past the endpoint chain's conntrack rules), rate-limited in the
    kernel: over the limit the rule does not match, and the verdict rule after it still decides.
    The prefix says what decided as the Open vSwitch userdata does (``logflows.py``): kind,
    verdict, the rule's id (0: the endpoint, named by its address)."""
    return _join(
        match,
        f"limit rate {LOG_RATE}/second burst {LOG_BURST} packets",
        f'log prefix "pf:{kind}:{int(allowed)}:{ident}" group {NFLOG_GROUP}',
    )


def compile_ruleset(net: Network) -> Ruleset:
    """The desired table for this view, from scratch (``.text()`` is what ``nft -f`` takes); the
    renderer keeps a ``RulesetCompiler`` instead, which reuses what did not change."""
    from policyfabric.agent.renderers.nftables.compiler import RulesetCompiler

    return RulesetCompiler()(net)
