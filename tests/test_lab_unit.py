"""The lab's state file across versions, and an endpoint's addressing: no root, nothing created."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from policyfabric.lab.dhcp import configuration_warnings
from policyfabric.lab.plan import LabError, LabPlan, plan
from policyfabric.lab.plumbing import addressing
from policyfabric.lab.ports import port_config
from policyfabric.lab.probe import BULK, connect
from policyfabric.lab.probe import answer_bulk as bulk_handler
from policyfabric.lab.readback import parse_addresses, parse_routes
from policyfabric.lab.state import EndpointState, ExternalAddress, ExternalHostState, HostState, LabState
from policyfabric.model import objects as o
from policyfabric.model import scenario as sc

# written by the first lab (f4f6cf8): run directories in their own map, hosts without renderer
# or role, no external networks
WEB1 = {"netns": "pf0a0b0c-ep-web1", "host": "h1", "mac": "02:00:00:00:00:01", "ips": ["10.1.0.10"],
        "key": "acme/web1", "port": "pf0-web1"}  # fmt: skip
H1 = {"netns": "pf0a0b0c-h1", "underlay_ip": "192.0.2.1", "rundir": "/tmp/x/h1/ovs"}
FIRST: dict[str, Any] = {
    "id": "pf0a0b0c",
    "directory": "/tmp/x",
    "scenario": "two_hosts.yaml",
    "url": "http://127.0.0.1:1",
    "opflex": "127.0.0.1:2",
    "namespaces": ["pf0a0b0c-fabric", "pf0a0b0c-h1", "pf0a0b0c-ep-web1"],
    "pids": {"authority": 10, "agent:h1": 11},
    "ovs": {"h1": "/tmp/x/h1/ovs"},
    "endpoints": {"web1": WEB1},
    "hosts": {"h1": H1},
}

# written when floating IPs were new (cbcc282): floating_ips, a healed host's "failed": false;
# "later" stands for a key of a newer version
FLOATING: dict[str, Any] = {
    **FIRST,
    "floating_ips": {"fip-web1": {"ip": "203.0.113.10", "endpoint": "web1"}},
    "external_hosts": {"internet1": {"netns": "ns-i1", "ip": "203.0.113.100", "network": "public"}},
    "hosts": {"h1": {**H1, "renderer": "nftables", "role": "gateway", "external": {"public": "ext0"},
                     "failed": False, "later": 1}},
}  # fmt: skip


def load(tmp_path: Path, data: dict[str, Any]) -> LabState:
    (tmp_path / "state.json").write_text(json.dumps(data))
    return LabState.load(tmp_path)


def test_the_first_state_file_loads_with_defaults_for_what_it_lacks(tmp_path: Path) -> None:
    state = load(tmp_path, FIRST)
    assert state.hosts == {"h1": HostState("pf0a0b0c-h1", "192.0.2.1", "/tmp/x/h1/ovs")}
    h1 = state.hosts["h1"]
    assert (h1.renderer, h1.role, h1.external, h1.failed) == ("ovs", "compute", {}, "")
    web1 = state.endpoints["web1"]
    assert web1.ips == ("10.1.0.10",) and web1.bridge is None and web1.br_int_port == "pf0-web1"
    assert state.external_hosts == {} and state.external_addresses == {}
    assert state.pids == {"authority": 10, "agent:h1": 11} and state.namespaces == FIRST["namespaces"]


def test_floating_ips_and_a_healed_host_of_older_files_load(tmp_path: Path) -> None:
    state = load(tmp_path, FLOATING)
    assert state.external_addresses == {"fip-web1": ExternalAddress("203.0.113.10", "web1")}
    assert state.external_hosts["internet1"] == ExternalHostState("ns-i1", "203.0.113.100", "public")
    h1 = state.hosts["h1"]
    assert (h1.renderer, h1.role, h1.external, h1.failed) == ("nftables", "gateway", {"public": "ext0"}, "")


def test_saving_writes_the_shape_older_versions_wrote(tmp_path: Path) -> None:
    state = load(tmp_path, FIRST)
    state.directory = str(tmp_path)
    state.endpoints["vm9"] = EndpointState("ns", "h1", "02:00:00:00:00:09", ("10.2.0.30",), "acme/vm9",
                                           "pf2-vm9", bridge="qbr2", ovs_port="qvo2")  # fmt: skip
    state.hosts["h1"] = replace(state.hosts["h1"], failed="cut")
    state.external_addresses["r1"] = ExternalAddress("203.0.113.2")
    state.save()
    written = json.loads((tmp_path / "state.json").read_text())
    assert "ovs" not in written  # unknown keys are not carried along
    assert written["endpoints"]["web1"] == WEB1  # no bridge or ovs_port: not hybrid-plugged
    assert {"bridge": "qbr2", "ovs_port": "qvo2"}.items() <= written["endpoints"]["vm9"].items()
    assert written["hosts"]["h1"] == {**H1, "renderer": "ovs", "role": "compute", "external": {},
                                      "failed": "cut"}  # fmt: skip
    assert written["external_addresses"]["r1"] == {"ip": "203.0.113.2", "endpoint": None}
    assert LabState.load(tmp_path) == state
    state.hosts["h1"] = replace(state.hosts["h1"], failed="")
    state.save()
    assert "failed" not in json.loads((tmp_path / "state.json").read_text())["hosts"]["h1"]


def test_no_state_file_or_an_incomplete_one_is_a_lab_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no lab is up"):
        LabState.load(tmp_path)
    with pytest.raises(LabError, match="HostState"):
        load(tmp_path, {**FIRST, "hosts": {"h1": {"netns": "x"}}})
    with pytest.raises(LabError, match="'id' is missing"):
        load(tmp_path, {"directory": "/tmp/x", "scenario": "s.yaml"})


SUBNETS = [
    {"cidr": "10.1.0.0/24", "gateway_ip": "10.1.0.1"},
    {"cidr": "fd00:1::/64", "gateway_ip": "fd00:1::1"},
    {"cidr": "10.2.0.0/24"},
]


@pytest.mark.parametrize(
    ("ips", "addresses", "gateway"),
    [
        (["10.1.0.10", "fd00:1::10"], ["10.1.0.10/24", "fd00:1::10/64"], "10.1.0.1"),
        (["fd00:1::10"], ["fd00:1::10/64"], None),  # IPv6 default routes come from router advertisements
        (["10.2.0.7"], ["10.2.0.7/24"], None),  # a subnet without a gateway
        (["10.9.0.1", "fd00:9::1"], ["10.9.0.1/32", "fd00:9::1/128"], None),  # in no subnet
    ],
)
def test_endpoint_addressing(ips: list[str], addresses: list[str], gateway: str | None) -> None:
    assert addressing(ips, SUBNETS) == (addresses, gateway)


# ---- probes (LAB.md): kinds, ports, dhcp endpoints, as the plan reads them


def lab_plan(tmp_path: Path, endpoints: str, expect: str) -> LabPlan:
    f = tmp_path / "s.yaml"
    f.write_text(f"hosts: [{{name: h1}}]\nendpoints:\n{endpoints}\nexpect:\n{expect}\n")
    return plan(sc.load(f))


@pytest.mark.parametrize(
    "probe",
    ["icmp", "icmpv6", "tcp/80", "udp/53", "tcp6/80", "udp6/53", "bulk/5001", "bulk6/1", "tcp6/65535"],
)
def test_every_probe_kind_of_lab_md_is_accepted(tmp_path: Path, probe: str) -> None:
    made = lab_plan(
        tmp_path,
        "  - {name: a, tenant: t, host: h1}",
        f"  - {{from: a, to: a, probe: {probe}, result: allow}}",
    )
    assert [x.probe for x in made.expect] == [probe]


@pytest.mark.parametrize(
    ("probe", "words"),
    [
        ("bulk/0", "1-65535"),
        ("tcp6/65536", "1-65535"),
        ("bulk", "bulk6/N"),
        ("tcp4/80", "tcp6/N"),
        ("icmp6", "icmpv6"),
    ],
)
def test_bad_probes_are_refused_naming_the_kinds(tmp_path: Path, probe: str, words: str) -> None:
    with pytest.raises(LabError, match=re.escape(words)):
        lab_plan(
            tmp_path,
            "  - {name: a, tenant: t, host: h1}",
            f"  - {{from: a, to: a, probe: {probe}, result: allow}}",
        )


def test_dhcp_endpoints_are_planned_and_a_non_boolean_is_refused(tmp_path: Path) -> None:
    eps = "  - {name: a, tenant: t, host: h1, dhcp: true}\n  - {name: b, tenant: t, host: h1}"
    made = lab_plan(tmp_path, eps, "  []")
    assert [(e.name, e.dhcp) for e in made.endpoints] == [("a", True), ("b", False)]
    with pytest.raises(LabError, match="dhcp 'yes please'"):
        lab_plan(tmp_path, "  - {name: a, tenant: t, host: h1, dhcp: yes please}", "  []")


def test_a_dhcp_endpoint_state_is_written_only_when_set(tmp_path: Path) -> None:
    state = load(tmp_path, FIRST)
    state.directory = str(tmp_path)
    vm7 = EndpointState("ns", "h1", "02:00:00:00:00:07", ("10.2.0.7",), "acme/vm7", "pf3-vm7", dhcp=True)
    state.endpoints["vm7"] = vm7
    state.save()
    written = json.loads((tmp_path / "state.json").read_text())["endpoints"]
    assert written["vm7"]["dhcp"] is True and "dhcp" not in written["web1"]
    assert LabState.load(tmp_path).endpoints["vm7"].dhcp is True


# ---- what the lab writes into a namespace (ports.port_config)

T = "acme"
BD = {
    "bd1": o.BridgeDomain(name="bd1", tenant=T, l3_context="v"),
    "jumbo": o.BridgeDomain(name="jumbo", tenant=T, l3_context="v", mtu=9000),
}
GROUPS = {"web": o.EndpointGroup(name="web", tenant=T, bridge_domain="bd1"),
          "big": o.EndpointGroup(name="big", tenant=T, bridge_domain="jumbo")}  # fmt: skip
NETS = [
    o.Subnet(name="s4", tenant=T, bridge_domain="bd1", cidr="10.1.0.0/24"),
    o.Subnet(
        name="s6", tenant=T, bridge_domain="bd1", cidr="fd00:1::/64", ipv6_address_mode="dhcpv6-stateful"
    ),
    o.Subnet(name="s6s", tenant=T, bridge_domain="bd1", cidr="fd00:3::/64", ipv6_ra_mode="slaac"),
    o.Subnet(name="j4", tenant=T, bridge_domain="jumbo", cidr="10.5.0.0/24"),
]
MAC = "52:54:00:12:34:56"


def test_a_static_endpoint_gets_its_addresses_route_and_the_bridge_domains_mtu() -> None:
    ep = {"name": "web1", "epg": "web", "mac": MAC, "ip": ["10.1.0.10", "fd00:1::10", "slaac"]}
    cfg = port_config(ep, NETS, BD, GROUPS)
    assert cfg.addresses == ("10.1.0.10", "fd00:1::10", "fd00:3::5054:ff:fe12:3456")
    assert cfg.learnt == ("fd00:3::5054:ff:fe12:3456",)  # learnt from router advertisements, not written
    assert cfg.configured == ("10.1.0.10/24", "fd00:1::10/64")
    assert (cfg.gateway, cfg.mtu, cfg.autoconf, cfg.dhcp) == ("10.1.0.1", 1442, True, False)
    big = port_config({"name": "j", "epg": "big", "mac": MAC, "ip": ["10.5.0.9"]}, NETS, BD, GROUPS)
    assert (big.mtu, big.autoconf, big.configured) == (9000, False, ("10.5.0.9/24",))
    by_subnet = port_config({"name": "n", "subnet": "j4", "mac": MAC, "ip": ["10.5.0.8"]}, NETS, BD, GROUPS)
    assert by_subnet.mtu == 9000  # plain Neutron mode: the subnet's bridge domain


@pytest.mark.parametrize(
    ("ip", "dhcpv6"), [(["10.1.0.7"], None), (["10.1.0.7", "fd00:1::7"], "stateful"), (["slaac"], None)]
)
def test_a_dhcp_endpoint_gets_nothing_written(ip: list[str], dhcpv6: str | None) -> None:
    cfg = port_config({"name": "vm7", "epg": "web", "mac": MAC, "ip": ip}, NETS, BD, GROUPS, dhcp=True)
    assert (cfg.configured, cfg.dhcp, cfg.autoconf) == ((), True, True)  # the lab writes nothing
    assert (cfg.gateway, cfg.mtu) == ("10.1.0.1" if "10.1.0.7" in ip else None, 1442)  # what it should learn
    assert cfg.dhcpv6 == dhcpv6
    assert len(cfg.addresses) == len(ip)  # what it should come up with, for the lab to check


def test_dhcpv6_stateless_runs_for_options_only() -> None:
    nets = [
        o.Subnet(
            name="s6", tenant=T, bridge_domain="bd1", cidr="fd00:1::/64", ipv6_ra_mode="dhcpv6-stateless"
        )
    ]
    cfg = port_config({"name": "vm", "epg": "web", "mac": MAC, "ip": ["slaac"]}, nets, BD, GROUPS, dhcp=True)
    assert (cfg.addresses, cfg.dhcpv6) == (("fd00:1::5054:ff:fe12:3456",), "stateless")


# ---- reading a namespace back (readback): `ip -j` as iproute2 6.1 prints it

ADDR_JSON = [{"ifindex": 2, "ifname": "eth0", "mtu": 1442, "addr_info": [
    {"family": "inet", "local": "10.1.0.10", "prefixlen": 24, "scope": "global"},
    {"family": "inet6", "local": "fd00:3::5054:ff:fe12:3456", "prefixlen": 64, "scope": "global",
     "tentative": True},
    {"family": "inet6", "local": "fd00:1::10", "prefixlen": 64, "scope": "global", "nodad": True},
    {"family": "inet6", "local": "fd00:9::1", "prefixlen": 64, "scope": "global", "dadfailed": True,
     "tentative": True},
    {"family": "inet6", "local": "fe80::5054:ff:fe12:3456", "prefixlen": 64, "scope": "link"}]}]  # fmt: skip
ROUTE4_JSON = [
    {"dst": "default", "gateway": "10.1.0.1", "dev": "eth0", "flags": []},
    {"dst": "10.9.0.0/16", "gateway": "10.1.0.254", "dev": "eth0", "protocol": "boot", "flags": []},
    {
        "dst": "10.1.0.0/24",
        "dev": "eth0",
        "protocol": "kernel",
        "scope": "link",
        "prefsrc": "10.1.0.10",
        "flags": [],
    },
    {"dst": "10.8.0.0/16", "dev": "eth0", "scope": "link", "flags": []},
]
ROUTE6_JSON = [
    {"dst": "fd00:1::/64", "dev": "eth0", "protocol": "kernel", "metric": 256, "flags": [], "pref": "medium"},
    {"dst": "fe80::/64", "dev": "eth0", "protocol": "kernel", "metric": 256, "flags": [], "pref": "medium"},
    {"dst": "default", "gateway": "fe80::1", "dev": "eth0", "protocol": "ra", "metric": 1024, "flags": []},
]


def test_namespace_addresses_are_the_global_ones_with_prefix_lengths() -> None:
    ns = parse_addresses(ADDR_JSON)
    assert ns.addresses == ["10.1.0.10/24", "fd00:3::5054:ff:fe12:3456/64", "fd00:1::10/64"]
    assert ns.mtu == 1442 and ns.tentative == ["fd00:3::5054:ff:fe12:3456"]
    assert ns.holds("fd00:1::10") and not ns.holds("fd00:3::5054:ff:fe12:3456") and not ns.holds("fd00:9::1")


def test_namespace_routes_leave_out_what_the_addresses_say() -> None:
    assert parse_routes(ROUTE4_JSON) == [
        "default via 10.1.0.1",
        "10.9.0.0/16 via 10.1.0.254",
        "10.8.0.0/16 dev eth0",
    ]
    assert parse_routes(ROUTE6_JSON) == ["default via fe80::1"]


# ---- the bulk probe: 1 MiB each way, every byte (over loopback, no namespace)


@contextlib.contextmanager
def bulk_server(reply: Callable[[bytes], bytes]) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that reads 1 MiB and answers ``reply(what it read)``."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def one() -> None:
        conn, _ = listener.accept()
        with conn:
            got = b""
            while len(got) < len(BULK) and (data := conn.recv(1 << 16)):
                got += data
            conn.sendall(reply(got))

    worker = threading.Thread(target=one, daemon=True)
    worker.start()
    try:
        yield port
    finally:
        worker.join(5)
        listener.close()


@pytest.mark.parametrize(
    ("reply", "ok"),
    [
        (lambda got: got, True),  # every byte back, as sent
        (lambda got: got[:-1], False),  # one byte short
        (lambda got: got[:1000] + bytes([got[1000] ^ 1]) + got[1001:], False),  # one byte wrong
        (lambda got: b"", False),  # nothing back
    ],
)
def test_a_bulk_transfer_is_allowed_only_if_every_byte_arrives(
    reply: Callable[[bytes], bytes], ok: bool
) -> None:
    with bulk_server(reply) as port:
        assert connect("bulk", "127.0.0.1", port, 5.0) is ok


def test_the_bulk_server_answers_only_a_whole_megabyte() -> None:
    """``serve bulk``'s handler echoes 1 MiB that arrived whole, and nothing for less."""
    for sent, expected in ((BULK, BULK), (BULK[:-1], b"")):
        a, b = socket.socketpair()
        with a:
            worker = threading.Thread(target=bulk_handler, args=(b,), daemon=True)
            worker.start()
            a.sendall(sent)
            a.shutdown(socket.SHUT_WR)
            got = b""
            while data := a.recv(1 << 16):
                got += data
            worker.join(5)
        assert got == expected


