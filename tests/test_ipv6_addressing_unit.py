"""Router advertisements and DHCPv6 without a switch: the codecs against scapy's reading of the
same bytes, what each mode advertises and answers, what is refused, the unsolicited schedule, the
responder's packet-in → packet-out, and the intent through the wire into the view and the flows."""

from __future__ import annotations

import contextlib
import itertools
import random
import socket
import struct
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_InfoRequest,
    DHCP6_Rebind,
    DHCP6_Renew,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSServers,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptRapidCommit,
    DHCP6OptServerId,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether

from policyfabric.agent.dhcp import dhcp6, ip6, ra
from policyfabric.agent.dhcp.hosts6 import port6_of
from policyfabric.agent.dhcp.packet import Malformed
from policyfabric.agent.dhcp.responder import INITIAL_ADVERTS, Responder, Schedule, leases
from policyfabric.agent.reader import policy_view
from policyfabric.agent.renderers.ovs import ofwire as w
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.renderers.ovs.simulate import CONTROLLER_PORT, FakeSwitch
from policyfabric.agent.view import Invalid, IpAddress, Ipv6Subnet, Network, Prefix
from policyfabric.lab.dhcp import configuration_warnings
from policyfabric.lab.ports import port_config
from policyfabric.model import objects as o
from policyfabric.model.addressing import link_local
from policyfabric.opflex.gbp import Cls, Prop
from tests.fabric import bridge_domain, endpoint, group, leg, mac, network, router
from tests.test_dhcp_unit import packet_in
from tests.test_lab_unit import BD, GROUPS, NETS
from tests.test_lab_unit import MAC as LAB_MAC
from tests.test_policy_roundtrip import IDS, T, policy

MAC = "02:00:00:00:01:07"
LLA = str(link_local(MAC))
ROUTER_MAC = "02:50:46:00:00:09"
ADVERT = ra.Advert(
    router_mac=ROUTER_MAC,
    router_lla=str(link_local(ROUTER_MAC)),
    managed=False,
    other=True,
    lifetime=1800,
    mtu=1442,
    prefixes=(ra.PrefixInfo("fd00:1::/64", True), ra.PrefixInfo("fd00:2::/64", False)),
)
CONFIG = dhcp6.Config6(
    server_mac=ROUTER_MAC,
    server_lla=str(link_local(ROUTER_MAC)),
    addresses=("fd00:2::7",),
    prefixes=("fd00:2::/64",),
    dns=("fd00:2::53",),
    lifetime=600,
)
CLIENT_DUID = DUID_LL(lladdr=MAC)


def rs(src: str = LLA, hlim: int = 255, with_lla: bool = True) -> bytes:
    frame = Ether(src=MAC, dst="33:33:00:00:00:02") / IPv6(src=src, dst="ff02::2", hlim=hlim) / ICMPv6ND_RS()
    if with_lla:
        frame = frame / ICMPv6NDOptSrcLLAddr(lladdr=MAC)
    return bytes(frame)


def client(message: object, src: str = LLA) -> bytes:
    return bytes(
        Ether(src=MAC, dst="33:33:00:01:00:02")
        / IPv6(src=src, dst="ff02::1:2")
        / UDP(sport=546, dport=547)
        / message
    )


def ia(*addresses: str, iaid: int = 7) -> DHCP6OptIA_NA:
    return DHCP6OptIA_NA(iaid=iaid, ianaopts=[DHCP6OptIAAddress(addr=a) for a in addresses])


def server_duid() -> bytes:
    return CONFIG.duid


# ---- router advertisements, read back by scapy --------------------------------------------------


