"""Why the nftables table passes or drops a packet: the *installed* ruleset evaluated for it.

There is no ``ofproto/trace`` for nftables. Its own tracing (``meta nftrace set 1`` and ``nft
monitor trace``) needs a rule added to the table (which the drift monitor rightly takes for
someone else's change, and the next apply rewrites the whole table) and a real packet sent
through the endpoint's bridge: it disturbs what it explains. So this module reads the table back
(``nft -j list table inet policyfabric``: what the kernel holds, sets included, not what the
agent meant to write) and walks it for one packet, as the kernel would for the first packet of a
connection: the ``forward`` hook's verdict map by the bridge the packet crosses, the endpoint's
chain, its jumps and returns. Only the expressions this renderer writes are understood (ct state,
addresses and sets, ports and ranges, ``meta l4proto``/``nfproto``, ICMPv6 types); any other
makes the walk stop with ``Unevaluable`` rather than guess.

The deciding rule is named by its place: rule ``i`` of chain ``C`` in the kernel is rule ``i``
of the chain the renderer last applied (``Ruleset.chain_map``). An endpoint's own chains carry
their labels from the compiler (``Chain.labels``); the layers' chains, shared between endpoints,
are named by recomputing from the same view, in the same order as ``ruleset.group_rules``/
``sg_rules`` write them (log lines included): ``contract acme/http rule web-in``,
``security-group acme/ssh rule 0``, ``default deny``. The packet's Ethernet source says which
port it entered the bridge from (the endpoint's chain keys its direction on it).
A chain whose length differs from the applied one (drift not yet repaired) is named by position.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policyfabric.agent.renderers.nftables.compiler import _Policy
from policyfabric.agent.renderers.nftables.ruleset import FAMILIES, Ruleset, bridge_of
from policyfabric.agent.view import Endpoint, Group, Network, opens
from policyfabric.opflex.uri import unescape

BASE_CHAIN = "forward"
MAX_DEPTH = 16  # jumps deep: the renderer's tables are 3
ICMPV6_TYPES = {
    "echo-request": 128, "echo-reply": 129, "nd-router-solicit": 133, "nd-router-advert": 134,
    "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136,
}  # fmt: skip
L4_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58}
NFPROTO = {"ipv4": False, "ipv6": True}


class Unevaluable(Exception):
    """The table holds an expression this module does not evaluate: no verdict, and why."""


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection as the ``forward`` hook sees it."""

    iifname: str  # the bridge it crosses (the endpoint's ``qbrX``)
    v6: bool
    saddr: str
    daddr: str
    l4: int  # 6, 17, 1, 58
    dport: int | None = None
    icmp_type: int | None = None
    sport: int | None = None
    # its Ethernet source: which port it entered the bridge from (the endpoint's MAC: from its
    # tap, the way out; another: from br-int, the way in). None: not known, and a rule asking stops
    # the walk
    ether_src: str | None = None


Loader = Callable[[str, str], Mapping[str, Any]]  # (chain | set | map, name) → ``nft -j list`` output
_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


class Table:
    """The installed table, read back: sets, maps and each chain's rules (expressions, handle).
    Whole (``from_json`` of ``nft -j list table``), or object by object as the walk needs them
    (``load``: ``nft -j list chain|set|map``): at 1,000 endpoints the whole table is 4 MB of JSON
    and 1.4-2.0 s to list (measured), one chain or set 10-50 ms."""

    def __init__(self, load: Loader | None = None) -> None:
        self.sets: dict[str, tuple[Any, ...]] = {}
        self.maps: dict[str, tuple[tuple[Any, Any], ...]] = {}
        self.chains: dict[str, tuple[tuple[tuple[Any, ...], int], ...]] = {}
        self.load = load
        self.loads = 0  # objects listed (what a walk cost)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Table:
        table = cls()
        table.absorb(doc)
        return table

    def absorb(self, doc: Mapping[str, Any]) -> None:
        rules: dict[str, list[tuple[tuple[Any, ...], int]]] = {}
        for item in doc.get("nftables", ()):
            if "set" in item:
                self.sets[item["set"]["name"]] = tuple(item["set"].get("elem", ()))
            elif "map" in item:
                self.maps[item["map"]["name"]] = tuple((k, v) for k, v in item["map"].get("elem", ()))
            elif "chain" in item:
                rules.setdefault(item["chain"]["name"], [])
            elif "rule" in item:
                rule = item["rule"]
                rules.setdefault(rule["chain"], []).append((tuple(rule["expr"]), int(rule.get("handle", 0))))
        self.chains.update({name: tuple(r) for name, r in rules.items()})

    def _get(self, kind: str, found: Mapping[str, Any], name: str) -> Any:
        if name not in found and self.load is not None and _NAME.match(name):
            self.loads += 1
            self.absorb(self.load(kind, name))
        if name not in found:
            raise Unevaluable(f"{kind} {name} is not in the table")
        return found[name]

    def chain(self, name: str) -> tuple[tuple[tuple[Any, ...], int], ...]:
        return tuple(self._get("chain", self.chains, name))

    def set(self, name: str) -> tuple[Any, ...]:
        return tuple(self._get("set", self.sets, name))

    def map(self, name: str) -> tuple[tuple[Any, Any], ...]:
        return tuple(self._get("map", self.maps, name))


