"""A fake Open vSwitch bridge that runs every flow the compiler emits: packet in, verdict out.

In the spirit of Faucet's fake OFTable: unit tests (and, later, ``explain``) push a packet
through the flows ``compile_pipeline`` produced, without Open vSwitch, and assert where it goes
and what its header looks like there. The switch is built the way the agent builds a bridge,
from flow mods: ``FakeSwitch(flows)`` is a first sync (``ReplaceFlows``), ``apply(commands)``
takes the planner's deltas as one bundle (``simtables.py``: overlapping flows are refused,
``delete_learned`` flushes as OVS flushes). ``verify``, if given, sees every flow before it is
installed, learned ones included: the hook for a checker of the declared table map.

What runs, with OVS's meaning: matches on every field the compiler uses, with masks and
prefixes, protocol keywords, ``ct_state`` and conjunctions (``simmatch.py``); ``goto_table``,
``resubmit(,N)``, ``output``, ``IN_PORT`` (OVS never outputs to the input port otherwise),
``set_field``, ``load``, ``move``, ``dec_ttl`` (at TTL 1 or 0 the action list stops, there
being no controller to tell), ``ct`` with zones, commit, ``table`` and NAT (``simconntrack.py``),
and ``learn``, whose flows are installed when the packet has been through, as OVS's are. An
action it does not know raises ``NotImplementedError``: a test never passes by ignoring one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from policyfabric.agent.renderers.ovs.flowmods import Command, ReplaceFlows
from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.renderers.ovs.simactions import Ct, Learn, Learned, load, move, set_field
from policyfabric.agent.renderers.ovs.simconntrack import Conntrack
from policyfabric.agent.renderers.ovs.simmatch import Packet
from policyfabric.agent.renderers.ovs.simtables import FlowTables, OverlapError

CONTROLLER_PORT = 0xFFFFFFFD  # OFPP_CONTROLLER: what ``outputs`` records for a packet sent to the agent
MAX_DEPTH = 64  # OVS's limit on nested resubmits and table hops

__all__ = ["FakeSwitch", "OverlapError", "Packet", "Result"]


@dataclass
class Result:
    outputs: list[tuple[int, dict[str, Any]]]  # (port, header fields as the packet left)
    trace: list[Flow]  # the flows the packet (and its ct forks) went through, in order
    logged: list[str] = field(default_factory=list)  # the rule log's controller actions it met

    @property
    def ports(self) -> list[int]:
        return [p for p, _ in self.outputs]

    @property
    def dropped(self) -> bool:
        return not self.outputs

    @property
    def only(self) -> tuple[int, dict[str, Any]]:
        """The one (port, header) the packet left by; AssertionError if it left by none or several."""
        assert len(self.outputs) == 1, f"expected one output, got ports {self.ports}"
        return self.outputs[0]


@cache
def _ct(action: str) -> Ct:
    return Ct.parse(action)


@cache
def _learn(action: str) -> Learn:
    return Learn.parse(action)


class FakeSwitch:
    """One bridge: flow tables, a connection tracker, and ``send(packet) -> Result``."""

    def __init__(self, flows: Iterable[Flow] = (), *, verify: Callable[[Flow], None] | None = None) -> None:
        self.tables = FlowTables(verify)
        self.conntrack = Conntrack()
        self._learning: list[Learned] = []
        self.apply([ReplaceFlows(tuple(flows))])

    def apply(self, commands: Sequence[Command]) -> None:
        """Apply flow mods as one bundle (all or none); OverlapError if they leave an overlap."""
        self.tables.apply(commands)

    def flows(self) -> set[Flow]:
        """Every flow the switch holds, learned ones included."""
        return {e.flow for e in self.tables.entries.values()}

    def learned(self) -> set[Flow]:
        return {e.flow for e in self.tables.entries.values() if e.learned}

    def send(self, fields: Mapping[str, Any]) -> Result:
        """Put a packet on port ``fields["in_port"]``; where it (and copies of it) came out."""
        p = Packet(dict(fields))
        result = Result([], [])
        self._learning = []
        self._table(0, p, result, 0)
        for learned in self._learning:  # installed after the packet, as OVS does
            self.tables.learn(learned.flow, learned.cookie)
        return result

    def _table(self, table: int, p: Packet, result: Result, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise RuntimeError(f"pipeline loop: more than {MAX_DEPTH} tables deep")
        e = self.tables.lookup(table, p)
        if e is None:
            return  # a table miss drops
        result.trace.append(e.flow)
        self._actions(e.flow.actions, p, result, depth)

    def _actions(self, actions: Iterable[str], p: Packet, result: Result, depth: int) -> None:
        for action in actions:
            if action == "drop":
                continue  # "drop" is an empty action list
            if action.startswith("goto_table:"):
                self._table(int(action[len("goto_table:") :]), p, result, depth + 1)
                return  # an instruction: the last thing a flow does
            if action.startswith("resubmit("):
                port, _, table = action[len("resubmit(") : -1].partition(",")
                if port:
                    raise NotImplementedError(f"fake switch: resubmit to a port {action!r}")
                self._table(int(table), p, result, depth + 1)  # then on with this list
            elif action.startswith("output:"):
                out = int(action[len("output:") :], 0)
                if out != p.fields.get("in_port"):
                    result.outputs.append((out, dict(p.fields)))
            elif action.startswith("CONTROLLER:"):  # to the agent: recorded as that port
                result.outputs.append((CONTROLLER_PORT, dict(p.fields)))
            elif action.startswith("controller("):  # a copy to the rule log: not an output
                result.logged.append(action)
            elif action == "IN_PORT":
                result.outputs.append((p.fields["in_port"], dict(p.fields)))
            elif action.startswith("set_field:"):
                set_field(p, action[len("set_field:") :])
            elif action.startswith("load:"):
                load(p, action[len("load:") :])
            elif action.startswith("move:"):
                move(p, action[len("move:") :])
            elif action == "dec_ttl":
                ttl = int(p.fields.get("nw_ttl", 64))
                if ttl <= 1:
                    return
                p.fields["nw_ttl"] = ttl - 1
            elif action.startswith("ct("):
                self._ct(_ct(action), p, result, depth)
            elif action.startswith("learn("):
                self._learning.append(_learn(action).learned(p))
            else:
                raise NotImplementedError(f"fake switch: action {action!r}")

    def _ct(self, ct: Ct, p: Packet, result: Result, depth: int) -> None:
        """The tracker sees the packet; with ``table=``, a tracked (and NATed) copy goes on there
        while this one carries on with the rest of its actions, untracked, as in OVS."""
        state, fields = self.conntrack.track(p.fields, ct.zone_of(p), commit=ct.commit, nat=ct.nat)
        if ct.table is None:
            if ct.nat is not None:
                raise NotImplementedError("fake switch: ct(nat) without table=")
            return
        self._table(ct.table, Packet(fields, dict(p.regs), state), result, depth + 1)