def test_an_advertisement_says_the_flags_prefixes_mtu_and_router_as_scapy_reads_them() -> None:
    frame = Ether(ra.build_advert(ADVERT))
    assert (frame.src, frame.dst) == (ROUTER_MAC, "33:33:00:00:00:01")
    assert (frame[IPv6].src, frame[IPv6].dst, frame[IPv6].hlim) == (ADVERT.router_lla, "ff02::1", 255)
    adv = frame[ICMPv6ND_RA]
    assert (adv.M, adv.O, adv.routerlifetime, adv.chlim) == (0, 1, 1800, 64)
    assert frame[ICMPv6NDOptSrcLLAddr].lladdr == ROUTER_MAC
    assert frame[ICMPv6NDOptMTU].mtu == 1442
    prefixes = []
    p = frame.getlayer(ICMPv6NDOptPrefixInfo)
    while p is not None:
        prefixes.append((p.prefix, p.prefixlen, p.L, p.A, p.validlifetime, p.preferredlifetime))
        p = p.payload.getlayer(ICMPv6NDOptPrefixInfo)
    assert prefixes == [("fd00:1::", 64, 1, 1, 86400, 14400), ("fd00:2::", 64, 1, 0, 86400, 14400)]
    sent = adv.cksum
    del adv.cksum
    assert Ether(bytes(frame))[ICMPv6ND_RA].cksum == sent  # scapy computes the same checksum


def test_a_solicitation_from_an_address_is_answered_to_it_and_from_nowhere_to_all_nodes() -> None:
    got = ra.parse_solicitation(rs())
    assert got == ra.Solicitation(MAC, LLA, MAC)
    answer = Ether(ra.build_advert(replace(ADVERT, mtu=0), got))
    assert (answer.dst, answer[IPv6].dst) == (MAC, LLA)
    assert ICMPv6NDOptMTU not in answer  # no MTU known: no option
    anonymous = ra.parse_solicitation(rs(src="::", with_lla=False))
    assert Ether(ra.build_advert(ADVERT, anonymous))[IPv6].dst == "ff02::1"


@pytest.mark.parametrize(
    ("what", "frame"),
    [
        ("hop limit not 255", rs(hlim=64)),
        ("a source link-layer address from ::", rs(src="::")),
        ("an advertisement, not a solicitation", ra.build_advert(ADVERT)),
        ("a bad checksum", rs()[:-1] + bytes([rs()[-1] ^ 1])),
        ("IPv4", bytes(Ether(src=MAC, type=0x0800)) + b"\x45" + b"\0" * 60),
        (
            "an option of length 0",
            bytes(
                Ether(src=MAC)
                / IPv6(src=LLA, dst="ff02::2", hlim=255)
                / ICMPv6ND_RS()
                / (b"\x01\x00" + b"\0" * 6)
            ),
        ),
    ],
)
def test_malformed_solicitations_are_refused(what: str, frame: bytes) -> None:
    with pytest.raises(Malformed):
        ra.parse_solicitation(frame)


def test_every_truncation_of_a_solicitation_is_refused() -> None:
    whole = rs()
    for n in range(len(whole)):
        with pytest.raises(Malformed):
            ra.parse_solicitation(whole[:n])


# ---- DHCPv6, read back by scapy ------------------------------------------------------------------


