"""Why a packet is allowed or denied, read from what ``br-int`` holds: OVS's own trace of it.

``ovs-appctl ofproto/trace`` walks the *installed* flows (not the intent, not our compiler): this
module parses its text into steps (table, match, priority, cookie, actions), finds the decision
(a flow whose only action is ``drop``, a table miss, or the packet leaving through a port or the
tunnel) and names the flows that made it as intent objects. Every flow the agent installs carries
its section's cookie (``sections.cookie_of``: a stable hash of the section key), so a ``Catalog``
made by hashing the keys of every object of the intent maps a cookie back to its object without
asking the agent; a rule is named by its conjunction id, which is a stable hash too
(``conjunctions.conj_id`` of what the reader builds the rule from). Traffic that leaves through
the tunnel is traced again on the host it tunnels to, with the tunnel metadata it would arrive
with (VNI, source group in ``tun_metadata0``), by ``explain``'s ``trace`` callback: the module
itself runs nothing (the lab or an operator tool supplies the tracer).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from policyfabric.agent.renderers.ovs.conjunctions import conj_id
from policyfabric.agent.renderers.ovs.ovsdb import TUNNEL_PORT
from policyfabric.agent.renderers.ovs.secgroups import sg_conj_id_of
from policyfabric.agent.renderers.ovs.sections import SectionKey, cookie_of
from policyfabric.agent.renderers.ovs.tables import (
    BY_NUMBER,
    EXT_IN_NAT,
    L2,
    NEIGHBOUR,
    POLICY_CT,
    PORT_SECURITY,
    ROUTING,
    SG_EGRESS,
    SG_INGRESS,
)
from policyfabric.model import objects as o
from policyfabric.model.types import port_bounds
from policyfabric.opflex.gbp import ETHER_T_NAMES, PROTOCOLS, Cls, external_network_uri, uri_of

# ---- the trace's text ------------------------------------------------------------------------

_HEADER = re.compile(
    r"^(?P<indent> *)(?P<table>\d+)\. (?:(?P<match>.*?), )?priority (?P<prio>\d+)"
    r"(?:, cookie (?P<cookie>0x[0-9a-f]+))?$"
)
_MISS = re.compile(r"^(?P<indent> *)(?P<table>\d+)\. No match\.?$")
_BRIDGE = re.compile(r'^bridge\("(?P<name>[^"]+)"\)$')
_NOW = re.compile(r"-> (?P<field>NXM_\w+)\[[^\]]*\] is now (?P<value>\S+)")
_SET = re.compile(r"^set_field:(?P<value>[^-]+)->(?P<field>\w+)$")
_OUTPUT = re.compile(r"^output:(?P<port>\S+)$")

NXM_TO_FIELD = {
    "NXM_NX_TUN_ID": "tun_id",
    "NXM_NX_TUN_IPV4_DST": "tun_dst",
    "NXM_NX_TUN_METADATA0": "tun_metadata0",
}
# what is copied from the last "Final flow" into the packet the next host receives
PACKET_FIELDS = (
    "dl_src", "dl_dst", "nw_src", "nw_dst", "ipv6_src", "ipv6_dst", "nw_ttl", "nw_tos",
    "tp_src", "tp_dst", "tcp_flags", "icmp_type", "icmp_code", "icmpv6_type", "icmpv6_code",
)  # fmt: skip
PROTOCOL_WORDS = ("tcp", "udp", "icmp", "tcp6", "udp6", "icmp6", "ip", "ipv6", "arp")


@dataclass(frozen=True)
class Step:
    """One flow the packet met (or a table it missed in: ``miss``)."""

    bridge: str
    table: int
    match: str
    priority: int | None
    cookie: int | None
    actions: tuple[str, ...]
    notes: tuple[str, ...] = ()
    miss: bool = False

    @property
    def drops(self) -> bool:
        """The flow's one action is ``drop`` (the ``drop`` the trace prints after ``ct(...)``, its
        way of saying the ct action forked a clone, is left out by the parser), or a table miss
        (``fail_mode=secure``)."""
        return self.miss or self.actions == ("drop",) or self._logs_and_drops

    @property
    def _logs_and_drops(self) -> bool:
        """A logged deny: its one action is the copy to the rule log (``logflows.log_action``)."""
        return len(self.actions) == 1 and self.actions[0].startswith("controller(")

    def outputs(self) -> list[str]:
        return [m["port"] for a in self.actions if (m := _OUTPUT.match(a))]

    @property
    def tunnels(self) -> bool:
        return any("tunnel" in n for n in self.notes) and bool(self.outputs())

    def match_field(self, name: str) -> str | None:
        for part in self.match.split(","):
            key, eq, value = part.partition("=")
            if eq and key == name:
                return value
        return None


@dataclass
class Trace:
    steps: list[Step] = field(default_factory=list)
    final: dict[str, str] = field(default_factory=dict)  # the last "Final flow:" as fields
    protocol: str = ""  # its protocol word (tcp, icmp6...)
    writes: dict[str, str] = field(default_factory=dict)  # tunnel fields the actions wrote, last wins
    datapath: str = ""  # the last "Datapath actions:" line


def _fields(flow: str) -> tuple[str, dict[str, str]]:
    proto, out = "", {}
    for part in flow.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            if key in PROTOCOL_WORDS and not proto:
                proto = key
            continue
        out[key] = value
    return proto, out


def parse_trace(text: str, bridge: str = "br-int") -> Trace:
    """The steps of ``ofproto/trace`` output on ``bridge`` (recirculations included, in order)."""
    trace = Trace()
    current = ""
    step: dict[str, Any] | None = None
    lines = text.splitlines()

    def close() -> None:
        nonlocal step
        if step is not None:
            trace.steps.append(Step(**step))
            step = None

    for line in lines:
        stripped = line.strip()
        if m := _BRIDGE.match(stripped):
            close()
            current = m["name"]
            continue
        if stripped.startswith("Final flow:"):
            close()
            trace.protocol, trace.final = _fields(stripped.removeprefix("Final flow:").strip())
            continue
        if stripped.startswith("Datapath actions:"):
            close()
            trace.datapath = stripped.removeprefix("Datapath actions:").strip()
            continue
        if stripped.startswith(("Flow:", "Megaflow:", "=====", "recirc(", "----")) or not stripped:
            close()
            continue
        if current != bridge:
            continue
        if m := _HEADER.match(line):
            close()
            cookie = int(m["cookie"], 16) if m["cookie"] else None
            step = {"bridge": current, "table": int(m["table"]), "match": m["match"] or "",
                    "priority": int(m["prio"]), "cookie": cookie, "actions": (), "notes": ()}  # fmt: skip
            continue
        if m := _MISS.match(line):
            close()
            step = {"bridge": current, "table": int(m["table"]), "match": "", "priority": None,
                    "cookie": None, "actions": (), "notes": (), "miss": True}  # fmt: skip
            continue
        if step is None:
            continue  # "thaw", "Resuming from table N": before the first flow of a recirculation
        if stripped.startswith("->"):
            step["notes"] += (stripped,)
            if m := _NOW.search(stripped):
                name = NXM_TO_FIELD.get(m["field"])
                if name:
                    trace.writes[name] = m["value"]
        elif stripped == "drop" and step["actions"] and step["actions"][-1].startswith("ct("):
            continue  # the trace's note that ct() forked a clone to recirculate: not an action
        else:
            step["actions"] += (stripped,)
            if (m := _SET.match(stripped)) and m["field"] in NXM_TO_FIELD.values():
                trace.writes[m["field"]] = m["value"]
    close()
    return trace


# ---- naming flows as intent objects ---------------------------------------------------------


@dataclass
class Catalog:
    """Cookie → the intent object its section comes from; conjunction id → the rule it decides."""

    sections: dict[int, str] = field(default_factory=dict)
    rules: dict[int, str] = field(default_factory=dict)

    def add(self, key: SectionKey, name: str) -> None:
        self.sections[cookie_of(key)] = name
        self.sections[cookie_of(key, learned=True)] = name

    def section(self, cookie: int | None) -> str:
        if cookie is None:
            return "no flow"
        return self.sections.get(cookie, f"cookie {cookie:#x}")


def _classifier(ethertype: str | None, protocol: str, port: int | str | None) -> tuple[str, str, str]:
    """The ethertype, protocol and ports as the agent's reader makes them (``str()`` of each is
    in the rule's conjunction id)."""
    eth = ETHER_T_NAMES.get(ethertype or "")
    proto = PROTOCOLS.get(protocol)
    ports = port_bounds(port) if port is not None else None
    return str(eth), str(proto), str(ports)


