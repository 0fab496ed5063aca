"""Every flow held to its table's declaration in ``tables.py``, as Faucet's ``_verify_flowmod`` does.

``check_flow`` is what a fake switch calls on each flow it installs, and ``check_pipeline`` what
the tests call on everything the compiler emits. The rules:

- the flow's table is declared, and its priority fits in 16 bits;
- it matches only fields its table declares, each with its prerequisite (``nw_src`` needs ``ip``
  or ``tcp``..., ``tp_dst`` needs ``tcp``/``udp``..., ``arp_tpa`` needs ``arp``: OVS refuses the
  flow otherwise);
- its actions write only fields its table declares (``set_field``, ``move``, ``dec_ttl`` writes
  ``nw_ttl``, ``nat(src=)``/``nat(dst=)`` write ``nw_src``/``nw_dst``, a bare ``nat`` either),
  read and write fields whose prerequisites the match holds (``ct`` and ``dec_ttl`` need IP);
- ``goto_table`` and ``ct(table=N)`` go strictly forward, ``resubmit(,N)`` forward or to the same
  table, and only to tables the table declares in ``goes_to``; ``goto_table`` comes last and
  ``drop`` alone;
- ``output``/``IN_PORT`` only where the table outputs, ``conjunction`` only where it matches
  ``conj_id`` and beside nothing but other conjunctions, ``learn`` only into a table it declares in
  ``learns``, with the learned flow's matches and loads checked against that table;
- ``load`` is refused (``set_field`` instead: OVS reports loads back as ``set_field``, and
  ``replace-flows`` would rewrite such a flow on every full sync), and so is any action the
  checker does not know: teach it here first, then use it.

``check_pipeline`` adds: every table the pipeline uses (holds a flow, or is the target of one)
has its miss flow, priority 0 and no match, doing what the table declares (drop, or go to its miss
table), and no other flow takes priority 0, so the miss never overlaps a flow. Like Faucet, which
installs a miss in each of its tables: what happens to an unmatched packet is then the agent's
decision, visible and counted in ``dump-flows``, not the switch's table-miss default (a packet-in
for OpenFlow 1.0 to 1.2 controllers). Tables a pipeline does not use need none, as no packet reaches
them: the policy tables on a host whose policy nftables enforces hold nothing at all.

``footprint`` says what a pipeline's flows actually use, table by table; the tests hold the
declarations to it, so that the map allows what the compiler does and no more.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from policyfabric.agent.renderers.ovs.flows import NXM_FIELDS, Flow
from policyfabric.agent.renderers.ovs.tables import BY_NUMBER, REGISTERS, Table, goto

IPV4 = frozenset({"ip", "tcp", "udp", "icmp"})
IPV6 = frozenset({"ipv6", "tcp6", "udp6", "icmp6"})
KEYWORDS = IPV4 | IPV6 | {"arp"}
NONE: frozenset[str] = frozenset()
# each field the pipeline may name, and the keywords one of which its flow must match (OVS's
# prerequisites); keywords need none
FIELDS: dict[str, frozenset[str]] = {
    **{k: NONE for k in KEYWORDS},
    **{r.name: NONE for r in REGISTERS},
    **dict.fromkeys(("in_port", "dl_src", "dl_dst", "tun_id", "tun_dst", "tun_metadata0"), NONE),
    **dict.fromkeys(("ct_state", "conj_id"), NONE),
    **dict.fromkeys(("nw_src", "nw_dst"), IPV4),
    **dict.fromkeys(("ipv6_src", "ipv6_dst"), IPV6),
    **dict.fromkeys(("nw_proto", "nw_ttl"), IPV4 | IPV6),
    "tp_dst": frozenset({"tcp", "udp", "tcp6", "udp6"}),
    "tp_src": frozenset({"tcp", "udp", "tcp6", "udp6"}),
    **dict.fromkeys(("icmp_type", "icmp_code"), frozenset({"icmp", "icmp6"})),
    **dict.fromkeys(("nd_target", "nd_tll", "nd_reserved", "nd_options_type"), frozenset({"icmp6"})),
    **dict.fromkeys(("arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha"), frozenset({"arp"})),
}
# ovs-ofctl's other names
ALIASES = {"eth_src": "dl_src", "eth_dst": "dl_dst", "icmpv6_type": "icmp_type", **NXM_FIELDS}
L4 = {("ip", "6"): "tcp", ("ip", "17"): "udp", ("ip", "1"): "icmp"}
L4 |= {("ipv6", "6"): "tcp6", ("ipv6", "17"): "udp6", ("ipv6", "58"): "icmp6"}


class TableMapError(ValueError):
    """A flow its table's declaration does not allow, or a pipeline that misses a miss flow."""


