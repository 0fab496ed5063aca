#!/usr/bin/env python3
"""DHCPv4 from the host's agent against the lab's static configuration, on one host.

A lab (embedded authority, one host h1 with its agent and Open vSwitch) with N endpoints on one
bridge domain whose subnet a router joins (its gateway 10.1.0.1 answers ARP on the host). Once
the agent has rendered every port, each round takes K endpoints (K = 1, then all N at once),
wipes their namespaces (addresses, routes, neighbours, MTU 1500) and times, per endpoint, from
the start of its configuration until it is configured and has reached its gateway (its ARP for
10.1.0.1 answered):

- dhcp: a real ISC ``dhclient -1`` in the namespace (it returns once bound; dhclient-script has
  set the address, routes and MTU by then), answered by the agent's responder;
- static (the baseline): what the lab does for a static endpoint (``ip addr add``, the MTU, the
  default route).

The ports are plugged and rendered before the clock starts, in both cases: what is measured is
the configuration, not the agent's reconcile (bench/converge.py measures that). Figures: p50 and
p99 per K and method, and dhcp/static ratios of the same run. The last line is one JSON object.

``--from-plug``: the clock starts at the plug instead, as for a booting VM: each round takes the
chosen ports off br-int (and waits for the agent to let go of them, off the clock), then per
endpoint plugs its port back (``ovs-vsctl add-port``, its ``iface-id``) and at once configures it,
so the agent's reconcile of the new port, its DHCP punt and the gateway's ARP answer are all in.

``--family 6 --mode slaac|dhcpv6-stateful``: the same for IPv6, on a subnet r1 joins with that
mode. Each round turns the endpoints' IPv6 off and on (``disable_ipv6``: every IPv6 address and
route goes, and coming back the kernel does duplicate address detection of its link-local address
and solicits a router, as a booting VM does; the link's carrier is left alone, so Open vSwitch has
no port change to handle); RAs are accepted:

- slaac / dhcpv6-stateful: the kernel's SLAAC from the host's router advertisements, or a real
  ``dhclient -6`` answered by the agent's responder once the link-local address is usable;
- static (the baseline): the address added by hand (``nodad``, as the lab does) and the default
  route via the router's link-local address.

Until the endpoint holds its address (past duplicate address detection) and its default route via
the gateway's link-local address; with ``--reach`` also until a ping to that address is answered
(neighbour discovery for the gateway, which the IPv6 routing pipeline answers).

``--codec``: instead, the cost of answering one DISCOVER (parse the frame, build the OFFER) with
the agent's own codec (agent/dhcp/packet.py) and with scapy building the same answer, medians of
7 runs in one process; why the agent does not use scapy.

    .venv/bin/python bench/dhcp.py [--n 100] [--repeat 5] [--codec]
    .venv/bin/python bench/dhcp.py --family 6 --mode slaac|dhcpv6-stateful [--n 100] [--reach]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import report
from policyfabric.agent.view import router_identity
from policyfabric.lab.dhcp import dhclient, netns_etc
from policyfabric.lab.lab import Lab
from policyfabric.lab.ovs import OvsInstance
from policyfabric.model import scenario as sc
from policyfabric.model.addressing import router_link_local
from policyfabric.opflex.gbp import Cls
from policyfabric.opflex.uri import child, space

GATEWAY = "10.1.0.1"


def scenario(n: int) -> str:
    eps = "\n".join(
        f"  - {{name: vm{i}, tenant: acme, epg: web, host: h1, ip: 10.1.{i // 200}.{10 + i % 200}}}"
        for i in range(n)
    )
    return f"""
tenants:
  - name: acme
    l3_contexts: [{{name: vrf1}}]
    bridge_domains: [{{name: bd1, l3_context: vrf1}}]
    subnets:
      - {{name: net1, bridge_domain: bd1, cidr: 10.1.0.0/16, gateway_ip: {GATEWAY},
         dns_nameservers: [10.1.0.2]}}
    endpoint_groups: [{{name: web, bridge_domain: bd1, intra_group: allow}}]
    routers: [{{name: r1, l3_context: vrf1, interfaces: [net1]}}]
