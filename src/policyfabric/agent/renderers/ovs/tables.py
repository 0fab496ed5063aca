"""The table map of ``br-int``, declared once as data: the compiler, the checker and the docs read it.

Each ``Table`` says what its flows may match (prerequisite keywords such as ``ip`` or ``tcp6``
included), which fields their actions may write (``set_field``, ``move``, ``dec_ttl`` as
``nw_ttl``, NAT as ``nw_src``/``nw_dst``), where they may go next and what happens on a miss.
``verify.check_flow`` holds every flow to its table's declaration, as Faucet's ``_verify_flowmod``
does, so a flow that could not work fails in a unit test, not in the lab; and docs/openflow.md's
table section is this module's output (``python -m policyfabric.agent.renderers.ovs.tables``).

Going on: ``goto_table`` and ``ct(table=N)`` only go forward (OpenFlow insists for the first; for
the second it keeps the pipeline a straight line a reader can follow); ``resubmit(,N)`` may go
forward or to the same table (OVS returns from it and carries on with the next action: a self
resubmit looks the packet up again once the flow has changed a register). Every next table,
whichever way, must be in ``goes_to``. That is why the external ingress tables sit before
routing (they end there) and the egress ones after output (it ends there).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# the tables' numbers, as the compiler names them; each is its declaration's ``number`` below (tested)
CLASSIFY, PORT_SECURITY, ARP, L2 = 0, 10, 20, 30
EXT_IN, EXT_ARP, EXT_IN_NAT = 35, 36, 37
ROUTING = 40
POLICY, POLICY_CT, SG_EGRESS, SG_INGRESS, OUTPUT = 60, 61, 62, 63, 70
NAT_OUT, NEXTHOP, NEIGHBOUR = 71, 72, 73

ZONE = "NXM_NX_REG3[0..15]"  # ct(zone=...): reg3's low 16 bits
NEW = "+new+trk"
REPLY_ONLY = 0x2  # reg5 flag: came back through SNAT, judged on the endpoint's host
# the class id of "the outside" (traffic through a floating IP or SNAT); EPGs get 0x4000 and up
OUTSIDE = 0x3FFF


@dataclass(frozen=True)
class Register:
    """A register's one job across the pipeline (which tables set and match it: see ``TABLES``)."""

    name: str  # as matched: reg0
    role: str


REGISTERS = (
    Register("reg0", "source group class id (EPG `classid`; 0 = no group)"),
    Register("reg1", "destination group class id"),
    Register("reg2", "bridge domain VNI (to a router's SNAT gateway: the router's transit VNI)"),
    Register(
        "reg3",
        "conntrack zone: the routing domain's number (low 16 bits), so tenants' overlapping addresses "
        "never share a connection",
    ),
    Register("reg4", "output port (a local port, the tunnel port or an external port)"),
    Register(
        "reg5",
        "flags: bit 0, the packet arrived from a tunnel; bit 1 (`REPLY_ONLY`), a reply that came back "
        "through SNAT (judged on the endpoint's host)",
    ),
    Register("reg6", "the router a packet was sent to (its number), from L2 or an external port to ROUTING"),
    Register("reg7", "remote host (tunnel IPv4 destination)"),
    Register("reg9", "the next hop on an external network"),
)

CLASSIFIER = "ip ipv6 tcp tcp6 udp udp6 icmp icmp6 nw_proto tp_dst"  # a rule's L3/L4 part
SG_ICMP = "icmp_type icmp_code"  # a security group rule's ICMP type and code
ARP_ANSWER = "dl_src dl_dst arp_op arp_sha arp_spa arp_tha arp_tpa"  # what answering ARP rewrites
# what answering a neighbour solicitation rewrites (the solicitation becomes the advertisement)
ND_ANSWER = "dl_src dl_dst ipv6_src ipv6_dst icmp_type nd_reserved nd_options_type nd_tll"


def _fields(*names: str) -> frozenset[str]:
    return frozenset(" ".join(names).split())


