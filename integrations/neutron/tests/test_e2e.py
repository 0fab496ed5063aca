"""End to end under OpenStack: the openstack CLI against Neutron with the policyfabric driver, ports
bound to the stack's two lab hosts, plugged as os-vif would, and real packets between them that
follow Neutron's security groups (and a router between two networks).

Needs a stack that is up (``integrations/neutron/stack.sh up``; ``make neutron-test`` does it) and
root. Run by policyfabric's Python: the probes are the lab's (a probe server in the target's
namespace, so a deny is never a closed port).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from policyfabric.lab.lab import Lab
from policyfabric.lab.plan import Expect
from policyfabric.lab.state import ExternalAddress, LabState

HERE = Path(__file__).resolve().parents[1]
STACK = HERE / "stack.sh"
DIR = Path(os.environ.get("POLICYFABRIC_NEUTRON_STACK", "/tmp/pf-neutron-stack"))

pytestmark = pytest.mark.skipif(not (DIR / "stack.json").exists(), reason="no stack up (stack.sh up)")


def stack_env() -> dict[str, str]:
    out = subprocess.run([str(STACK), "env"], capture_output=True, text=True, check=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'")
    return env


ENV: dict[str, str] = {}


def os_cli(*args: str) -> Any:
    """``openstack ARGS -f json``."""
    if not ENV:
        ENV.update(stack_env())
    done = subprocess.run(["openstack", *args, "-f", "json"], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, f"openstack {' '.join(args)}: {done.stderr[-1500:]}"
    return json.loads(done.stdout) if done.stdout.strip() else None


def os_do(*args: str) -> None:
    if not ENV:
        ENV.update(stack_env())
    done = subprocess.run(["openstack", *args], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, f"openstack {' '.join(args)}: {done.stderr[-1500:]}"


TOKEN: list[str] = []


def neutron_get(path: str) -> Any:
    """A read straight from Neutron's API: polling a port's status through the CLI costs a process
    and a Keystone login per look (1-2 s on a loaded machine); this costs one request."""
    if not ENV:
        ENV.update(stack_env())
    if not TOKEN:
        auth = {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": ENV["OS_USERNAME"],
                        "domain": {"name": "Default"},
                        "password": ENV["OS_PASSWORD"],
                    }
                },
            },
            "scope": {"project": {"name": ENV["OS_PROJECT_NAME"], "domain": {"name": "Default"}}},
        }
        r = httpx.post(f"{ENV['OS_AUTH_URL']}/auth/tokens", json={"auth": auth}, timeout=30)
        r.raise_for_status()
        TOKEN.append(r.headers["X-Subject-Token"])
    r = httpx.get(f"{ENV['PF_NEUTRON_URL']}/v2.0/{path}", headers={"X-Auth-Token": TOKEN[0]}, timeout=30)
    r.raise_for_status()
    return r.json()


def wait_status(port_id: str, status: str, timeout: float = 60.0) -> float:
    start = time.monotonic()
    while True:
        got = neutron_get(f"ports/{port_id}")["port"]["status"]
        if got == status:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"port {port_id} stayed {got}, not {status}"
        time.sleep(0.3)


def plug(port_id: str, host: str) -> None:
    subprocess.run([str(STACK), "plug", port_id, host], check=True, env=ENV or stack_env())


def lab() -> Lab:
    st = json.loads((DIR / "stack.json").read_text())
    os.environ["POLICYFABRIC_TOKEN"] = st["token"]
    return Lab(LabState.load(Path(st["lab"])))


def check(expects: list[tuple[str, str, str, str]]) -> list[str]:
    """Probe each (from, to, probe, expected) with real packets; the ones that did not match."""
    the_lab = lab()
    results = the_lab.probe([Expect(s, t, p, r) for s, t, p, r in expects])
    return [
        f"{r.expect.source}->{r.expect.target} {r.expect.probe}: {r.measured}" for r in results if not r.ok
    ]


@pytest.fixture(scope="module")
def topology() -> dict[str, str]:
    """Two networks joined by a router, two groups, three ports bound to h1 and h2."""
    tag = str(int(time.time()))
    ids: dict[str, str] = {}
    ids["net1"] = os_cli("network", "create", f"e2e-a-{tag}")["id"]
    ids["net2"] = os_cli("network", "create", f"e2e-b-{tag}")["id"]
    ids["sub1"] = os_cli("subnet", "create", f"e2e-a-{tag}", "--network", ids["net1"],
                         "--subnet-range", "10.20.0.0/24")["id"]  # fmt: skip
    ids["sub2"] = os_cli("subnet", "create", f"e2e-b-{tag}", "--network", ids["net2"],
                         "--subnet-range", "10.21.0.0/24")["id"]  # fmt: skip
    ids["router"] = os_cli("router", "create", f"e2e-{tag}")["id"]
    os_do("router", "add", "subnet", ids["router"], ids["sub1"])
    os_do("router", "add", "subnet", ids["router"], ids["sub2"])
    ids["client"] = os_cli("security", "group", "create", f"e2e-client-{tag}")["id"]
    ids["web"] = os_cli("security", "group", "create", f"e2e-web-{tag}")["id"]
    # web: tcp/80 from members of client; ICMP from 10.20.0.0/24 only
    os_cli("security", "group", "rule", "create", ids["web"], "--ingress", "--protocol", "tcp",
           "--dst-port", "80", "--remote-group", ids["client"])  # fmt: skip
    os_cli("security", "group", "rule", "create", ids["web"], "--ingress", "--protocol", "icmp",
           "--remote-ip", "10.20.0.0/24")  # fmt: skip
    ports = {"a": ("net1", "client", "h1"), "b": ("net1", "web", "h2"), "c": ("net2", "web", "h2")}
    for key, (net, group, host) in ports.items():
        ids[key] = os_cli("port", "create", f"e2e-{key}-{tag}", "--network", ids[net], "--security-group",
                          ids[group], "--host", host, "--device-owner", "compute:nova")["id"]  # fmt: skip
    for key, (_, _, host) in ports.items():
        plug(ids[key], host)
    for key in ports:
        wait_status(ids[key], "ACTIVE")
    return ids


def test_ports_bound_on_lab_hosts_go_active(topology: dict[str, str]) -> None:
    for key, host in (("a", "h1"), ("b", "h2"), ("c", "h2")):
        port = os_cli("port", "show", topology[key])
        assert port["status"] == "ACTIVE"
        assert port["binding_vif_type"] == "ovs"
        assert port["binding_host_id"] == host
        assert port["binding_vif_details"]["bridge_name"] == "br-int"
    router_ports = os_cli("port", "list", "--router", topology["router"])
    assert router_ports and all(p["Status"] == "ACTIVE" for p in router_ports)


def test_packets_follow_security_groups(topology: dict[str, str]) -> None:
    a, b, c = topology["a"], topology["b"], topology["c"]
    failures = check(
        [
            (a, b, "tcp/80", "allow"),  # web allows tcp/80 from client's members, across hosts
            (a, b, "tcp/22", "deny"),  # no rule for 22
            (a, b, "icmp", "allow"),  # ICMP from 10.20.0.0/24
            (b, a, "icmp", "deny"),  # client has no ingress rule
            (b, a, "tcp/80", "deny"),
            (a, c, "tcp/80", "allow"),  # routed to the other network: a is still a client member
            (a, c, "icmp", "allow"),
            (c, a, "icmp", "deny"),
        ]
    )
    assert failures == []


def test_rule_changes_reach_the_dataplane(topology: dict[str, str]) -> None:
    a, b = topology["a"], topology["b"]
    rule = os_cli("security", "group", "rule", "create", topology["client"], "--ingress", "--protocol",
                  "icmp", "--remote-group", topology["web"])["id"]  # fmt: skip
    time.sleep(2)
    assert check([(b, a, "icmp", "allow")]) == []
    os_do("security", "group", "rule", "delete", rule)
    time.sleep(2)
    assert check([(b, a, "icmp", "deny")]) == []


def test_overlapping_subnet_on_a_network_on_no_router(topology: dict[str, str]) -> None:
    """Neutron lets another network of the same project take 10.20.0.0/24 while no router joins it
    to the first: it is a routing domain of its own, and a port there may even hold the address
    port a holds on the routed network."""
    a_ip = neutron_get(f"ports/{topology['a']}")["port"]["fixed_ips"][0]["ip_address"]
    net = os_cli("network", "create", "e2e-overlap")["id"]
    os_cli("subnet", "create", "e2e-overlap", "--network", net, "--subnet-range", "10.20.0.0/24")
    pid = os_cli("port", "create", "e2e-overlap", "--network", net, "--fixed-ip", f"ip-address={a_ip}",
                 "--host", "h1", "--device-owner", "compute:nova")["id"]  # fmt: skip
    plug(pid, "h1")
    wait_status(pid, "ACTIVE")
    assert check([(topology["a"], topology["b"], "icmp", "allow")]) == []  # the routed one is unchanged


def test_refused_in_precommit_with_neutrons_error(topology: dict[str, str]) -> None:
    done = subprocess.run(
        ["openstack", "security", "group", "rule", "create", topology["web"], "--protocol", "sctp"],
        capture_output=True, text=True, env=ENV,
    )  # fmt: skip
    assert done.returncode != 0 and "sctp" in done.stderr
    rules = os_cli("security", "group", "rule", "list", topology["web"])
    assert not any(r["IP Protocol"] == "sctp" for r in rules)


def authority_list(kind: str) -> list[dict[str, Any]]:
    st = json.loads((DIR / "stack.json").read_text())
    r = httpx.get(f"{st['authority_url']}/v1/{kind}", headers={"Authorization": f"Bearer {st['token']}"},
                  timeout=30)  # fmt: skip
    r.raise_for_status()
    return list(r.json()["items"])


def test_floating_ip_reaches_a_port_from_an_external_host(topology: dict[str, str]) -> None:
    """The router's gateway on ``public`` (Neutron's external network, policyfabric's external
    network of the same UUID, a lab segment every host has a port on), a floating IP on a port, and
    real packets from the external host ``outside`` (a namespace on that segment, off the fabric)
    to the floating IP: what the port's groups allow gets through, the rest does not."""
    public = ENV.get("PF_PUBLIC_NETWORK_ID") or stack_env()["PF_PUBLIC_NETWORK_ID"]
    os_do("router", "set", topology["router"], "--external-gateway", public)
    group = os_cli("security", "group", "create", "e2e-fip")["id"]
    os_cli("security", "group", "rule", "create", group, "--ingress", "--protocol", "tcp", "--dst-port", "80",
           "--remote-ip", "0.0.0.0/0")  # fmt: skip
    os_cli("security", "group", "rule", "create", group, "--ingress", "--protocol", "icmp",
           "--remote-ip", "203.0.113.0/24")  # fmt: skip
    port = os_cli("port", "create", "e2e-fip", "--network", topology["net2"], "--security-group", group,
                  "--host", "h2", "--device-owner", "compute:nova")["id"]  # fmt: skip
    plug(port, "h2")
    wait_status(port, "ACTIVE")
    fip = os_cli("floating", "ip", "create", public, "--port", port)
    address = fip["floating_ip_address"]
    deadline = time.monotonic() + 60
    while not any(f["name"] == fip["id"] and f.get("endpoint") for f in authority_list("floating-ips")):
        assert time.monotonic() < deadline, "the floating IP did not reach the authority"
        time.sleep(0.5)
    the_lab = lab()
    the_lab.state.external_addresses[fip["id"]] = ExternalAddress(address, port)
    the_lab.state.save()
    expects = [("outside", fip["id"], "icmp", "allow"), ("outside", fip["id"], "tcp/80", "allow"),
               ("outside", fip["id"], "tcp/22", "deny")]  # fmt: skip
    deadline = time.monotonic() + 30  # the agents render the floating IP's NAT once it arrives
    while (failures := check(expects)) and time.monotonic() < deadline:
        time.sleep(1)
    assert failures == [], f"floating IP {address} of port {port}"
    assert neutron_get(f"floatingips/{fip['id']}")["floatingip"]["status"] == "ACTIVE"