hosts: [{{name: h1}}]
endpoints:
{eps}
"""


DEADLINE6 = 120.0  # s: a hundred links up at once send their solicitations in step (see docs/dhcp.md)
GATEWAY6_LLA = router_link_local(router_identity(child(space("acme"), Cls.PF_ROUTER, "r1"))[1])


def scenario6(n: int, mode: str) -> str:
    """N endpoints on one IPv6 subnet of ``mode``; stateful ones are given addresses, SLAAC ones
    make theirs (``slaac``). The lab plugs them statically (its configuration is wiped per round)."""

    def ip(i: int) -> str:
        return "[slaac]" if mode == "slaac" else f'["fd00:1::{i + 10:x}"]'

    eps = "\n".join(f"  - {{name: vm{i}, tenant: acme, epg: web, host: h1, ip: {ip(i)}}}" for i in range(n))
    return f"""
tenants:
  - name: acme
    l3_contexts: [{{name: vrf1}}]
    bridge_domains: [{{name: bd1, l3_context: vrf1}}]
    subnets:
      - {{name: net6, bridge_domain: bd1, cidr: "fd00:1::/64", gateway_ip: "fd00:1::1",
         ipv6_ra_mode: {mode}, ipv6_address_mode: {mode}, dns_nameservers: ["fd00:1::53"]}}
    endpoint_groups: [{{name: web, bridge_domain: bd1, intra_group: allow}}]
    routers: [{{name: r1, l3_context: vrf1, interfaces: [net6]}}]
hosts: [{{name: h1}}]
endpoints:
{eps}
"""


def sh(netns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True)


def reset(netns: str, pidfile: Path) -> None:
    if pidfile.exists():
        pid = pidfile.read_text().strip()
        if pid.isdigit():
            subprocess.run(["kill", pid], capture_output=True)
        pidfile.unlink()
    for cmd in (["ip", "addr", "flush", "dev", "eth0"], ["ip", "neigh", "flush", "dev", "eth0"],
                ["ip", "link", "set", "eth0", "mtu", "1500"]):  # fmt: skip
        sh(netns, *cmd)


def reaches_gateway(netns: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        sh(netns, "ping", "-c", "1", "-W", "0.2", GATEWAY)  # makes the kernel ARP for it
        if "lladdr" in sh(netns, "ip", "neigh", "show", GATEWAY).stdout:
            return True
    return False


def configure(method: str, netns: str, ip: str, work: Path) -> float:
    """Seconds from the start until ``netns`` is configured and has reached its gateway."""
    t0 = time.monotonic()
    if method == "dhcp":
        done = sh(netns, "unshare", "--uts", dhclient(), "-1", "-4", "-lf", str(work / f"{netns}.leases"),
                  "-pf", str(work / f"{netns}.pid"), "eth0")  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{netns}: dhclient: {done.stderr[-300:]}")
    else:
        steps = (["ip", "addr", "add", f"{ip}/16", "dev", "eth0"],
                 ["ip", "link", "set", "eth0", "mtu", "1442"],
                 ["ip", "route", "add", "default", "via", GATEWAY])  # fmt: skip
        for cmd in steps:
            sh(netns, *cmd)
    if not reaches_gateway(netns, t0 + 30):
        raise RuntimeError(f"{netns}: the gateway is not reached")
    if f"inet {ip}/16" not in sh(netns, "ip", "-4", "addr", "show", "dev", "eth0").stdout:
        raise RuntimeError(f"{netns}: {ip} is not configured")
    return time.monotonic() - t0


def replug(ovs: OvsInstance, port: str, key: str) -> None:
    """Plug ``port`` into br-int again with its ``iface-id`` (what a hypervisor does at boot)."""
    ovs.vsctl("--may-exist", "add-port", "br-int", port, "--", "set", "Interface", port,
              f"external_ids:iface-id={key}")  # fmt: skip


def stop_client(pidfile: Path) -> None:
    """Stop the DHCP client whose pid ``pidfile`` holds (dhclient writes it), if any."""
    if pidfile.exists():
        pid = pidfile.read_text().strip()
        if pid.isdigit():
            subprocess.run(["kill", pid], capture_output=True)
        pidfile.unlink()


def reset6(netns: str, pidfile: Path) -> None:
    """The endpoint as a VM before boot: no client, link down (which drops every IPv6 address and
    route the kernel holds for it), RAs accepted, addresses made from them for SLAAC."""
    stop_client(pidfile)
    sh(netns, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=1")  # drops every IPv6 address and route


def configured6(netns: str, ip: str | None, deadline: float, reach: bool) -> bool:
    """Until ``netns`` holds ``ip`` (any global address if None) past duplicate detection, a
    default route via the gateway's link-local address and, with ``reach``, its answer to a ping."""
    while time.monotonic() < deadline:
        addrs = sh(netns, "ip", "-6", "addr", "show", "dev", "eth0", "scope", "global").stdout
        routes = sh(netns, "ip", "-6", "route", "show", "default").stdout
        held = f"inet6 {ip}/" in addrs if ip else "inet6 " in addrs
        ready = held and "tentative" not in addrs and f"via {GATEWAY6_LLA}" in routes
        if ready and (
            not reach
            or sh(netns, "ping", "-6", "-c", "1", "-W", "0.3", f"{GATEWAY6_LLA}%eth0").returncode == 0
        ):
            return True
        time.sleep(0.02)
    return False


