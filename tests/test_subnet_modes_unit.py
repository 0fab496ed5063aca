"""Neutron's subnet keys (enable_dhcp, dns_nameservers, host_routes, the IPv6 modes), SLAAC
addresses computed from the MAC, and the MTU that fits the overlay: pure, no server."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from policyfabric.model import kinds as k
from policyfabric.model import mtu
from policyfabric.model import objects as o
from policyfabric.model import scenario as sc
from policyfabric.model.addressing import eui64_address, interface_id, link_local
from policyfabric.model.errors import Invalid
from policyfabric.model.parse import parse_spec

MODES = [None, "slaac", "dhcpv6-stateless", "dhcpv6-stateful"]


def subnet(**kw: Any) -> o.Spec:
    return parse_spec(
        k.SUBNET, {"name": "s6", "tenant": "t", "bridge_domain": "b", "cidr": "fd00:1::/64", **kw}
    )


def refused(field: str, *words: str, **kw: Any) -> None:
    with pytest.raises(Invalid) as caught:
        subnet(**kw)
    found = [p for p in caught.value.problems if p.field == field]
    assert found, caught.value.problems
    for word in words:
        assert word in found[0].message, found[0].message


# ---- the IPv6 modes: Neutron's _validate_ipv6_attributes / _validate_ipv6_combination


@pytest.mark.parametrize("ra", MODES)
@pytest.mark.parametrize("address", MODES)
def test_both_modes_set_must_agree(ra: str | None, address: str | None) -> None:
    kw = {"ipv6_ra_mode": ra, "ipv6_address_mode": address}
    if ra is not None and address is not None and ra != address:
        refused("ipv6_address_mode", f"ipv6_ra_mode {ra!r}", f"ipv6_address_mode {address!r}", **kw)
    else:
        made = subnet(**kw)
        assert isinstance(made, o.Subnet)
        assert (made.ipv6_ra_mode, made.ipv6_address_mode) == (ra, address)
        assert made.auto_address == (
            ra in ("slaac", "dhcpv6-stateless") or address in ("slaac", "dhcpv6-stateless")
        )


@pytest.mark.parametrize("key", ["ipv6_ra_mode", "ipv6_address_mode"])
@pytest.mark.parametrize("mode", MODES[1:])
def test_no_ipv6_mode_on_an_ipv4_subnet(key: str, mode: str) -> None:
    refused(key, "not valid on an IPv4 subnet", cidr="10.9.0.0/24", **{key: mode})


@pytest.mark.parametrize("key", ["ipv6_ra_mode", "ipv6_address_mode"])
def test_an_ipv6_mode_needs_dhcp_enabled(key: str) -> None:
    refused(key, "enable_dhcp", enable_dhcp=False, **{key: "dhcpv6-stateful"})
    assert isinstance(subnet(enable_dhcp=False), o.Subnet)  # no mode, no DHCP: a plain subnet


@pytest.mark.parametrize(
    ("key", "mode"), [("ipv6_ra_mode", "slaac"), ("ipv6_address_mode", "dhcpv6-stateless")]
)
@pytest.mark.parametrize("cidr", ["fd00:9::/48", "fd00:9::/80"])
def test_auto_address_modes_need_a_slash_64(key: str, mode: str, cidr: str) -> None:
    refused(key, mode, "/64", "EUI-64", cidr=cidr, **{key: mode})


def test_stateful_dhcpv6_takes_any_ipv6_prefix() -> None:
    """Neutron's /64 rule is for EUI-64 addresses only: DHCPv6 hands out whole addresses."""
    made = subnet(cidr="fd00:9::/80", ipv6_ra_mode="dhcpv6-stateful", ipv6_address_mode="dhcpv6-stateful")
    assert isinstance(made, o.Subnet) and not made.auto_address


def test_an_unknown_mode_is_refused_naming_the_field() -> None:
    refused("ipv6_address_mode", "dhcpv6-stateful", ipv6_address_mode="dhcpv6")


# ---- name servers and host routes: Neutron's _validate_subnet and _validate_host_route


def test_dhcp_keys_are_stored_normalised() -> None:
    made = subnet(
        cidr="10.1.0.0/24",
        dns_nameservers=["10.1.0.2", "192.0.2.53"],
        host_routes=[{"destination": "10.9.0.0/16", "nexthop": "10.1.0.254"}],
    )
    assert isinstance(made, o.Subnet) and made.enable_dhcp is True
    dumped = made.model_dump(mode="json")
    assert dumped["dns_nameservers"] == ["10.1.0.2", "192.0.2.53"]
    assert dumped["host_routes"] == [{"destination": "10.9.0.0/16", "nexthop": "10.1.0.254"}]
    assert (dumped["ipv6_ra_mode"], dumped["ipv6_address_mode"], dumped["enable_dhcp"]) == (None, None, True)


def test_defaults_are_neutrons() -> None:
    made = subnet(cidr="10.1.0.0/24")
    assert isinstance(made, o.Subnet)
    assert (made.enable_dhcp, made.dns_nameservers, made.host_routes) == (True, [], [])


