"""The compiled OpenFlow pipeline, evaluated by a fake switch: packet in, verdict out.

No Open vSwitch here: these pin the pipeline's logic (port security, ARP
responder, L2, tunnels, group policy with conntrack, conjunction growth).
The same behaviours are checked with real packets in test_ovs_dataplane.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from policyfabric.agent.renderers.ovs.flows import port_masks
from policyfabric.agent.renderers.ovs.simulate import FakeSwitch
from policyfabric.agent.renderers.ovs.tables import POLICY_CT
from policyfabric.agent.view import Contract, Endpoint, Group, Network
from tests.fabric import (
    IPV4,
    TCP,
    TUNNEL,
    UDP,
    arp_request,
    as_local,
    as_remote,
    bridge_domain,
    contract,
    cross_host,
    endpoint,
    from_tunnel,
    group,
    ip_packet,
    mac,
    network,
    pipeline,
    reply,
    rule,
    switch,
)

BD = bridge_domain("bd", vni=0x10001, vrf=0x10000)
HTTP = contract("http", rule("http.web-in", protocol=TCP, ports=80))
WEB = group("web", 0x4001, BD, provides=[HTTP])
APP = group("app", 0x4002, BD, intra_allow=False, consumes=[HTTP])


def ep(name: str, n: int, epg: Group, *, ofport: int | None = None, vtep: str | None = None) -> Endpoint:
    """Endpoint ``n`` of the bridge domain: MAC ...:00:n, address 10.0.0.n."""
    return endpoint(name, mac(n), f"10.0.0.{n}", bd=BD, group=epg, ofport=ofport, vtep=vtep)


WEB1 = ep("web1", 1, WEB, ofport=1)
APP1 = ep("app1", 2, APP, ofport=2)
APP2 = ep("app2", 3, APP, ofport=3)
WEB2_REMOTE = ep("web2", 4, WEB, vtep="192.0.2.2")
APP3_REMOTE = ep("app3", 5, APP, vtep="192.0.2.2")


def net(
    local: Iterable[Endpoint], remote: Iterable[Endpoint] = (), contracts: Iterable[Contract] = (HTTP,)
) -> Network:
    return network(local=local, remote=remote, groups=[WEB, APP], contracts=contracts, bds=[BD])


def h1(contracts: Iterable[Contract] = (HTTP,)) -> FakeSwitch:
    """Host 1: web1, app1 and app2 on its ports; web2 and app3 on host 2 (192.0.2.2)."""
    return switch(net((WEB1, APP1, APP2), (WEB2_REMOTE, APP3_REMOTE), contracts))


def test_contract_allows_consumer_to_provider_on_its_port_only() -> None:
    sw = h1()
    assert sw.send(ip_packet(APP1, WEB1, dport=80)).ports == [1]
    assert sw.send(ip_packet(APP1, WEB1, dport=22)).dropped
    assert sw.send(ip_packet(APP1, WEB1, proto=UDP, dport=80)).dropped


def test_provider_cannot_open_to_consumer_but_replies_pass() -> None:
    sw = h1()
    assert sw.send(ip_packet(WEB1, APP1, sport=80, dport=40000)).dropped
    request = ip_packet(APP1, WEB1)
    assert sw.send(request).ports == [1]
    assert sw.send(reply(request, in_port=1)).ports == [2]


def test_intra_group_allow_and_deny() -> None:
    sw = h1()
    assert sw.send(ip_packet(APP1, APP2, dport=80)).dropped  # app: intra_group deny
    web1b = ep("web1b", 9, WEB, ofport=9)
    assert switch(net((WEB1, web1b))).send(ip_packet(web1b, WEB1, dport=5555)).ports == [1]


def test_removing_the_contract_removes_the_path() -> None:
    assert h1(contracts=()).send(ip_packet(APP1, WEB1)).dropped


def test_spoofed_source_mac_or_ip_is_dropped_at_the_port() -> None:
    sw = h1()
    assert sw.send(ip_packet(APP1, WEB1, dl_src="02:00:00:00:00:77")).dropped
    assert sw.send(ip_packet(APP1, WEB1, nw_src="10.0.0.77")).dropped
    # pretending to be another endpoint (web1's addresses) from app1's port
    assert sw.send(ip_packet(APP1, APP2, dl_src=WEB1.mac, nw_src=WEB1.ips[0])).dropped
    # an ARP request with web1's address as its sender, from app1's port
    assert sw.send(arp_request(APP1, "10.0.0.3", arp_spa=WEB1.ips[0])).dropped


def test_arp_for_a_remote_endpoint_is_answered_on_the_host() -> None:
    sw = h1()
    result = sw.send(arp_request(APP1, WEB2_REMOTE.ips[0]))
    assert result.ports == [2]
    answer = result.outputs[0][1]
    assert answer["arp_op"] == 2 and answer["arp_sha"] == WEB2_REMOTE.mac and answer["arp_spa"] == "10.0.0.4"
    assert answer["dl_dst"] == APP1.mac and answer["arp_tha"] == APP1.mac


def test_unknown_arp_reaches_only_the_bridge_domains_ports_and_hosts() -> None:
    sw = h1()
    result = sw.send(arp_request(APP1, "10.0.0.200"))
    assert sorted(result.ports) == [1, 3, TUNNEL]
    tunnel = dict(result.outputs)[TUNNEL]
    assert tunnel["tun_dst"] == "192.0.2.2" and tunnel["tun_id"] == BD.vni
    # an unknown unicast MAC goes nowhere
    assert sw.send(ip_packet(APP1, replace(WEB1, mac=mac(0x55)))).dropped


def test_cross_host_policy_is_enforced_and_replies_return() -> None:
    web2 = as_local(WEB2_REMOTE, 7)
    h2 = switch(net((web2,), (as_remote(APP1, "192.0.2.1"), as_remote(WEB1, "192.0.2.1"))))
    sw1 = h1()
    request = ip_packet(APP1, WEB2_REMOTE)
    assert cross_host(request, sw1, h2).ports == [7]
    back = reply({**request, "in_port": None}, in_port=7)
    assert cross_host(back, h2, sw1).ports == [2]
    assert cross_host(ip_packet(APP1, WEB2_REMOTE, dport=22), sw1, h2).dropped


def test_receiver_enforces_even_if_a_sender_would_not() -> None:
    """A packet arriving with a group id the contract does not cover is dropped by the receiver."""
    web2 = as_local(WEB2_REMOTE, 7)
    h2 = switch(net((web2,), (as_remote(APP1, "192.0.2.1"),)))
    packet = ip_packet(APP1, WEB2_REMOTE)
    assert h2.send(from_tunnel(packet, BD.vni, APP.classid)).ports == [7]
    assert h2.send(from_tunnel({**packet, "tp_src": 40001}, BD.vni, 0x4999)).dropped


def test_policy_flows_do_not_grow_with_members() -> None:
    def policy_flows(n: int) -> int:
        locals_ = tuple(ep(f"e{i}", i + 10, WEB if i % 2 else APP, ofport=i + 10) for i in range(n))
        return sum(1 for f in pipeline(net(locals_)) if f.table == POLICY_CT)

    assert policy_flows(4) == policy_flows(40)


def test_rules_are_conjunctions_not_a_cross_product() -> None:
    """k consumer groups x m provider groups x r port masks cost k+m+r flows, not k*m*r."""
    wide = contract("wide", rule("wide.r", protocol=TCP, ports=(1000, 1999), ethertype=IPV4))
    groups = [group(f"c{i}", 0x4100 + i, BD, consumes=[wide]) for i in range(5)]
    groups += [group(f"p{i}", 0x4200 + i, BD, provides=[wide]) for i in range(5)]
    view = network(groups=groups, contracts=[wide], bds=[BD])
    flows = [f for f in pipeline(view) if f.table == POLICY_CT and f.priority == 1000]
    masks = len(port_masks(1000, 1999))
    assert len(flows) == 5 + 5 + masks + 1  # clauses + the conj_id flow


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_masks_cover_exactly_the_range(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    covered: set[int] = set()
    for m in port_masks(lo, hi):
        value, _, mask = m.partition("/")
        v, mk = int(value, 0), int(mask, 0) if mask else 0xFFFF
        size = 0x10000 - mk if mask else 1
        assert v & mk == v
        covered.update(range(v, v + size))
    assert min(covered) == lo and max(covered) == hi and len(covered) == hi - lo + 1
