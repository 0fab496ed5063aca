"""Allowed address pairs and ICMP-type security group rules with real packets, on Open vSwitch and
on a host rendering with nftables (``tests/scenarios/addrpairs.yaml``).

- A virtual address from an allowed pair (configured in the endpoint's namespace, as keepalived
  would) answers ping and TCP from another host, and is a member of the endpoint's security
  group for a remote-group rule; an address the pairs do not list is dropped, and so is the
  virtual address once the pair is removed.
- A rule admitting ICMP type 8 (echo request) lets ping through while a timestamp request (type
  13) sent the same way is dropped; a group admitting all IPv4 lets both through (the sender
  works).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyfabric.client import Client
from policyfabric.lab.lab import Lab, checked_plan
from policyfabric.model import kinds as k
from policyfabric.model import scenario as sc
from tests.lab_harness import SCENARIOS, endpoint, measured, ns_run, running_lab, serving, until

pytestmark = [pytest.mark.dataplane, pytest.mark.xdist_group("addrpairs")]
SCENARIO = SCENARIOS / "addrpairs.yaml"
VIP, UNLISTED = "10.4.0.100", "10.4.0.101"

# ICMP by hand: a raw socket sends one message of a given type and the receiver's raw socket
# reports the types it saw (the kernel answers echo requests itself; a raw socket sees a copy).
SEND = """
import socket, struct, sys
dst, kind = sys.argv[1], int(sys.argv[2])
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
body = struct.pack("!BBHHH", kind, 0, 0, 0x5046, 1) + bytes(12)
body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
for _ in range(3):
    s.sendto(body, (dst, 0))
"""
LISTEN = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(0.2)
print("ready", flush=True)
seen, end = set(), time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    try:
        data = s.recv(2048)
    except TimeoutError:
        continue
    if data[20 + 4 : 20 + 6] == b"PF":
        seen.add(data[20])
print(" ".join(map(str, sorted(seen))), flush=True)
"""


