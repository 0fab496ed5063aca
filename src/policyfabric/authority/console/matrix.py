"""Who may talk to whom, and why, computed from the intent alone: the console's connectivity matrix.

Pure functions over one tenant's declared objects (no store, no HTTP). They follow the semantics
the renderers enforce (docs/openflow.md, "Security groups in tables 62 and 63", and
docs/architecture.md, "How the two policy layers compose"):

- **Group policy** applies when either end is in an EPG; an end without one can be named by no
  contract, so an EPG member and a group-less endpoint never talk. Within one EPG its
  ``intra_group`` decides. Between two EPGs a contract the source consumes and the destination
  provides applies its ``in`` and ``bidirectional`` rules; one the source provides and the
  destination consumes, its ``out`` and ``bidirectional`` rules. A matching ``drop`` rule wins
  over any ``allow``/``log`` rule (the flows' priorities); nothing matching is the default deny.
- **Security groups** govern an endpoint that has some, or that has no EPG. Egress is open until
  the sender's groups have an egress rule; ingress is denied unless a rule of the receiver's
  groups admits the sender (by protocol, port, family, and its address in ``remote_ip_prefix``
  or its membership of ``remote_group``).

A packet passes when every layer that applies to it allows it. The answer is the intent's, not
the dataplane's: the console says so, and a traced ``explain`` can replace it later.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from policyfabric.model import kinds as k
from policyfabric.model import objects as o
from policyfabric.model.types import SLAAC, port_bounds

Verdict = Literal["allow", "deny"]
PROTOCOLS = ("tcp", "udp", "icmp", "icmpv6", "any")


@dataclass(frozen=True)
class Intent:
    """One tenant's policy objects, by name."""

    tenant: str
    epgs: Mapping[str, o.EndpointGroup]
    contracts: Mapping[str, o.Contract]
    security_groups: Mapping[str, o.SecurityGroup]
    endpoints: Mapping[str, o.Endpoint]

    @classmethod
    def of(cls, tenant: str, objects: Mapping[str, Iterable[Mapping[str, Any]]]) -> Intent:
        """From the REST API's rendering of each kind (``{kind name: [object, ...]}``): server
        fields (id, revision, status...) are dropped, the rest parsed by the kind's model."""

        def parse(kind: k.Kind) -> dict[str, Any]:
            fields = kind.spec.model_fields
            found = {}
            for raw in objects.get(kind.name, ()):
                spec = kind.spec.model_validate({f: v for f, v in raw.items() if f in fields})
                found[spec.name] = spec
            return found

        return cls(
            tenant,
            parse(k.ENDPOINT_GROUP),
            parse(k.CONTRACT),
            parse(k.SECURITY_GROUP),
            parse(k.ENDPOINT),
        )


@dataclass(frozen=True)
class Probe:
    """The first packet of a connection: protocol, destination port (tcp/udp) and family."""

    protocol: str = "tcp"
    port: int | None = None
    family: Literal[4, 6] = 4

    @classmethod
    def parse(cls, text: str, family: Literal[4, 6] = 4) -> Probe:
        """``tcp/80``, ``udp/53``, ``icmp``, ``icmpv6``; raises ValueError otherwise."""
        proto, _, port = text.strip().lower().partition("/")
        if proto not in PROTOCOLS or proto == "any":
            raise ValueError(f"{text!r}: the probe is tcp/PORT, udp/PORT, icmp or icmpv6")
        if proto in ("tcp", "udp"):
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{text!r}: {proto} needs a port 1-65535, e.g. {proto}/80")
            return cls(proto, int(port), family)
        if port:
            raise ValueError(f"{text!r}: {proto} has no port")
        return cls(proto, None, 6 if proto == "icmpv6" else family)

    def __str__(self) -> str:
        return f"{self.protocol}/{self.port}" if self.port is not None else self.protocol


@dataclass(frozen=True)
class Entry:
    """One rule that lets traffic through (or stops it) between two groups."""

    action: Literal["allow", "deny"]
    protocol: str
    port: str | None
    ethertype: str
    by: str  # "contract http, rule web-in (consumer -> provider)"


