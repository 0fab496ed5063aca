"""The planner and the applier's executor, against the fake switch.

Properties: a switch holding ``old`` holds exactly ``new`` after ``plan(old, new)``; replaying a
plan changes nothing more; reverting it restores ``old``; ``plan(x, x)`` is empty. Then the
executor: the ``ovs-ofctl`` files the applier writes, read back by a stand-in ``ovs-ofctl`` into
the fake switch, make it hold what ``sync`` was given, and a failed bundle makes the next sync a
full one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyfabric.agent.renderers.ovs.applier import OFCTL, FlowApplier
from policyfabric.agent.renderers.ovs.flowmods import (
    AddFlow,
    Command,
    DeleteFlow,
    ReplaceFlows,
    index,
    plan,
)
from policyfabric.agent.renderers.ovs.flows import AGENT_COOKIE, Flow, flow
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.renderers.ovs.simactions import split_top
from policyfabric.agent.renderers.ovs.simulate import FakeSwitch
from policyfabric.sh import CommandFailed
from tests.fabric import TUNNEL
from tests.test_external_unit import APP1, host
from tests.test_routing_unit import WEB1

# -- flow sets: valid and free of overlaps by construction --
# Each (table, priority, port) slot has one shape of match, so two flows of one slot differ in a
# field both match exactly (or in disjoint prefixes) and never overlap; table 20 holds a
# conjunction whose clauses overlap, as clauses may.

Match = dict[str, str | int]
SHAPES: list[list[Match]] = [
    [{}],
    [{"ip": ""}, {"arp": ""}, {"ipv6": ""}],
    [{"reg1": hex(v)} for v in range(4)],
    [{"ip": "", "nw_dst": p} for p in ("10.0.0.0/25", "10.0.0.128/25", "10.0.1.0/24")],
]
ACTIONS: list[tuple[str, ...]] = [
    ("drop",),
    ("output:1",),
    ("output:2",),
    ("set_field:0x1->reg1", "goto_table:10"),
    ("set_field:02:00:00:00:00:09->eth_dst", "output:3"),
]


def universe() -> dict[tuple[int, int, tuple[tuple[str, str], ...]], list[tuple[str, ...]]]:
    """Every flow key the strategy may use, with the actions it may have."""
    out = {}
    for table in (0, 10):
        for priority in (0, 50, 100):
            for port in (1, 2, 3):
                for shape in SHAPES[(table // 10 + priority // 50 + port) % len(SHAPES)]:
                    f = flow(table, priority, {"in_port": port, **shape})
                    out[f.key] = ACTIONS
    for v in range(3):
        out[flow(20, 100, {"reg1": hex(v)}).key] = [("conjunction(7,1/2)",), ("conjunction(8,1/2)",)]
        out[flow(20, 100, {"reg2": hex(v)}).key] = [("conjunction(7,2/2)",), ("conjunction(8,2/2)",)]
    # a packet has one reg1: it never completes both conjunctions, so their verdicts may differ
    out[flow(20, 100, {"conj_id": 7}).key] = [("output:1",)]
    out[flow(20, 100, {"conj_id": 8}).key] = [("output:1",), ("output:2",)]
    return out


UNIVERSE = universe()


@st.composite
def flow_sets(draw: st.DrawFn) -> list[Flow]:
    keys = draw(st.sets(st.sampled_from(sorted(UNIVERSE))))
    return [Flow(t, p, m, draw(st.sampled_from(UNIVERSE[(t, p, m)]))) for t, p, m in sorted(keys)]


@settings(max_examples=200)
@given(flow_sets(), flow_sets())
def test_a_plan_takes_the_switch_from_old_to_exactly_new_and_replays_as_a_no_op(
    old: list[Flow], new: list[Flow]
) -> None:
    commands = plan(index(old), index(new))
    sw = FakeSwitch(old)
    sw.apply(commands)
    assert sw.flows() == set(new)
    sw.apply(commands)  # a retried bundle: nothing more changes
    assert sw.flows() == set(new)
    sw.apply(plan(index(new), index(old)))  # and back
    assert sw.flows() == set(old)


@given(flow_sets())
def test_planning_what_is_there_is_empty_and_a_first_sync_replaces_everything(flows: list[Flow]) -> None:
    assert plan(index(flows), index(flows)) == []
    assert plan(index(flows), {k: replace(f) for k, f in index(flows).items()}) == []  # equal, not same
    [command] = plan(None, index(flows))
    assert isinstance(command, ReplaceFlows)
    sw = FakeSwitch([flow(0, 7, {"in_port": 9}, "drop")])
    sw.apply([command])
    assert sw.flows() == set(flows)


def test_changed_flows_are_adds_and_removed_ones_strict_deletes() -> None:
    a, b = flow(0, 1, {"in_port": 1}, "output:2"), flow(0, 1, {"in_port": 2}, "output:1")
    assert plan(index([a, b]), index([replace(a, actions=("drop",))])) == [
        DeleteFlow(b),
        AddFlow(replace(a, actions=("drop",))),
    ]


def test_compiled_pipelines_change_into_each_other_through_plans() -> None:
    """Real pipelines (overlap-checked on the way): an endpoint arrives, gets a floating IP's
    gateway role, leaves; each step's plan makes the switch hold exactly the new pipeline."""
    views = [
        host("h1", (WEB1,)),
        host("h1", (WEB1, APP1)),
        host("gw1", (WEB1, APP1)),
        host("gw1", (APP1,), port=None),
        host("h1", ()),
    ]
    pipelines = [compile_pipeline(v, TUNNEL) for v in views]
    sw = FakeSwitch(pipelines[0])
    for old, new in itertools.pairwise(pipelines):
        sw.apply(plan(index(old), index(new)))
        assert sw.flows() == set(new)


