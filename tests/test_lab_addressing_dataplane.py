"""The lab's addressing with real namespaces and packets: IPv6 and bulk probes, the MTU that fits
the overlay, endpoints read back from their namespaces, and DHCP endpoints that boot with a real
client (answered over DHCPv4 by their host's agent; DHCPv6 is not answered yet: the lab says so)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from policyfabric.lab.dhcp import netns_etc
from policyfabric.lab.lab import Lab
from policyfabric.model.addressing import link_local
from policyfabric.model.mtu import DEFAULT_MTU
from tests.lab_harness import SCENARIOS, lab_fixture, measured, ns_run, own_processes, serving

pytestmark = pytest.mark.dataplane

lab = lab_fixture(SCENARIOS / "two_hosts.yaml")


def set_mtu(lab: Lab, endpoint: str, mtu: int) -> None:
    done = ns_run(lab.state.endpoints[endpoint].netns, "ip", "link", "set", "eth0", "mtu", str(mtu))
    assert done.returncode == 0, done.stderr


def test_static_endpoints_get_the_mtu_that_fits_the_overlay(lab: Lab) -> None:
    for entry in lab.endpoints():
        assert entry["mtu"] == DEFAULT_MTU == 1442, entry


def test_a_bulk_transfer_across_hosts_fits_only_with_the_overlay_mtu(lab: Lab) -> None:
    """web1 (h1) and web2 (h2) may talk. At the bridge domain's MTU 1 MiB goes each way; at
    Ethernet's 1500 a full-size segment is 1558 bytes once in Geneve, more than the underlay
    carries, and nothing on the path says so: the transfer stalls. This is the bulk probe failing
    for the reason it exists, and the MTU default being right."""
    with serving(lab, ("web2", "bulk", 5001), ("web1", "bulk", 5001)):
        assert measured(lab, "web1", "web2", "bulk/5001") == "allow"
        try:
            for name in ("web1", "web2"):
                set_mtu(lab, name, 1500)
            assert measured(lab, "web1", "web2", "bulk/5001") == "deny"
            set_mtu(lab, "web1", DEFAULT_MTU + 1)  # one byte too many also fails
            set_mtu(lab, "web2", DEFAULT_MTU + 1)
            assert measured(lab, "web2", "web1", "bulk/5001") == "deny"
        finally:
            for name in ("web1", "web2"):
                set_mtu(lab, name, DEFAULT_MTU)
        assert measured(lab, "web2", "web1", "bulk/5001") == "allow"


def test_the_kernel_makes_the_link_local_address_the_model_computes(tmp_path: Path) -> None:
    """The EUI-64 the model computes for SLAAC addresses is the kernel's: the link-local address
    Linux gives an interface is the same interface identifier under fe80::/64."""
    netns = f"pfeui-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        for mac in ("52:54:00:12:34:56", "02:50:46:ab:cd:ef", "00:00:5e:00:53:01"):
            ns_run(netns, "ip", "link", "del", "d0")
            steps = (["add", "d0", "type", "veth", "peer", "name", "d1"], ["set", "d0", "address", mac],
                     ["set", "d1", "up"], ["set", "d0", "up"])  # fmt: skip
            for cmd in steps:
                assert ns_run(netns, "ip", "link", *cmd).returncode == 0
            shown = json.loads(
                ns_run(netns, "ip", "-j", "-6", "addr", "show", "dev", "d0", "scope", "link").stdout
            )
            kernel = [a["local"] for link in shown for a in link["addr_info"]]
            assert kernel == [str(link_local(mac))], mac
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=True)


def test_verify_reports_ipv6_and_bulk_probes_and_every_endpoint(tmp_path: Path) -> None:
    """One `lab verify --json --explain` of tests/scenarios/addressing.yaml: IPv6 and bulk probes
    across hosts measured as policy says, each endpoint as its namespace holds it, and vm7
    (dhcp: true) configured by its own dhclient from h1's agent: its intent IPv4 address, the
    default route and bd1's host route, the MTU that fits the overlay; and by DHCPv6 (web6 is
    stateful) exactly its intent IPv6 address."""
    state = tmp_path / "lab"
    done = subprocess.run(
        [sys.executable, "-m", "policyfabric", "lab", "verify", str(SCENARIOS / "addressing.yaml"), "--json",
         "--explain", "--dhcp-wait", "15", "--state", str(state)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = json.loads(done.stdout)
    measured = {(r["from"], r["to"], r["probe"]): r["measured"] for r in report["results"]}
    assert measured == {
        ("app1", "web1", "tcp6/80"): "allow",
        ("app1", "web1", "tcp6/22"): "deny",
        ("app1", "web1", "udp6/80"): "deny",
        ("web2", "web1", "udp6/53"): "allow",
        ("web1", "web2", "bulk/5001"): "allow",
        ("web2", "web1", "bulk6/5001"): "allow",
        ("app1", "web1", "bulk6/80"): "allow",
        ("web1", "vm7", "icmp"): "allow",  # leased by DHCP: it answers
    }, done.stderr
    # --explain: read from the installed flows; each agrees with the packets (vm7 now holds its
    # leased address, so its verdicts too)
    explained = {(r["from"], r["to"], r["probe"]): r["explain"] for r in report["results"]}
    for key, e in explained.items():
        assert e["verdict"] == measured[key], (key, e)
    assert explained["app1", "web1", "tcp6/80"]["by"] == "contract acme/http rule web-in"
    assert [h["host"] for h in explained["app1", "web1", "tcp6/80"]["hops"]] == ["h2", "h1"]
    assert (report["passed"], report["failed"], done.returncode) == (8, 0, 0)

    by_name = {e["name"]: e for e in report["endpoints"]}
    assert list(by_name) == ["web1", "web2", "app1", "vm7"]
    assert by_name["web1"]["host"] == "h1" and by_name["app1"]["host"] == "h2"
    for name, v4, v6 in (("web1", "10.1.0.10", "fd00:1::10"), ("web2", "10.1.0.11", "fd00:1::11"),
                         ("app1", "10.1.0.20", "fd00:1::20")):  # fmt: skip
        entry = by_name[name]
        # web2 lists slaac in web6s: the host's router advertisement gave it the EUI-64 address of
        # 52:54:00:12:34:56 there
        slaac = ["fd00:3::5054:ff:fe12:3456/64"] if name == "web2" else []
        assert sorted(entry["addresses"]) == sorted([f"{v4}/24", f"{v6}/64", *slaac]), entry
        assert [r for r in entry["routes"] if "." in r] == ["default via 10.1.0.1"], entry
        assert entry["mtu"] == 1442
    vm7 = by_name["vm7"]  # the lab wrote nothing: all of it is dhclient's, from the agent's answer
    # DHCPv4 and DHCPv6 (stateful in web6: exactly its intent address); the kernel also makes an
    # address in web6s from the advertisement there (SLAAC), as on any port of the bridge domain
    assert (vm7["host"], vm7["mtu"]) == ("h1", 1442)
    assert {"10.1.0.7/24", "fd00:1::7/128"} <= set(vm7["addresses"]), vm7
    assert all(a.startswith("fd00:3::") for a in set(vm7["addresses"]) - {"10.1.0.7/24", "fd00:1::7/128"})
    assert sorted(r for r in vm7["routes"] if "." in r) == [
        "10.9.0.0/16 via 10.1.0.254",
        "default via 10.1.0.1",
    ]

    warnings = report["warnings"]
    assert not any(w.startswith("endpoint vm7") for w in warnings), warnings  # both leases came
    assert not any("web2" in w for w in warnings), warnings  # its SLAAC address is there

    found = re.search(r"lab (pf[0-9a-f]{6}): ", done.stderr)
    assert found, done.stderr
    lab_id = found.group(1)
    assert own_processes(str(state)) == [], "a DHCP client (or another process) was left running"
    assert not netns_etc(f"{lab_id}-ep-vm7").exists()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{lab_id}-" not in left
