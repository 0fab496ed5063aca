"""Native DHCPv4 with real Open vSwitch, real namespaces, a real ISC dhclient and real packets.

tests/scenarios/dhcp.yaml: vm1 (h1) and vm2 (h2) boot by DHCP on bd1 (two name servers, a
classless static route, router r1's gateway 10.1.0.1); off1 (h1) asks on a subnet with
``enable_dhcp: false``; web1 (h1) and web2 (h2) are configured statically and serve as rogue
server and as witnesses. Each host's agent answers its own endpoints (packet-in/packet-out on
br-int's management socket): nothing else in the lab runs a DHCP server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from policyfabric.agent.renderers.ovs import ofwire as w
from policyfabric.lab.dhcp import dhclient, netns_etc
from policyfabric.lab.lab import Lab
from tests.lab_harness import SCENARIOS, lab_fixture, measured, ns_run, settled, until

pytestmark = pytest.mark.dataplane

lab = lab_fixture(SCENARIOS / "dhcp.yaml")

# scapy in an endpoint's namespace: send one DHCP message (a client's or a rogue server's) and
# report what DHCP packets came back to it (message type, yiaddr, IP source and destination)
EXCHANGE = """
import sys
from scapy.all import BOOTP, DHCP, IP, UDP, Ether, sendp, AsyncSniffer, get_if_hwaddr
import time
kind, src_ip, dst_ip, dst_mac, sport, dport, ciaddr, requested = sys.argv[1:9]
mac = get_if_hwaddr("eth0")
options = [("message-type", kind)] + ([("requested_addr", requested)] if requested != "-" else []) + ["end"]
op = 1 if int(sport) == 68 else 2
chaddr = bytes.fromhex(mac.replace(":", ""))
frame = (Ether(src=mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip) / UDP(sport=int(sport), dport=int(dport))
         / BOOTP(op=op, chaddr=chaddr, xid=0x5046, ciaddr=ciaddr) / DHCP(options=options))
def answer(p):  # answers to it, not what it sent itself
    return BOOTP in p and p[BOOTP].xid == 0x5046 and p[BOOTP].op == 2 and p[Ether].src != mac
sniffer = AsyncSniffer(iface="eth0", lfilter=answer)
sniffer.start()
time.sleep(0.3)
sendp(frame, iface="eth0", verbose=False)
time.sleep(1.0)
for p in sniffer.stop():
    kinds = [o[1] for o in p[DHCP].options if isinstance(o, tuple) and o[0] == "message-type"]
    print(kinds[0] if kinds else "?", p[BOOTP].yiaddr, p[IP].src, p[IP].dst)
"""

# scapy in a witness's namespace: count UDP packets to or from the DHCP ports until told to stop
WATCH = """
import sys, time
from scapy.all import UDP, AsyncSniffer
ports = {67, 68, 1067, 1068}
def dhcp_ports(p):
    return UDP in p and (p[UDP].sport in ports or p[UDP].dport in ports)
sniffer = AsyncSniffer(iface="eth0", lfilter=dhcp_ports, started_callback=lambda: print("ready", flush=True))
sniffer.start()
sys.stdin.readline()
time.sleep(0.5)
for p in sniffer.stop():
    print(p[UDP].sport, p[UDP].dport, flush=True)
"""


def exchange(lab: Lab, name: str, *args: str) -> list[tuple[str, ...]]:
    done = ns_run(lab.state.endpoints[name].netns, sys.executable, "-c", EXCHANGE, *args, timeout=30)
    assert done.returncode == 0, done.stderr
    return [tuple(line.split()) for line in done.stdout.splitlines()]


class Watch:
    """UDP on the DHCP ports (and a control pair) seen in a witness's namespace meanwhile."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.state.endpoints[name].netns, sys.executable, "-c", WATCH],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready", self.proc.stderr

    def seen(self) -> list[tuple[int, int]]:
        out, err = self.proc.communicate("done\n", timeout=30)
        assert self.proc.returncode == 0, err
        return [(int(a), int(b)) for a, b in (line.split() for line in out.splitlines())]