def route(destination: str, nexthop: str) -> dict[str, str]:
    return {"destination": destination, "nexthop": nexthop}


ROUTE = route("10.9.0.0/16", "10.1.0.254")


@pytest.mark.parametrize(
    ("kw", "field", "words"),
    [
        ({"dns_nameservers": ["10.1.0.2", "fd00::53"]}, "dns_nameservers[1]", ("IPv6", "IPv4")),
        ({"dns_nameservers": ["10.1.0.2", "10.1.0.2"]}, "dns_nameservers[1]", ("twice",)),
        ({"dns_nameservers": ["10.1.0.300"]}, "dns_nameservers[0]", ("not an IP address",)),
        ({"dns_nameservers": [f"10.1.0.{i}" for i in range(2, 8)]}, "dns_nameservers", ("at most 5",)),
        ({"host_routes": [route("fd00::/8", "10.1.0.254")]}, "host_routes[0].destination", ("IPv6",)),
        ({"host_routes": [route("10.9.0.0/16", "fd00::1")]}, "host_routes[0].nexthop", ("IPv6",)),
        ({"host_routes": [route("10.9.0.1/16", "10.1.0.254")]}, "host_routes[0].destination", ("host bits",)),
        ({"host_routes": [{"destination": "10.9.0.0/16"}]}, "host_routes[0].nexthop", ("required",)),
        ({"host_routes": [{**ROUTE, "via": 1}]}, "host_routes[0].via", ("unknown",)),
        ({"host_routes": [ROUTE, ROUTE]}, "host_routes[1]", ("twice",)),
        ({"host_routes": [route(f"10.{i}.0.0/16", "10.1.0.9") for i in range(21)]}, "host_routes", ()),
        ({"enable_dhcp": "maybe"}, "enable_dhcp", ()),
    ],
)  # fmt: skip
def test_name_servers_and_routes_are_checked(kw: dict[str, Any], field: str, words: tuple[str, ...]) -> None:
    refused(field, *words, cidr="10.1.0.0/24", **kw)