def catalog(
    tenants: Iterable[Mapping[str, Any]],
    endpoints: Iterable[Mapping[str, Any]] = (),
    external_networks: Iterable[Mapping[str, Any]] = (),
) -> Catalog:
    """The catalog of a scenario's intent (its ``tenants``, ``endpoints`` and ``external_networks``
    sections, as written in a scenario file): each object's section keys hashed. A floating IP
    whose address the authority allocated (none in the file) stays unnamed (``cookie 0x...``)."""
    cat = Catalog()
    cat.add(("base",), "fixed flows")
    for net in external_networks:
        cat.add(("extnet", external_network_uri(net["name"])), f"external-network {net['name']}")
    for t in tenants:
        tenant = t["name"]
        for bd in t.get("bridge_domains", ()):
            cat.add(
                ("bd", uri_of(tenant, Cls.GBP_BRIDGE_DOMAIN, bd["name"])),
                f"bridge-domain {tenant}/{bd['name']}",
            )
        for r in t.get("routers", ()):
            cat.add(("router", uri_of(tenant, Cls.PF_ROUTER, r["name"])), f"router {tenant}/{r['name']}")
        for fip in t.get("floating_ips", ()):
            if fip.get("ip"):
                cat.add(("fip", str(fip["ip"])), f"floating-ip {tenant}/{fip['name']}")
        for g in t.get("endpoint_groups", ()):
            cat.add(
                ("group", uri_of(tenant, Cls.GBP_EP_GROUP, g["name"])), f"endpoint-group {tenant}/{g['name']}"
            )
        for c in t.get("contracts", ()):
            uri = uri_of(tenant, Cls.GBP_CONTRACT, c["name"])
            cat.add(("contract", uri), f"contract {tenant}/{c['name']}")
            for raw in c.get("rules", ()):
                rule = o.ContractRule.model_validate(raw)
                clf = rule.classifier
                eth, proto, ports = _classifier(clf.ethertype, clf.protocol, clf.port)
                for n in ("0", "1"):  # one conjunction per direction (bidirectional: both)
                    cid = conj_id(uri, f"{c['name']}.{rule.name}", n, eth, proto, ports)
                    cat.rules[cid] = f"contract {tenant}/{c['name']} rule {rule.name}"
        for sg in t.get("security_groups", ()):
            uri = uri_of(tenant, Cls.GBP_SEC_GROUP, sg["name"])
            cat.add(("sg", uri), f"security-group {tenant}/{sg['name']}")
            for i, raw in enumerate(sg.get("rules", ())):
                r = o.SecurityGroupRule.model_validate(raw)
                eth, proto, ports = _classifier(r.ethertype, r.protocol, r.port)
                prefix = str(r.remote_ip_prefix) if r.remote_ip_prefix is not None else None
                cid = sg_conj_id_of(f"{uri}#{i}", eth, proto, ports, str(prefix), r.icmp_type, r.icmp_code)
                cat.rules[cid] = f"security-group {tenant}/{sg['name']} rule {i}"
    for e in endpoints:
        key = f"{e['tenant']}/{e['name']}"
        cat.add(("ep", key), f"endpoint {key}")
        cat.add(("remote", key), f"endpoint {key} (remote)")
    return cat