def punted(lab: Lab, host: str) -> int:
    """Packets the host's DHCP flows have sent to its agent so far."""
    rundir = lab.state.hosts[host].rundir
    text = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow15", "dump-flows", f"unix:{rundir}/br-int.mgmt", "table=10,udp"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sum(
        int(line.split("n_packets=")[1].split(",")[0]) for line in text.splitlines() if "CONTROLLER" in line
    )


def gateway_mac(lab: Lab, name: str) -> str:
    """The MAC the endpoint's ARP for its gateway gets (the router's, answered on its host)."""
    netns = lab.state.endpoints[name].netns
    ns_run(netns, "ping", "-c", "1", "-W", "1", "10.1.0.1")  # only to make the kernel ARP for it
    shown = ns_run(netns, "ip", "neigh", "show", "10.1.0.1").stdout.split()
    assert "lladdr" in shown, shown
    return shown[shown.index("lladdr") + 1]


def test_a_booting_endpoint_gets_exactly_its_intent(lab: Lab) -> None:
    """A real dhclient on each host: the intent address, its mask, the default route via the gateway
    and the classless static route (option 121), the bridge domain's MTU (option 26), both name
    servers in the namespace's resolv.conf; the server was the gateway address, on its own host."""
    by_name = {e["name"]: e for e in lab.endpoints()}
    for name, ip in (("vm1", "10.1.0.7"), ("vm2", "10.1.0.8")):
        entry = by_name[name]
        assert entry["addresses"] == [f"{ip}/24"], entry
        assert sorted(entry["routes"]) == ["10.9.0.0/16 via 10.1.0.254", "default via 10.1.0.1"], entry
        assert entry["mtu"] == 1442, entry
        resolv = (netns_etc(lab.state.endpoints[name].netns) / "resolv.conf").read_text()
        assert [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")] == [
            "10.1.0.2",
            "10.1.0.3",
        ], resolv
        log = (lab.dir / "dhcp" / f"{name}.dhclient.log").read_text()
        assert f"DHCPOFFER of {ip} from 10.1.0.1" in log and "DHCPACK of" in log, log
    assert punted(lab, "h1") >= 2 and punted(lab, "h2") >= 2  # DISCOVER and REQUEST, each on its host
    assert measured(lab, "vm1", "vm2", "icmp") == "allow"  # and it works across hosts


def test_enable_dhcp_false_gets_no_offer(lab: Lab) -> None:
    entry = next(e for e in lab.endpoints() if e["name"] == "off1")
    assert entry["addresses"] == [] and entry["mtu"] == 1500, entry
    log = (lab.dir / "dhcp" / "off1.dhclient.log").read_text()
    assert "DHCPDISCOVER on eth0" in log and "DHCPOFFER" not in log, log


def test_a_unicast_renewal_is_acked_and_a_wrong_address_is_refused(lab: Lab) -> None:
    """RENEWING (RFC 2131 4.3.2): vm1 unicasts a REQUEST from its address to the server identifier
    (the gateway, at the MAC its ARP gets) with ciaddr set: ACKed, to its address. INIT-REBOOT
    asking for an address that is not its intent: NAK, broadcast."""
    gw = gateway_mac(lab, "vm1")
    renewed = exchange(lab, "vm1", "request", "10.1.0.7", "10.1.0.1", gw, "68", "67", "10.1.0.7", "-")
    assert renewed == [("5", "10.1.0.7", "10.1.0.1", "10.1.0.7")]  # ACK, yiaddr, from the server, to it
    refused = exchange(
        lab,
        "vm1",
        "request",
        "0.0.0.0",
        "255.255.255.255",
        "ff:ff:ff:ff:ff:ff",
        "68",
        "67",
        "0.0.0.0",
        "10.1.0.99",
    )
    assert refused == [("6", "0.0.0.0", "10.1.0.1", "255.255.255.255")]  # NAK
    # and the renewal moved no address: vm1 still holds its own
    assert "10.1.0.7/24" in next(e for e in lab.endpoints() if e["name"] == "vm1")["addresses"]