@dataclass(frozen=True)
class _Effect:
    """What one action does, as the checker sees it."""

    writes: tuple[str, ...] = ()  # fields it writes (in this flow)
    reads: tuple[str, ...] = ()  # fields it reads (their prerequisites must hold)
    to: tuple[tuple[str, int], ...] = ()  # (how, table): goto_table, ct, resubmit, learn
    outputs: bool = False
    needs_ip: bool = False


def field(name: str) -> str:
    """The pipeline's name of a field written any way ovs-ofctl takes (``NXM_NX_REG0[0..15]``,
    ``eth_src``): the name the table map declares."""
    base = name.partition("[")[0]
    if m := re.fullmatch(r"NXM_NX_REG(\d+)", base):
        return f"reg{m.group(1)}"
    return ALIASES.get(base, base)


def split_args(text: str) -> list[str]:
    """``a,b(c,d),e[0..1]`` → ``["a", "b(c,d)", "e[0..1]"]``: commas outside brackets."""
    out, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += (c in "([") - (c in ")]")
        if c == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    return [*out, text[start:]] if text else out


def _inner(action: str, head: str) -> str:
    return action[len(head) : -1]


def _ct(action: str) -> _Effect:
    writes: list[str] = []
    reads, to = [], []
    for arg in split_args(_inner(action, "ct(")):
        key, _, value = arg.partition("=")
        if key == "table":
            to.append(("ct", int(value, 0)))
        elif key == "zone" and value.startswith("NXM_"):
            reads.append(field(value))
        elif arg.startswith("nat"):
            kinds = re.findall(r"\b(src|dst)=", arg) or ["src", "dst"]  # bare nat: un-NAT either way
            writes += [f"nw_{k}" for k in kinds]
    return _Effect(tuple(writes), tuple(reads), tuple(to), needs_ip=True)


def _learn(action: str) -> tuple[list[str], list[str], list[str], bool]:
    """A ``learn`` action's parts: what the learned flow matches and loads, what it reads from the
    packet being learned from, and whether the learned flow outputs."""
    matches, loads, reads, outputs = [], [], [], False
    for arg in split_args(_inner(action, "learn(")):
        if arg.startswith("NXM_"):  # FIELD[]=VALUE or FIELD[]=SOURCE[]: the learned flow's match
            key, _, source = arg.partition("=")
            matches.append(field(key))
            reads += [field(source)] if source.startswith("NXM_") else []
        elif arg.startswith("load:"):
            source, destination = arg[len("load:") :].split("->")
            loads.append(field(destination))
            reads += [field(source)] if source.startswith("NXM_") else []
        elif arg.startswith("output:"):
            outputs = True
            reads.append(field(arg[len("output:") :]))
    return matches, loads, reads, outputs


def _learned(action: str, target: Table) -> Iterator[str]:
    """The learned flow's problems, against the table it goes into."""
    matches, loads, _, outputs = _learn(action)
    for name in matches:
        if name not in target.matches:
            yield f"learns flows matching {name}, which table {target.number} does not declare"
    for name in loads:
        if name not in target.sets:
            yield f"learns flows setting {name}, which table {target.number} does not declare"
    if outputs and not target.output:
        yield f"learns flows that output, which table {target.number} does not do"


