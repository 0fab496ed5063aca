"""Router advertisements and DHCPv6 with real Open vSwitch, real namespaces, the kernel's own
SLAAC, a real ISC ``dhclient -6`` and real packets.

tests/scenarios/ipv6_addressing.yaml: r1 serves one subnet per mode. auto1 (h1, slaac) makes its
EUI-64 address from the advertisements; full1 (h2, dhcpv6-stateful) is handed its intent address
by DHCPv6; less1 (h1, dhcpv6-stateless) makes its address and asks DHCPv6 for name servers only.
Each host's agent answers its own endpoints (packet-in/packet-out on br-int's management socket):
nothing else in the lab sends an advertisement or runs a DHCPv6 server. rogue1 (h1) plays both;
peer1 (h1) and peer2 (h2) witness.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from policyfabric.agent.view import router_identity
from policyfabric.lab.dhcp import netns_etc
from policyfabric.lab.lab import Lab
from policyfabric.model.addressing import eui64_address, link_local, router_link_local
from policyfabric.opflex.gbp import Cls
from policyfabric.opflex.uri import child, space
from tests.lab_harness import SCENARIOS, lab_fixture, ns_run, until

pytestmark = pytest.mark.dataplane

lab = lab_fixture(SCENARIOS / "ipv6_addressing.yaml")

ROUTER_MAC = router_identity(child(space("acme"), Cls.PF_ROUTER, "r1"))[1]
GATEWAY_LLA = router_link_local(ROUTER_MAC)

# scapy in rogue1's namespace: one frame of the kind asked for, to ``dst`` (an address and a MAC)
ROGUE = """
import sys
from scapy.all import Ether, IPv6, UDP, ICMPv6ND_RA, ICMPv6ND_NS, ICMPv6NDOptPrefixInfo, sendp, get_if_hwaddr
from scapy.layers.dhcp6 import DHCP6_Reply, DHCP6OptIA_NA, DHCP6OptIAAddress
from scapy.utils6 import in6_mactoifaceid
kind, dst, dst_mac = sys.argv[1:4]
mac = get_if_hwaddr("eth0")
src = "fe80::" + in6_mactoifaceid(mac)
base = Ether(src=mac, dst=dst_mac) / IPv6(src=src, dst=dst, hlim=255)
frames = {
    "ra": base / ICMPv6ND_RA(routerlifetime=9000) / ICMPv6NDOptPrefixInfo(prefix="fd66::", prefixlen=64),
    "ns": base / ICMPv6ND_NS(tgt="fd00:1::99"),  # the control: neighbour discovery is flooded
    "reply": base / UDP(sport=547, dport=546) / DHCP6_Reply()
             / DHCP6OptIA_NA(iaid=1, ianaopts=[DHCP6OptIAAddress(addr="fd66::1")]),
    "reply-control": base / UDP(sport=1547, dport=1546) / DHCP6_Reply(),
}
sendp(frames[kind], iface="eth0", count=3, verbose=False)
"""

# scapy in a witness's namespace: what rogue1 (by its MAC) sent that arrived, until told to stop
WATCH = """
import sys, time
from scapy.all import Ether, AsyncSniffer, ICMPv6ND_RA, ICMPv6ND_NS, UDP
rogue = sys.argv[1]
def what(p):
    if ICMPv6ND_RA in p: return "ra"
    if ICMPv6ND_NS in p: return "ns"
    if UDP in p: return f"udp-{p[UDP].sport}"
    return "other"  # its own multicast listener reports, duplicate address detection: not counted
sniffer = AsyncSniffer(iface="eth0", lfilter=lambda p: Ether in p and p[Ether].src == rogue,
                       started_callback=lambda: print("ready", flush=True))
sniffer.start()
sys.stdin.readline()
time.sleep(0.5)
print(" ".join(sorted({what(p) for p in sniffer.stop()} - {"other"})), flush=True)
"""


def proc_mtu(lab: Lab, name: str) -> int:
    """The endpoint's IPv6 MTU (an advertisement's MTU option sets this, not the link's)."""
    out = ns_run(lab.state.endpoints[name].netns, "cat", "/proc/sys/net/ipv6/conf/eth0/mtu").stdout
    return int(out)


def nameservers(lab: Lab, name: str) -> list[str]:
    text = (netns_etc(lab.state.endpoints[name].netns) / "resolv.conf").read_text()
    return [line.split()[1] for line in text.splitlines() if line.startswith("nameserver")]


def entry(lab: Lab, name: str) -> dict[str, object]:
    return next(e for e in lab.endpoints() if e["name"] == name)


