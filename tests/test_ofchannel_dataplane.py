"""The OpenFlow channel against a real Open vSwitch: what it installs is what ovs-ofctl installs.

A private ovsdb-server + ovs-vswitchd (userspace datapath) in a network namespace of its own, two
bridges, started and stopped by PID. Every flow set the compiler emits (each host of each scenario
and of the demo, and the table map's rich fabrics) goes onto bridge A through the channel and onto
bridge B through ``ovs-ofctl``; the two bridges' dumps must be identical, flow for flow. Then: a
strict delete removes exactly its flow; a bundle with one flow OVS refuses raises naming that flow,
changes nothing on the bridge and makes the next sync a full one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from policyfabric.agent.renderers.ovs.applier import TLV_MAP, FlowApplier
from policyfabric.agent.renderers.ovs.flowmods import AddFlow, DeleteFlow
from policyfabric.agent.renderers.ovs.flows import Flow, flow
from policyfabric.agent.renderers.ovs.ofchannel import BundleFailed
from policyfabric.lab.ovs import OvsInstance
from policyfabric.sh import run
from tests.scenario_flows import every_scenario
from tests.test_table_map import PIPELINES

pytestmark = pytest.mark.dataplane

SETS = {**every_scenario(), **{f"table map: {n}": fs for n, fs in PIPELINES}}


@pytest.fixture(scope="module")
def ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    netns = f"pfofc{os.getpid()}"
    run(["ip", "netns", "add", netns])
    instance = OvsInstance(tmp_path_factory.mktemp("ofc"), netns)
    try:
        instance.start()
        for bridge in ("br-a", "br-b"):
            instance.add_bridge(bridge)
            instance.ofctl("add-tlv-map", instance.mgmt(bridge), TLV_MAP)
        yield instance
    finally:
        instance.stop()
        run(["ip", "netns", "del", netns], check=False)


def dump(ovs: OvsInstance, bridge: str) -> list[str]:
    """The bridge's flows as ovs-ofctl prints them (no counters), sorted."""
    text = ovs.ofctl("dump-flows", "--no-stats", "--no-names", ovs.mgmt(bridge))
    return sorted(line.strip() for line in text.splitlines() if line.strip() and "OFPST_FLOW" not in line)


def clear(ovs: OvsInstance, *bridges: str) -> None:
    for bridge in bridges:
        ovs.ofctl("del-flows", ovs.mgmt(bridge))


def through_channel(ovs: OvsInstance, bridge: str) -> FlowApplier:
    applier = FlowApplier(ovs.mgmt(bridge), ovs.env, channel_max=1 << 20)  # every delta, however large
    assert applier.channel is not None
    return applier


@pytest.mark.parametrize("name", list(SETS))
def test_every_flow_installs_through_the_channel_as_through_ovs_ofctl(ovs: OvsInstance, name: str) -> None:
    flows = list(dict.fromkeys(SETS[name]))
    clear(ovs, "br-a", "br-b")
    channel = through_channel(ovs, "br-a")
    channel.execute([AddFlow(f) for f in flows])
    assert channel.channel_down is None and channel.channel is not None and channel.channel.connected
    FlowApplier(ovs.mgmt("br-b"), ovs.env, channel=False).execute([AddFlow(f) for f in flows])
    a, b = dump(ovs, "br-a"), dump(ovs, "br-b")
    assert len(a) == len({f.key for f in flows})
    assert a == b


def test_a_strict_delete_removes_exactly_its_flow(ovs: OvsInstance) -> None:
    clear(ovs, "br-a")
    applier = through_channel(ovs, "br-a")
    flows = list(dict.fromkeys(SETS["demo/h1"]))
    same_match = flow(30, 99, {"reg2": "0x10002"}, "drop")
    other_priority = flow(30, 98, {"reg2": "0x10002"}, "drop")
    applier.execute([AddFlow(f) for f in (*flows, same_match, other_priority)])
    before = dump(ovs, "br-a")
    gone = flows[len(flows) // 2]
    applier.execute([DeleteFlow(gone), DeleteFlow(same_match)])
    after = dump(ovs, "br-a")
    assert len(after) == len(before) - 2
    assert any("priority=98,reg2=0x10002" in line for line in after)
    assert not any("priority=99,reg2=0x10002" in line for line in after)


# OVS refuses ct(commit) on a flow that does not match IP (the encoder has no way to know)
REFUSED = flow(63, 100, {"reg4": 77}, "ct(commit,zone=NXM_NX_REG3[0..15])", "goto_table:70")


def test_a_bundle_with_a_refused_flow_changes_nothing_and_the_next_sync_is_full(ovs: OvsInstance) -> None:
    clear(ovs, "br-a")
    applier = through_channel(ovs, "br-a")
    first = list(dict.fromkeys(SETS["two_hosts/h1"]))
    assert applier.sync(first).full
    before = dump(ovs, "br-a")
    extra: list[Flow] = [
        flow(30, 7, {"reg2": "0x77"}, "drop"),
        REFUSED,
        flow(30, 8, {"reg2": "0x78"}, "drop"),
    ]
    with pytest.raises(BundleFailed) as err:
        applier.sync([*first[1:], *extra])  # one delete, three adds
    assert REFUSED.text() in str(err.value) and "OFPET_BAD_ACTION" in str(err.value), str(err.value)
    assert dump(ovs, "br-a") == before  # all or nothing
    assert applier.installed is None
    again = applier.sync([*first[1:], extra[0]])
    assert again.full
    assert len(dump(ovs, "br-a")) == len(first)
    later = applier.sync([*first, extra[0]])  # a delta, on a fresh connection
    assert not later.full and later.added == 1 and applier.channel_down is None