def _action(action: str) -> _Effect | None:
    """What ``action`` does; None for one the checker does not know."""
    if action in ("drop", "IN_PORT"):
        return _Effect(outputs=action == "IN_PORT")
    if re.fullmatch(r"CONTROLLER:\d+", action):  # to the agent (its DHCP responder)
        return _Effect(outputs=True)
    if action.startswith("controller(") and action.endswith(")"):  # a copy to the rule log
        return _Effect()
    if action.startswith("goto_table:"):
        return _Effect(to=(("goto_table", int(action.split(":")[1], 0)),))
    if action.startswith("set_field:"):
        return _Effect(writes=(field(action.rpartition("->")[2]),))
    if action.startswith("move:"):
        src, dst = action[len("move:") :].split("->")
        return _Effect(writes=(field(dst),), reads=(field(src),))
    if re.fullmatch(r"output:\d+", action):
        return _Effect(outputs=True)
    if m := re.fullmatch(r"output:(NXM_\w+\[[\d.]*\])", action):  # to the port a field holds
        return _Effect(reads=(field(m.group(1)),), outputs=True)
    if action == "dec_ttl":
        return _Effect(writes=("nw_ttl",), needs_ip=True)
    if action.startswith("ct(") and action.endswith(")"):
        return _ct(action)
    if m := re.fullmatch(r"resubmit\(,(\d+)\)", action):
        return _Effect(to=(("resubmit", int(m.group(1))),))
    if m := re.fullmatch(r"learn\(table=(\d+),.*\)", action):
        return _Effect(reads=tuple(_learn(action)[2]), to=(("learn", int(m.group(1))),))
    if re.fullmatch(r"conjunction\(\d+,\d+/\d+\)", action):
        return _Effect()
    return None


def _keywords(f: Flow) -> set[str]:
    """The keywords ``f``'s match holds, ``ip,nw_proto=6`` counting as ``tcp``."""
    kws = {k for k, _ in f.match if k in KEYWORDS}
    proto = dict(f.match).get("nw_proto", "")
    return kws | {L4[(k, proto)] for k in ("ip", "ipv6") if k in kws and (k, proto) in L4}


def _prerequisite(name: str, kws: set[str], what: str) -> Iterator[str]:
    needs = FIELDS.get(name)
    if needs is None:
        yield f"{what} {name}, a field the table map does not know"
    elif needs and not needs & kws:
        yield f"{what} {name} without its prerequisite ({' or '.join(sorted(needs))}) in the match"


def _jump(t: Table, how: str, target: int) -> Iterator[str]:
    if target not in BY_NUMBER:
        yield f"{how} to table {target}, which the table map does not declare"
        return
    if how == "learn":
        if target not in t.learns:
            yield f"learns into table {target}, which is not among its learns {t.learns}"
        return
    if how == "resubmit" and target < t.number:
        yield f"resubmit to table {target} is neither forward nor the same table"
    elif how != "resubmit" and target <= t.number:
        yield f"{how} to table {target} is not forward"
    elif target not in t.goes_to:
        yield f"{how} to table {target}, which is not among its next tables {t.goes_to}"


def problems(f: Flow) -> list[str]:
    """What is wrong with ``f`` against its table's declaration ([] when nothing)."""
    t = BY_NUMBER.get(f.table)
    if t is None:
        return [f"table {f.table} is not declared in the table map"]
    out = [] if 0 <= f.priority <= 0xFFFF else [f"priority {f.priority} is not a 16-bit number"]
    kws = _keywords(f)
    for name, _ in f.match:
        out += _prerequisite(name, kws, "matches")
        if name in FIELDS and name not in t.matches:
            out.append(f"matches {name}, which the table does not declare")
    for i, action in enumerate(f.actions):
        a = _action(action)
        if a is None and action.startswith("load:"):
            out.append(
                f"{action}: use set_field (OVS reports a load back as set_field, so replace-flows "
                "would rewrite the flow on every full sync)"
            )
            continue
        if a is None:
            out.append(f"action {action!r} is unknown to the checker")
            continue
        if action == "drop" and len(f.actions) > 1:
            out.append("drop is not the only action")
        if action.startswith("goto_table:") and i != len(f.actions) - 1:
            out.append(f"{action} is not the last action")
        if action.startswith("conjunction("):
            if "conj_id" not in t.matches:
                out.append(f"{action} in a table that does not match conj_id")
            if not all(other.startswith("conjunction(") for other in f.actions):
                out.append(f"{action} beside other actions (OVS allows only conjunctions together)")
        if a.outputs and not t.output:
            out.append(f"{action} outputs, which the table does not do")
        if a.needs_ip and not (kws & (IPV4 | IPV6)):
            out.append(f"{action} without ip or ipv6 in the match")
        for name in a.reads:
            out += _prerequisite(name, kws, f"{action} reads")
        for name in a.writes:
            out += _prerequisite(name, kws, f"{action} writes")
            if name in FIELDS and name not in t.sets:
                out.append(f"{action} writes {name}, which the table does not declare")
        for how, target in a.to:
            out += _jump(t, how, target)
        if action.startswith("learn(") and a.to[0][1] in BY_NUMBER:
            out += _learned(action, BY_NUMBER[a.to[0][1]])
    return out