def configure6(method: str, netns: str, ip: str | None, work: Path, reach: bool) -> float:
    """Seconds from the link coming up until ``netns`` is configured (``configured6``)."""
    t0 = time.monotonic()
    if method == "static":
        sh(netns, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.accept_ra=0")
        sh(netns, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=0")
        sh(netns, "ip", "addr", "add", f"{ip}/64", "dev", "eth0", "nodad")
        sh(netns, "ip", "-6", "route", "add", "default", "via", GATEWAY6_LLA, "dev", "eth0")
    else:
        sh(netns, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.accept_ra=1",
           f"net.ipv6.conf.eth0.autoconf={int(method == 'slaac')}")  # fmt: skip
        sh(netns, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=0")
        if method == "dhcpv6-stateful":
            while "tentative" in sh(netns, "ip", "-6", "addr", "show", "dev", "eth0", "scope", "link").stdout:
                time.sleep(0.02)  # dhclient -6 needs a usable link-local address
            lease = str(work / f"{netns}.leases6")
            # in the background at once (-nw), retrying as long as it takes: configured6 waits
            done = sh(netns, "unshare", "--uts", dhclient(), "-nw", "-6", "-lf", lease,
                      "-pf", str(work / f"{netns}.pid"), "eth0")  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"{netns}: dhclient -6: {done.stderr[-300:]}")
    if not configured6(netns, ip, t0 + DEADLINE6, reach):
        held = sh(netns, "ip", "-6", "addr", "show", "dev", "eth0").stdout
        routes = sh(netns, "ip", "-6", "route", "show").stdout
        why = f"{netns} ({method}): not configured within {DEADLINE6:g} s (want {ip})"
        raise RuntimeError(f"{why}:\n{held}\n{routes}")
    return time.monotonic() - t0


def main6(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="pf-bench-dhcp6-") as tmp:
        work = Path(tmp)
        path = work / "dhcp6.yaml"
        path.write_text(scenario6(args.n, args.mode))
        lab = Lab.create(path, work / "lab")
        try:
            lab.up(sc.load(path))
            eps = [(e.netns, e.ips[0]) for e in lab.state.endpoints.values()]
            for netns, _ in eps:
                netns_etc(netns).mkdir(parents=True, exist_ok=True)
                (netns_etc(netns) / "resolv.conf").touch()
            times: dict[tuple[int, str], list[float]] = {}
            cases = [(1, r) for r in range(args.repeat)] + [(len(eps), 0)]
            for k, r in cases:
                for method in ("static", args.mode):  # interleaved: the machine's load hits both alike
                    chosen = [eps[r % len(eps)]] if k == 1 else eps
                    for netns, _ in chosen:
                        reset6(netns, work / f"{netns}.pid")
                    with concurrent.futures.ThreadPoolExecutor(max_workers=len(chosen)) as pool:
                        got = list(
                            pool.map(lambda e, m=method: configure6(m, e[0], e[1], work, args.reach), chosen)
                        )
                    times.setdefault((k, "static" if method == "static" else "dhcp"), []).extend(got)
            for netns, _ in eps:
                reset6(netns, work / f"{netns}.pid")
        finally:
            for pidfile in work.glob("*.pid"):  # every client this run started, also after a failure
                stop_client(pidfile)
            lab.down()
            for e in lab.state.endpoints.values():
                subprocess.run(["rm", "-rf", str(netns_etc(e.netns))])
    summarize(
        times,
        {"n": args.n, "repeat": args.repeat, "family": 6, "mode": args.mode, "reach": args.reach},
        f"IPv6 {args.mode} vs static configuration{', to the gateway' if args.reach else ''} (one host)",
    )


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def codec() -> None:
    """One DISCOVER answered: our codec against scapy (imported here only: a test dependency)."""
    t0 = time.perf_counter()
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    scapy_import = time.perf_counter() - t0
    from policyfabric.agent.dhcp import packet as d

    mac = "02:00:00:00:01:07"
    frame = bytes(
        Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67) / BOOTP(op=1, chaddr=bytes.fromhex(mac.replace(":", "")), xid=7)
        / DHCP(options=[("message-type", "discover"), "end"])
    )  # fmt: skip
    routes = (("10.9.0.0/16", "10.1.0.254"),)
    lease = d.Lease("10.1.0.7", 24, "10.1.0.1", ("10.1.0.2", "10.1.0.3"), routes, 1442)

    def ours() -> bytes:
        req = d.parse_request(frame)
        return d.build_reply(req, d.decide(req, lease) or d.OFFER, lease)

    def with_scapy() -> bytes:
        got = Ether(frame)
        opts = [("message-type", 2), ("server_id", "10.1.0.1"), ("subnet_mask", "255.255.255.0"),
                ("router", "10.1.0.1"), ("name_server", "10.1.0.2", "10.1.0.3"), ("interface-mtu", 1442),
                ("lease_time", 86400), "end"]  # fmt: skip
        return bytes(
            Ether(dst=got.src, src="02:50:46:dc:00:01") / IP(src="10.1.0.1", dst="10.1.0.7")
            / UDP(sport=67, dport=68)
            / BOOTP(op=2, xid=got[BOOTP].xid, yiaddr="10.1.0.7", chaddr=got[BOOTP].chaddr)
            / DHCP(options=opts)
        )  # fmt: skip

    medians = {}
    for name, fn, n in (("ours", ours, 2000), ("scapy", with_scapy, 200)):
        runs = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            runs.append((time.perf_counter() - t) / n * 1e6)
        medians[name] = statistics.median(runs)
    summary = {"ours_us": round(medians["ours"], 1), "scapy_us": round(medians["scapy"], 1),
               "scapy_vs_ours": round(medians["scapy"] / medians["ours"], 1),
               "scapy_import_s": round(scapy_import, 3)}  # fmt: skip
    report("one DISCOVER answered (µs, median of 7)", ["ours", "scapy", "scapy/ours", "scapy import s"],
           [list(summary.values())], summary)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5, help="rounds of the one-endpoint case")
    parser.add_argument("--codec", action="store_true", help="measure the DHCP codec against scapy instead")
    parser.add_argument("--family", type=int, choices=(4, 6), default=4)
    parser.add_argument(
        "--mode", choices=("slaac", "dhcpv6-stateful"), default="slaac", help="with --family 6"
    )
    parser.add_argument("--reach", action="store_true", help="IPv6: until the gateway answers a ping too")
    parser.add_argument(
        "--from-plug", action="store_true", help="IPv4: the clock starts at the plug (a booting VM)"
    )
    args = parser.parse_args()
    if args.codec:
        codec()
        return
    if args.family == 6:
        main6(args)
        return
    with tempfile.TemporaryDirectory(prefix="pf-bench-dhcp-") as tmp:
        work = Path(tmp)
        path = work / "dhcp.yaml"
        path.write_text(scenario(args.n))
        lab = Lab.create(path, work / "lab")
        try:
            lab.up(sc.load(path))
            eps = [(e.netns, e.ips[0]) for e in lab.state.endpoints.values()]
            ports = {e.netns: (e.br_int_port, e.key) for e in lab.state.endpoints.values()}
            ovs = OvsInstance(Path(lab.state.hosts["h1"].rundir))
            ports = {e.netns: (e.br_int_port, e.key) for e in lab.state.endpoints.values()}
            ovs = OvsInstance(Path(lab.state.hosts["h1"].rundir))
            for netns, _ in eps:
                netns_etc(netns).mkdir(parents=True, exist_ok=True)
                (netns_etc(netns) / "resolv.conf").touch()
            times: dict[tuple[int, str], list[float]] = {}
            cases = [(1, r) for r in range(args.repeat)] + [(len(eps), 0)]
            for k, r in cases:
                for method in ("static", "dhcp"):  # interleaved: the machine's load hits both alike
                    chosen = [eps[r % len(eps)]] if k == 1 else eps
                    for netns, _ in chosen:
                        reset(netns, work / f"{netns}.pid")
                    if args.from_plug:  # off the clock: unplugged, and the agent has let go of them
                        for netns, _ in chosen:
                            ovs.vsctl("--if-exists", "del-port", "br-int", ports[netns][0])
                        time.sleep(2 + len(chosen) / 50)

                    def timed(e: tuple[str, str], m: str = method) -> float:
                        if not args.from_plug:
                            return configure(m, e[0], e[1], work)
                        t0 = time.monotonic()
                        replug(ovs, *ports[e[0]])
                        return configure(m, e[0], e[1], work) + (time.monotonic() - t0)

                    with concurrent.futures.ThreadPoolExecutor(max_workers=len(chosen)) as pool:
                        got = list(pool.map(timed, chosen))
                    times.setdefault((k, method), []).extend(got)
            for netns, _ in eps:
                reset(netns, work / f"{netns}.pid")
        finally:
            lab.down()
            for netns, _ in [(e.netns, None) for e in lab.state.endpoints.values()]:
                subprocess.run(["rm", "-rf", str(netns_etc(netns))])
    start = "from the plug" if args.from_plug else "ports already rendered"
    summarize(
        times,
        {"n": args.n, "repeat": args.repeat, "from_plug": args.from_plug},
        f"DHCP vs static configuration, to the gateway (one host; {start})",
    )


def summarize(times: dict[tuple[int, str], list[float]], summary: dict[str, object], title: str) -> None:
    rows = []
    for k in sorted({k for k, _ in times}):
        s, d = times[(k, "static")], times[(k, "dhcp")]
        ratio = round(p(d, 0.5) / p(s, 0.5), 1)
        row = [k, len(d), round(p(s, 0.5), 3), round(p(s, 0.99), 3), round(p(d, 0.5), 3),
               round(p(d, 0.99), 3), ratio, round(statistics.mean(d), 3)]  # fmt: skip
        rows.append(row)
        names = ["samples", "static_p50_s", "static_p99_s", "dhcp_p50_s", "dhcp_p99_s", "dhcp_vs_static_p50",
                 "dhcp_mean_s"]  # fmt: skip
        summary[f"k{k}"] = dict(zip(names, row[1:], strict=True))
    columns = ["endpoints at once", "samples", "static p50 s", "static p99 s", "dhcp p50 s", "dhcp p99 s",
               "dhcp/static p50", "dhcp mean s"]  # fmt: skip
    report(title, columns, rows, summary)


if __name__ == "__main__":
    main()