@dataclass(frozen=True)
class Verdict:
    verdict: str  # accept | drop
    chain: str  # the chain of the deciding rule ("forward": its policy, no rule)
    index: int  # its position there (-1: the chain's policy)
    path: tuple[tuple[str, int], ...]  # every rule that matched, jumps included, in order


# ---- matching ---------------------------------------------------------------------------------


def _address(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, Mapping) and "prefix" in value:
        p = value["prefix"]
        return ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False)
    if isinstance(value, str):
        return ipaddress.ip_network(value, strict=False)
    raise Unevaluable(f"address {value!r}")


def _contains(element: Any, value: Any) -> bool:
    """Whether one element of a set (a value, a prefix, a range) holds the packet's ``value``."""
    if isinstance(element, Mapping) and "range" in element:
        lo, hi = element["range"]
        if isinstance(value, int):
            return int(lo) <= value <= int(hi)
        a, b, v = (ipaddress.ip_address(x) for x in (lo, hi, value))
        return a.version == v.version == b.version and int(a) <= int(v) <= int(b)
    if isinstance(element, Mapping) and "elem" in element:  # an element with a timeout or comment
        return _contains(element["elem"]["val"], value)
    if isinstance(value, int):
        if isinstance(element, str) and element in L4_NAMES:
            return L4_NAMES[element] == value
        if isinstance(element, str) and element in ICMPV6_TYPES:
            return ICMPV6_TYPES[element] == value
        return isinstance(element, int) and element == value
    if isinstance(value, str) and _MAC.match(value):
        return isinstance(element, str) and element.lower() == value.lower()
    if isinstance(value, str) and (":" in value or "." in value):
        try:
            return ipaddress.ip_address(value) in _address(element)
        except ValueError:
            return False
    return bool(element == value)


def _right(table: Table, right: Any) -> tuple[Any, ...]:
    if isinstance(right, str) and right.startswith("@"):
        return table.set(right[1:])
    if isinstance(right, Mapping) and "set" in right:
        return tuple(right["set"])
    if isinstance(right, list):
        return tuple(right)
    return (right,)


def _left(left: Mapping[str, Any], packet: Packet) -> Any:
    """The packet's value for ``left``; None when the expression's protocol is not the packet's
    (``ip saddr`` on an IPv6 packet matches nothing, as in the kernel's inet family)."""
    if "payload" in left:
        proto, fld = left["payload"].get("protocol"), left["payload"].get("field")
        if proto in ("ip", "ip6") and fld in ("saddr", "daddr"):
            if packet.v6 != (proto == "ip6"):
                return None
            return packet.saddr if fld == "saddr" else packet.daddr
        if proto in ("tcp", "udp") and fld in ("dport", "sport"):
            if packet.l4 != L4_NAMES[proto]:
                return None
            return packet.dport if fld == "dport" else packet.sport
        if proto == "ether" and fld == "saddr":
            if packet.ether_src is None:
                raise Unevaluable("the packet's Ethernet source (which port it came from) is not known")
            return packet.ether_src
        if proto in ("icmp", "icmpv6") and fld == "type":
            return packet.icmp_type if packet.l4 == L4_NAMES[proto] else None
    elif "meta" in left:
        key = left["meta"].get("key")
        if key == "l4proto":
            return packet.l4
        if key == "nfproto":
            return "ipv6" if packet.v6 else "ipv4"
        if key == "iifname":
            return packet.iifname
        if key == "iiftype":  # the dependency of an ``ether`` match: the bridge is Ethernet
            return "ether"
    elif "ct" in left and left["ct"].get("key") == "state":
        return "new"
    raise Unevaluable(f"expression {dict(left)!r}")


