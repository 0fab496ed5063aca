"""A port plugged the way Nova's os-vif plugs it: ``external_ids:iface-id`` is the bare endpoint
name (the Neutron port UUID), not ``TENANT/NAME``. A real authority, a real agent on Open vSwitch,
real packets: the agent asks the authority which tenant holds the name (``pf_locate``), declares
the port, the endpoint goes ACTIVE and its traffic flows, whether the endpoint existed before the
port was plugged or was created afterwards."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import pytest

from policyfabric.client import Client
from policyfabric.lab import plumbing
from policyfabric.lab.lab import Lab
from policyfabric.lab.plan import LabEndpoint
from policyfabric.lab.ports import port_config
from policyfabric.model import kinds as k
from tests.lab_harness import SCENARIOS, endpoint, lab_fixture, ns_run, until

pytestmark = pytest.mark.dataplane

lab = lab_fixture(SCENARIOS / "two_hosts.yaml")

EXISTING = "3f1c9a52-7d4e-4b8a-9e61-0c2d5b7a8f10"
LATER = "9b0e4c1d-2a3f-4e5b-8c6d-7e8f9a0b1c2d"


@dataclass(frozen=True)
class BareEndpoint(LabEndpoint):
    """A lab endpoint whose port says only its name, as os-vif writes a Neutron port's UUID."""

    @property
    def key(self) -> str:
        return self.name


def pings(lab: Lab, src: str, dst_ip: str) -> bool:
    done = ns_run(lab.state.endpoints[src].netns, "ping", "-c", "1", "-W", "1", dst_ip)
    return done.returncode == 0


def iface_id(lab: Lab, ep: LabEndpoint) -> str:
    rundir = lab.state.hosts[ep.host].rundir
    return subprocess.run(
        ["ovs-vsctl", f"--db=unix:{rundir}/db.sock", "get", "Interface", ep.port, "external_ids:iface-id"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().strip('"')  # fmt: skip


def test_a_port_plugged_with_its_bare_name_goes_active_and_forwards(lab: Lab) -> None:
    spec = {"name": EXISTING, "tenant": "acme", "epg": "web", "host": "h1", "ip": ["10.1.0.40"]}
    ep = BareEndpoint(EXISTING, "acme", "h1", 90)
    with Client(lab.state.url) as client:
        created = client.create(k.ENDPOINT, spec)
        try:
            lab.plug(ep, client)
            assert iface_id(lab, ep) == EXISTING  # what os-vif writes, no tenant
            until(lambda: endpoint(lab, EXISTING)["status"] == "ACTIVE", timeout=20)
            assert endpoint(lab, EXISTING)["interface"] == ep.port
            until(lambda: pings(lab, "web2", "10.1.0.40"), timeout=10)  # from h2, across the tunnel
        finally:
            lab.unplug(EXISTING)
            client.delete(k.ENDPOINT, created["id"])


def test_a_port_plugged_before_its_endpoint_exists_goes_active_once_it_is_created(lab: Lab) -> None:
    spec = {
        "name": LATER, "tenant": "acme", "epg": "web", "host": "h1", "ip": ["10.1.0.41"],
        "mac": "02:50:46:aa:00:41",
    }  # fmt: skip
    ep = BareEndpoint(LATER, "acme", "h1", 91)
    with Client(lab.state.url) as client:
        cfg = port_config(spec, *lab.tenant_intent(client, "acme"))
        plumbing.plug(lab.state, ep, cfg)  # Nova plugs as soon as Neutron bound the port
        created = None
        try:
            assert not pings(lab, "web2", "10.1.0.41")  # nothing is declared for it: dropped
            created = client.create(k.ENDPOINT, spec)  # Neutron's endpoint reaches the authority
            waited = until(lambda: endpoint(lab, LATER)["status"] == "ACTIVE", timeout=20)
            print(f"ACTIVE {waited:.2f} s after the endpoint was created")
            until(lambda: pings(lab, "web2", "10.1.0.41"), timeout=10)
        finally:
            lab.unplug(LATER)
            if created is not None:
                client.delete(k.ENDPOINT, created["id"])