@dataclass(frozen=True)
class Table:
    """One table: what its flows may match, what their actions may write, where they may go."""

    number: int
    name: str
    purpose: str
    flows: str  # how many flows it holds, as the fabric grows
    matches: frozenset[str]
    sets: frozenset[str] = frozenset()
    goes_to: tuple[int, ...] = ()  # goto_table, ct(table=N) and resubmit(,N) targets
    miss: int | None = None  # the next table of a packet no flow matches; None: drop
    output: bool = False  # may send packets out (output:N, IN_PORT)
    learns: tuple[int, ...] = ()  # tables its learn() actions add flows to


TABLES = (
    Table(
        CLASSIFY,
        "CLASSIFY",
        purpose=(
            "where a packet comes from: a local port sets its group, bridge domain and zone; the tunnel "
            "its bridge domain and source group (the Geneve option); an external port goes to EXT_IN; a "
            "router's transit VNI, on its active gateway, to NAT_OUT"
        ),
        flows="1 per local endpoint, bridge domain and external port, and router it is the gateway of",
        matches=_fields("in_port tun_id"),
        sets=_fields("reg0 reg2 reg3 reg4 reg5 reg6"),
        goes_to=(PORT_SECURITY, L2, EXT_IN, NAT_OUT),
    ),
    Table(
        PORT_SECURITY,
        "PORT_SECURITY",
        purpose=(
            "a local port sends only from its endpoint's MAC and addresses (ARP sender fields too) and "
            "its allowed address pairs' (MAC, prefix), its IPv6 link-local address (EUI-64) and `::` "
            "(DAD); its DHCP requests go to the agent "
            "(CONTROLLER), its DHCP server packets (UDP source port 67) nowhere; the same for router "
            "solicitations and DHCPv6 (to the agent), router advertisements and UDP source port 547; "
            "multicast listener discovery from any port nowhere"
        ),
        flows="~3 per endpoint address, 1-2 per endpoint for DHCP",
        matches=_fields("in_port dl_src ip nw_src ipv6 ipv6_src icmp6 arp arp_spa arp_sha udp tp_src tp_dst")
        | _fields("icmp_type udp6"),  # router solicitations and DHCPv6 to the agent, RAs dropped
        goes_to=(ARP,),
        output=True,  # DHCP requests to the controller (the agent's responder)
    ),
    Table(
        ARP,
        "ARP",
        purpose=(
            "ARP requests for known addresses (endpoints of the bridge domain, local or remote, and "
            "routers' gateways) are answered on the host; an endpoint's probe of its own address is not. "
            "IPv6 neighbour solicitations for a router's gateway and link-local addresses are answered "
            "too: the solicitation is rewritten into the advertisement (router, solicited, override; "
            "the target's MAC), which looks itself up again to set the target MAC option"
        ),
        flows="1 per known IPv4 address and router leg, 3 per IPv6 router address",
        matches=_fields("in_port reg2 arp arp_op arp_tpa icmp6 icmp_type dl_src ipv6_src nd_target"),
        sets=_fields(ARP_ANSWER, ND_ANSWER),
        goes_to=(ARP, L2),
        miss=L2,
        output=True,
    ),
    Table(
        L2,
        "L2",
        purpose=(
            "destination MAC → its group, output port and host, or a router (→ ROUTING); a local "
            "endpoint's allowed-pair MAC, below those (priority 90); ARP and IPv6 ND "
            "multicast to the bridge domain's ports and hosts; anything else (unknown unicast) dropped"
        ),
        flows="1 per endpoint in the host's bridge domains and router leg, 4 per bridge domain",
        matches=_fields("reg2 reg5 dl_dst arp icmp6"),
        sets=_fields("reg1 reg4 reg6 reg7 tun_id tun_dst tun_metadata0"),
        goes_to=(ROUTING, POLICY),
        output=True,
    ),
    Table(
        EXT_IN,
        "EXT_IN",
        purpose=(
            "from an external network: learn ARP senders (→ NEIGHBOUR); DNAT to a local floating IP's "
            "endpoint with the outside as source group; un-NAT (no commit) replies to a router's SNAT address"
        ),
        flows="1 per external port and local floating IP, 1 per router this host is the active gateway of",
        matches=_fields("in_port arp ip nw_dst"),
        sets=_fields("reg0 reg3 reg5 reg6 nw_src nw_dst"),
        goes_to=(EXT_ARP, EXT_IN_NAT),
        learns=(NEIGHBOUR,),
    ),
    Table(
        EXT_ARP,
        "EXT_ARP",
        purpose=(
            "answer ARP for local floating IPs (their derived MAC) and, on a router's active gateway, "
            "its external address (the router's MAC)"
        ),
        flows="1 per answered address",
        matches=_fields("in_port arp arp_op arp_tpa"),
        sets=_fields(ARP_ANSWER),
        output=True,
    ),
    Table(
        EXT_IN_NAT,
        "EXT_IN_NAT",
        purpose=(
            "after inbound NAT: invalid → drop; new and REPLY_ONLY → drop (nothing opens a connection "
            "inward through SNAT); else → ROUTING, to the endpoint like any routed packet"
        ),
        flows="3",
        matches=_fields("ct_state reg5 ip"),
        goes_to=(ROUTING,),
    ),
    Table(
        ROUTING,
        "ROUTING",
        purpose=(
            "a router (reg6) and destination address (IPv4 or IPv6) → the endpoint's MAC, bridge domain, "
            "group and port or host, TTL (hop limit) - 1; to the outside: a floating IP's external port, "
            "or the router's SNAT gateway"
        ),
        flows=(
            "1 per IPv4 and IPv6 address on a router's bridge domains; per router with an external "
            "gateway, 1 per prefix + 1 + 1 per local floating IP"
        ),
        matches=_fields("reg6 ip nw_src nw_dst ipv6 ipv6_dst"),
        sets=_fields("dl_src dl_dst nw_ttl reg1 reg2 reg4 reg7"),
        goes_to=(POLICY,),
    ),
    Table(
        POLICY,
        "POLICY",
        purpose=(
            "IP → conntrack in the routing domain's zone (reg3); IPv6 neighbour discovery, non-IP and "
            "REPLY_ONLY pass to output"
        ),
        flows="6",
        matches=_fields("ip ipv6 icmp6 icmp_type reg5"),
        goes_to=(POLICY_CT, OUTPUT),
        miss=OUTPUT,
    ),
    Table(
        POLICY_CT,
        "POLICY_CT",
        purpose=(
            "group policy: invalid → drop, established and related pass; new connections by intra-group "
            "policy, contract rules (conjunctions) and the outside's rules; no EPG at either end → "
            "SG_EGRESS; a logging rule's flow also sends the agent a metered copy (rule log)"
        ),
        flows="rules + groups, not members",
        matches=_fields("ct_state reg0 reg1 conj_id", CLASSIFIER),
        goes_to=(SG_EGRESS, OUTPUT),
    ),
    Table(
        SG_EGRESS,
        "SG_EGRESS",
        purpose=(
            "security groups' egress rules of the sending local port (in_port), once it has any; a logging "
            "group's rules and default deny also send the agent a metered copy (rule log)"
        ),
        flows="local ports + member addresses + rules",
        matches=_fields("in_port conj_id nw_dst ipv6_dst", CLASSIFIER, SG_ICMP),
        goes_to=(SG_INGRESS,),
        miss=SG_INGRESS,
    ),
    Table(
        SG_INGRESS,
        "SG_INGRESS",
        purpose=(
            "security groups' ingress rules of the receiving local port (reg4); what passes is committed "
            "to conntrack; a logging group's rules and default deny also send the agent a metered copy"
        ),
        flows="local ports + member addresses + rules",
        matches=_fields("reg4 conj_id nw_src ipv6_src", CLASSIFIER, SG_ICMP),
        goes_to=(OUTPUT,),
    ),
    Table(
        OUTPUT,
        "OUTPUT",
        purpose=(
            "reg4 → a local port; the tunnel with VNI (reg2), host (reg7) and source group (reg0 → "
            "the Geneve option); an external port → NAT_OUT"
        ),
        flows="1 per local and external port, 1 for the tunnel",
        matches=_fields("reg4"),
        sets=_fields("tun_id tun_dst tun_metadata0"),
        goes_to=(NAT_OUT,),
        output=True,
    ),
    Table(
        NAT_OUT,
        "NAT_OUT",
        purpose=(
            "SNAT (router's NAT zone) to a floating IP and its MAC, or to the router's external address "
            "and MAC"
        ),
        flows="1 per local floating IP and router this host is the active gateway of",
        matches=_fields("reg4 reg6 ip nw_src"),
        sets=_fields("dl_src nw_src"),
        goes_to=(NEXTHOP,),
    ),
    Table(
        NEXTHOP,
        "NEXTHOP",
        purpose="the next hop (reg9): an on-link destination itself, anything else the network's gateway",
        flows="2 per external port",
        matches=_fields("reg4 ip nw_dst"),
        sets=_fields("reg9"),
        goes_to=(NEIGHBOUR,),
    ),
    Table(
        NEIGHBOUR,
        "NEIGHBOUR",
        purpose=(
            "reg9 → destination MAC and output, learned from ARP (idle 600 s); not learned yet: an "
            "on-link address via the gateway, the gateway → drop (the agent's ARP requests prime it)"
        ),
        flows="learned + 2 per external port",
        matches=_fields("reg4 reg9"),
        sets=_fields("reg9 dl_dst"),
        goes_to=(NEIGHBOUR,),
        output=True,
    ),
)