def test_stateful_solicit_request_renew_rebind_get_exactly_the_intent_address() -> None:
    solicit = dhcp6.parse_message(
        client(DHCP6_Solicit(trid=0x123456) / DHCP6OptClientId(duid=CLIENT_DUID) / ia())
    )
    assert (solicit.msg_type, solicit.xid, solicit.ia_na) == (dhcp6.SOLICIT, 0x123456, (dhcp6.IaNa(7, ()),))
    assert dhcp6.decide(solicit, CONFIG) == dhcp6.ADVERTISE
    advert = Ether(dhcp6.build_reply(solicit, dhcp6.ADVERTISE, CONFIG))
    assert (advert.src, advert.dst, advert[IPv6].src, advert[IPv6].dst) == (
        ROUTER_MAC,
        MAC,
        CONFIG.server_lla,
        LLA,
    )
    assert (advert[UDP].sport, advert[UDP].dport) == (547, 546)
    assert advert[DHCP6_Advertise].trid == 0x123456
    assert bytes(advert[DHCP6OptClientId].duid) == bytes(CLIENT_DUID)
    assert bytes(advert[DHCP6OptServerId].duid) == server_duid()
    assert advert[DHCP6OptServerId].duid.lladdr == ROUTER_MAC  # DUID-LL of the router's MAC
    got_ia = advert[DHCP6OptIA_NA]
    assert (got_ia.iaid, got_ia.T1, got_ia.T2) == (7, 300, 480)
    assert [(a.addr, a.preflft, a.validlft) for a in got_ia.ianaopts] == [("fd00:2::7", 600, 600)]
    assert advert[DHCP6OptDNSServers].dnsservers == ["fd00:2::53"]
    sent = advert[UDP].chksum
    del advert[UDP].chksum
    assert Ether(bytes(advert))[UDP].chksum == sent

    ours = DHCP6OptServerId(duid=DUID_LL(lladdr=ROUTER_MAC))
    for kind in (DHCP6_Request, DHCP6_Renew):
        msg = dhcp6.parse_message(
            client(kind() / DHCP6OptClientId(duid=CLIENT_DUID) / ours / ia("fd00:2::7"))
        )
        assert dhcp6.decide(msg, CONFIG) == dhcp6.REPLY
        reply = Ether(dhcp6.build_reply(msg, dhcp6.REPLY, CONFIG))
        assert DHCP6_Reply in reply
        assert [a.addr for a in reply[DHCP6OptIA_NA].ianaopts] == ["fd00:2::7"]
    rebind = dhcp6.parse_message(
        client(DHCP6_Rebind() / DHCP6OptClientId(duid=CLIENT_DUID) / ia("fd00:2::99"))
    )
    reply = Ether(dhcp6.build_reply(rebind, dhcp6.decide(rebind, CONFIG) or 0, CONFIG))
    # the address it asked for is not its own: handed back at lifetime 0, its intent one beside it
    assert [(a.addr, a.validlft) for a in reply[DHCP6OptIA_NA].ianaopts] == [
        ("fd00:2::7", 600),
        ("fd00:2::99", 0),
    ]


def test_rapid_commit_is_a_reply_at_once() -> None:
    msg = dhcp6.parse_message(
        client(DHCP6_Solicit() / DHCP6OptClientId(duid=CLIENT_DUID) / DHCP6OptRapidCommit() / ia())
    )
    assert dhcp6.decide(msg, CONFIG) == dhcp6.REPLY
    assert DHCP6OptRapidCommit in Ether(dhcp6.build_reply(msg, dhcp6.REPLY, CONFIG))


def test_what_a_server_discards_gets_nothing() -> None:
    other = DHCP6OptServerId(duid=DUID_LL(lladdr="02:00:00:00:99:99"))
    cid = DHCP6OptClientId(duid=CLIENT_DUID)
    stateless = replace(CONFIG, addresses=(), prefixes=())
    cases = [
        (client(DHCP6_Request() / cid / other / ia()), CONFIG),  # another server's
        (client(DHCP6_Solicit() / ia()), CONFIG),  # no client identifier
        (client(DHCP6_Solicit() / cid / other / ia()), CONFIG),  # a server identifier in a Solicit
        (client(DHCP6_Solicit() / cid / ia()), stateless),  # addresses where only options are given
        (client(DHCP6_Solicit() / cid / ia(), src="::"), CONFIG),  # nowhere to answer
        (client(DHCP6_Solicit() / cid / ia()), None),  # nothing for this port
    ]
    for frame, cfg in cases:
        assert dhcp6.decide(dhcp6.parse_message(frame), cfg) is None


def test_information_request_gets_the_name_servers_stateless_or_stateful() -> None:
    stateless = replace(CONFIG, addresses=(), prefixes=())
    msg = dhcp6.parse_message(client(DHCP6_InfoRequest(trid=9) / DHCP6OptClientId(duid=CLIENT_DUID)))
    for cfg in (stateless, CONFIG):
        assert dhcp6.decide(msg, cfg) == dhcp6.REPLY
        reply = Ether(dhcp6.build_reply(msg, dhcp6.REPLY, cfg))
        assert reply[DHCP6_Reply].trid == 9
        assert reply[DHCP6OptDNSServers].dnsservers == ["fd00:2::53"]
        assert DHCP6OptIA_NA not in reply