def v6_addresses(lab: Lab, name: str) -> list[str]:
    addresses = entry(lab, name)["addresses"]
    assert isinstance(addresses, list)
    return sorted(str(a) for a in addresses if ":" in str(a))


def test_slaac_gives_the_eui64_address_a_default_route_via_the_gateway_and_the_mtu(lab: Lab) -> None:
    """auto1 takes the advertisement of its host: its address is the EUI-64 of its MAC in the
    prefix, its default route is via the router's link-local address (the EUI-64 of the same
    router MAC the routing pipeline answers with), its IPv6 MTU the bridge domain's 1442."""
    mac = lab.state.endpoints["auto1"].mac
    expected = eui64_address(mac, ipaddress.IPv6Network("fd00:1::/64"))
    until(lambda: v6_addresses(lab, "auto1") == [f"{expected}/64"], timeout=20)
    until(lambda: f"default via {GATEWAY_LLA}" in entry(lab, "auto1")["routes"], timeout=10)  # type: ignore[operator]
    assert proc_mtu(lab, "auto1") == 1442


def test_dhcpv6_stateful_gives_exactly_the_intent_address_and_the_name_server(lab: Lab) -> None:
    """full1's dhclient -6 (on h2): Solicit, Advertise, Request, Reply, answered by h2's agent;
    its only global address is its intent address (the advertisement's prefix has no A flag:
    no SLAAC address beside it), with the subnet's name server and the default route."""
    until(lambda: [a.split("/")[0] for a in v6_addresses(lab, "full1")] == ["fd00:2::7"], timeout=20)
    assert nameservers(lab, "full1") == ["fd00:2::53"]
    until(lambda: f"default via {GATEWAY_LLA}" in entry(lab, "full1")["routes"], timeout=10)  # type: ignore[operator]
    log = (lab.dir / "dhcp" / "full1.dhclient6.log").read_text()
    assert "Reply" in log or "REPLY" in log, log
    assert proc_mtu(lab, "full1") == 1442


def test_dhcpv6_stateless_gives_the_name_servers_beside_the_slaac_address(lab: Lab) -> None:
    mac = lab.state.endpoints["less1"].mac
    expected = eui64_address(mac, ipaddress.IPv6Network("fd00:3::/64"))
    until(lambda: v6_addresses(lab, "less1") == [f"{expected}/64"], timeout=20)
    until(lambda: nameservers(lab, "less1") == ["fd00:3::53", "fd00:3::54"], timeout=20)


class Watch:
    def __init__(self, lab: Lab, name: str, rogue_mac: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.state.endpoints[name].netns, sys.executable, "-c", WATCH, rogue_mac],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready", self.proc.stderr

    def seen(self) -> set[str]:
        out, err = self.proc.communicate("done\n", timeout=30)
        assert self.proc.returncode == 0, err
        return set(out.split())


def rogue(lab: Lab, kind: str, dst: str, dst_mac: str) -> None:
    done = ns_run(
        lab.state.endpoints["rogue1"].netns, sys.executable, "-c", ROGUE, kind, dst, dst_mac, timeout=30
    )
    assert done.returncode == 0, done.stderr


def test_a_rogue_router_advertisement_and_dhcpv6_reply_reach_nobody(lab: Lab, tmp_path: Path) -> None:
    """rogue1 advertises itself as a router with prefix fd66::/64 to all nodes, and sends DHCPv6
    replies handing out fd66::1 to each witness (same host and the other host), which the
    group's intra-group policy would let through: dropped at rogue1's port. The controls, a
    neighbour solicitation to all nodes and the same reply from port 1547, arrive: the witnesses
    would have seen them. And nobody took the rogue prefix."""
    rogue_mac = lab.state.endpoints["rogue1"].mac
    watches = {name: Watch(lab, name, rogue_mac) for name in ("peer1", "peer2")}
    rogue(lab, "ra", "ff02::1", "33:33:00:00:00:01")
    rogue(lab, "ns", "ff02::1", "33:33:00:00:00:01")
    for name in ("peer1", "peer2"):
        peer_lla = str(link_local(lab.state.endpoints[name].mac))
        rogue(lab, "reply", peer_lla, lab.state.endpoints[name].mac)
        rogue(lab, "reply-control", peer_lla, lab.state.endpoints[name].mac)
    seen = {name: w.seen() for name, w in watches.items()}
    assert seen == {"peer1": {"ns", "udp-1547"}, "peer2": {"ns", "udp-1547"}}
    for name in ("peer1", "peer2", "auto1"):
        assert not any(a.startswith("fd66:") for a in v6_addresses(lab, name))
        routes = entry(lab, name)["routes"]
        assert isinstance(routes, list) and not any(
            "fd66" in r or str(link_local(rogue_mac)) in r for r in routes
        )