# -- the executor: what reaches ovs-ofctl --


def parse_flow(text: str) -> Flow:
    """A line of ``Flow.text()`` (or ``match_text()``) back into a Flow."""
    head, _, actions = text.partition(" actions=")
    fields = [p.partition("=") for p in head.split(",")]
    values = {k: v for k, _, v in fields if k in ("cookie", "table", "priority")}
    match = tuple((k, v) for k, _, v in fields if k not in ("cookie", "table", "priority"))
    cookie = int(values.get("cookie", hex(AGENT_COOKIE)), 16)
    return Flow(int(values["table"]), int(values["priority"]), match, tuple(split_top(actions)), cookie)


class Ofctl:
    """Stands in for ``ovs-ofctl`` on a fake switch: reads the files the applier writes."""

    def __init__(self, switch: FakeSwitch) -> None:
        self.switch = switch
        self.calls: list[str] = []
        self.tlv = ""
        self.fail_next_bundle = False

    def __call__(self, argv: Sequence[str], *, env: Any = None, **_: Any) -> str:
        args = list(argv[len(OFCTL) :])
        verb = args[1] if args[0] == "--bundle" else args[0]
        self.calls.append(verb)
        if verb == "dump-tlv-map":
            return self.tlv
        if verb == "add-tlv-map":
            self.tlv = " 0x5046    0x1    4    tun_metadata0\n"
            return ""
        lines = Path(args[-1]).read_text().splitlines()
        commands: list[Command]
        if verb == "replace-flows":
            commands = [ReplaceFlows(tuple(parse_flow(line) for line in lines))]
        else:
            if self.fail_next_bundle:
                self.fail_next_bundle = False
                raise CommandFailed(argv, 1, "OFPBFC_MSG_FAILED")
            commands = []
            for line in lines:
                op, text = line.split(" ", 2)[1:]
                commands.append(AddFlow(parse_flow(text)) if op == "add" else DeleteFlow(parse_flow(text)))
        self.switch.apply(commands)
        return ""


def test_the_applier_makes_the_bridge_hold_what_it_is_given() -> None:
    ofctl = Ofctl(FakeSwitch())
    applier = FlowApplier("unix:/nowhere", run=ofctl)
    first = compile_pipeline(host("h1", (WEB1,)), TUNNEL)
    result = applier.sync(first)
    assert result.full and result.added == len(set(first))
    assert ofctl.calls == ["dump-tlv-map", "add-tlv-map", "replace-flows"]
    assert ofctl.switch.flows() == set(first)
    second = compile_pipeline(host("h1", (WEB1, APP1)), TUNNEL)
    result = applier.sync(second)
    assert not result.full and result.added > 0 and ofctl.calls[-1] == "bundle"
    assert ofctl.switch.flows() == set(second)
    calls = len(ofctl.calls)
    again = applier.sync(second)
    assert (again.added, again.removed, again.full) == (0, 0, False)
    assert len(ofctl.calls) == calls  # nothing to send, nothing sent


def test_after_a_failed_bundle_the_next_sync_is_a_full_one() -> None:
    ofctl = Ofctl(FakeSwitch())
    applier = FlowApplier("unix:/nowhere", run=ofctl)
    applier.sync(compile_pipeline(host("h1", (WEB1,)), TUNNEL))
    ofctl.fail_next_bundle = True
    wanted = compile_pipeline(host("h1", (WEB1, APP1)), TUNNEL)
    with pytest.raises(CommandFailed):
        applier.sync(wanted)
    assert applier.installed is None
    assert applier.sync(wanted).full and ofctl.calls[-1] == "replace-flows"
    assert ofctl.switch.flows() == set(wanted)


def test_packet_out_reaches_ovs_ofctl() -> None:
    seen: list[list[str]] = []

    def run(argv: Sequence[str], **_: Any) -> str:
        seen.append(list(argv))
        return ""

    FlowApplier("unix:/br.mgmt", run=run).packet_out("in_port=9 packet=00 actions=output:9")
    assert seen == [[*OFCTL, "packet-out", "unix:/br.mgmt", "in_port=9 packet=00 actions=output:9"]]


def test_an_ovs_ofctl_call_may_take_longer_the_more_flows_it_carries() -> None:
    """At N=10,000 a full sync of 90,000 flows into a userspace bridge of 10,000 ports took over the
    fixed minute: every attempt timed out and started again. The deadline now grows with the flows."""
    seen: list[float] = []

    def run(argv: Sequence[str], *, timeout: float = 60.0, **_: Any) -> str:
        seen.append(timeout)
        return ""

    applier = FlowApplier("unix:/nowhere", run=run, channel=False)
    applier.sync(compile_pipeline(host("h1", (WEB1,)), TUNNEL))
    small = seen[-1]
    applier.forget()
    many = [flow(70, 100, {"reg1": i}, "drop") for i in range(90_000)]
    applier.sync(many)
    assert 60 <= small < 61 and seen[-1] > 400