def test_a_leased_dhcp_endpoint_is_also_checked_for_its_mtu_and_route() -> None:
    booted = port_config(
        {"name": "vm7", "epg": "web", "mac": MAC, "ip": ["10.1.0.7"]}, NETS, BD, GROUPS, dhcp=True
    )
    static = port_config({"name": "web1", "epg": "web", "mac": MAC, "ip": ["10.1.0.10"]}, NETS, BD, GROUPS)
    configs = {"vm7": booted, "web1": static}

    def entry(name: str, addresses: list[str], routes: list[str], mtu: int) -> dict[str, Any]:
        return {"name": name, "host": "h1", "addresses": addresses, "routes": routes, "mtu": mtu}

    right = [entry("vm7", ["10.1.0.7/24"], ["default via 10.1.0.1"], 1442), entry("web1", [], [], 1500)]
    assert configuration_warnings(configs, right) == {}  # web1 is static: not this check's business
    wrong = [entry("vm7", ["10.1.0.7/24"], [], 1500)]
    assert configuration_warnings(configs, wrong) == {
        "vm7": "endpoint vm7 got its addresses by DHCP but has MTU 1500, not its bridge domain's 1442 "
        "and no default route via 10.1.0.1"
    }
    assert configuration_warnings(configs, [entry("vm7", [], [], 1500)]) == {}  # no lease: warned at boot
