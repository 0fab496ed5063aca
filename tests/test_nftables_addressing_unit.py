"""Which DHCP accepts an endpoint's chains hold: only where the agent answers (its bridge domain's
DHCPv4 subnets, its DHCPv6 ones), one way each. Elsewhere a DHCP port is a port like any other
(tests/test_nftables_addressing_dataplane.py sends the packets)."""

from __future__ import annotations

from dataclasses import replace

from policyfabric.agent.renderers.nftables.ruleset import Chain, endpoint_chains
from policyfabric.agent.values import parse_ip, parse_ipv4, parse_prefix
from policyfabric.agent.view import DhcpSubnet, Ipv6Subnet
from tests.test_pipeline_unit import BD
from tests.test_secgroups_unit import vm

STATEFUL = "dhcpv6-stateful"
EP = replace(vm("a", 1, ofport=11), ips=(parse_ip("10.0.0.1"), parse_ip("fd00::1")))


def chains(bd: object) -> dict[str, Chain]:
    return dict(endpoint_chains(EP, 11, "qbr11", bd))  # type: ignore[arg-type]


def dhcp_lines(bd: object) -> list[tuple[str, str]]:
    return [(name, r) for name, c in chains(bd).items() for r in c.rules if "sport 6" in r or "sport 54" in r]


def test_no_dhcp_accept_where_the_agent_answers_none() -> None:
    slaac = Ipv6Subnet(parse_prefix("fd00::/64"), parse_ip("fd00::fe"), "slaac", "slaac")
    assert dhcp_lines(BD) == []
    assert dhcp_lines(replace(BD, ipv6=(slaac,))) == []  # router advertisements only: no DHCPv6
    assert dhcp_lines(None) == []


def test_each_dhcp_accept_is_one_way() -> None:
    bd = replace(
        BD,
        dhcp=(DhcpSubnet(parse_prefix("10.0.0.0/24"), parse_ipv4("10.0.0.254")),),
        ipv6=(Ipv6Subnet(parse_prefix("fd00::/64"), parse_ip("fd00::fe"), STATEFUL, STATEFUL),),
    )
    assert dhcp_lines(bd) == [
        # toward the port, from the agent's responder (the gateway; a link-local address)
        ("ep11", "ip saddr 10.0.0.254 udp sport 67 udp dport 68 accept"),
        ("ep11", "ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept"),
        # from the port (reached only through the port's own jump), to the server only
        ("ep11_out", "udp sport 68 udp dport 67 ip daddr { 255.255.255.255, 10.0.0.254 } accept"),
        ("ep11_out", "udp sport 546 udp dport 547 ip6 daddr ff02::1:2 accept"),
    ]
    own = chains(bd)["ep11"]
    assert own.rules.index("ether saddr { 02:00:00:00:01:01 } jump ep11_out") < own.rules.index(
        "ip saddr 10.0.0.254 udp sport 67 udp dport 68 accept"
    )
    assert len(own.labels) == len(own.rules) and all(own.labels)