@pytest.mark.parametrize(
    ("what", "frame"),
    [
        (
            "a server's message",
            bytes(
                Ether(src=MAC, dst=ROUTER_MAC)
                / IPv6(src=LLA, dst=LLA)
                / UDP(sport=547, dport=546)
                / DHCP6_Reply()
            ),
        ),
        ("an advertise", client(DHCP6_Advertise())),
        (
            "two client identifiers",
            client(DHCP6_Solicit() / DHCP6OptClientId(duid=CLIENT_DUID) / DHCP6OptClientId(duid=CLIENT_DUID)),
        ),
        ("an option past the end", client(DHCP6_Solicit() / b"\x00\x01\x00\x10\x00")),
        ("a multicast source", client(DHCP6_Solicit(), src="ff02::1")),
    ],
)
def test_malformed_dhcpv6_messages_are_refused(what: str, frame: bytes) -> None:
    with pytest.raises(Malformed):
        dhcp6.parse_message(frame)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 60))
def test_whatever_the_wire_says_the_v6_parsers_refuse_or_read_never_crash(tail: bytes, cut: int) -> None:
    base = client(DHCP6_Solicit() / DHCP6OptClientId(duid=CLIENT_DUID))
    for frame in (base[: len(base) - cut] + tail, rs()[: len(rs()) - cut] + tail):
        for parse in (dhcp6.parse_message, ra.parse_solicitation):
            with contextlib.suppress(Malformed):  # refused, or read: nothing else may happen
                parse(frame)


# ---- per-port configuration from the view --------------------------------------------------------


def v6_net(*subnets: Ipv6Subnet, routed: bool = True, ips: tuple[str, ...] = ("fd00:2::7",)) -> Network:
    bd = replace(bridge_domain("bd"), mtu=1442, ipv6=subnets)
    web = group("web", 0x4001, bd)
    vm = endpoint("vm1", mac(7, 1), *ips, bd=bd, group=web, ofport=1)
    witness = endpoint("web1", mac(8, 1), "fd00:2::8", bd=bd, group=web, ofport=2)
    legs = [leg(bd, s.prefix, s.gateway) for s in subnets]
    routers = [router("r1", *legs)] if routed else []
    return network(local=[vm, witness], groups=[web], bds=[bd], routers=routers)


SLAAC = Ipv6Subnet(Prefix("fd00:1::/64"), IpAddress("fd00:1::1"), "slaac", "slaac")
STATELESS = Ipv6Subnet(
    Prefix("fd00:3::/64"),
    IpAddress("fd00:3::1"),
    "dhcpv6-stateless",
    "dhcpv6-stateless",
    (IpAddress("fd00:3::53"),),
)
STATEFUL = Ipv6Subnet(
    Prefix("fd00:2::/64"),
    IpAddress("fd00:2::1"),
    "dhcpv6-stateful",
    "dhcpv6-stateful",
    (IpAddress("fd00:2::53"),),
)


