"""The fake switch itself: that it means what OVS means, so tests that trust it can.

Overlaps (refused, with the documented exceptions), bundles (atomic, two-phase), flows identified
by what their match means, the lookup's treatment of conjunctions, and the actions whose
semantics are easy to get wrong: resubmit, drop, dec_ttl, ct forks, NAT, learn.
"""

from __future__ import annotations

from typing import Any

import pytest

from policyfabric.agent.renderers.ovs.flowmods import AddFlow, DeleteFlow, ReplaceFlows
from policyfabric.agent.renderers.ovs.flows import Flow, flow
from policyfabric.agent.renderers.ovs.simconntrack import Conntrack, Nat
from policyfabric.agent.renderers.ovs.simmatch import EST, NEW, RPL, SNAT, TRK, Match
from policyfabric.agent.renderers.ovs.simulate import FakeSwitch, OverlapError

MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def tcp(in_port: int = 1, src: str = "10.0.0.1", dst: str = "10.0.0.2", sport: int = 1000, dport: int = 80,
        **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {"in_port": in_port, "eth_type": "ip", "dl_src": MAC1, "dl_dst": MAC2, "nw_src": src,
            "nw_dst": dst, "nw_proto": 6, "nw_ttl": 64, "tp_src": sport, "tp_dst": dport,
            **extra}  # fmt: skip


# -- overlaps --


def test_two_flows_a_packet_could_both_match_at_one_priority_are_refused() -> None:
    by_port = flow(0, 100, {"in_port": 1}, "output:2")
    by_proto = flow(0, 100, {"ip": ""}, "output:3")
    with pytest.raises(OverlapError):
        FakeSwitch([by_port, by_proto])
    # another priority, a disjoint match, or the same actions: no overlap
    FakeSwitch([by_port, flow(0, 90, {"ip": ""}, "output:3")])
    FakeSwitch([by_port, flow(0, 100, {"in_port": 2, "ip": ""}, "output:3")])
    FakeSwitch([by_port, flow(0, 100, {"ip": ""}, "output:2")])


def test_masks_prefixes_and_protocols_decide_overlap() -> None:
    def overlap(a: dict[str, str | int], b: dict[str, str | int]) -> bool:
        try:
            FakeSwitch([flow(0, 1, a, "output:1"), flow(0, 1, b, "output:2")])
        except OverlapError:
            return True
        return False

    assert overlap({"ip": "", "nw_dst": "10.0.0.0/8"}, {"ip": "", "nw_dst": "10.1.0.0/16"})
    assert not overlap({"ip": "", "nw_dst": "10.0.0.0/25"}, {"ip": "", "nw_dst": "10.0.0.128/25"})
    assert overlap({"reg5": "0x2/0x2"}, {"reg5": "0x1/0x1"})
    assert not overlap({"reg5": "0x2/0x2"}, {"reg5": "0"})
    assert not overlap({"tcp": "", "tp_dst": 80}, {"udp": "", "tp_dst": 80})
    assert overlap({"tcp": ""}, {"ip": "", "tp_dst": 80})
    # ct_state: only states a packet can be in (established and related never both)
    assert not overlap({"ct_state": "-new+est+trk"}, {"ct_state": "-new+rel+trk"})
    assert overlap({"ct_state": "+trk"}, {"ct_state": "+new+trk"})
    assert not overlap({"ct_state": "+new+trk"}, {"ct_state": "+est+trk"})


CLAUSES = [
    flow(61, 1000, {"reg0": "0x1"}, "conjunction(7,1/2)", "conjunction(8,1/2)"),
    flow(61, 1000, {"reg1": "0x2"}, "conjunction(7,2/2)"),
    flow(61, 1000, {"reg1": "0x3"}, "conjunction(8,2/2)"),
]


def test_conjunction_clauses_may_overlap_but_their_verdicts_may_not() -> None:
    allow, deny = flow(61, 1000, {"conj_id": 7}, "output:1"), flow(61, 1000, {"conj_id": 8}, "drop")
    FakeSwitch([*CLAUSES, allow, deny])  # no packet completes both: reg1 is 2 or 3
    # reg1=2 now a clause of both: reg0=1, reg1=2 completes both
    both = [
        CLAUSES[0],
        CLAUSES[2],
        flow(61, 1000, {"reg1": "0x2"}, "conjunction(7,2/2)", "conjunction(8,2/2)"),
    ]
    with pytest.raises(OverlapError):
        FakeSwitch([*both, allow, deny])
    FakeSwitch([*both, allow, flow(61, 1000, {"conj_id": 8}, "output:1")])  # the same verdict
    # a plain flow at the conjunction's priority would silently win over it (OVS's tie rule)
    with pytest.raises(OverlapError):
        FakeSwitch([*CLAUSES, allow, flow(61, 1000, {"reg0": "0x1", "reg1": "0x2"}, "drop")])


def test_conjunction_flows_mixed_with_other_actions_are_refused() -> None:
    with pytest.raises(ValueError, match="mixed"):
        FakeSwitch([flow(61, 1000, {"reg0": "0x1"}, "conjunction(7,1/2)", "output:1")])


# -- bundles --


def test_a_bundle_is_all_or_nothing_and_judged_as_a_whole() -> None:
    a, b = flow(0, 100, {"in_port": 1}, "output:2"), flow(0, 100, {"ip": ""}, "output:3")
    sw = FakeSwitch([a])
    with pytest.raises(OverlapError):
        sw.apply([AddFlow(flow(0, 50, None, "drop")), AddFlow(b)])
    assert sw.flows() == {a}  # nothing of the failed bundle stayed
    sw.apply([AddFlow(b), DeleteFlow(a)])  # overlapping only halfway through: fine
    assert sw.flows() == {b}


def test_flows_are_identified_by_what_their_match_means() -> None:
    sw = FakeSwitch([flow(0, 100, {"ip": "", "nw_proto": 6, "in_port": 1}, "output:2")])
    sw.apply([AddFlow(flow(0, 100, {"in_port": 1, "tcp": ""}, "output:3"))])  # the same flow to OVS
    assert sw.send(tcp()).ports == [3]
    sw.apply([DeleteFlow(flow(0, 100, {"tcp": "", "in_port": "0x1"}))])
    assert sw.flows() == set()


def test_verify_sees_every_flow_installed_and_can_refuse_it() -> None:
    seen: list[Flow] = []

    def verify(f: Flow) -> None:
        seen.append(f)
        if f.table == 9:
            raise ValueError("table 9 is not in the map")

    learn = "learn(table=5,priority=1,NXM_NX_REG1[]=7,output:NXM_OF_IN_PORT[])"
    learning = flow(0, 100, {"in_port": 1}, learn)
    sw = FakeSwitch([learning], verify=verify)
    sw.send(tcp())
    assert [f.table for f in seen] == [0, 5]  # the learned flow too
    with pytest.raises(ValueError, match="table 9"):
        sw.apply([AddFlow(flow(9, 1, None, "drop"))])


# -- lookup and actions --


def test_a_plain_flow_wins_a_priority_tie_with_a_conjunction() -> None:
    """OVS's classifier: soft (conjunctive) matches count only above the best hard match."""
    clauses = [flow(0, 10, {"in_port": 1}, "conjunction(5,1/1)"), flow(0, 10, {"conj_id": 5}, "output:7")]
    assert FakeSwitch([*clauses, flow(0, 9, {"ip": ""}, "output:8")]).send(tcp()).ports == [7]
    assert FakeSwitch([*clauses, flow(0, 11, {"ip": ""}, "output:8")]).send(tcp()).ports == [8]


def test_resubmit_returns_and_drop_is_just_no_actions() -> None:
    sw = FakeSwitch(
        [
            flow(0, 1, None, "set_field:0x5->reg1", "resubmit(,1)", "resubmit(,2)", "output:3"),
            flow(1, 1, None, "drop"),
            flow(2, 1, {"reg1": 5}, "output:4"),
        ]
    )
    assert sw.send(tcp()).ports == [4, 3]


def test_dec_ttl_stops_at_one_and_in_port_is_never_an_output_unless_asked() -> None:
    sw = FakeSwitch([flow(0, 1, None, "dec_ttl", "output:1", "output:2")])
    assert sw.send(tcp(nw_ttl=5)).outputs == [(2, {**tcp(), "nw_ttl": 4})]
    assert sw.send(tcp(nw_ttl=1)).dropped
    assert FakeSwitch([flow(0, 1, None, "IN_PORT")]).send(tcp()).ports == [1]


def test_ct_with_a_table_forks_a_tracked_copy_and_carries_on() -> None:
    sw = FakeSwitch(
        [
            flow(0, 1, None, "ct(commit,zone=3,table=1)", "output:9"),
            flow(1, 1, {"ct_state": "+new+trk"}, "output:2"),
            flow(1, 1, {"ct_state": "+est+trk"}, "output:3"),
        ]
    )
    assert sw.send(tcp()).ports == [2, 9]  # the tracked copy first, then the rest of the list
    assert sw.send(tcp()).ports == [3, 9]


def test_snat_replies_are_unnatted_and_nothing_opens_inward() -> None:
    ct = Conntrack()
    out = tcp(src="10.0.0.1", dst="198.51.100.7")
    state, fields = ct.track(out, 9, commit=True, nat=Nat("src", "203.0.113.2"))
    assert state == TRK | NEW | SNAT and fields["nw_src"] == "203.0.113.2"
    back = tcp(src="198.51.100.7", dst="203.0.113.2", sport=80, dport=1000)
    state, fields = ct.track(back, 9, nat=Nat())
    assert state & (EST | RPL) == EST | RPL and fields["nw_dst"] == "10.0.0.1"
    assert ct.track(back, 8, nat=Nat())[0] == TRK | NEW  # another zone knows nothing of it
    state, fields = ct.track({**back, "tp_src": 81}, 9, nat=Nat())
    assert state == TRK | NEW and fields["nw_dst"] == "203.0.113.2"  # bare nat opens nothing
    # a second inside host on the same source port gets another one
    second = tcp(src="10.0.0.5", dst="198.51.100.7")
    _, other = ct.track(second, 9, commit=True, nat=Nat("src", "203.0.113.2"))
    assert (other["nw_src"], other["tp_src"]) == ("203.0.113.2", 1024)


def test_learned_flows_arrive_after_the_packet_that_taught_them() -> None:
    learning = (
        "learn(table=1,priority=5,NXM_NX_REG1[]=NXM_OF_IP_SRC[],"
        "load:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],output:NXM_OF_IN_PORT[])"
    )
    sw = FakeSwitch([flow(0, 1, None, learning, "move:NXM_OF_IP_DST[]->NXM_NX_REG1[]", "resubmit(,1)")])
    assert sw.send(tcp()).dropped  # 10.0.0.2 unknown; 10.0.0.1 learned only afterwards
    [learned] = sw.learned()
    assert learned == Flow(1, 5, (("reg1", "0xa000001"),), (f"set_field:{MAC1}->eth_dst", "output:1"))
    port, header = sw.send(tcp(in_port=2, src="10.0.0.2", dst="10.0.0.1")).only
    assert (port, header["dl_dst"]) == (1, MAC1)


def test_delete_learned_flushes_the_table_and_cookie_with_the_last_learner() -> None:
    learning = flow(0, 1, {"in_port": 1}, "learn(table=1,delete_learned,cookie=0x77,NXM_NX_REG1[]=1)")
    sw = FakeSwitch([learning, flow(0, 1, {"in_port": 2}, "drop")])
    sw.send(tcp())
    assert len(sw.learned()) == 1
    sw.apply([DeleteFlow(learning)])
    assert not sw.learned()


def test_unknown_actions_fail_loudly() -> None:
    with pytest.raises(NotImplementedError):
        FakeSwitch([flow(0, 1, None, "controller")]).send(tcp())


def test_replace_flows_drops_learned_flows_too() -> None:
    learning = flow(0, 1, None, "learn(table=1,NXM_NX_REG1[]=1)")
    sw = FakeSwitch([learning])
    sw.send(tcp())
    sw.apply([ReplaceFlows((learning,))])
    assert sw.flows() == {learning}


def test_a_match_is_its_meaning() -> None:
    assert Match.parse((("tcp", ""),)) == Match.parse((("nw_proto", "6"), ("ip", "")))
    assert Match.parse((("nw_dst", "10.1.2.3/24"),)) == Match.parse((("nw_dst", "10.1.2.0/255.255.255.0"),))
