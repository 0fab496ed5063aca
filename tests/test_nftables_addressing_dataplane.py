"""Endpoints that boot like VMs on a host whose policy is in nftables: DHCPv4, SLAAC and DHCPv6,
answered by the agent of their own host through its Open vSwitch, must pass the host's nftables
ruleset both ways. A booting endpoint has no address yet (0.0.0.0, or only its link-local one) and
its answers come from no group member, so the ruleset's per-address chains alone dropped them all.

h1 renders with nftables and holds the booting endpoints; h2 (Open vSwitch) holds their peers, so
the addresses they get are also used across hosts, through policy.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyfabric.lab.lab import Lab
from policyfabric.model.addressing import eui64_address
from tests.lab_harness import measured, ns_run, running_lab, until

pytestmark = pytest.mark.dataplane

SCENARIO = """
tenants:
  - name: acme
    l3_contexts: [{name: vrf1}]
    bridge_domains:
      - {name: bd4, l3_context: vrf1}
      - {name: bd-a, l3_context: vrf1}
      - {name: bd-b, l3_context: vrf1}
      - {name: bd-n, l3_context: vrf1}
    subnets:
      - {name: net4, bridge_domain: bd4, cidr: 10.1.0.0/24, gateway_ip: 10.1.0.1}
      - {name: slaac6, bridge_domain: bd-a, cidr: "fd00:1::/64", gateway_ip: "fd00:1::1",
         ipv6_ra_mode: slaac, ipv6_address_mode: slaac}
      - {name: full6, bridge_domain: bd-b, cidr: "fd00:2::/64", gateway_ip: "fd00:2::1",
         ipv6_ra_mode: dhcpv6-stateful, ipv6_address_mode: dhcpv6-stateful}
      - {name: nodhcp, bridge_domain: bd-n, cidr: 10.3.0.0/24, gateway_ip: 10.3.0.1, enable_dhcp: false}
    security_groups:
      - name: udp5000
        rules: [{direction: ingress, protocol: udp, port: 5000}]
    endpoint_groups:
      - {name: g4, bridge_domain: bd4, intra_group: allow}
      - {name: a, bridge_domain: bd-a, intra_group: allow}
      - {name: b, bridge_domain: bd-b, intra_group: allow}
hosts: [{name: h1, renderer: nftables}, {name: h2}]
endpoints:
  - {name: vm4, tenant: acme, epg: g4, host: h1, ip: 10.1.0.7, dhcp: true}
  - {name: peer4, tenant: acme, epg: g4, host: h2, ip: 10.1.0.8}
  - {name: auto1, tenant: acme, epg: a, host: h1, mac: "02:00:00:00:0a:01", ip: [slaac], dhcp: true}
  - {name: peer6a, tenant: acme, epg: a, host: h2, ip: ["fd00:1::12"]}
  - {name: full1, tenant: acme, epg: b, host: h1, ip: ["fd00:2::7"], dhcp: true}
  - {name: peer6b, tenant: acme, epg: b, host: h2, ip: ["fd00:2::12"]}
  # a subnet the fabric does not answer DHCP on: its 68 → 67 is a datagram like any other
  - {name: quiet1, tenant: acme, subnet: nodhcp, host: h1, ip: 10.3.0.7, security_groups: [udp5000]}
  - {name: quiet2, tenant: acme, subnet: nodhcp, host: h2, ip: 10.3.0.8, security_groups: [udp5000]}
expect: []
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("nft-addressing")
    scenario = base / "nft-addressing.yaml"
    scenario.write_text(SCENARIO)
    with running_lab(scenario, base / "state") as lab:
        yield lab


def addresses(lab: Lab, name: str) -> list[str]:
    entry = next(e for e in lab.endpoints() if e["name"] == name)
    return sorted(str(a).split("/")[0] for a in entry["addresses"])


def test_the_host_renders_with_nftables(lab: Lab) -> None:
    """The premise: h1's policy is an nftables table in its namespace (Open vSwitch forwards)."""
    ruleset = ns_run(lab.state.hosts["h1"].netns, "nft", "list", "table", "inet", "policyfabric").stdout
    assert "chain ep" in ruleset


def test_dhcpv4_gives_the_intent_address_and_it_is_used_across_hosts(lab: Lab) -> None:
    until(lambda: addresses(lab, "vm4") == ["10.1.0.7"], timeout=20)
    assert measured(lab, "vm4", "peer4", "icmp") == "allow"