def test_each_mode_advertises_its_flags_from_the_routers_link_local_address() -> None:
    net = v6_net(SLAAC)
    r1 = next(iter(net.routers.values()))
    vm = net.local[0]
    slaac = port6_of(net, vm)
    assert slaac is not None and slaac.dhcp6 is None
    (adv,) = slaac.adverts
    assert (adv.router_mac, adv.router_lla) == (r1.mac, str(link_local(r1.mac)))
    assert (adv.managed, adv.other, adv.lifetime, adv.mtu) == (False, False, 1800, 1442)
    assert adv.prefixes == (ra.PrefixInfo("fd00:1::/64", True),)
    stateless = port6_of(v6_net(STATELESS), vm)
    assert stateless is not None and stateless.dhcp6 is not None
    assert (stateless.adverts[0].managed, stateless.adverts[0].other) == (False, True)
    assert stateless.adverts[0].prefixes == (ra.PrefixInfo("fd00:3::/64", True),)
    assert (stateless.dhcp6.addresses, stateless.dhcp6.dns) == ((), ("fd00:3::53",))
    stateful = port6_of(v6_net(STATEFUL), vm)
    assert stateful is not None and stateful.dhcp6 is not None
    assert (stateful.adverts[0].managed, stateful.adverts[0].other) == (True, False)
    assert stateful.adverts[0].prefixes == (ra.PrefixInfo("fd00:2::/64", False),)
    assert stateful.dhcp6.addresses == ("fd00:2::7",)
    assert stateful.dhcp6.server_lla == str(link_local(r1.mac))
    alone = port6_of(v6_net(SLAAC, routed=False), vm)
    assert alone is not None and alone.adverts[0].lifetime == 0  # no router: no default route