def test_a_scenario_names_the_object_and_field(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("""
tenants:
  - name: t
    l3_contexts: [{name: v}]
    bridge_domains: [{name: b, l3_context: v}]
    subnets:
      - {name: s4, bridge_domain: b, cidr: 10.0.0.0/24, ipv6_ra_mode: slaac}
      - {name: s6, bridge_domain: b, cidr: "fd00::/64",
         ipv6_ra_mode: slaac, ipv6_address_mode: dhcpv6-stateful}
""")
    problems = [p.render("s.yaml") for p in sc.check(sc.load(f))]
    assert problems == [
        "s.yaml:7: tenants[0].subnets[0].ipv6_ra_mode: ipv6_ra_mode is not valid on an IPv4 subnet "
        "(10.0.0.0/24): it is for IPv6 /64 subnets",
        "s.yaml:9: tenants[0].subnets[1].ipv6_address_mode: ipv6_ra_mode 'slaac' with ipv6_address_mode "
        "'dhcpv6-stateful' is not valid: when both are set they must be the same",
    ]


# ---- SLAAC addresses: the modified EUI-64 of the MAC (RFC 4291 appendix A)

EUI64 = [
    # QEMU's default NIC: the textbook example
    ("52:54:00:12:34:56", "fe80::5054:ff:fe12:3456"),
    # a locally administered MAC: the U/L bit flips to 0
    ("02:00:00:00:00:01", "fe80::ff:fe00:1"),
    # RFC 7042's documentation MAC (universal): the U/L bit flips to 1
    ("00:00:5e:00:53:01", "fe80::200:5eff:fe00:5301"),
    ("02:50:46:ab:cd:ef", "fe80::50:46ff:feab:cdef"),
]


@pytest.mark.parametrize(("mac", "expected"), EUI64)
def test_link_local_addresses_are_the_modified_eui64(mac: str, expected: str) -> None:
    assert str(link_local(mac)) == expected
    assert interface_id(mac) == int(ipaddress.IPv6Address(expected)) & ((1 << 64) - 1)


def test_slaac_addresses_put_the_interface_id_under_the_prefix() -> None:
    assert (
        str(eui64_address("52:54:00:12:34:56", ipaddress.IPv6Network("fd00:1::/64")))
        == "fd00:1::5054:ff:fe12:3456"
    )
    assert (
        str(eui64_address("02:00:00:00:00:01", ipaddress.IPv6Network("2001:db8:0:7::/64")))
        == "2001:db8:0:7:0:ff:fe00:1"
    )
    with pytest.raises(ValueError, match="/64"):
        eui64_address("02:00:00:00:00:01", ipaddress.IPv6Network("fd00:1::/80"))


# ---- the MTU that fits the overlay


def test_the_default_mtu_is_the_underlay_less_geneve_with_its_option() -> None:
    # outer IPv4 20 + UDP 8 + Geneve 8 + one option (4-byte header, 4-byte value) + inner Ethernet 14
    assert mtu.GENEVE_OVERHEAD == 20 + 8 + 8 + 4 + 4 + 14 == 58
    assert mtu.DEFAULT_MTU == 1500 - 58 == 1442
    made = parse_spec(k.BRIDGE_DOMAIN, {"name": "b", "tenant": "t", "l3_context": "v"})
    assert isinstance(made, o.BridgeDomain) and made.mtu == 1442


def test_the_geneve_option_is_the_one_the_pipeline_maps() -> None:
    """The option counted above is the one the OVS renderer asks the switch for: class 0x5046,
    type 1, a 4-byte value. A longer option would make the default MTU too large."""
    from policyfabric.agent.renderers.ovs.applier import TLV_MAP

    expected = f"{{class=0x5046,type=0x01,len={mtu.GENEVE_OPTION_VALUE}}}->tun_metadata0"
    assert expected == TLV_MAP


@pytest.mark.parametrize(
    ("value", "ok"), [(1280, True), (9000, True), (1500, True), (1279, False), (9001, False)]
)
def test_the_mtu_stays_overridable_within_bounds(value: int, ok: bool) -> None:
    data = {"name": "b", "tenant": "t", "l3_context": "v", "mtu": value}
    if ok:
        made = parse_spec(k.BRIDGE_DOMAIN, data)
        assert isinstance(made, o.BridgeDomain) and made.mtu == value
    else:
        with pytest.raises(Invalid) as caught:
            parse_spec(k.BRIDGE_DOMAIN, data)
        assert caught.value.field == "mtu"


# ---- an endpoint's `slaac` entry, resolved where its addresses are checked

SLAAC_FILE = """
tenants:
  - name: t
    l3_contexts: [{name: v}]
    bridge_domains: [{name: b, l3_context: v}, {name: c, l3_context: v}]
    subnets:
      - {name: s4, bridge_domain: b, cidr: 10.0.0.0/24}
      - {name: s6, bridge_domain: b, cidr: "fd00:1::/64", MODE}
      - {name: c6, bridge_domain: c, cidr: "fd00:2::/64", ipv6_address_mode: dhcpv6-stateful}
    endpoint_groups: [{name: g, bridge_domain: b}, {name: h, bridge_domain: c}]
endpoints:
  - {name: e1, tenant: t, epg: g, mac: "52:54:00:12:34:56", ip: [10.0.0.5, slaac]}
"""


def checked(tmp_path: Path, text: str) -> list[str]:
    f = tmp_path / "s.yaml"
    f.write_text(text)
    return [p.render("s.yaml") for p in sc.check(sc.load(f))]


@pytest.mark.parametrize(
    "mode", ["ipv6_ra_mode: slaac", "ipv6_address_mode: slaac", "ipv6_address_mode: dhcpv6-stateless"]
)
def test_slaac_endpoints_take_the_eui64_address_in_auto_address_subnets(tmp_path: Path, mode: str) -> None:
    text = SLAAC_FILE.replace("MODE", mode)
    assert checked(tmp_path, text) == []
    # the address is claimed like a declared one: nobody else may declare it
    clash = text + '  - {name: e2, tenant: t, epg: g, ip: "fd00:1::5054:ff:fe12:3456"}\n'
    assert checked(tmp_path, clash) == [
        "s.yaml:13: endpoints[1].ip[0]: address fd00:1::5054:ff:fe12:3456 in l3_context 'v' is already "
        "taken by endpoint 'e1' (endpoints[0])"
    ]


def test_slaac_needs_an_auto_address_subnet(tmp_path: Path) -> None:
    text = SLAAC_FILE.replace("MODE", "ipv6_address_mode: dhcpv6-stateful")
    [problem] = checked(tmp_path, text)
    assert problem.startswith("s.yaml:12: endpoints[0].ip[1]: 'slaac' needs an IPv6 /64 subnet")
    on_c = SLAAC_FILE.replace("MODE", "ipv6_ra_mode: slaac").replace("epg: g, mac", "epg: h, mac")
    [problem] = checked(tmp_path, on_c.replace("10.0.0.5, ", ""))
    assert "bridge domain 'c'" in problem


def test_an_address_listed_and_learnt_is_refused(tmp_path: Path) -> None:
    text = SLAAC_FILE.replace("MODE", "ipv6_ra_mode: slaac").replace(
        "ip: [10.0.0.5, slaac]", 'ip: ["fd00:1::5054:ff:fe12:3456", slaac]'
    )
    [problem] = checked(tmp_path, text)
    assert problem == ("s.yaml:12: endpoints[0].ip[1]: fd00:1::5054:ff:fe12:3456 is also ip[0]: list it once")


def test_the_lab_key_dhcp_is_not_intent(tmp_path: Path) -> None:
    text = SLAAC_FILE.replace("MODE", "ipv6_ra_mode: slaac").replace(
        "ip: [10.0.0.5, slaac]}", "ip: 10.0.0.5, dhcp: true}"
    )
    assert checked(tmp_path, text) == []
    scenario = sc.load(tmp_path / "s.yaml")
    [ep] = [e for e in scenario.entries if e.kind is k.ENDPOINT]
    assert "dhcp" not in ep.data and ep.node["dhcp"] is True