@pytest.fixture(scope="module", params=["ovs", "nftables"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The scenario's lab; with ``nftables``, h1 (vip1's and guard's host) renders with nftables."""
    base = tmp_path_factory.mktemp(f"addrpairs-{request.param}")
    scenario = SCENARIO
    if request.param == "nftables":
        text = SCENARIO.read_text()
        old = "hosts: [{name: h1}, {name: h2}]"
        assert old in text
        scenario = base / "addrpairs-nft.yaml"
        scenario.write_text(text.replace(old, "hosts: [{name: h1, renderer: nftables}, {name: h2}]"))
    with running_lab(scenario, base / "state") as lab:
        yield lab


def netns(lab: Lab, name: str) -> str:
    return lab.state.endpoints[name].netns


def icmp_types_received(lab: Lab, src: str, dst: str, kinds: list[int]) -> set[int]:
    """The ICMP types (of ``kinds``, sent once each from ``src`` by a raw socket) that ``dst`` saw."""
    listen = subprocess.Popen(
        ["ip", "netns", "exec", netns(lab, dst), sys.executable, "-c", LISTEN, "2.0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert listen.stdout is not None and listen.stdout.readline().strip() == "ready"
    address = lab.state.endpoints[dst].ips[0]
    for kind in kinds:
        sent = ns_run(netns(lab, src), sys.executable, "-c", SEND, address, str(kind))
        assert sent.returncode == 0, sent.stderr
    out, _ = listen.communicate(timeout=10)
    return {int(t) for t in out.split()}


# A gratuitous ARP for an address from the namespace's eth0 (what keepalived sends on failover).
GARP = """
import socket, sys
ip, mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
spa = socket.inet_aton(ip)
frame = b"\\xff" * 6 + mac + b"\\x08\\x06" + bytes.fromhex("0001080006040001") + mac + spa + bytes(6) + spa
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
s.send(frame)
"""


def test_the_scenario_holds(lab: Lab) -> None:
    results = lab.probe(checked_plan(sc.load(Path(lab.state.scenario))).expect)
    assert [(r.expect.source, r.expect.target, r.expect.probe, r.measured) for r in results if not r.ok] == []


def test_an_icmp_type_rule_admits_that_type_only(lab: Lab) -> None:
    assert measured(lab, "client", "guard", "icmp") == "allow"  # ping: echo request, type 8
    # guard's rule is type 8 code 0: the timestamp request (13) is dropped, the echo request is not
    assert icmp_types_received(lab, "client", "guard", [8, 13]) == {8}
    # vip1 admits all IPv4: both arrive, so the sender is not what stops type 13 above
    assert icmp_types_received(lab, "client", "vip1", [8, 13]) == {8, 13}


def ping_from(lab: Lab, name: str, dst: str, src: str | None = None) -> bool:
    cmd = ["ping", "-n", "-q", "-c", "1", "-W", "1", *(["-I", src] if src else []), dst]
    return any(ns_run(netns(lab, name), *cmd).returncode == 0 for _ in range(2))


def tcp_from(lab: Lab, name: str, dst: str, port: int, src: str | None = None) -> bool:
    code = (
        "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1, "
        "source_address=(sys.argv[3], 0) if sys.argv[3] else None).close()"
    )
    return ns_run(netns(lab, name), sys.executable, "-c", code, dst, str(port), src or "").returncode == 0


def set_pairs(lab: Lab, name: str, pairs: list[dict[str, str]]) -> None:
    ep = endpoint(lab, name)
    with Client(lab.state.url) as client:
        client.replace(k.ENDPOINT, ep["id"], {**ep, "allowed_address_pairs": pairs})


def test_a_virtual_address_from_an_allowed_pair_is_reached_and_others_are_not(lab: Lab) -> None:
    vip1 = netns(lab, "vip1")
    for address in (VIP, UNLISTED):  # what keepalived would do: a second address on the interface
        assert ns_run(vip1, "ip", "addr", "add", f"{address}/24", "dev", "eth0").returncode == 0
    try:
        with serving(lab, ("vip1", "tcp", 8080), ("guard", "tcp", 22)):
            # to it, from another host: ARP for it floods, vip1 answers with its MAC (port security
            # admits that reply), then ping and TCP
            assert ping_from(lab, "client", VIP)
            assert tcp_from(lab, "client", VIP, 8080)
            # from it: out of vip1 with the virtual address as source
            assert ping_from(lab, "vip1", "10.4.0.20", src=VIP)
            # and as a member of ssh: guard's tcp/22 from members of ssh admits it
            assert tcp_from(lab, "vip1", "10.4.0.30", 22, src=VIP)
            # an address no pair lists: neither from it nor to it
            assert not ping_from(lab, "vip1", "10.4.0.20", src=UNLISTED)
            assert not tcp_from(lab, "vip1", "10.4.0.30", 22, src=UNLISTED)
            assert not ping_from(lab, "client", UNLISTED)
            # the pair removed: the virtual address is an unlisted one like any other
            set_pairs(lab, "vip1", [])
            try:
                until(lambda: not ping_from(lab, "vip1", "10.4.0.20", src=VIP), timeout=10)
                assert not tcp_from(lab, "client", VIP, 8080)
            finally:
                set_pairs(lab, "vip1", [{"ip": VIP}])
            until(lambda: ping_from(lab, "vip1", "10.4.0.20", src=VIP), timeout=10)
            assert tcp_from(lab, "client", VIP, 8080)
    finally:
        for address in (VIP, UNLISTED):
            ns_run(vip1, "ip", "addr", "del", f"{address}/24", "dev", "eth0")


def garp(lab: Lab, name: str, address: str) -> None:
    sent = ns_run(netns(lab, name), sys.executable, "-c", GARP, address, lab.state.endpoints[name].mac)
    assert sent.returncode == 0, sent.stderr


def test_a_virtual_address_shared_by_two_endpoints_follows_its_holder(lab: Lab) -> None:
    """vip1 (h1) and vip2 (h2) both list 10.4.0.100: it goes to whichever holds it and says so
    (keepalived's failover: the address moves, a gratuitous ARP tells the bridge domain)."""
    holders = {"vip1": 8080, "vip2": 8081}  # each serves its own port: which one answers tells who
    with serving(lab, ("vip1", "tcp", 8080), ("vip2", "tcp", 8081)):
        for holder, other in (("vip1", "vip2"), ("vip2", "vip1")):
            ns_run(netns(lab, other), "ip", "addr", "del", f"{VIP}/24", "dev", "eth0")
            assert ns_run(netns(lab, holder), "ip", "addr", "add", f"{VIP}/24", "dev", "eth0").returncode == 0

            def reaches_holder(holder: str = holder) -> bool:
                garp(lab, holder, VIP)
                return tcp_from(lab, "client", VIP, holders[holder])

            until(reaches_holder, timeout=10, step=0.5)
            assert ping_from(lab, "client", VIP)
    for name in holders:
        ns_run(netns(lab, name), "ip", "addr", "del", f"{VIP}/24", "dev", "eth0")


def test_the_ruleset_with_pairs_and_icmp_types_is_valid_nft(tmp_path: Path) -> None:
    """``nft -c`` takes what the pairs and ICMP types compile to: prefixes beside addresses in an
    endpoint's source set (an interval set: collapsed, no overlap), IPv6 pairs, ICMPv6 types."""
    import os
    from dataclasses import replace

    from policyfabric.agent.renderers.nftables.ruleset import compile_ruleset
    from tests import fabric
    from tests.test_addrpairs_unit import ECHO, OPEN, SSH, hybrid, with_pairs
    from tests.test_pipeline_unit import BD
    from tests.test_secgroups_unit import vm

    v6 = fabric.security_group(
        "sg/v6", replace(fabric.sg_rule("sg/v6#0", protocol=58, ethertype=0x86DD), icmp_type=128, icmp_code=0)
    )
    a = with_pairs(vm("a", 1, "sg/open", "sg/v6", ofport=11), ("10.0.0.0/24", None), ("fd00::100/128", None))
    b = with_pairs(vm("b", 2, "sg/echo", ofport=12), ("10.0.0.2/32", fabric.mac(9, 1)), ("0.0.0.0/0", None))
    net = fabric.network(local=hybrid(a, b), bds=[BD], security_groups=(OPEN, ECHO, SSH, v6), address_sets={})
    path = tmp_path / "rules.nft"
    path.write_text(compile_ruleset(net).text())
    text = path.read_text()
    assert "icmpv6 type 128 icmpv6 code 0" in text and "ip saddr != { 10.0.0.0/24 } drop" in text
    netns = f"pfap-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        checked = ns_run(netns, "nft", "-c", "-f", str(path))
        assert checked.returncode == 0, checked.stderr
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