@dataclass(frozen=True)
class Cell:
    """Traffic from ``source`` (the group that opens the connection) to ``destination``."""

    source: str
    destination: str
    entries: tuple[Entry, ...]
    note: str = ""

    @property
    def verdict(self) -> Literal["allow", "deny", "partial"]:
        """allow: everything passes; deny: nothing does; partial: some protocols or ports."""
        allows = [e for e in self.entries if e.action == "allow"]
        if not allows:
            return "deny"
        denies = [e for e in self.entries if e.action == "deny"]
        if not denies and any(
            e.protocol == "any" and e.port is None and e.ethertype == "any" for e in allows
        ):
            return "allow"
        return "partial"


@dataclass(frozen=True)
class Explanation:
    """The intent's answer for one probe between two endpoints: the verdict and every reason."""

    verdict: Verdict
    reasons: tuple[str, ...]
    source: str
    destination: str
    probe: str
    layers: tuple[str, ...] = field(default=())  # which layers applied: "group policy", "security groups"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"], out["layers"] = list(self.reasons), list(self.layers)
        out["from"] = "intent"
        return out


# ---- matching ---------------------------------------------------------------------------------


def _port_text(port: int | str | None) -> str | None:
    return None if port is None else str(port)


def _matches(protocol: str, port: int | str | None, ethertype: str | None, probe: Probe) -> bool:
    """Whether a rule's protocol, port range and ethertype admit ``probe``."""
    if ethertype not in (None, "any", f"ipv{probe.family}"):
        return False
    if protocol != "any" and protocol != probe.protocol:
        return False
    if port is None:
        return True
    if probe.port is None:
        return False
    low, high = port_bounds(port)
    return low <= probe.port <= high


def _contract_rules(
    intent: Intent, src: o.EndpointGroup, dst: o.EndpointGroup
) -> list[tuple[o.Contract, o.ContractRule, str]]:
    """The contract rules that apply to connections src -> dst, with the way they apply."""
    found: list[tuple[o.Contract, o.ContractRule, str]] = []
    ways = (
        (set(src.consumes) & set(dst.provides), ("in", "bidirectional"), "consumer -> provider"),
        (set(src.provides) & set(dst.consumes), ("out", "bidirectional"), "provider -> consumer"),
    )
    for names, directions, how in ways:
        for name in sorted(names):
            contract = intent.contracts.get(name)
            if contract is None:
                continue
            found += [(contract, r, how) for r in contract.rules if r.classifier.direction in directions]
    return found


def _rule_label(contract: o.Contract, rule: o.ContractRule, how: str) -> str:
    return f"contract {contract.name}, rule {rule.name} ({how})"


def _sg_rule_label(group: str, index: int, rule: o.SecurityGroupRule) -> str:
    what = rule.protocol + (f"/{rule.port}" if rule.port is not None else "")
    if rule.remote_group is not None:
        remote = f"remote group {rule.remote_group}"
    elif rule.remote_ip_prefix is not None:
        remote = f"remote {rule.remote_ip_prefix}"
    else:
        remote = "any remote"
    return f"security group {group}, rule {index} ({rule.direction} {rule.ethertype} {what}, {remote})"


# ---- the matrix -------------------------------------------------------------------------------


def epg_cell(intent: Intent, source: str, destination: str) -> Cell:
    """What group policy lets the members of ``source`` open towards those of ``destination``."""
    src, dst = intent.epgs[source], intent.epgs[destination]
    if source == destination:
        if src.intra_group == "allow":
            entry = Entry("allow", "any", None, "any", f"endpoint group {source}: intra_group allow")
            return Cell(source, destination, (entry,))
        return Cell(source, destination, (), f"endpoint group {source}: intra_group deny")
    entries = tuple(
        Entry(
            "deny" if rule.action == "drop" else "allow",
            rule.classifier.protocol,
            _port_text(rule.classifier.port),
            rule.classifier.ethertype,
            _rule_label(contract, rule, how),
        )
        for contract, rule, how in _contract_rules(intent, src, dst)
    )
    note = "" if entries else f"default deny: no contract rule from {source} to {destination}"
    return Cell(source, destination, entries, note)


def _sg_admits(rule: o.SecurityGroupRule, peer_groups: Iterable[str]) -> str | None:
    """Whether a rule's remote side takes members of any of ``peer_groups``: how, or None."""
    if rule.remote_group is not None:
        return "member" if rule.remote_group in peer_groups else None
    if rule.remote_ip_prefix is not None:
        return f"if its address is in {rule.remote_ip_prefix}"
    return "any"