# ---- the decision ---------------------------------------------------------------------------

# POLICY_CT's rules for the outside (group_policy.base_flows, priority 2400): an endpoint may open
# connections out through its router's gateway or its floating IP; fixed flows, no intent object
OUTSIDE = "to or from the outside (router gateway, floating IP)"
NO_ROUTE_TABLES = frozenset({L2, ROUTING, NEIGHBOUR})
POLICY_TABLES = frozenset({POLICY_CT, SG_EGRESS, SG_INGRESS})


@dataclass(frozen=True)
class Hop:
    """One host's part: the flows the packet met there and how it left (or did not)."""

    host: str
    steps: tuple[Step, ...]
    outcome: str  # "drop", "tunnel", "output:N", "none"

    def to_json(self, cat: Catalog) -> dict[str, Any]:
        return {
            "host": self.host,
            "outcome": self.outcome,
            "flows": [
                {
                    "table": f"{s.table} {BY_NUMBER[s.table].name if s.table in BY_NUMBER else '?'}",
                    "match": "(miss)" if s.miss else s.match,
                    "priority": s.priority,
                    "from": "table miss" if s.miss else cat.section(s.cookie),
                    "actions": list(s.actions),
                }
                for s in self.steps
            ],
        }


@dataclass(frozen=True)
class Explanation:
    verdict: str  # allow | deny
    by: str
    hops: tuple[Hop, ...]

    def to_json(self, cat: Catalog) -> dict[str, Any]:
        return {"verdict": self.verdict, "by": self.by, "hops": [h.to_json(cat) for h in self.hops]}