def test_a_rogue_dhcp_server_reaches_nobody(lab: Lab) -> None:
    """web1 (h1) answers like a DHCP server, unicast to vm1 (same host) and to vm2 (h2), which the
    group's intra-group policy would let through: dropped at web1's port. The control, the same
    frames from port 1067 to 1068, arrives: the witnesses would have seen the offers."""
    for target, ip in (("vm1", "10.1.0.7"), ("vm2", "10.1.0.8")):
        mac = lab.state.endpoints[target].mac
        watch = Watch(lab, target)
        assert exchange(lab, "web1", "offer", "10.1.0.10", ip, mac, "67", "68", "0.0.0.0", "-") == []
        assert exchange(lab, "web1", "offer", "10.1.0.10", ip, mac, "1067", "1068", "0.0.0.0", "-") == []
        assert watch.seen() == [(1067, 1068)], target


def test_dhcp_requests_never_leave_the_host(lab: Lab) -> None:
    """vm1 broadcasts a DISCOVER: its own host's agent offers its intent address, and neither an
    endpoint of the same bridge domain on that host (web1) nor one on the other host (web2) sees
    the request (nor the offer): not flooded, not tunnelled."""
    before = punted(lab, "h1")
    witnesses = [Watch(lab, "web1"), Watch(lab, "web2")]
    time.sleep(0.2)
    offered = exchange(
        lab, "vm1", "discover", "0.0.0.0", "255.255.255.255", "ff:ff:ff:ff:ff:ff", "68", "67", "0.0.0.0", "-"
    )
    assert offered == [("2", "10.1.0.7", "10.1.0.1", "10.1.0.7")]  # OFFER of its intent address
    assert [w.seen() for w in witnesses] == [[], []]
    assert settled(lambda: punted(lab, "h1")) > before


def test_a_service_connection_gets_packet_ins_only_once_it_sets_miss_send_len(lab: Lab) -> None:
    """Why the responder sends OFPT_SET_CONFIG: two more connections to h1's management socket, one
    that only says hello and one that also sets miss_send_len (as the responder and OVN's pinctrl
    do). vm1's DISCOVER is punted by the same flow to every connection that takes asynchronous
    messages: only the second gets it."""
    path = f"{lab.state.hosts['h1'].rundir}/br-int.mgmt"
    conns = []
    for configure in (False, True):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        sock.sendall(w.hello(1) + (w.set_config(2) if configure else b""))
        sock.settimeout(0.2)
        conns.append(sock)
    time.sleep(0.3)
    exchange(
        lab, "vm1", "discover", "0.0.0.0", "255.255.255.255", "ff:ff:ff:ff:ff:ff", "68", "67", "0.0.0.0", "-"
    )
    got = []
    for sock in conns:
        buf, types = bytearray(), []
        with contextlib.suppress(TimeoutError):
            while data := sock.recv(65536):
                buf += data
        while (msg := w.take_message(buf)) is not None:
            types.append(msg[1])
        sock.close()
        got.append(w.OFPT_PACKET_IN in types)
    assert got == [False, True]


def test_a_real_dhclient_renews_by_unicast_and_is_acked(lab: Lab, tmp_path: Path) -> None:
    """vm2's own dhclient, told to renew after 2 s (``supersede dhcp-renewal-time``: the server's
    lease is a day), sends its RENEWING request unicast to the server identifier, the gateway
    10.1.0.1, on h2: the agent there ACKs it, again and again, and the address stays."""
    state = lab.state.endpoints["vm2"]
    pid = lab.state.pids.get("dhclient:vm2")
    if pid is not None:  # the lab's client for vm2 gives way to this one (the lease stays held)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    conf = tmp_path / "dhclient.conf"
    conf.write_text("supersede dhcp-renewal-time 2;\nsupersede dhcp-rebinding-time 600;\n")
    log = tmp_path / "renew.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", state.netns, "unshare", "--uts", dhclient(), "-d", "-v", "-4",
             "-cf", str(conf), "-lf", str(tmp_path / "leases"), "-pf", str(tmp_path / "pid"), "eth0"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        until(lambda: log.read_text().count("DHCPACK of 10.1.0.8 from 10.1.0.1") >= 3, timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    text = log.read_text()
    assert "DHCPREQUEST for 10.1.0.8 on eth0 to 10.1.0.1 port 67" in text, text  # unicast, RENEWING
    assert "DHCPNAK" not in text
    assert "10.1.0.8/24" in next(e for e in lab.endpoints() if e["name"] == "vm2")["addresses"]
