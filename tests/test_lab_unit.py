"""The lab's state file across versions, and an endpoint's addressing: no root, nothing created."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from policyfabric.lab.plan import LabError
from policyfabric.lab.plumbing import addressing
from policyfabric.lab.state import EndpointState, ExternalAddress, ExternalHostState, HostState, LabState

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