def test_slaac_gives_the_eui64_address_and_it_is_used_across_hosts(lab: Lab) -> None:
    expected = eui64_address(lab.state.endpoints["auto1"].mac, ipaddress.IPv6Network("fd00:1::/64"))
    until(lambda: str(expected) in addresses(lab, "auto1"), timeout=20)
    assert measured(lab, "peer6a", "auto1", "icmpv6") == "allow"


def test_dhcpv6_stateful_gives_the_intent_address_and_it_is_used_across_hosts(lab: Lab) -> None:
    until(lambda: "fd00:2::7" in addresses(lab, "full1"), timeout=20)
    assert measured(lab, "peer6b", "full1", "icmpv6") == "allow"


def test_the_server_side_of_dhcp_from_an_endpoint_is_still_dropped(lab: Lab, tmp_path: Path) -> None:
    """The ruleset accepts DHCP both ways because Open vSwitch, before it, drops what an endpoint
    sends from the server's port: a DHCP answer sent by vm4 to peer4 (unicast, to its address)
    must not arrive, while the same datagram from another port does (the control)."""
    received = tmp_path / "received"
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 68)); s.settimeout(3)\n"
        "got = []\n"
        "try:\n"
        "    while True:\n"
        "        got.append(s.recvfrom(100)[1][1])\n"
        "except socket.timeout:\n"
        "    pass\n"
        f"open({str(received)!r}, 'w').write(' '.join(map(str, sorted(set(got)))))\n"
    )
    peer4 = lab.state.endpoints["peer4"].netns
    watcher = subprocess.Popen(["ip", "netns", "exec", peer4, sys.executable, "-c", script])
    time.sleep(0.5)
    vm4 = lab.state.endpoints["vm4"].netns
    for sport in (67, 1067):
        send = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('10.1.0.7', {sport}))\n"
            "for _ in range(3): s.sendto(b'x', ('10.1.0.8', 68))\n"
        )
        ns_run(vm4, sys.executable, "-c", send)
    watcher.wait(10)
    assert received.read_text().split() == ["1067"]


def received_ports(
    lab: Lab, tmp_path: Path, receiver: str, sender: str, src: str, dst: str, sends: list[tuple[int, int]]
) -> set[int]:
    """The destination ports of the datagrams (sport, dport) from ``sender`` (bound to ``src``)
    that ``receiver`` (listening on each dport at ``dst``) got."""
    received = tmp_path / "received"
    ports = sorted({d for _, d in sends})
    script = (
        "import select, socket\n"
        "socks = []\n"
        f"for port in {ports!r}:\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"    s.bind(({dst!r}, port)); socks.append(s)\n"
        "got = set()\n"
        "while True:\n"
        "    ready, _, _ = select.select(socks, [], [], 3)\n"
        "    if not ready:\n"
        "        break\n"
        "    for s in ready:\n"
        "        s.recvfrom(100); got.add(s.getsockname()[1])\n"
        f"open({str(received)!r}, 'w').write(' '.join(map(str, sorted(got))))\n"
    )
    watcher = subprocess.Popen(
        ["ip", "netns", "exec", lab.state.endpoints[receiver].netns, sys.executable, "-c", script]
    )
    time.sleep(0.5)
    for sport, dport in sends:
        send = (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(({src!r}, {sport}))\n"
            f"for _ in range(3): s.sendto(b'x', ({dst!r}, {dport}))\n"
        )
        ns_run(lab.state.endpoints[sender].netns, sys.executable, "-c", send)
    watcher.wait(15)
    return {int(p) for p in received.read_text().split()}


def test_a_dhcp_client_port_opens_nothing_where_the_fabric_serves_no_dhcp(lab: Lab, tmp_path: Path) -> None:
    """quiet1 (on the nftables host) admits udp/5000 only; quiet2, on a subnet the fabric does not
    answer DHCP on, sends unicast from the DHCP client's port 68 to quiet1's UDP/67 (and /547's
    IPv4 twin is no different): dropped, while the same source port to udp/5000 arrives."""
    got = received_ports(
        lab, tmp_path, "quiet1", "quiet2", "10.3.0.8", "10.3.0.7", [(68, 67), (68, 5000), (546, 547)]
    )
    assert got == {5000}