def _error(f: Flow, found: list[str]) -> str:
    name = BY_NUMBER[f.table].name if f.table in BY_NUMBER else "undeclared"
    flow = f"{f.match_text()} actions={','.join(f.actions)}"
    return f"table {f.table} ({name}): " + "; ".join(found) + f" — in {flow}"


def check_flow(f: Flow) -> None:
    """Raise ``TableMapError`` naming the table, the flow and each offending field or action when
    ``f`` breaks its table's declaration."""
    found = problems(f)
    if found:
        raise TableMapError(_error(f, found))


def miss_problems(flows: Iterable[Flow]) -> list[str]:
    """Every used table's miss flow: present, alone at priority 0, doing what the table declares."""
    flows = list(flows)
    used = {f.table for f in flows}
    for f in flows:
        for a in filter(None, map(_action, f.actions)):
            used.update(target for _, target in a.to)
    out = []
    for number in sorted(used & BY_NUMBER.keys()):
        t = BY_NUMBER[number]
        want = ("drop",) if t.miss is None else (goto(t.miss),)
        allowed = {want, ()} if t.miss is None else {want}  # no actions: drop
        at_zero = [f for f in flows if f.table == number and f.priority == 0]
        if not any(not f.match for f in at_zero):
            out.append(f"table {number} ({t.name}) has no miss flow (priority 0, no match, {want[0]})")
        for f in at_zero:
            if f.match:
                out.append(
                    f"table {number} ({t.name}): priority 0 is the miss flow's alone, not {f.match_text()}"
                )
            elif f.actions not in allowed:
                out.append(
                    f"table {number} ({t.name}): its miss flow does {','.join(f.actions)}, "
                    f"where the table declares {want[0]}"
                )
    return out


def check_pipeline(flows: Iterable[Flow]) -> None:
    """Raise ``TableMapError`` listing every flow that breaks its table's declaration and every
    used table without its miss flow."""
    flows = list(flows)
    found = [_error(f, p) for f in flows if (p := problems(f))] + miss_problems(flows)
    if found:
        raise TableMapError(f"{len(found)} problem(s) with the pipeline:\n" + "\n".join(found))


@dataclass
class Footprint:
    """What a pipeline's flows in one table actually match, write and do."""

    matches: set[str]
    writes: set[str]
    goes_to: set[int]
    outputs: bool = False


def footprint(flows: Iterable[Flow]) -> dict[int, Footprint]:
    """Per table, the fields its flows match and write, the tables they go to and whether they
    output; a learned flow counts in the table it is learned into. Tests compare it with the
    declarations, so that a declaration allows what the compiler does and no more."""
    out: dict[int, Footprint] = {}

    def of(table: int) -> Footprint:
        return out.setdefault(table, Footprint(set(), set(), set()))

    for f in flows:
        used = of(f.table)
        used.matches.update(k for k, _ in f.match)
        for action in f.actions:
            a = _action(action)
            if a is None:
                continue
            used.writes.update(a.writes)
            used.goes_to.update(t for how, t in a.to if how != "learn")
            used.outputs |= a.outputs
            if action.startswith("learn("):
                matches, loads, _, outputs = _learn(action)
                learned = of(a.to[0][1])
                learned.matches.update(matches)
                learned.writes.update(loads)
                learned.outputs |= outputs
    return out
