"""Every validation rule, through the HTTP API (in-process): a wrong value (precise 4xx naming
the field) and the right one (accepted)."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from tests.conftest import Api, error, unique


def refused(
    api: Api, collection: str, body: dict[str, Any], status: int, field: str | None, *words: str
) -> dict[str, Any]:
    r = api.post(collection, body)
    assert r.status_code == status, r.text
    err = error(r)
    assert err["field"] == field, err
    for word in words:
        assert word in err["message"], err
    return err


# ---- names and references -------------------------------------------------


@pytest.mark.parametrize("bad", ["Web", "web_1", "-web", "web-", "", "a" * 64, "wéb", "web\n"])
def test_names_must_be_dns_labels(api: Api, tenant: dict[str, str], bad: str) -> None:
    refused(api, "l3-contexts", {"name": bad, "tenant": tenant["name"]}, 422, "name", "not a valid name")


def test_a_dns_label_name_is_accepted(api: Api, tenant: dict[str, str]) -> None:
    api.ok("l3-contexts", {"name": "vrf-2b", "tenant": tenant["name"]})
    api.ok("l3-contexts", {"name": "a" * 63, "tenant": tenant["name"]})


def test_names_are_unique_per_tenant_and_kind(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    err = refused(api, "l3-contexts", {"name": "vrf1", "tenant": t}, 409, "name", "already exists")
    assert err["code"] == "conflict"
    # Same name, other kind: fine.  Same name, other tenant: fine.
    api.ok("contracts", {"name": "vrf1", "tenant": t})
    other = unique("t")
    api.ok("tenants", {"name": other})
    api.ok("l3-contexts", {"name": "vrf1", "tenant": other})


def test_references_must_exist_in_the_same_tenant(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    refused(
        api,
        "bridge-domains",
        {"name": "bd-x", "tenant": t, "l3_context": "nope"},
        422,
        "l3_context",
        "no l3_context named 'nope'",
    )
    other = unique("t")
    api.ok("tenants", {"name": other})
    api.ok("l3-contexts", {"name": "elsewhere", "tenant": other})
    refused(
        api, "bridge-domains", {"name": "bd-x", "tenant": t, "l3_context": "elsewhere"}, 422, "l3_context"
    )
    api.ok("bridge-domains", {"name": "bd-x", "tenant": t, "l3_context": "vrf1"})


def test_the_tenant_must_exist(api: Api) -> None:
    refused(api, "l3-contexts", {"name": "v", "tenant": "no-such-tenant"}, 422, "tenant", "no tenant named")


def test_nested_references_name_their_field(api: Api, tenant: dict[str, str]) -> None:
    body = {"name": "g", "tenant": tenant["name"], "bridge_domain": "bd-a", "provides": ["missing"]}
    refused(api, "endpoint-groups", body, 422, "provides[0]", "no contract named 'missing'")


# ---- subnets ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidr", "words"),
    [
        ("10.9.0.5/24", "did you mean 10.9.0.0/24"),
        ("10.9.0.0", "add the prefix length"),
        ("10.9.0.0/33", "not a valid CIDR"),
        ("banana", "not a valid CIDR"),
        ("10.9.0.0/31", "too small"),
    ],
)
def test_subnet_cidr_must_be_valid(api: Api, tenant: dict[str, str], cidr: str, words: str) -> None:
    body = {"name": "s9", "tenant": tenant["name"], "bridge_domain": "bd-b", "cidr": cidr}
    refused(api, "subnets", body, 422, "cidr", words)


@pytest.mark.parametrize(
    ("gateway", "words"),
    [
        ("10.8.0.0", "network address"),
        ("10.8.0.255", "broadcast address"),
        ("10.7.0.1", "not inside"),
        ("fd00::1", "IPv6"),
        ("10.8.0.1/24", "drop the prefix length"),
    ],
)
def test_gateway_must_be_a_host_of_its_subnet(
    api: Api, tenant: dict[str, str], gateway: str, words: str
) -> None:
    body = {
        "name": "s8",
        "tenant": tenant["name"],
        "bridge_domain": "bd-b",
        "cidr": "10.8.0.0/24",
        "gateway_ip": gateway,
    }
    refused(api, "subnets", body, 422, "gateway_ip", words)


def test_gateway_inside_is_accepted_and_defaults_to_the_first_host(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    made = api.ok(
        "subnets",
        {
            "name": "s8",
            "tenant": t,
            "bridge_domain": "bd-b",
            "cidr": "10.8.0.0/24",
            "gateway_ip": "10.8.0.254",
        },
    )
    assert made["gateway_ip"] == "10.8.0.254"
    made = api.ok("subnets", {"name": "s7", "tenant": t, "bridge_domain": "bd-b", "cidr": "10.7.0.0/24"})
    assert made["gateway_ip"] == "10.7.0.1"


def test_subnets_of_one_l3_context_never_overlap(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    # 10.1.0.0/16 contains sa (10.1.0.0/24) of bd-a, same vrf1, even on another bridge domain.
    err = refused(
        api,
        "subnets",
        {"name": "big", "tenant": t, "bridge_domain": "bd-b", "cidr": "10.1.0.0/16"},
        409,
        "cidr",
        "overlaps subnet 'sa'",
    )
    assert "vrf1" in err["message"]
    # The same prefix in another l3_context is fine.
    api.ok("l3-contexts", {"name": "vrf2", "tenant": t})
    api.ok("bridge-domains", {"name": "bd-c", "tenant": t, "l3_context": "vrf2"})
    api.ok("subnets", {"name": "big", "tenant": t, "bridge_domain": "bd-c", "cidr": "10.1.0.0/16"})


@pytest.mark.parametrize("cidr", ["fd00:9::/48", "fd00:9::/80", "10.9.0.0/24"])
def test_slaac_only_on_ipv6_slash_64(api: Api, tenant: dict[str, str], cidr: str) -> None:
    body = {
        "name": "s6",
        "tenant": tenant["name"],
        "bridge_domain": "bd-b",
        "cidr": cidr,
        "ipv6_ra_mode": "slaac",
    }
    refused(api, "subnets", body, 422, "ipv6_ra_mode", "/64")


def test_slaac_on_a_slash_64_is_accepted(api: Api, tenant: dict[str, str]) -> None:
    api.ok(
        "subnets",
        {
            "name": "s6",
            "tenant": tenant["name"],
            "bridge_domain": "bd-b",
            "cidr": "fd00:9::/64",
            "ipv6_ra_mode": "slaac",
        },
    )


def test_neutron_subnet_keys_are_stored_and_returned(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    body = {
        "name": "s6",
        "tenant": t,
        "bridge_domain": "bd-b",
        "cidr": "fd00:9::/64",
        "ipv6_ra_mode": "dhcpv6-stateless",
        "ipv6_address_mode": "dhcpv6-stateless",
        "dns_nameservers": ["fd00:9::53"],
        "host_routes": [{"destination": "fd00:99::/48", "nexthop": "fd00:9::fe"}],
    }
    made = api.ok("subnets", body)
    got = api.get(f"/v1/subnets/{made['id']}").json()
    for key in ("ipv6_ra_mode", "ipv6_address_mode", "dns_nameservers", "host_routes"):
        assert made[key] == got[key] == body[key]
    assert made["enable_dhcp"] is True is got["enable_dhcp"]
    plain = api.ok("subnets", {"name": "s4", "tenant": t, "bridge_domain": "bd-b", "cidr": "10.8.0.0/24",
                               "enable_dhcp": False})  # fmt: skip
    assert plain["enable_dhcp"] is False and plain["dns_nameservers"] == [] == plain["host_routes"]


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ({"cidr": "10.9.0.0/24", "ipv6_address_mode": "slaac"}, "ipv6_address_mode", ("IPv4",)),
        ({"ipv6_ra_mode": "slaac", "ipv6_address_mode": "dhcpv6-stateful"}, "ipv6_address_mode", ("same",)),
        ({"ipv6_ra_mode": "slaac", "enable_dhcp": False}, "ipv6_ra_mode", ("enable_dhcp",)),
        ({"dns_nameservers": ["10.0.0.53"]}, "dns_nameservers[0]", ("IPv4",)),
        (
            {"host_routes": [{"destination": "fd00:99::/48", "nexthop": "10.0.0.1"}]},
            "host_routes[0].nexthop",
            (),
        ),
    ],
)
def test_neutron_subnet_rules_name_the_field(
    api: Api, tenant: dict[str, str], extra: dict[str, object], field: str, words: tuple[str, ...]
) -> None:
    body = {"name": "s6", "tenant": tenant["name"], "bridge_domain": "bd-b", "cidr": "fd00:9::/64", **extra}
    refused(api, "subnets", body, 422, field, *words)


def test_the_openapi_document_lists_the_subnet_keys(api: Api) -> None:
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    props = schemas["Subnet"]["properties"]
    assert {"enable_dhcp", "dns_nameservers", "host_routes", "ipv6_ra_mode", "ipv6_address_mode"} <= set(
        props
    )
    modes = {"slaac", "dhcpv6-stateless", "dhcpv6-stateful"}
    for key in ("ipv6_ra_mode", "ipv6_address_mode"):
        assert modes == {m for option in props[key]["anyOf"] for m in option.get("enum", [])}
    assert schemas["BridgeDomain"]["properties"]["mtu"]["default"] == 1442


# ---- endpoints -------------------------------------------------------------


def ep(t: str, name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "tenant": t, "epg": "ga", **kw}


@pytest.mark.parametrize(
    ("ip", "status", "words"),
    [
        ("10.2.0.5", 422, "not inside a subnet of bridge domain 'bd-a'"),  # bd-b's subnet
        ("10.9.0.5", 422, "not inside a subnet"),
        ("10.1.0.1", 422, "gateway address of subnet 'sa'"),
        ("10.1.0.0", 422, "network address"),
        ("10.1.0.255", 422, "broadcast"),
        ("nonsense", 422, "not an IP address"),
    ],
)
def test_endpoint_addresses_must_be_hosts_of_its_bridge_domain(
    api: Api, tenant: dict[str, str], ip: str, status: int, words: str
) -> None:
    refused(api, "endpoints", ep(tenant["name"], "e1", ip=ip), status, "ip[0]", words)


def test_endpoint_addresses_inside_are_accepted(api: Api, tenant: dict[str, str]) -> None:
    made = api.ok("endpoints", ep(tenant["name"], "e1", ip=["10.1.0.10", "fd00:1::10", "slaac"]))
    assert made["ip"] == ["10.1.0.10", "fd00:1::10", "slaac"]
    assert made["status"] == "DOWN"
    single = api.ok("endpoints", ep(tenant["name"], "e2", ip="10.1.0.11"))
    assert single["ip"] == ["10.1.0.11"]


def test_slaac_needs_a_slaac_subnet(api: Api, tenant: dict[str, str]) -> None:
    body = {"name": "e1", "tenant": tenant["name"], "epg": "gb", "ip": ["10.2.0.9", "slaac"]}
    refused(api, "endpoints", body, 422, "ip[1]", "slaac")


def test_a_slaac_address_is_the_eui64_of_the_mac_and_is_claimed(api: Api, tenant: dict[str, str]) -> None:
    """sa6 (fd00:1::/64) is a SLAAC subnet: e1's address there is fd00:1::5054:ff:fe12:3456, which
    nobody else may then declare, also when e1's MAC was generated by the authority."""
    t = tenant["name"]
    api.ok("endpoints", ep(t, "e1", mac="52:54:00:12:34:56", ip=["slaac"]))
    refused(api, "endpoints", ep(t, "e2", ip="fd00:1::5054:ff:fe12:3456"), 409, "ip[0]", "endpoint 'e1'")
    generated = api.ok("endpoints", ep(t, "e3", ip=["slaac"]))
    octets = bytes.fromhex(generated["mac"].replace(":", ""))
    iid = bytes([octets[0] ^ 2, *octets[1:3], 0xFF, 0xFE, *octets[3:]])
    theirs = str(ipaddress.IPv6Address(bytes.fromhex("fd000001" + "00" * 4) + iid))
    refused(api, "endpoints", ep(t, "e4", ip=theirs), 409, "ip[0]", "endpoint 'e3'")