def _matches(table: Table, match: Mapping[str, Any], packet: Packet) -> bool:
    value = _left(match["left"], packet)
    op = match.get("op", "==")
    if value is None:  # nft's implicit dependency (``meta nfproto ipv4`` before ``ip saddr``...)
        return False  # fails first: the rule does not match, whichever the operator
    found = any(_contains(e, value) for e in _right(table, match["right"]))
    if op in ("==", "in"):
        return found
    if op == "!=":
        return not found
    raise Unevaluable(f"operator {op!r}")


# ---- the walk ---------------------------------------------------------------------------------

_STOP = object()


def evaluate(table: Table, packet: Packet) -> Verdict:
    """The verdict of the ``forward`` hook for ``packet``: the first accept or drop, with where it
    was decided; falling off the base chain is its policy (accept)."""
    path: list[tuple[str, int]] = []

    def run(chain: str, depth: int) -> tuple[str, str, int] | None:
        """(verdict, chain, index) of a terminal verdict; None: the chain returned."""
        if depth > MAX_DEPTH:
            raise Unevaluable(f"jumps deeper than {MAX_DEPTH}")
        for i, (exprs, _handle) in enumerate(table.chain(chain)):
            target: Any = None
            for expr in exprs:
                if "match" in expr:
                    if not _matches(table, expr["match"], packet):
                        target = _STOP
                        break
                elif "vmap" in expr:
                    key = _left(expr["vmap"]["key"], packet)
                    data = expr["vmap"]["data"]
                    if not (isinstance(data, str) and data.startswith("@")):
                        raise Unevaluable(f"verdict map {data!r}")
                    hits = [v for k, v in table.map(data[1:]) if _contains(k, key)]
                    if not hits:
                        target = _STOP
                        break
                    target = hits[0]
                elif any(v in expr for v in ("accept", "drop", "return", "jump", "goto")):
                    target = expr
                elif "counter" in expr or "log" in expr or "limit" in expr:
                    # no verdict; over its rate a ``limit`` would not match, and the rule after
                    # (the verdict the log line announces) decides all the same
                    continue
                else:
                    raise Unevaluable(f"statement {expr!r}")
            if target is _STOP or target is None:
                continue
            path.append((chain, i))
            if "accept" in target or "drop" in target:
                return ("accept" if "accept" in target else "drop"), chain, i
            if "return" in target:
                return None
            jumped = target.get("jump") or target.get("goto")
            decided = run(str(jumped["target"]), depth + 1)
            if decided is not None or "goto" in target:
                return decided
        return None

    decided = run(BASE_CHAIN, 0)
    if decided is None:
        return Verdict("accept", BASE_CHAIN, -1, tuple(path))
    return Verdict(*decided, tuple(path))


# ---- naming rules as intent objects ------------------------------------------------------------


def _name(uri: str) -> str:
    """``/PolicyUniverse/PolicySpace/acme/GbpContract/http/`` → ``acme/http``."""
    parts = uri.strip("/").split("/")
    return f"{unescape(parts[2])}/{unescape(parts[4])}" if len(parts) >= 5 else uri