BY_NUMBER = {t.number: t for t in TABLES}


def goto(table: int) -> str:
    return f"goto_table:{table}"


def set_field(value: int | str, field: str) -> str:
    """``set_field``, not ``load``: OVS reports loads back as set_field, and ``replace-flows``
    would then see every loading flow as changed and rewrite it on each full sync."""
    return f"set_field:{value if isinstance(value, str) else hex(value)}->{field}"


# --- docs/openflow.md's table section is generated from the declarations above ---

COMMAND = "python -m policyfabric.agent.renderers.ovs.tables"
BEGIN = f"<!-- generated by `{COMMAND}`: edit tables.py, not this -->"
END = "<!-- end of generated table map -->"


def _name(number: int) -> str:
    return f"{number} {BY_NUMBER[number].name}"


def _codes(names: Iterable[str]) -> str:
    return " ".join(f"`{n}`" for n in sorted(names)) or "-"


def _row(*cells: str) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown() -> str:
    """The registers and tables as Markdown, between the markers docs/openflow.md holds them in."""
    lines = [
        BEGIN,
        "",
        "### Registers",
        "",
        _row("register", "role", "set in", "matched in"),
        "|---|---|---|---|",
    ]
    for r in REGISTERS:
        set_in = ", ".join(str(t.number) for t in TABLES if r.name in t.sets) or "-"
        matched_in = ", ".join(str(t.number) for t in TABLES if r.name in t.matches) or "-"
        lines.append(_row(r.name, r.role, set_in, matched_in))
    lines += ["", "### Tables", "", "Flow counts leave out each table's miss flow.", ""]
    lines.append(_row("table", "name", "what it does", "flows", "matches", "sets", "goes to", "on a miss"))
    lines.append("|---|---|---|---|---|---|---|---|")
    for t in TABLES:
        sets = _codes(t.sets) + (", outputs" if t.output else "")
        sets += "".join(f", learns into {_name(n)}" for n in t.learns)
        goes_to = ", ".join(_name(n) for n in t.goes_to) or "-"
        miss = "drop" if t.miss is None else f"→ {_name(t.miss)}"
        lines.append(_row(str(t.number), t.name, t.purpose, t.flows, _codes(t.matches), sets, goes_to, miss))
    return "\n".join([*lines, "", END]) + "\n"


def replace_section(doc: str) -> str:
    """``doc`` with its generated section (between the markers) replaced by ``markdown()``."""
    head, begin, rest = doc.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"the document lacks the markers {BEGIN!r} ... {END!r}")
    return head + markdown().rstrip("\n") + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print br-int's table map (Markdown), or update a doc.")
    parser.add_argument("--write", type=Path, metavar="DOC", help="replace DOC's generated section")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(markdown())
    else:
        args.write.write_text(replace_section(args.write.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
