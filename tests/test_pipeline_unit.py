"""The compiled OpenFlow pipeline, evaluated by a fake switch: packet in, verdict out.

No Open vSwitch here: these pin the pipeline's logic (port security, ARP
responder, L2, tunnels, group policy with conntrack, conjunction growth).
The same behaviours are checked with real packets in test_ovs_dataplane.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from policyfabric.agent.renderers.ovs.flows import port_masks
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.renderers.ovs.simulate import FakeSwitch, Result
from policyfabric.agent.renderers.ovs.tables import POLICY_CT
from policyfabric.agent.view import BridgeDomain, Contract, Endpoint, Group, Network, Rule

TUNNEL = 100
BD = BridgeDomain("bd", vni=0x10001, vrf=0x10000)
WEB = Group("web", 0x4001, "bd", intra_allow=True, provides=("http",))
APP = Group("app", 0x4002, "bd", intra_allow=False, consumes=("http",))
HTTP = Contract("http", (Rule("http.web-in", 0, True, "in", None, 6, (80, 80)),))


def ep(name: str, n: int, group: Group, *, ofport: int | None = None, vtep: str | None = None) -> Endpoint:
    return Endpoint(
        f"acme/{name}", f"02:00:00:00:00:{n:02x}", (f"10.0.0.{n}",), "bd", group.classid, ofport, vtep
    )


WEB1 = ep("web1", 1, WEB, ofport=1)
APP1 = ep("app1", 2, APP, ofport=2)
APP2 = ep("app2", 3, APP, ofport=3)
WEB2_REMOTE = ep("web2", 4, WEB, vtep="192.0.2.2")
APP3_REMOTE = ep("app3", 5, APP, vtep="192.0.2.2")


def network(local: tuple[Endpoint, ...], remote: tuple[Endpoint, ...] = (), contracts=None) -> Network:  # type: ignore[no-untyped-def]
    return Network(
        local,
        remote,
        {"web": WEB, "app": APP},
        {"http": HTTP} if contracts is None else contracts,
        {"bd": BD},
    )


def h1(**kw: Any) -> FakeSwitch:
    return FakeSwitch(compile_pipeline(network((WEB1, APP1, APP2), (WEB2_REMOTE, APP3_REMOTE), **kw), TUNNEL))


def ip_packet(
    src: Endpoint, dst: Endpoint, proto: int = 6, dport: int = 80, sport: int = 40000, **extra: Any
):  # type: ignore[no-untyped-def]
    return {
        "in_port": src.ofport,
        "eth_type": "ip",
        "dl_src": src.mac,
        "dl_dst": dst.mac,
        "nw_src": src.ips[0],
        "nw_dst": dst.ips[0],
        "nw_proto": proto,
        "tp_src": sport,
        "tp_dst": dport,
        **extra,
    }


def reply(packet: dict[str, Any], in_port: int | None) -> dict[str, Any]:
    r = dict(packet)
    r.update(
        in_port=in_port,
        dl_src=packet["dl_dst"],
        dl_dst=packet["dl_src"],
        nw_src=packet["nw_dst"],
        nw_dst=packet["nw_src"],
        tp_src=packet["tp_dst"],
        tp_dst=packet["tp_src"],
    )
    return r


def test_contract_allows_consumer_to_provider_on_its_port_only() -> None:
    sw = h1()
    assert sw.send(ip_packet(APP1, WEB1, dport=80)).ports == [1]
    assert sw.send(ip_packet(APP1, WEB1, dport=22)).dropped
    assert sw.send(ip_packet(APP1, WEB1, proto=17, dport=80)).dropped


def test_provider_cannot_open_to_consumer_but_replies_pass() -> None:
    sw = h1()
    assert sw.send(ip_packet(WEB1, APP1, sport=80, dport=40000)).dropped
    request = ip_packet(APP1, WEB1)
    assert sw.send(request).ports == [1]
    assert sw.send(reply(request, in_port=1)).ports == [2]


def test_intra_group_allow_and_deny() -> None:
    sw = h1()
    assert sw.send(ip_packet(APP1, APP2, dport=80)).dropped  # app: intra_group deny
    web1b = replace(WEB1, key="acme/web1b", mac="02:00:00:00:00:09", ips=("10.0.0.9",), ofport=9)
    sw2 = FakeSwitch(compile_pipeline(network((WEB1, web1b)), TUNNEL))
    assert sw2.send(ip_packet(web1b, WEB1, dport=5555)).ports == [1]


def test_removing_the_contract_removes_the_path() -> None:
    sw = h1(contracts={})
    assert sw.send(ip_packet(APP1, WEB1)).dropped


def test_spoofed_source_mac_or_ip_is_dropped_at_the_port() -> None:
    sw = h1()
    assert sw.send(ip_packet(APP1, WEB1, dl_src="02:00:00:00:00:77")).dropped
    assert sw.send(ip_packet(APP1, WEB1, nw_src="10.0.0.77")).dropped
    # pretending to be another endpoint (web1's addresses) from app1's port
    assert sw.send(ip_packet(APP1, APP2, dl_src=WEB1.mac, nw_src=WEB1.ips[0])).dropped
    arp = {"in_port": 2, "eth_type": "arp", "dl_src": APP1.mac, "dl_dst": "ff:ff:ff:ff:ff:ff", "arp_op": 1}
    assert sw.send({**arp, "arp_sha": APP1.mac, "arp_spa": "10.0.0.1", "arp_tpa": "10.0.0.3"}).dropped


def arp_request(src: Endpoint, target_ip: str) -> dict[str, Any]:
    return {
        "in_port": src.ofport,
        "eth_type": "arp",
        "dl_src": src.mac,
        "dl_dst": "ff:ff:ff:ff:ff:ff",
        "arp_op": 1,
        "arp_sha": src.mac,
        "arp_spa": src.ips[0],
        "arp_tpa": target_ip,
    }


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
    assert sw.send(ip_packet(APP1, replace(WEB1, mac="02:00:00:00:00:55"))).dropped


def cross_host(
    packet: dict[str, Any], sender: FakeSwitch, receiver: FakeSwitch, port_on_receiver: int
) -> Result:
    out = sender.send(packet)
    if out.ports != [TUNNEL]:
        return out
    header = out.outputs[0][1]
    arrived = {
        **packet,
        "in_port": TUNNEL,
        "tun_id": header["tun_id"],
        "tun_metadata0": header["tun_metadata0"],
    }
    return receiver.send(arrived)


def test_cross_host_policy_is_enforced_and_replies_return() -> None:
    web2 = replace(WEB2_REMOTE, ofport=7, vtep=None)
    app1_remote = replace(APP1, ofport=None, vtep="192.0.2.1")
    sw1, sw2 = (
        h1(),
        FakeSwitch(
            compile_pipeline(
                network((web2,), (app1_remote, replace(WEB1, ofport=None, vtep="192.0.2.1"))), TUNNEL
            )
        ),
    )
    request = ip_packet(APP1, WEB2_REMOTE)
    arrived = cross_host(request, sw1, sw2, 7)
    assert arrived.ports == [7]
    back = reply({**request, "in_port": None}, in_port=7)
    assert cross_host(back, sw2, sw1, 2).ports == [2]
    assert cross_host(ip_packet(APP1, WEB2_REMOTE, dport=22), sw1, sw2, 7).dropped


def test_receiver_enforces_even_if_a_sender_would_not() -> None:
    """A packet arriving with a group id the contract does not cover is dropped by the receiver."""
    web2 = replace(WEB2_REMOTE, ofport=7, vtep=None)
    sw2 = FakeSwitch(
        compile_pipeline(network((web2,), (replace(APP1, ofport=None, vtep="192.0.2.1"),)), TUNNEL)
    )
    packet = {**ip_packet(APP1, WEB2_REMOTE), "in_port": TUNNEL, "tun_id": BD.vni}
    assert sw2.send({**packet, "tun_metadata0": APP.classid}).ports == [7]
    assert sw2.send({**packet, "tun_metadata0": 0x4999, "tp_src": 40001}).dropped


def test_policy_flows_do_not_grow_with_members() -> None:
    def policy_flows(n: int) -> int:
        locals_ = tuple(ep(f"e{i}", i + 10, WEB if i % 2 else APP, ofport=i + 10) for i in range(n))
        flows = compile_pipeline(network(locals_), TUNNEL)
        return sum(1 for f in flows if f.table == POLICY_CT)

    assert policy_flows(4) == policy_flows(40)


def test_rules_are_conjunctions_not_a_cross_product() -> None:
    """k consumer groups x m provider groups x r port masks cost k+m+r flows, not k*m*r."""
    groups = {f"c{i}": Group(f"c{i}", 0x4100 + i, "bd", True, consumes=("wide",)) for i in range(5)}
    groups |= {f"p{i}": Group(f"p{i}", 0x4200 + i, "bd", True, provides=("wide",)) for i in range(5)}
    wide = Contract("wide", (Rule("wide.r", 0, True, "in", 0x0800, 6, (1000, 1999)),))
    net = Network((), (), groups, {"wide": wide}, {"bd": BD})
    flows = [f for f in compile_pipeline(net, TUNNEL) if f.table == POLICY_CT and f.priority == 1000]
    masks = len(port_masks(1000, 1999))
    assert len(flows) == 5 + 5 + masks + 1  # clauses + the conj_id flow


@given(st.integers(0, 65535), st.integers(0, 65535))
def test_port_masks_cover_exactly_the_range(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    covered = set()
    for m in port_masks(lo, hi):
        value, _, mask = m.partition("/")
        v, mk = int(value, 0), int(mask, 0) if mask else 0xFFFF
        size = 0x10000 - mk if mask else 1
        assert v & mk == v
        covered.update(range(v, v + size))
    assert min(covered) == lo and max(covered) == hi and len(covered) == hi - lo + 1