def _group_labels(
    me: Group | None, contracts: Sequence[tuple[str, Any]], peers: Sequence[Group], inbound: bool
) -> list[str | None]:
    """What each rule of ``ruleset.group_rules(me, contracts, peers, inbound)`` is, in its order."""
    if me is None:
        apart = "no endpoint group: kept apart from every group's members"
        alone: list[str | None] = [apart] * len(FAMILIES)
        return [*alone, "no endpoint group: no group policy"]
    intra = f"endpoint-group {_name(me.uri)} intra_group {'allow' if me.intra_allow else 'deny'}"
    labels: list[str | None] = [intra] * len(FAMILIES)
    ranked: list[tuple[int, str]] = []
    for uri, contract in contracts:
        for rule in contract.rules:
            for peer in peers:
                allowed = opens(peer, me, uri, rule) if inbound else opens(me, peer, uri, rule)
                if not allowed:
                    continue
                rule_name = rule.key.partition(".")[2]
                fams = [FAMILIES[rule.ethertype]] if rule.ethertype in FAMILIES else list(FAMILIES.values())
                name = f"contract {_name(uri)} rule {rule_name}"
                logged = rule.log and (inbound or not rule.allow)  # group_rules' log line before it
                one = [f"{name} (logged)", name] if logged else [name]
                ranked += [(rule.priority, x) for x in one * len(fams)]
    labels += [label for _, label in sorted(ranked, key=lambda x: -x[0])]
    return [*labels, "default deny"]


def _sg_labels(ep: Endpoint, net: Network, inbound: bool) -> list[str | None]:
    """What each rule of the endpoint's security-group chain is (``ruleset.sg_rules``' order)."""
    want = "in" if inbound else "out"
    groups = [net.security_groups[g] for g in ep.security_groups if g in net.security_groups]
    rules = [r for g in groups for r in g.rules if r.direction == want]
    if not ep.sg_governed or (not inbound and not rules):
        return ["no security group rules this way (open)"]
    labels: list[str | None] = []
    for rule in rules:
        uri, _, order = rule.key.rpartition("#")
        families = [FAMILIES[rule.ethertype]] if rule.ethertype in FAMILIES else list(FAMILIES.values())
        for _p, f, _n in families:
            prefix = rule.remote_prefix if rule.remote_group is None else None
            if prefix is not None and (":" in prefix) != (f == "6"):
                continue
            name = f"security-group {_name(uri)} rule {order}"
            labels += [f"{name} (logged)", name] if rule.log else [name]
    side = "ingress" if inbound else "egress"
    deny = f"default deny (security groups of {ep.key}, {side})"
    if any(r.log for r in rules):  # sg_rules' log line of the default deny
        labels.append(f"{deny} (logged)")
    return [*labels, deny]


def label(chain: str, index: int, net: Network, applied: Ruleset | None) -> str:
    """The intent object behind rule ``index`` of ``chain`` (the renderer's naming: ``epN``,
    ``epN_in``, ``epN_in_g``, ``epN_in_sg``...), or what the rule does when it is plumbing (the
    jumps between an endpoint's chains)."""
    if chain == BASE_CHAIN:
        return "the endpoint's bridge: its chain (map ports)"
    head, _, rest = chain.partition("_")
    n = int(head[2:]) if head.startswith("ep") and head[2:].isdigit() else None
    ep = next((e for e in net.local if n is not None and e.ofport == n and bridge_of(e.interface)), None)
    expected = applied.chain_map.get(chain) if applied is not None else None
    if ep is None or expected is None:
        return f"rule {index} of chain {chain}"
    labels: list[str | None]
    if expected.labels:  # the compiler's own names for its rules (the endpoint's chains)
        labels = list(expected.labels)
    elif rest in ("in_g", "out_g"):
        policy = _Policy(net.groups, net.contracts)
        labels = _group_labels(*policy.inputs(ep.classid), inbound=rest == "in_g")
    elif rest in ("in_sg", "out_sg"):
        labels = _sg_labels(ep, net, inbound=rest == "in_sg")
    else:
        labels = []
    if len(labels) != len(expected.rules) or not 0 <= index < len(labels) or labels[index] is None:
        return f"rule {index} of chain {chain} ({expected.comment or 'endpoint ' + ep.key})"
    return str(labels[index])


def allows(path: Sequence[tuple[str, int]], net: Network, applied: Ruleset | None) -> list[str]:
    """The group and security-group rules on ``path`` that returned (let the packet on)."""
    out = []
    for chain, index in path:
        if chain.endswith(("_g", "_sg")):
            name = label(chain, index, net, applied)
            if name.startswith(("contract ", "security-group ", "endpoint-group ")):
                out.append(name)
    return out


__all__ = ["Packet", "Table", "Unevaluable", "Verdict", "allows", "evaluate", "label"]