def test_the_schedule_advertises_at_once_on_a_new_or_changed_port_then_every_30_to_60_s() -> None:
    s = Schedule(random.Random(5))
    s.update(100.0, {1: (ADVERT,)})
    assert s.due(100.0) == [(1, (ADVERT,))]
    times = [100.0]
    now = 100.0
    for _ in range(INITIAL_ADVERTS + 3):
        wait = s.next_in(now)
        assert wait is not None
        now += wait
        assert [p for p, _ in s.due(now)] == [1]
        times.append(now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[: INITIAL_ADVERTS - 1] == [2.0] * (INITIAL_ADVERTS - 1)
    assert all(30.0 <= g <= 60.0 for g in gaps[INITIAL_ADVERTS - 1 :])
    s.update(now + 1, {1: (ADVERT,)})  # unchanged: left as scheduled
    assert s.due(now + 1) == []
    s.update(now + 1, {1: (replace(ADVERT, mtu=1400),), 2: (ADVERT,)})  # changed and new: at once
    assert sorted(p for p, _ in s.due(now + 1)) == [1, 2]
    s.update(now + 2, {})
    assert s.next_in(now + 2) is None


def test_the_responder_answers_solicitations_and_dhcpv6_from_the_ports_configuration() -> None:
    net = v6_net(SLAAC, STATEFUL, ips=("fd00:2::7",))
    r = Responder("/nonexistent")
    r.update(leases(net))
    out = r.handle(packet_in(1, rs()))
    assert out is not None
    adv = Ether(out[8 + 8 + 16 + 16 :])
    assert adv[ICMPv6ND_RA].M == 1 and adv[IPv6].dst == LLA
    r1 = next(iter(net.routers.values()))
    ours = DHCP6OptServerId(duid=DUID_LL(lladdr=r1.mac))
    request = client(DHCP6_Request() / DHCP6OptClientId(duid=CLIENT_DUID) / ours / ia())
    out = r.handle(packet_in(1, request))
    assert out is not None
    assert [a.addr for a in Ether(out[8 + 8 + 16 + 16 :])[DHCP6OptIA_NA].ianaopts] == ["fd00:2::7"]
    assert r.handle(packet_in(9, rs())) is None  # no endpoint on port 9
    assert r.handle(packet_in(1, rs(hlim=1))) is None
    assert (r.counters.answered, r.counters.unanswered, r.counters.malformed) == (2, 1, 1)
    assert r.counters.by_type6 == {ra.SOLICITATION: 2, dhcp6.REQUEST: 1}
    # the periodic sender's view of the same map: both ports advertise
    assert {p for p, c in r.ipv6.items() if c.adverts} == {1, 2}


# ---- intent → wire → view → flows -----------------------------------------------------------------


def v6_intent(**subnet: object) -> dict[str, list[o.Spec]]:
    return {
        "l3_context": [o.L3Context(name="vrf1", tenant=T)],
        "bridge_domain": [o.BridgeDomain(name="bd-web", tenant=T, l3_context="vrf1", mtu=1400)],
        "subnet": [
            o.Subnet.model_validate(
                {"name": "s-v6", "tenant": T, "bridge_domain": "bd-web", "cidr": "fd00:1::/64", **subnet}
            ),
            o.Subnet(name="s-v4", tenant=T, bridge_domain="bd-web", cidr="10.1.0.0/24"),
        ],
    }


def test_the_subnets_ipv6_modes_and_name_servers_reach_the_agents_view() -> None:
    cache = policy(
        v6_intent(
            ipv6_ra_mode="dhcpv6-stateless",
            ipv6_address_mode="dhcpv6-stateless",
            dns_nameservers=["fd00:1::53"],
        ),
        IDS,
    )
    bd = next(iter(policy_view(cache).bds.values()))
    assert bd.ipv6 == (
        Ipv6Subnet(
            Prefix("fd00:1::/64"),
            IpAddress("fd00:1::1"),
            "dhcpv6-stateless",
            "dhcpv6-stateless",
            (IpAddress("fd00:1::53"),),
        ),
    )
    subnet = next(
        m for m in cache.values() if m.subject == Cls.GBP_SUBNET and m.properties.get(Prop.NAME) == "s-v6"
    )
    assert subnet.properties.get(Prop.IPV6_ADV_AUTONOMOUS_FLAG) == 1  # hosts make their own addresses
    stateful = policy(v6_intent(ipv6_address_mode="dhcpv6-stateful"), IDS)
    bd = next(iter(policy_view(stateful).bds.values()))
    assert [(s.ra_mode, s.address_mode) for s in bd.ipv6] == [(None, "dhcpv6-stateful")]
    subnet = next(
        m for m in stateful.values() if m.subject == Cls.GBP_SUBNET and m.properties.get(Prop.NAME) == "s-v6"
    )
    assert Prop.IPV6_ADV_AUTONOMOUS_FLAG not in subnet.properties
    plain = policy(v6_intent(), IDS)  # no modes: hosts are told nothing
    assert next(iter(policy_view(plain).bds.values())).ipv6 == ()


@pytest.mark.parametrize(
    ("prop", "value"),
    [(Prop.IPV6_RA_MODE, "radvd"), (Prop.IPV6_ADDRESS_MODE, 1), (Prop.DNS_NAMESERVERS, ["10.1.0.2"])],
)
def test_a_subnet_whose_ipv6_options_do_not_parse_is_not_served_and_is_named(
    prop: str, value: object
) -> None:
    cache = policy(v6_intent(ipv6_ra_mode="slaac", ipv6_address_mode="slaac"), IDS)
    subnet = next(
        m for m in cache.values() if m.subject == Cls.GBP_SUBNET and m.properties.get(Prop.NAME) == "s-v6"
    )
    options_mo = next(
        m for m in cache.values() if m.subject == Cls.PF_SUBNET_DHCP and m.parent_uri == subnet.uri
    )
    options_mo.properties[prop] = value
    invalid: list[Invalid] = []
    bd = next(iter(policy_view(cache, invalid).bds.values()))
    assert bd.ipv6 == ()
    assert [(i.uri, i.field) for i in invalid] == [(options_mo.uri, prop)]


def test_solicitations_and_dhcpv6_go_to_the_agent_and_no_endpoint_advertises_or_serves() -> None:
    """The fake switch: vm1's router solicitation and DHCPv6 Solicit go to the agent and nowhere
    else; web1's router advertisement and DHCPv6 reply go nowhere (the controls: the same packets
    of another type or port are delivered)."""
    net = v6_net(SLAAC, STATEFUL)
    vm1, web1 = net.local
    switch = FakeSwitch(compile_pipeline(net, None, True))
    icmp6 = {"eth_type": "ipv6", "nw_proto": 58, "nw_ttl": 255}
    ask = {
        **icmp6,
        "in_port": 1,
        "dl_src": vm1.mac,
        "dl_dst": "33:33:00:00:00:02",
        "ipv6_src": link_local(vm1.mac),
        "ipv6_dst": "ff02::2",
        "icmp_type": 133,
        "icmp_code": 0,
    }
    ask["ipv6_src"] = str(ask["ipv6_src"])
    assert switch.send(ask).ports == [CONTROLLER_PORT]
    rogue = {
        **ask,
        "in_port": 2,
        "dl_src": web1.mac,
        "ipv6_src": str(link_local(web1.mac)),
        "dl_dst": "33:33:00:00:00:01",
        "ipv6_dst": "ff02::1",
        "icmp_type": 134,
    }
    assert switch.send(rogue).outputs == []
    assert 1 in switch.send({**rogue, "icmp_type": 135, "dl_dst": "33:33:ff:00:00:01"}).ports  # control
    udp6 = {
        "eth_type": "ipv6",
        "nw_proto": 17,
        "in_port": 1,
        "dl_src": vm1.mac,
        "dl_dst": "33:33:00:01:00:02",
        "ipv6_src": str(link_local(vm1.mac)),
        "ipv6_dst": "ff02::1:2",
        "tp_src": 546,
        "tp_dst": 547,
    }
    assert switch.send(udp6).ports == [CONTROLLER_PORT]
    reply = {
        **udp6,
        "in_port": 2,
        "dl_src": web1.mac,
        "ipv6_src": "fd00:2::8",
        "dl_dst": vm1.mac,
        "ipv6_dst": "fd00:2::7",
        "tp_src": 547,
        "tp_dst": 546,
    }
    assert switch.send(reply).outputs == []
    assert switch.send({**reply, "tp_src": 1547}).ports == [1]  # control: otherwise it arrives
    # without an advertised or DHCPv6 subnet nothing is punted (and the drops stay)
    bare = FakeSwitch(compile_pipeline(v6_net(), None, True))
    assert CONTROLLER_PORT not in bare.send(ask).ports
    assert bare.send(rogue).outputs == []


def test_ip6_checksum_and_multicast_mac() -> None:
    assert ip6.multicast_mac("ff02::1:2") == "33:33:00:01:00:02"
    frame = rs()
    hdr = struct.unpack_from("!H", frame, 14 + 40 + 2)[0]
    assert hdr == Ether(frame)[ICMPv6ND_RS].cksum


def test_an_ipv6_only_dhcp_endpoint_is_checked_for_its_ipv6_mtu() -> None:
    """An advertisement's MTU option sets the IPv6 MTU, never the link's: the lab reads both and
    holds an IPv6-only endpoint to the first."""
    booted = port_config(
        {"name": "vm6", "epg": "web", "mac": LAB_MAC, "ip": ["fd00:1::7"]}, NETS, BD, GROUPS, dhcp=True
    )
    entry: dict[str, object] = {"name": "vm6", "host": "h1", "addresses": ["fd00:1::7/128"], "routes": []}
    assert configuration_warnings({"vm6": booted}, [{**entry, "mtu": 1500, "mtu6": booted.mtu}]) == {}
    assert configuration_warnings({"vm6": booted}, [{**entry, "mtu": booted.mtu, "mtu6": 1500}]) == {
        "vm6": "endpoint vm6 got its addresses by DHCP but has IPv6 MTU 1500, "
        f"not its bridge domain's {booted.mtu}"
    }


def test_the_thread_advertises_at_once_to_each_port_when_its_advertisements_appear(tmp_path: Path) -> None:
    """The responder's own thread against a switch socket of the test's: once the switch says
    hello, every port with advertisements gets an unsolicited one to all nodes, without asking;
    a port whose bridge domain changes gets one again at once, the others not."""
    path = tmp_path / "br-int.mgmt"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    net = v6_net(SLAAC)
    r = Responder(path)
    r.update(leases(net))
    r.start()
    try:
        conn, _ = server.accept()
        conn.settimeout(5)
        conn.sendall(w.hello(1))
        got = packet_outs(conn, 2)
        assert sorted(port for port, _ in got) == [1, 2]
        for _, frame in got:
            assert (frame[IPv6].dst, frame[ICMPv6ND_RA].routerlifetime) == ("ff02::1", 1800)
        bd = next(iter(net.bds.values()))
        changed = replace(net, bds={bd.uri: replace(bd, mtu=1300)})
        r.update(leases(changed))
        again = packet_outs(conn, 2)
        assert sorted(port for port, _ in again) == [1, 2]
        assert {frame[ICMPv6NDOptMTU].mtu for _, frame in again} == {1300}
    finally:
        r.stop()
        server.close()


def packet_outs(conn: socket.socket, n: int) -> list[tuple[int, Ether]]:
    """The next ``n`` packet-outs on ``conn`` (port, frame), skipping everything else."""
    buf, out = bytearray(), list[tuple[int, Ether]]()
    deadline = time.monotonic() + 5
    while len(out) < n and time.monotonic() < deadline:
        buf += conn.recv(65536)
        while (msg := w.take_message(buf)) is not None:
            if msg[1] == w.OFPT_PACKET_OUT:
                body = msg[3]
                out.append((struct.unpack_from("!HHI", body, 8 + 16)[2], Ether(body[8 + 16 + 16 :])))
    return out


def test_updates_never_block_while_the_thread_is_away() -> None:
    """The agent hands over answers after every reconcile, whether or not the responder's thread
    is connected and reading: with nobody reading, thousands of updates still return (a blocking
    wake-up would fill its socket buffer and hang the agent's loop)."""
    r = Responder("/nonexistent")
    answers = leases(v6_net(SLAAC))

    def many() -> None:
        for _ in range(5000):
            r.update(answers)

    worker = threading.Thread(target=many, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive()
    r.stop()


def test_a_solicitation_brings_every_port_of_its_link_forward_at_most_every_3_s() -> None:
    """Endpoints that boot together solicit together and the switch drops part of the burst: one
    solicitation that gets through makes every port told the same due at once (a router's
    multicast answer), not the ports of another link, and not again within 3 s."""
    other = replace(ADVERT, mtu=1300)
    s = Schedule(random.Random(1))
    s.update(0.0, {1: (ADVERT,), 2: (ADVERT,), 3: (ADVERT,), 4: (other,)})
    now = 0.0
    while now < 10:  # past the initial advertisements
        s.due(now)
        now += 0.5
    assert s.due(now) == []
    s.solicited(2, now)
    assert sorted(p for p, _ in s.due(now)) == [1, 2, 3]
    s.solicited(1, now + 2.9)
    assert s.due(now + 2.9) == []
    s.solicited(1, now + 3.0)
    assert sorted(p for p, _ in s.due(now + 3.0)) == [1, 2, 3]
    s.update(now + 4, {1: (ADVERT,), 4: (other,)})  # 2 and 3 unplugged: no longer on the link
    s.solicited(1, now + 7)
    assert [p for p, _ in s.due(now + 7)] == [1]


def test_multicast_listener_reports_go_nowhere_and_neighbour_discovery_still_floods() -> None:
    """An MLDv2 report (ICMPv6 143 to ff02::16) from vm1 reaches no port: the ND flood would copy
    it to every port of the bridge domain. A neighbour solicitation to a solicited-node group, the
    control, is still flooded to the other endpoint."""
    net = v6_net(SLAAC)
    vm1 = net.local[0]
    switch = FakeSwitch(compile_pipeline(net, None, True))
    mld = {"eth_type": "ipv6", "nw_proto": 58, "nw_ttl": 1, "in_port": 1, "dl_src": vm1.mac,
           "dl_dst": "33:33:00:00:00:16", "ipv6_src": str(link_local(vm1.mac)), "ipv6_dst": "ff02::16",
           "icmp_type": 143, "icmp_code": 0}  # fmt: skip
    assert switch.send(mld).outputs == []
    ns = {**mld, "nw_ttl": 255, "dl_dst": "33:33:ff:00:00:08", "ipv6_dst": "ff02::1:ff00:8", "icmp_type": 135}
    assert 2 in switch.send(ns).ports