def _conj(step: Step) -> int | None:
    value = step.match_field("conj_id")
    return int(value) if value is not None else None


def deny_reason(step: Step, cat: Catalog) -> str:
    """What a dropping flow (or table miss) is, as the intent names it."""
    if step.table == PORT_SECURITY:
        return "port-security"
    if step.table in NO_ROUTE_TABLES:
        return "no route"
    if step.miss:
        return "default deny"
    cid = _conj(step)
    if cid is not None:
        return cat.rules.get(cid, f"{cat.section(step.cookie)} rule with conj_id {cid}")
    if step.table == POLICY_CT:
        if step.match_field("ct_state") == "+inv+trk":
            return "conntrack: invalid"
        if step.priority == 2500:  # a group's intra-group policy (group_policy.group_flow)
            return f"{cat.section(step.cookie)} intra_group deny"
        return "default deny"
    if step.table in (SG_EGRESS, SG_INGRESS):
        side = "egress" if step.table == SG_EGRESS else "ingress"
        owner = cat.section(step.cookie)
        if step.priority == 10 and owner.startswith("endpoint "):  # secgroups.port_flow
            return f"default deny (security groups of {owner.removeprefix('endpoint ')}, {side})"
        return "default deny"
    if step.table == EXT_IN_NAT:
        return "no inbound connection through SNAT"
    name = BY_NUMBER[step.table].name if step.table in BY_NUMBER else str(step.table)
    return f"{name} drop ({cat.section(step.cookie)})"


def allow_reason(step: Step, cat: Catalog) -> str | None:
    """What a policy flow that let a new connection on is, or None (a clause, a pass-through)."""
    if step.table not in POLICY_TABLES or step.drops:
        return None
    cid = _conj(step)
    if cid is not None:
        return cat.rules.get(cid, f"{cat.section(step.cookie)} rule with conj_id {cid}")
    if step.table != POLICY_CT:
        return None
    if step.priority == 2500:
        return f"{cat.section(step.cookie)} intra_group allow"
    if step.priority == 2900:
        return "an established connection"
    if step.priority == 2400:
        return OUTSIDE
    return None