def _overlap(a: o.SecurityGroupRule, b: o.SecurityGroupRule) -> bool:
    """Whether some packet matches both rules' protocol, port range and family."""
    if a.ethertype != b.ethertype or ("any" not in (a.protocol, b.protocol) and a.protocol != b.protocol):
        return False
    if a.port is None or b.port is None:
        return True
    (lo_a, hi_a), (lo_b, hi_b) = port_bounds(a.port), port_bounds(b.port)
    return lo_a <= hi_b and lo_b <= hi_a


def sg_cell(intent: Intent, source: str, destination: str) -> Cell:
    """What security groups let members of ``source`` open towards members of ``destination``:
    the ingress rules of ``destination`` that admit them and, once ``source`` has egress rules,
    its egress rules towards ``destination``. A rule by address prefix is listed with that
    condition: whether it holds depends on the endpoint (the per-endpoint explanation decides)."""
    src, dst = intent.security_groups[source], intent.security_groups[destination]
    egress = [(i, r) for i, r in enumerate(src.rules) if r.direction == "egress"]
    towards = [(i, r) for i, r in egress if _sg_admits(r, (destination,)) is not None]
    entries: list[Entry] = []
    for i, rule in enumerate(dst.rules):
        how = _sg_admits(rule, (source,)) if rule.direction == "ingress" else None
        if how is None or (egress and not any(_overlap(rule, out) for _, out in towards)):
            continue  # not for members of source, or it cannot leave source
        cond = "" if how in ("any", "member") else f" [{how}]"
        entries.append(
            Entry(
                "allow", rule.protocol, _port_text(rule.port), rule.ethertype or "any",
                _sg_rule_label(destination, i, rule) + cond,
            )
        )  # fmt: skip
    note = ""
    if egress:
        note = f"egress limited by security group {source}: " + (
            "; ".join(_sg_rule_label(source, i, r) for i, r in towards) or f"nothing towards {destination}"
        )
    if not entries:
        note = f"default deny: no ingress rule of security group {destination} admits {source}" + (
            f" through its egress rules ({note})" if note else ""
        )
    return Cell(source, destination, tuple(entries), note)


def matrix(intent: Intent) -> dict[str, Any]:
    """The tenant's EPG x EPG and security group x security group matrices, as JSON."""
    epgs = sorted(intent.epgs)
    sgs = sorted(intent.security_groups)

    def cells(names: list[str], cell: Any) -> list[dict[str, Any]]:
        out = []
        for a in names:
            for b in names:
                c = cell(intent, a, b)
                out.append(
                    {
                        "source": a,
                        "destination": b,
                        "verdict": c.verdict,
                        "entries": [asdict(e) for e in c.entries],
                        "note": c.note,
                    }
                )
        return out

    members: dict[str, list[str]] = {g: [] for g in (*epgs, *(f"sg:{s}" for s in sgs))}
    for ep in sorted(intent.endpoints.values(), key=lambda e: e.name):
        if ep.epg is not None and ep.epg in intent.epgs:
            members[ep.epg].append(ep.name)
        for sg in ep.security_groups:
            if sg in intent.security_groups:
                members[f"sg:{sg}"].append(ep.name)
    return {
        "tenant": intent.tenant,
        "epgs": epgs,
        "security_groups": sgs,
        "epg_cells": cells(epgs, epg_cell),
        "sg_cells": cells(sgs, sg_cell),
        "members": members,
        "from": "intent",
    }


# ---- one pair of endpoints --------------------------------------------------------------------