def test_a_subnet_cannot_stop_being_slaac_under_a_slaac_endpoint(api: Api, tenant: dict[str, str]) -> None:
    """The IPv6 modes are structural: a change that leaves a ``slaac`` endpoint without an
    auto-address subnet is refused, naming the endpoint; one that keeps it auto-address is not."""
    t = tenant["name"]
    api.ok("endpoints", ep(t, "e1", ip=["slaac"]))  # MACs are unique everywhere: let it be generated
    sa6 = api.find("subnets", t, "sa6")
    assert sa6 is not None
    body = {k: v for k, v in sa6.items() if k not in ("id", "revision")}
    stateful = {**body, "ipv6_ra_mode": "dhcpv6-stateful", "ipv6_address_mode": "dhcpv6-stateful"}
    r = api.put("subnets", sa6["id"], stateful)
    assert r.status_code == 409, r.text
    assert "endpoint 'e1'" in error(r)["message"] and "slaac" in error(r)["message"]
    stateless = {**body, "ipv6_ra_mode": "dhcpv6-stateless", "ipv6_address_mode": "dhcpv6-stateless"}
    assert api.put("subnets", sa6["id"], stateless).status_code == 200


def test_endpoint_addresses_are_unique_in_the_l3_context(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    api.ok("endpoints", ep(t, "e1", ip="10.1.0.10"))
    err = refused(api, "endpoints", ep(t, "e2", ip="10.1.0.10"), 409, "ip[0]", "10.1.0.10", "endpoint 'e1'")
    assert "vrf1" in err["message"]
    # The same address in another tenant's (another) l3_context: fine.
    other = unique("t")
    api.ok("tenants", {"name": other})
    api.ok("l3-contexts", {"name": "vrf1", "tenant": other})
    api.ok("bridge-domains", {"name": "bd-a", "tenant": other, "l3_context": "vrf1"})
    api.ok("subnets", {"name": "sa", "tenant": other, "bridge_domain": "bd-a", "cidr": "10.1.0.0/24"})
    api.ok("endpoint-groups", {"name": "ga", "tenant": other, "bridge_domain": "bd-a"})
    api.ok("endpoints", ep(other, "e2", ip="10.1.0.10"))


def test_an_address_listed_twice_is_refused(api: Api, tenant: dict[str, str]) -> None:
    refused(
        api, "endpoints", ep(tenant["name"], "e1", ip=["10.1.0.10", "10.1.0.10"]), 422, "ip", "listed twice"
    )


def test_ipv6_zone_ids_are_refused(api: Api, tenant: dict[str, str]) -> None:
    """``fd00:1::20%zz`` once compared unequal to ``fd00:1::20``: four endpoints held one address,
    one the gateway's. A zone id is never part of an address in the policy."""
    t = tenant["name"]
    api.ok("endpoints", ep(t, "e1", ip="fd00:1::20"))
    for i, ip in enumerate(["fd00:1::20%zz", "fd00:1::20%1", "fd00:1::1%eth0"]):
        refused(api, "endpoints", ep(t, f"z{i}", ip=ip), 422, "ip[0]", "zone id", ip.partition("%")[0])
    subnet = {"name": "s9", "tenant": t, "bridge_domain": "bd-b"}
    refused(api, "subnets", {**subnet, "cidr": "fd00:9::%zz/64"}, 422, "cidr", "zone id", "fd00:9::/64")
    refused(
        api, "subnets", {**subnet, "cidr": "fd00:9::/64", "gateway_ip": "fd00:9::1%zz"}, 422, "gateway_ip"
    )
    assert [e["name"] for e in api.get("/v1/endpoints", tenant=t).json()["items"]] == ["e1"]


@pytest.mark.parametrize(
    ("mac", "words"),
    [
        ("01:00:5e:00:00:01", "multicast"),
        ("ff:ff:ff:ff:ff:ff", "multicast"),
        ("00:00:00:00:00:00", "not a usable MAC"),
        ("02:00:00:00:00", "not a MAC"),
        ("zz:00:00:00:00:01", "not a MAC"),
    ],
)
def test_macs_must_be_unicast(api: Api, tenant: dict[str, str], mac: str, words: str) -> None:
    refused(api, "endpoints", ep(tenant["name"], "e1", mac=mac), 422, "mac", words)


def test_macs_are_unique_and_generated_when_absent(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    made = api.ok("endpoints", ep(t, "e1", mac="02:AA:00:00:00:01"))
    assert made["mac"] == "02:aa:00:00:00:01"
    refused(api, "endpoints", ep(t, "e2", mac="02:aa:00:00:00:01"), 409, "mac", "endpoint 'e1'")
    generated = {api.ok("endpoints", ep(t, f"g{i}"))["mac"] for i in range(20)}
    assert len(generated) == 20
    for mac in generated:
        first = int(mac[:2], 16)
        assert first & 1 == 0 and first & 2 == 2, mac  # unicast, locally administered


def test_endpoint_needs_an_epg_or_a_subnet_that_agree(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    refused(api, "endpoints", {"name": "e1", "tenant": t, "ip": "10.1.0.5"}, 422, "epg", "needs an epg")
    refused(api, "endpoints", ep(t, "e1", subnet="sb", ip="10.1.0.5"), 422, "subnet", "bd-b")
    api.ok("endpoints", ep(t, "e1", subnet="sa", ip="10.1.0.5"))
    api.ok("endpoints", {"name": "plain", "tenant": t, "subnet": "sb", "ip": "10.2.0.5"})


# ---- classifiers -------------------------------------------------------------


def contract(t: str, **classifier: Any) -> dict[str, Any]:
    return {"name": unique("c"), "tenant": t, "rules": [{"name": "r", "classifier": classifier}]}


@pytest.mark.parametrize(
    ("classifier", "field", "words"),
    [
        ({"protocol": "icmp", "port": 80}, "rules[0].classifier.port", "needs protocol tcp or udp"),
        ({"protocol": "any", "port": 80}, "rules[0].classifier.port", "needs protocol tcp or udp"),
        ({"protocol": "tcp", "port": 0}, "rules[0].classifier.port", "out of range"),
        ({"protocol": "tcp", "port": 65536}, "rules[0].classifier.port", "out of range"),
        ({"protocol": "tcp", "port": "90-80"}, "rules[0].classifier.port", "reversed"),
        ({"protocol": "udp", "port": "80-"}, "rules[0].classifier.port", "not a port"),
        ({"protocol": "tcp", "port": "1-2-3"}, "rules[0].classifier.port", "not a port"),
        (
            {"protocol": "icmpv6", "ethertype": "ipv4"},
            "rules[0].classifier.protocol",
            "icmpv6 needs ethertype ipv6 or any",
        ),
        ({"protocol": "sctp"}, "rules[0].classifier.protocol", "'tcp'"),
    ],
)
def test_classifier_rules(
    api: Api, tenant: dict[str, str], classifier: dict[str, Any], field: str, words: str
) -> None:
    refused(api, "contracts", contract(tenant["name"], **classifier), 422, field, words)


@pytest.mark.parametrize(
    "classifier",
    [
        {"protocol": "tcp", "port": 80},
        {"protocol": "udp", "port": "1-65535"},
        {"protocol": "tcp", "port": "8080"},
        {"protocol": "icmpv6", "ethertype": "ipv6"},
        {"protocol": "icmpv6"},
        {"protocol": "icmp", "ethertype": "ipv4"},
        {},
    ],
)
def test_valid_classifiers_are_accepted(api: Api, tenant: dict[str, str], classifier: dict[str, Any]) -> None:
    made = api.ok("contracts", contract(tenant["name"], **classifier))
    if "port" in classifier:
        assert made["rules"][0]["classifier"]["port"] in (80, "1-65535", 8080)


def test_rule_names_are_unique_in_a_contract(api: Api, tenant: dict[str, str]) -> None:
    body = {"name": "c", "tenant": tenant["name"], "rules": [{"name": "r"}, {"name": "r"}]}
    refused(api, "contracts", body, 422, "rules[1].name", "used twice")


def test_security_group_rules_follow_the_same_protocol_rules(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    rule = {"direction": "ingress", "protocol": "icmp", "port": 22}
    refused(api, "security-groups", {"name": "sg", "tenant": t, "rules": [rule]}, 422, "rules[0].port")
    rule = {"direction": "ingress", "ethertype": "ipv4", "remote_ip_prefix": "fd00::/64"}
    refused(
        api, "security-groups", {"name": "sg", "tenant": t, "rules": [rule]}, 422, "rules[0].remote_ip_prefix"
    )
    rule = {"direction": "sideways"}
    refused(api, "security-groups", {"name": "sg", "tenant": t, "rules": [rule]}, 422, "rules[0].direction")
    made = api.ok(
        "security-groups",
        {
            "name": "sg",
            "tenant": t,
            "rules": [
                {"direction": "ingress", "protocol": "tcp", "port": 22, "remote_group": "sg"},
                {"direction": "ingress", "protocol": "icmpv6"},
            ],
        },
    )
    assert [r["ethertype"] for r in made["rules"]] == ["ipv4", "ipv6"]


# ---- floating IPs and external networks ------------------------------------


@pytest.fixture
def public(api: Api) -> str:
    """An external network with a /24 of its own inside 198.18.0.0/15 (benchmarking range)."""
    name = unique("pub")
    for _ in range(50):
        third = random.randrange(512)
        cidr = f"198.{18 + third // 256}.{third % 256}.0/24"
        r = api.post("external-networks", {"name": name, "cidr": cidr})
        if r.status_code == 201:
            return name
        assert r.status_code == 409, r.text
    raise AssertionError("no free /24 for an external network")


def _net(api: Api, name: str) -> str:
    return str(api.find("external-networks", None, name)["cidr"]).rsplit(".", 1)[0]  # type: ignore[index]


def test_floating_ips_inside_their_network_and_unique(api: Api, tenant: dict[str, str], public: str) -> None:
    t, prefix = tenant["name"], _net(api, public)
    api.ok("endpoints", ep(t, "e1", ip="10.1.0.10"))
    api.ok("endpoints", ep(t, "e2", ip="10.1.0.11"))
    refused(
        api,
        "floating-ips",
        {"name": "f", "tenant": t, "network": public, "ip": "203.0.113.7", "endpoint": "e1"},
        422,
        "ip",
        "not inside",
    )
    refused(
        api,
        "floating-ips",
        {"name": "f", "tenant": t, "network": public, "ip": f"{prefix}.1", "endpoint": "e1"},
        422,
        "ip",
        "gateway",
    )
    refused(
        api,
        "floating-ips",
        {"name": "f", "tenant": t, "network": "nope", "ip": f"{prefix}.7"},
        422,
        "network",
    )
    api.ok(
        "floating-ips", {"name": "f", "tenant": t, "network": public, "ip": f"{prefix}.7", "endpoint": "e1"}
    )
    refused(
        api,
        "floating-ips",
        {"name": "g", "tenant": t, "network": public, "ip": f"{prefix}.7", "endpoint": "e2"},
        409,
        "ip",
        "floating IP 'f'",
    )
    allocated = api.ok("floating-ips", {"name": "h", "tenant": t, "network": public, "endpoint": "e2"})
    assert allocated["ip"] == f"{prefix}.2"


def test_external_networks_do_not_overlap(api: Api, public: str) -> None:
    cidr = api.find("external-networks", None, public)["cidr"]  # type: ignore[index]
    r = api.post("external-networks", {"name": unique("x"), "cidr": cidr})
    assert r.status_code == 409 and error(r)["field"] == "cidr"


# ---- routers -----------------------------------------------------------------


def test_router_interfaces_are_subnets_of_its_l3_context_and_of_one_router(
    api: Api, tenant: dict[str, str]
) -> None:
    t = tenant["name"]
    api.ok("l3-contexts", {"name": "vrf2", "tenant": t})
    api.ok("bridge-domains", {"name": "bd-c", "tenant": t, "l3_context": "vrf2"})
    api.ok("subnets", {"name": "sc", "tenant": t, "bridge_domain": "bd-c", "cidr": "10.3.0.0/24"})
    refused(
        api,
        "routers",
        {"name": "r1", "tenant": t, "l3_context": "vrf1", "interfaces": ["sa", "sc"]},
        422,
        "interfaces[1]",
        "vrf2",
    )
    api.ok("routers", {"name": "r1", "tenant": t, "l3_context": "vrf1", "interfaces": ["sa", "sb"]})
    refused(
        api,
        "routers",
        {"name": "r2", "tenant": t, "l3_context": "vrf1", "interfaces": ["sb"]},
        409,
        "interfaces[0]",
        "router 'r1'",
    )


# ---- request hygiene -------------------------------------------------------


def test_unknown_fields_are_named(api: Api, tenant: dict[str, str]) -> None:
    refused(
        api,
        "bridge-domains",
        {"name": "b", "tenant": tenant["name"], "l3_context": "vrf1", "mtuu": 1500},
        422,
        "mtuu",
        "unknown field",
    )


def test_missing_fields_are_named(api: Api, tenant: dict[str, str]) -> None:
    refused(api, "bridge-domains", {"name": "b", "tenant": tenant["name"]}, 422, "l3_context", "required")


def test_several_problems_are_all_reported(api: Api, tenant: dict[str, str]) -> None:
    r = api.post(
        "subnets", {"name": "Bad", "tenant": tenant["name"], "bridge_domain": "bd-a", "cidr": "10.1.0.1/24"}
    )
    assert r.status_code == 422
    fields = {p["field"] for p in error(r)["problems"]}
    assert fields == {"name", "cidr"}


@pytest.mark.parametrize("raw", [b"{", b"not json", b'{"name": "x",}'])
def test_malformed_json_is_a_400(api: Api, raw: bytes) -> None:
    r = api.http.post("/v1/tenants", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert error(r)["code"] == "bad_request"


def test_a_body_that_is_not_an_object_is_a_400(api: Api) -> None:
    r = api.post("tenants", ["a", "list"])
    assert r.status_code == 400
    assert "JSON object" in error(r)["message"]


def test_unknown_ids_and_paths_are_404s_in_the_error_format(api: Api) -> None:
    r = api.get("/v1/tenants/does-not-exist")
    assert r.status_code == 404 and error(r)["code"] == "not_found"
    r = api.get("/v1/nothing-here")
    assert r.status_code == 404 and error(r)["code"] == "not_found"
    r = api.http.patch("/v1/tenants")
    assert r.status_code == 405 and error(r)["code"] == "method_not_allowed"


def test_a_routers_external_address_is_allocated_kept_and_never_shared(
    api: Api, tenant: dict[str, str], public: str
) -> None:
    t, prefix = tenant["name"], _net(api, public)
    body = {"name": "r", "tenant": t, "l3_context": "vrf1", "interfaces": ["sa"],
            "external_gateway": {"network": public, "hosts": ["gw1", "GW2.example.com"]}}  # fmt: skip
    router = api.ok("routers", body)
    allocated = router["external_gateway"]["ip"]
    assert router["external_gateway"]["hosts"] == ["gw1", "gw2.example.com"]  # host names, lower-cased
    assert allocated == f"{prefix}.2"  # the first free address after the network's gateway
    again = api.put("routers", router["id"], {**body, "interfaces": ["sa", "sb"]})
    assert again.status_code == 200, again.text
    assert again.json()["external_gateway"]["ip"] == allocated  # an update that leaves it out keeps it
    refused(
        api,
        "floating-ips",
        {"name": "f", "tenant": t, "network": public, "ip": allocated},
        409,
        "ip",
        "already taken",
    )
    fip = api.ok("floating-ips", {"name": "f2", "tenant": t, "network": public})
    assert fip["ip"] not in (allocated, f"{prefix}.1")
    refused(
        api,
        "routers",
        {**body, "name": "r2", "external_gateway": {"network": public, "ip": f"{prefix}.999"}},
        422,
        "external_gateway.ip",
        "not an IP address",
    )
    refused(
        api,
        "routers",
        {**body, "name": "r2", "external_gateway": {"network": public, "ip": "203.0.113.7"}},
        422,
        "external_gateway.ip",
        "not inside",
    )