def test_port_create_to_active_time(topology: dict[str, str]) -> None:
    """Port create with --host to ACTIVE, plug included (what Nova would wait for), 3 ports
    (a smoke figure in the CI run; harness/bench.py active measures p50 of 20)."""
    times = []
    for i in range(3):
        start = time.monotonic()
        pid = os_cli("port", "create", f"e2e-t{i}", "--network", topology["net1"], "--host", "h1",
                     "--device-owner", "compute:nova")["id"]  # fmt: skip
        plug(pid, "h1")
        wait_status(pid, "ACTIVE")
        times.append(time.monotonic() - start)
    print(f"port create -> ACTIVE: p50 {statistics.median(times):.2f} s, max {max(times):.2f} s (n=3)")


def endpoint_names() -> set[str]:
    st = json.loads((DIR / "stack.json").read_text())
    r = subprocess.run(
        ["curl", "-sf", "-H", f"Authorization: Bearer {st['token']}", f"{st['authority_url']}/v1/endpoints"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {e["name"] for e in json.loads(r.stdout)["items"]}


def test_writes_while_the_authority_is_away_are_not_lost(topology: dict[str, str]) -> None:
    """Neutron takes writes while the authority is down; its journal sends them when it is back."""
    subprocess.run([str(STACK), "authority", "stop"], check=True)
    try:
        ports = [
            os_cli("port", "create", f"e2e-away-{i}", "--network", topology["net1"])["id"] for i in range(3)
        ]
        os_do("port", "delete", ports[0])
    finally:
        subprocess.run([str(STACK), "authority", "start"], check=True)
    deadline = time.monotonic() + 60
    while True:
        names = endpoint_names()
        if ports[1] in names and ports[2] in names:
            break
        assert time.monotonic() < deadline, (
            "the journal did not send what Neutron took while the authority was away"
        )
        time.sleep(1)
    assert ports[0] not in names  # created and deleted meanwhile: never shown to the authority
    # the agents reconnect on a backoff of their own: until they have, the driver rightly binds
    # nothing on their hosts, so the tests after this one wait for them (and the driver's 2 s
    # cache of the live agents)
    while {a["name"] for a in authority_list("agents") if a.get("connected")} < {"h1", "h2"}:
        assert time.monotonic() < deadline + 30, "the agents did not reconnect to the authority"
        time.sleep(0.5)
    time.sleep(2.5)


def test_unplugged_port_goes_down(topology: dict[str, str]) -> None:
    """The agent stops reporting an unplugged endpoint ACTIVE: the worker sets the port DOWN."""
    pid = os_cli("port", "create", "e2e-unplug", "--network", topology["net2"], "--host", "h2",
                 "--device-owner", "compute:nova")["id"]  # fmt: skip
    plug(pid, "h2")
    wait_status(pid, "ACTIVE")
    subprocess.run([str(STACK), "unplug", pid], check=True)
    wait_status(pid, "DOWN")
