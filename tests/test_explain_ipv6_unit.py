"""``explain`` follows an IPv6 packet to the next host: the flow it traces there is one OVS's parser
takes (real traces: test_explain_dataplane.py, ipv6_routed.yaml)."""

from __future__ import annotations

from policyfabric.agent.explain import Trace, arrival_flow


def test_an_icmpv6_packet_arrives_with_its_type_and_code_named_as_ovs_parses_them() -> None:
    final = {
        "ipv6_src": "fd00:3::10",
        "ipv6_dst": "fd00:4::10",
        "nw_ttl": "63",
        "icmp_type": "128",
        "icmp_code": "0",
    }
    trace = Trace(final=final, protocol="icmp6", writes={"tun_id": "0x10005", "tun_dst": "192.0.2.2"})
    flow = arrival_flow(trace, "192.0.2.1").split(",")
    assert flow[0] == "icmp6"
    assert "icmpv6_type=128" in flow and "icmpv6_code=0" in flow
    assert not any(part.startswith("icmp_type=") for part in flow)


def test_an_icmpv4_packet_keeps_icmp_type() -> None:
    trace = Trace(final={"nw_src": "10.0.0.1", "icmp_type": "8", "icmp_code": "0"}, protocol="icmp")
    assert "icmp_type=8" in arrival_flow(trace, "192.0.2.1").split(",")