def _addresses(ep: o.Endpoint, family: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    found = [ipaddress.ip_address(a) for a in ep.ip if a != SLAAC]
    return [a for a in found if a.version == family]


def family_of(src: o.Endpoint, dst: o.Endpoint) -> Literal[4, 6]:
    """IPv4 when both ends have a declared IPv4 address, else IPv6."""
    return 4 if _addresses(src, 4) and _addresses(dst, 4) else 6


def _group_layer(intent: Intent, src: o.Endpoint, dst: o.Endpoint, probe: Probe) -> tuple[bool, list[str]]:
    if src.epg is None or dst.epg is None:
        lacking = src.name if src.epg is None else dst.name
        return False, [
            f"deny: endpoint {lacking} has no endpoint group, so no contract can name it "
            "(an EPG member and a group-less endpoint never talk)"
        ]
    if src.epg == dst.epg:
        epg = intent.epgs.get(src.epg)
        if epg is None or epg.intra_group == "deny":
            return False, [f"deny: endpoint group {src.epg}: intra_group deny"]
        return True, [f"allow: endpoint group {src.epg}: intra_group allow"]
    src_epg, dst_epg = intent.epgs.get(src.epg), intent.epgs.get(dst.epg)
    if src_epg is None or dst_epg is None:
        return False, [f"deny: endpoint group {src.epg if src_epg is None else dst.epg} is not declared"]
    rules = [
        (c, r, how)
        for c, r, how in _contract_rules(intent, src_epg, dst_epg)
        if _matches(r.classifier.protocol, r.classifier.port, r.classifier.ethertype, probe)
    ]
    drops = [x for x in rules if x[1].action == "drop"]
    if drops:
        return False, [f"deny: {_rule_label(*drops[0])} drops it"]
    if rules:
        return True, [f"allow: {_rule_label(*rules[0])}"]
    return False, [
        f"deny: default deny (no contract rule from endpoint group {src.epg} to {dst.epg} matches {probe})"
    ]


def _sg_rules(
    intent: Intent, groups: Iterable[str], direction: str
) -> list[tuple[str, int, o.SecurityGroupRule]]:
    """The rules of ``groups`` in ``direction`` (group, index, rule): what one end's security
    groups say about traffic leaving it (egress) or reaching it (ingress)."""
    return [
        (g, i, r)
        for g in groups
        for i, r in enumerate(intent.security_groups[g].rules if g in intent.security_groups else ())
        if r.direction == direction
    ]


def _sg_layer(intent: Intent, src: o.Endpoint, dst: o.Endpoint, probe: Probe) -> tuple[bool, list[str], bool]:
    """Security groups: (passes, reasons, whether the layer applied to either end)."""
    reasons: list[str] = []
    applied = False
    src_governed = bool(src.security_groups) or src.epg is None
    dst_governed = bool(dst.security_groups) or dst.epg is None
    if src_governed:
        applied = True
        egress = _sg_rules(intent, src.security_groups, "egress")
        if egress:
            fits = [x for x in egress if _admits(x[2], dst, probe)]
            if not fits:
                groups = ", ".join(src.security_groups)
                return (
                    False,
                    [f"deny: egress of {src.name}: no egress rule of security groups {groups} matches"],
                    True,
                )
            reasons.append(f"allow: egress by {_sg_rule_label(*fits[0])}")
        else:
            reasons.append(f"allow: egress of {src.name} is open (its security groups have no egress rule)")
    if dst_governed:
        applied = True
        ingress = _sg_rules(intent, dst.security_groups, "ingress")
        fits = [x for x in ingress if _admits(x[2], src, probe)]
        if not fits:
            groups = ", ".join(dst.security_groups) or "none"
            return (
                False,
                [
                    *reasons,
                    f"deny: default deny ingress to {dst.name} (security groups {groups}: no rule admits it)",
                ],
                True,
            )
        reasons.append(f"allow: ingress by {_sg_rule_label(*fits[0])}")
    return True, reasons, applied


def _admits(rule: o.SecurityGroupRule, peer: o.Endpoint, probe: Probe) -> bool:
    """Whether ``rule`` matches ``probe`` with ``peer`` as its remote end."""
    if not _matches(rule.protocol, rule.port, rule.ethertype, probe):
        return False
    if rule.remote_group is not None:
        return rule.remote_group in peer.security_groups
    if rule.remote_ip_prefix is not None:
        return any(a in rule.remote_ip_prefix for a in _addresses(peer, probe.family))
    return True


def explain(intent: Intent, source: str, destination: str, probe: Probe) -> Explanation:
    """Whether the intent lets ``source`` open ``probe`` towards ``destination``, and why."""
    src, dst = intent.endpoints[source], intent.endpoints[destination]
    layers: list[str] = []
    reasons: list[str] = []
    passed = True
    if src.epg is not None or dst.epg is not None:
        layers.append("group policy")
        passed, why = _group_layer(intent, src, dst, probe)
        reasons += why
    if passed:
        ok, why, applied = _sg_layer(intent, src, dst, probe)
        if applied:
            layers.append("security groups")
        reasons += why
        passed = ok
    return Explanation(
        "allow" if passed else "deny", tuple(reasons), source, destination, str(probe), tuple(layers)
    )