def judge(hops: Sequence[Hop], cat: Catalog) -> tuple[str, str]:
    """The verdict of the hops and what decided it: the first drop; else allow if the last host
    sends the packet out of a port (a local one, or an external network's), naming every policy
    flow that let it on; else (the tunnel to an address no host has, no output) no route."""
    steps = [s for h in hops for s in h.steps]
    for s in steps:
        if s.drops:
            return "deny", deny_reason(s, cat)
    if not hops or not hops[-1].outcome.startswith("output"):
        return "deny", "no route"
    reasons = list(dict.fromkeys(r for s in steps if (r := allow_reason(s, cat)) is not None))
    return "allow", " + ".join(reasons) or "no policy applies"


def hop_of(host: str, trace: Trace) -> Hop:
    steps = tuple(trace.steps)
    outcome = "none"
    for s in steps:
        if s.drops:
            outcome = "drop"
            break
        if s.tunnels:
            outcome = "tunnel"
        elif s.outputs():
            outcome = "output:" + s.outputs()[-1]
    return Hop(host, steps, outcome)


def arrival_fields(trace: Trace, tun_src: str) -> tuple[str, dict[str, str]]:
    """(protocol word, fields) of the packet as the next host receives it from the tunnel: its
    header fields as they left (the trace's last "Final flow"), with the VNI, source group and
    underlay addresses the tunnel output set."""
    final = trace.final
    fields: dict[str, str] = {}
    tun = trace.writes
    if "tun_id" in tun:
        fields["tun_id"] = tun["tun_id"]
    fields["tun_src"] = tun_src
    if "tun_dst" in tun:
        fields["tun_dst"] = tun["tun_dst"]
    fields["tun_metadata0"] = tun.get("tun_metadata0", "0")
    # OVS's flow parser takes a UDP packet's ports only as udp_src/udp_dst, and an ICMPv6 packet's
    # type and code only as icmpv6_type/icmpv6_code (its "Final flow" writes them icmp_type/code)
    rename = {"tp_src": "udp_src", "tp_dst": "udp_dst"} if trace.protocol.startswith("udp") else {}
    if trace.protocol == "icmp6":
        rename = {"icmp_type": "icmpv6_type", "icmp_code": "icmpv6_code"}
    fields |= {rename.get(k, k): final[k] for k in PACKET_FIELDS if k in final}
    return trace.protocol or "ip", fields


def flow_text(protocol: str, fields: Mapping[str, str], in_port: str = TUNNEL_PORT) -> str:
    """``ofproto/trace``'s flow syntax: the protocol word first (OVS's parser checks
    prerequisites as it goes), then the port, then the fields in the order given."""
    return ",".join([protocol, f"in_port={in_port}", *(f"{k}={v}" for k, v in fields.items())])


def arrival_flow(trace: Trace, tun_src: str, in_port: str = TUNNEL_PORT) -> str:
    """The packet as the next host receives it from the tunnel, in ``ofproto/trace`` syntax."""
    return flow_text(*arrival_fields(trace, tun_src), in_port=in_port)


Tracer = Callable[[str, str], str]  # (host, flow in ofproto/trace syntax) → the trace's text


def explain(
    host: str,
    flow: str,
    trace: Tracer,
    underlay: Mapping[str, str],
    cat: Catalog,
    max_hops: int = 4,
) -> Explanation:
    """Trace ``flow`` on ``host``, follow it through the tunnel to the host it goes to
    (``underlay``: host → its tunnel address), and judge it."""
    by_ip = {ip: h for h, ip in underlay.items()}
    hops: list[Hop] = []
    for _ in range(max_hops):
        parsed = parse_trace(trace(host, flow))
        hop = hop_of(host, parsed)
        hops.append(hop)
        if hop.outcome != "tunnel":
            break
        nxt = by_ip.get(parsed.writes.get("tun_dst", ""))
        if nxt is None:
            break  # tunnelled to an address no host of ours has: judged as it is (no route)
        flow = arrival_flow(parsed, underlay[host])
        host = nxt
    verdict, by = judge(hops, cat)
    return Explanation(verdict, by, tuple(hops))
