"""DHCPv4 without a switch: the codec against scapy's reading of the same bytes, the answers it
decides, what it refuses (truncated, mangled, hostile frames), the responder's packet-in →
packet-out, and the intent's way through the wire into the agent's view and flows."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from policyfabric.agent.dhcp import packet as d
from policyfabric.agent.dhcp.responder import Responder, leases
from policyfabric.agent.reader import policy_view
from policyfabric.agent.renderers.ovs import ofwire as w
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.renderers.ovs.simulate import CONTROLLER_PORT, FakeSwitch
from policyfabric.agent.view import DhcpSubnet, Invalid, Ipv4Address, Prefix
from policyfabric.model import objects as o
from policyfabric.opflex.gbp import Cls, Prop
from tests.fabric import bridge_domain, endpoint, group, leg, mac, network, router
from tests.test_policy_roundtrip import IDS, T, policy

MAC = "02:00:00:00:01:07"
LEASE = d.Lease(
    address="10.1.0.7",
    prefix_len=24,
    gateway="10.1.0.1",
    dns=("10.1.0.2", "10.1.0.3"),
    routes=(("10.9.0.0/16", "10.1.0.254"),),
    mtu=1442,
    lease_time=600,
)


def client_frame(
    kind: str,
    *,
    ciaddr: str = "0.0.0.0",
    src: str = "0.0.0.0",
    dst: str = "255.255.255.255",
    options: list[object] | None = None,
    chaddr: str = MAC,
    flags: int = 0,
) -> bytes:
    opts = [("message-type", kind), *(options or []), "end"]
    return bytes(
        Ether(src=MAC, dst="ff:ff:ff:ff:ff:ff")
        / IP(src=src, dst=dst)
        / UDP(sport=68, dport=67)
        / BOOTP(op=1, chaddr=bytes.fromhex(chaddr.replace(":", "")), xid=0x1234, ciaddr=ciaddr, flags=flags)
        / DHCP(options=opts)
    )


def options(frame: bytes) -> dict[str, object]:
    return {o[0]: o[1] for o in Ether(frame)[DHCP].options if isinstance(o, tuple)}


# ---- the codec, read back by scapy ---------------------------------------------------------------


def test_a_discover_is_offered_the_intent_with_every_option() -> None:
    req = d.parse_request(client_frame("discover"))
    assert (req.msg_type, req.xid, req.chaddr, req.eth_src) == (d.DISCOVER, 0x1234, MAC, MAC)
    assert d.decide(req, LEASE) == d.OFFER
    frame = d.build_reply(req, d.OFFER, LEASE)
    got = Ether(frame)
    assert (got[Ether].dst, got[IP].src, got[IP].dst) == (MAC, "10.1.0.1", "10.1.0.7")
    assert (got[UDP].sport, got[UDP].dport, got[BOOTP].op, got[BOOTP].yiaddr) == (67, 68, 2, "10.1.0.7")
    assert got[BOOTP].xid == 0x1234 and got[BOOTP].chaddr[:6] == bytes.fromhex(MAC.replace(":", ""))
    opts = options(frame)
    assert opts["message-type"] == d.OFFER and opts["server_id"] == "10.1.0.1"
    assert (opts["subnet_mask"], opts["router"], opts["lease_time"]) == ("255.255.255.0", "10.1.0.1", 600)
    assert opts["name_server"] == "10.1.0.2"  # scapy shows the first; both are in the option's bytes
    assert opts["interface-mtu"] == 1442
    # RFC 3442: 10.9.0.0/16 via 10.1.0.254 and, since 121 is sent, the default route too
    assert bytes(frame).find(bytes([121, 12, 16, 10, 9, 10, 1, 0, 254, 0, 10, 1, 0, 1])) > 0
    # checksums are right: scapy computes them again from scratch and gets the same
    again = Ether(frame)
    del again[IP].chksum, again[UDP].chksum
    assert bytes(again) == frame


def test_requests_get_ack_nak_or_nothing() -> None:
    ack = d.parse_request(
        client_frame("request", options=[("requested_addr", "10.1.0.7"), ("server_id", "10.1.0.1")])
    )
    assert d.decide(ack, LEASE) == d.ACK
    opts = options(d.build_reply(ack, d.ACK, LEASE))
    assert (opts["renewal_time"], opts["rebinding_time"], opts["lease_time"]) == (300, 525, 600)
    wrong = d.parse_request(client_frame("request", options=[("requested_addr", "10.1.0.99")]))
    assert d.decide(wrong, LEASE) == d.NAK
    nak = Ether(d.build_reply(wrong, d.NAK, LEASE))
    assert (nak[Ether].dst, nak[IP].dst, nak[BOOTP].yiaddr) == (
        "ff:ff:ff:ff:ff:ff",
        "255.255.255.255",
        "0.0.0.0",
    )
    # renewing: unicast from its address, ciaddr set, no option 50 or 54: ACKed to its address
    renew = d.parse_request(client_frame("request", ciaddr="10.1.0.7", src="10.1.0.7", dst="10.1.0.1"))
    assert d.decide(renew, LEASE) == d.ACK
    assert Ether(d.build_reply(renew, d.ACK, LEASE))[IP].dst == "10.1.0.7"
    # another server chosen, a release, a decline, no lease here, a client naming another MAC
    other = d.parse_request(
        client_frame("request", options=[("requested_addr", "10.1.0.7"), ("server_id", "10.1.0.9")])
    )
    assert d.decide(other, LEASE) is None
    assert d.decide(d.parse_request(client_frame("release", ciaddr="10.1.0.7")), LEASE) is None
    assert d.decide(d.parse_request(client_frame("decline")), LEASE) is None
    assert d.decide(d.parse_request(client_frame("discover")), None) is None
    assert d.decide(d.parse_request(client_frame("discover", chaddr="02:00:00:00:01:08")), LEASE) is None
    # the broadcast flag: the offer is broadcast
    flagged = d.parse_request(client_frame("discover", flags=0x8000))
    assert Ether(d.build_reply(flagged, d.OFFER, LEASE))[Ether].dst == "ff:ff:ff:ff:ff:ff"


def test_no_routes_means_no_option_121_and_no_mtu_means_no_option_26() -> None:
    bare = replace(LEASE, routes=(), mtu=0, dns=())
    opts = options(d.build_reply(d.parse_request(client_frame("discover")), d.OFFER, bare))
    assert "classless_static_routes" not in opts and "interface-mtu" not in opts and "name_server" not in opts
    assert opts["router"] == "10.1.0.1"


# ---- what is refused ----------------------------------------------------------------------------

GOOD = client_frame("discover", options=[("requested_addr", "10.1.0.7")])


def test_every_truncation_of_a_request_is_refused() -> None:
    end = GOOD.rindex(b"\xff")  # after the end option there is only scapy's padding
    for n in range(end + 1):
        with pytest.raises(d.Malformed):
            d.parse_request(GOOD[:n])


@pytest.mark.parametrize(
    ("what", "frame"),
    [
        ("not IPv4", GOOD[:12] + b"\x86\xdd" + GOOD[14:]),
        ("a fragment", GOOD[:20] + b"\x20\x00" + GOOD[22:]),
        ("not UDP", GOOD[:23] + b"\x06" + GOOD[24:]),
        ("a server's port", GOOD[:34] + b"\x00\x43\x00\x44" + GOOD[38:]),
        ("no magic cookie", GOOD.replace(d.MAGIC, b"\0\0\0\0")),
        ("a BOOTREPLY", GOOD[:42] + b"\x02" + GOOD[43:]),
        ("an option past the end", GOOD[: GOOD.index(d.MAGIC) + 4] + bytes([50, 200, 1, 2])),
        ("a repeated option", GOOD[: GOOD.index(d.MAGIC) + 4] + bytes([53, 1, 1, 53, 1, 3, 255])),
        ("no message type", GOOD[: GOOD.index(d.MAGIC) + 4] + bytes([50, 4, 10, 1, 0, 7, 255])),
        ("an unknown message type", GOOD[: GOOD.index(d.MAGIC) + 4] + bytes([53, 1, 99, 255])),
        ("a short option 50", GOOD[: GOOD.index(d.MAGIC) + 4] + bytes([53, 1, 1, 50, 2, 10, 1, 255])),
        ("relayed", GOOD[:66] + b"\x0a\x00\x00\x01" + GOOD[70:]),
    ],
)
def test_malformed_requests_are_refused(what: str, frame: bytes) -> None:
    with pytest.raises(d.Malformed):
        d.parse_request(frame)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400), st.integers(0, len(GOOD) - 1), st.binary(min_size=1, max_size=8))
def test_whatever_the_wire_says_the_parser_refuses_or_reads_never_crashes(
    junk: bytes, at: int, patch: bytes
) -> None:
    for frame in (junk, GOOD[:at] + patch + GOOD[at + len(patch) :]):
        try:
            req = d.parse_request(frame)
        except d.Malformed:
            continue
        d.decide(req, LEASE)  # what parses can be answered without a surprise either
        if d.decide(req, LEASE) is not None:
            d.build_reply(req, d.decide(req, LEASE) or d.OFFER, LEASE)


# ---- the responder: packet-in to packet-out -------------------------------------------------------


def packet_in(port: int, data: bytes) -> bytes:
    match = struct.pack("!HHII", 1, 12, w.OXM_IN_PORT, port) + b"\0" * 4
    return struct.pack("!IHBBQ", w.OFP_NO_BUFFER, len(data), 1, 10, 0) + match + b"\0\0" + data


def test_the_responder_answers_out_of_the_port_the_request_came_in_and_counts_what_it_drops() -> None:
    r = Responder("/nonexistent")
    r.update({7: LEASE})
    out = r.handle(packet_in(7, client_frame("discover")))
    assert out is not None
    _, msg_type, _, _ = struct.unpack_from("!BBHI", out)
    assert msg_type == w.OFPT_PACKET_OUT
    # 1.5: buffer id, actions length, the match (in_port CONTROLLER), then output:7, then the frame
    buffer_id, actions_len = struct.unpack_from("!IH", out, 8)
    assert (buffer_id, actions_len) == (w.OFP_NO_BUFFER, 16)
    assert struct.unpack_from("!II", out, 8 + 8 + 4) == (w.OXM_IN_PORT, w.PORTS["CONTROLLER"])
    assert struct.unpack_from("!HHI", out, 8 + 8 + 16) == (0, 16, 7)
    reply = Ether(out[8 + 8 + 16 + 16 :])
    assert reply[BOOTP].yiaddr == "10.1.0.7"
    assert r.handle(packet_in(8, client_frame("discover"))) is None  # no lease on port 8
    assert r.handle(packet_in(7, GOOD[:100])) is None
    assert r.handle(b"\x00" * 10) is None
    assert (r.counters.answered, r.counters.unanswered, r.counters.malformed) == (1, 1, 2)


# ---- intent → wire → view → flows -----------------------------------------------------------------


def dhcp_intent(**subnet: object) -> dict[str, list[o.Spec]]:
    return {
        "l3_context": [o.L3Context(name="vrf1", tenant=T)],
        "bridge_domain": [o.BridgeDomain(name="bd-web", tenant=T, l3_context="vrf1", mtu=1400)],
        "subnet": [
            o.Subnet.model_validate(
                {"name": "s-web", "tenant": T, "bridge_domain": "bd-web", "cidr": "10.1.0.0/24", **subnet}
            ),
            o.Subnet(name="s-v6", tenant=T, bridge_domain="bd-web", cidr="2001:db8:1::/64"),
        ],
    }


def test_the_subnets_dhcp_options_and_the_mtu_reach_the_agents_view() -> None:
    intent = dhcp_intent(
        dns_nameservers=["10.1.0.2"], host_routes=[{"destination": "10.9.0.0/16", "nexthop": "10.1.0.254"}]
    )
    bd = next(iter(policy_view(policy(intent, IDS)).bds.values()))
    assert bd.mtu == 1400
    assert bd.dhcp == (
        DhcpSubnet(
            Prefix("10.1.0.0/24"),
            Ipv4Address("10.1.0.1"),
            (Ipv4Address("10.1.0.2"),),
            ((Prefix("10.9.0.0/16"), Ipv4Address("10.1.0.254")),),
        ),
    )  # fmt: skip  (the IPv6 subnet is not DHCPv4's)
    off = next(iter(policy_view(policy(dhcp_intent(enable_dhcp=False), IDS)).bds.values()))
    assert off.dhcp == () and off.mtu == 1400


@pytest.mark.parametrize(
    ("prop", "value"),
    [(Prop.DNS_NAMESERVERS, ["10.1.0.2 actions=NORMAL"]), (Prop.HOST_ROUTES, ["10.9.0.0/16"]),
     (Prop.HOST_ROUTES, "10.9.0.0/16 10.1.0.254"), (Prop.ENABLE_DHCP, "yes"),
     (Prop.DNS_NAMESERVERS, ["fd00::1"])],
)  # fmt: skip
def test_a_subnet_whose_dhcp_options_do_not_parse_is_not_answered_and_is_named(
    prop: str, value: object
) -> None:
    cache = policy(dhcp_intent(), IDS)
    options_mo = next(m for m in cache.values() if m.subject == Cls.PF_SUBNET_DHCP)
    options_mo.properties[prop] = value
    invalid: list[Invalid] = []
    bd = next(iter(policy_view(cache, invalid).bds.values()))
    assert bd.dhcp == ()
    assert [(i.uri, i.field) for i in invalid] == [(options_mo.uri, prop)]


def test_only_an_endpoint_of_a_dhcp_subnet_is_punted_and_no_endpoint_serves_dhcp() -> None:
    """The fake switch: vm1's DISCOVER goes to the agent (CONTROLLER) and nowhere else; its
    server-port packets go nowhere; an endpoint outside any DHCP subnet's requests are dropped."""
    bd = replace(
        bridge_domain("bd"), mtu=1442, dhcp=(DhcpSubnet(Prefix("10.1.0.0/24"), Ipv4Address("10.1.0.1")),)
    )
    web = group("web", 0x4001, bd)  # intra-group traffic allowed: only the DHCP drop stops the rogue
    vm1 = endpoint("vm1", mac(7, 1), "10.1.0.7", bd=bd, group=web, ofport=1)
    web1 = endpoint("web1", mac(8, 1), "10.1.0.8", bd=bd, group=web, ofport=2)
    other = endpoint("x", mac(9, 1), "10.2.0.9", bd=bd, group=web, ofport=3)  # no DHCP subnet holds it
    r1 = router("r1", leg(bd, "10.1.0.0/24"))
    net = network(local=[vm1, web1, other], groups=[web], bds=[bd], routers=[r1])
    switch = FakeSwitch(compile_pipeline(net, None, True))
    ask = {"in_port": 1, "eth_type": "ip", "dl_src": vm1.mac, "dl_dst": "ff:ff:ff:ff:ff:ff", "nw_proto": 17,
           "nw_src": "0.0.0.0", "nw_dst": "255.255.255.255", "tp_src": 68, "tp_dst": 67}  # fmt: skip
    assert [port for port, _ in switch.send(ask).outputs] == [CONTROLLER_PORT]
    assert switch.send({**ask, "in_port": 3, "dl_src": other.mac}).outputs == []
    rogue = {**ask, "in_port": 2, "dl_src": web1.mac, "nw_src": "10.1.0.8", "dl_dst": vm1.mac,
             "nw_dst": "10.1.0.7", "tp_src": 67, "tp_dst": 68}  # fmt: skip
    assert switch.send(rogue).outputs == []
    assert switch.send({**rogue, "tp_src": 1067}).outputs != []  # the control: otherwise it arrives
    got = leases(net, lease_time=60)
    assert set(got) == {1, 2}
    assert (got[1].address, got[1].gateway, got[1].mtu, got[1].server_mac) == (
        "10.1.0.7",
        "10.1.0.1",
        1442,
        r1.mac,
    )


def test_a_bad_mtu_costs_the_option_not_the_bridge_domain() -> None:
    cache = policy(dhcp_intent(), IDS)
    mtu_mo = next(m for m in cache.values() if m.subject == Cls.PF_BRIDGE_DOMAIN_MTU)
    mtu_mo.properties[Prop.MTU] = "1442,actions=NORMAL"
    invalid: list[Invalid] = []
    bd = next(iter(policy_view(cache, invalid).bds.values()))
    assert (bd.mtu, len(bd.dhcp)) == (0, 1)
    assert [(i.uri, i.field) for i in invalid] == [(mtu_mo.uri, Prop.MTU)]
