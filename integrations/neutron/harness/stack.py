"""A devstack-like stack for the Neutron integration, all under one private directory.

``up`` starts, on loopback ports: a private MariaDB and Keystone (``policyfabric.lab.keystone``),
a policyfabric authority with a token file, a two-host lab (hosts ``h1``, ``h2``: Open vSwitch and
a policyfabric agent each, ``policyfabric.lab``), and Neutron (API under gunicorn, its periodic
worker running the driver's journal) with ML2 ``mechanism_drivers = policyfabric`` and the
``policyfabric_router`` L3 plugin; it creates the external network ``public`` and makes it real in
the lab (a segment every host has a port on, and the external host ``outside``). ``env`` prints the
``OS_*`` variables for the openstack CLI. ``plug PORT HOST`` plays Nova and os-vif: a namespace with
the port's MAC, addresses and MTU, plugged into that host's br-int with ``iface-id`` the bare port
UUID. ``down`` stops every process by the PID recorded in ``stack.json`` and removes the
directory.

Run by policyfabric's Python (it drives the lab); Neutron, Keystone and tempest have venvs of their
own (scripts/install-neutron.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from policyfabric.client import Client
from policyfabric.lab import plumbing, processes
from policyfabric.lab.authority import authority_in, free_port
from policyfabric.lab.keystone import ADMIN_PASSWORD, KeystoneServer, _which
from policyfabric.lab.lab import Lab
from policyfabric.lab.ovs import OvsInstance
from policyfabric.lab.plan import ExternalHost, ExternalSegment, LabEndpoint
from policyfabric.lab.state import LabState
from policyfabric.model import kinds as k
from policyfabric.model import scenario as sc

ROOT = Path(__file__).resolve().parents[3]
CACHE = ROOT / ".cache"
NEUTRON_VENV = Path(os.environ.get("POLICYFABRIC_NEUTRON_VENV", CACHE / "neutron-venv"))
TEMPEST_VENV = Path(os.environ.get("POLICYFABRIC_TEMPEST_VENV", CACHE / "tempest-venv"))
KEYSTONE_VENV = Path(os.environ.get("POLICYFABRIC_KEYSTONE_VENV", CACHE / "keystone-venv"))
DIR = Path(os.environ.get("POLICYFABRIC_NEUTRON_STACK", "/tmp/pf-neutron-stack"))
NEUTRON_PASSWORD = "neutron-secret-0123"
HOSTS = ("h1", "h2")
PUBLIC_CIDR, PUBLIC_GATEWAY = "203.0.113.0/24", "203.0.113.1"
EXTERNAL_HOST, EXTERNAL_HOST_IP = "outside", "203.0.113.200"  # a host on ``public``, off the fabric
LAB_SCENARIO = "hosts:\n  - {name: h1}\n  - {name: h2}\n"


def say(msg: str) -> None:
    print(f"stack: {msg}", file=sys.stderr, flush=True)


def load() -> dict[str, Any]:
    try:
        return dict(json.loads((DIR / "stack.json").read_text()))
    except FileNotFoundError:
        raise SystemExit(f"stack: nothing is up under {DIR}") from None


def save(state: dict[str, Any]) -> None:
    (DIR / "stack.json").write_text(json.dumps(state, indent=1))


# ---- Keystone: the service project, the neutron user, the network endpoint (one process)
_SETUP = r"""
import json, sys
from keystoneauth1 import session
from keystoneauth1.identity import v3
spec = json.load(sys.stdin)
s = session.Session(auth=v3.Password(auth_url=spec["url"], username="admin", password=spec["password"],
    project_name="admin", user_domain_name="Default", project_domain_name="Default"))
ep = {"endpoint_override": spec["url"]}
def one(collection, key, body, query):
    r = s.post(f"/{collection}", json={key: body}, raise_exc=False, **ep)
    if r.status_code == 409:
        return s.get(f"/{collection}", params=query, **ep).json()[collection][0]["id"]
    r.raise_for_status()
    return r.json()[key]["id"]
service_project = one("projects", "project", {"name": "service", "domain_id": "default"}, {"name": "service"})
user = one("users", "user", {"name": "neutron", "password": spec["neutron_password"], "domain_id": "default"},
           {"name": "neutron"})
for role in ("admin", "service"):
    rid = one("roles", "role", {"name": role}, {"name": role})
    s.put(f"/projects/{service_project}/users/{user}/roles/{rid}", **ep)
svc = one("services", "service", {"name": "neutron", "type": "network"}, {"type": "network"})
for iface in ("public", "internal", "admin"):
    one("endpoints", "endpoint", {"service_id": svc, "interface": iface, "url": spec["neutron_url"],
        "region_id": "RegionOne"}, {"service_id": svc, "interface": iface})
print(json.dumps({"service_project": service_project}))
"""


def neutron_conf(st: dict[str, Any]) -> tuple[Path, Path]:
    d = DIR / "neutron"
    d.mkdir(parents=True, exist_ok=True)
    ks = f"http://127.0.0.1:{st['keystone_port']}/v3"
    conf = d / "neutron.conf"
    conf.write_text(
        f"""[DEFAULT]
core_plugin = ml2
service_plugins = policyfabric_router
auth_strategy = keystone
transport_url = fake:/
rpc_workers = 0
rpc_state_report_workers = 0
api_workers = 1
api_paste_config = {NEUTRON_VENV / "etc" / "neutron" / "api-paste.ini"}
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
allow_overlapping_ips = true
global_physnet_mtu = 1500
state_path = {d}
log_file = {d / "neutron.log"}
[database]
connection = mysql+pymysql://neutron:neutron@127.0.0.1:{st["db_port"]}/neutron
[keystone_authtoken]
www_authenticate_uri = {ks}
auth_url = {ks}
auth_type = password
username = neutron
password = {NEUTRON_PASSWORD}
user_domain_name = Default
project_name = service
project_domain_name = Default
[oslo_concurrency]
lock_path = {d / "lock"}
[quotas]
quota_network = -1
quota_subnet = -1
quota_port = -1
quota_router = -1
quota_floatingip = -1
quota_security_group = -1
quota_security_group_rule = -1
[policyfabric]
url = {st["authority_url"]}
token = {st["token"]}
"""
    )
    ml2 = d / "ml2_conf.ini"
    ml2.write_text(
        """[ml2]
type_drivers = geneve,flat
tenant_network_types = geneve
mechanism_drivers = policyfabric
extension_drivers = port_security
overlay_ip_version = 4
[ml2_type_geneve]
vni_ranges = 1:10000
max_header_size = 38
[ml2_type_flat]
flat_networks = external
"""
    )
    return conf, ml2


def start(cmd: list[str], log: Path, **kwargs: Any) -> int:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
    return proc.pid


def wait_http(url: str, pid: int, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if not processes.alive(pid) or time.monotonic() > deadline:
            raise SystemExit(f"stack: {url} did not answer; {log}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def keystone_token(st: dict[str, Any]) -> str:
    auth = {
        "identity": {
            "methods": ["password"],
            "password": {
                "user": {"name": "admin", "domain": {"name": "Default"}, "password": ADMIN_PASSWORD}
            },
        },
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}},
    }
    r = httpx.post(f"http://127.0.0.1:{st['keystone_port']}/v3/auth/tokens", json={"auth": auth}, timeout=30)
    r.raise_for_status()
    return r.headers["X-Subject-Token"]


def neutron(st: dict[str, Any], method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    r = httpx.request(
        method,
        f"{st['neutron_url']}/v2.0/{path}",
        headers={"X-Auth-Token": token or keystone_token(st)},
        timeout=60,
        **kw,
    )
    if r.status_code >= 400:
        raise SystemExit(f"stack: neutron {method} {path}: {r.status_code} {r.text[:500]}")
    return r.json() if r.content else None


def up() -> None:
    if (DIR / "stack.json").exists():
        raise SystemExit(f"stack: already up under {DIR} (stack.sh down first)")
    DIR.mkdir(parents=True, exist_ok=True)
    st: dict[str, Any] = {"pids": {}, "dir": str(DIR)}
    save(st)
    t0 = time.monotonic()
    # MariaDB and Keystone
    ks = KeystoneServer(DIR / "keystone")
    ks.start()
    st["pids"]["keystone"] = ks.procs["keystone"].pid
    st["pids"]["mariadb"] = ks.procs["mariadb"].pid
    st["db_port"], st["keystone_port"], st["db_socket"] = ks.db_port, ks.port, str(ks.socket)
    save(st)
    say(f"mariadb :{ks.db_port}, keystone :{ks.port} ({time.monotonic() - t0:.1f} s)")
    sql = (
        "CREATE DATABASE IF NOT EXISTS neutron; "
        "CREATE USER IF NOT EXISTS 'neutron'@'127.0.0.1' IDENTIFIED BY 'neutron'; "
        "GRANT ALL ON neutron.* TO 'neutron'@'127.0.0.1';"
    )
    subprocess.run(
        [str(_which("mariadb")), "--no-defaults", f"--socket={ks.socket}", "-uroot", "-e", sql], check=True
    )
    st["neutron_port"] = free_port()
    st["neutron_url"] = f"http://127.0.0.1:{st['neutron_port']}"
    # the authority, with a token file (the driver's and the harness's admin token); first, so that
    # Neutron's configuration (which names it) can be written and Neutron's slow parts (its
    # migrations, then its start) overlap Keystone's setup and the lab's start
    st["token"] = secrets.token_hex(24)
    adir = DIR / "authority"
    adir.mkdir(parents=True, exist_ok=True)
    tokens = adir / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{token: {st['token']}, role: admin, name: neutron}}\n")
    tokens.chmod(0o600)
    auth = authority_in(adir, extra=["--tokens", str(tokens), "--keepalive", "0.5"], token=st["token"])
    auth.start()
    assert auth.proc is not None
    st["pids"]["authority"] = auth.proc.pid
    st["authority_cmd"] = [str(a) for a in auth.proc.args]  # type: ignore[union-attr]
    st["authority_url"], st["opflex"] = auth.url, "{}:{}".format(*auth.opflex)
    save(st)
    say(f"authority {auth.url}, OpFlex {st['opflex']}")
    conf, ml2 = neutron_conf(st)
    args = ["--config-file", str(conf), "--config-file", str(ml2)]
    nlog = DIR / "neutron" / "setup.log"
    with nlog.open("wb") as out:
        migrate = subprocess.Popen(
            [str(NEUTRON_VENV / "bin" / "neutron-db-manage"), *args, "upgrade", "heads"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    setup = subprocess.run(
        [str(KEYSTONE_VENV / "bin" / "python"), "-c", _SETUP],
        input=json.dumps(
            {
                "url": ks.url,
                "password": ADMIN_PASSWORD,
                "neutron_password": NEUTRON_PASSWORD,
                "neutron_url": st["neutron_url"],
            }
        ),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if setup.returncode != 0:
        migrate.kill()
        raise SystemExit(f"stack: keystone setup failed:\n{setup.stderr[-2000:]}")
    if migrate.wait() != 0:
        raise SystemExit(f"stack: neutron-db-manage failed:\n{nlog.read_text()[-3000:]}")
    say(f"keystone set up, neutron migrated ({time.monotonic() - t0:.1f} s)")
    (DIR / "neutron" / "gunicorn.conf.py").write_text(
        f'wsgi_app = "neutron.wsgi.api:application"\nbind = "127.0.0.1:{st["neutron_port"]}"\n'
        'workers = 1\nworker_class = "gthread"\nthreads = 8\ntimeout = 120\n'
    )
    env = {
        **os.environ,
        "OS_NEUTRON_CONFIG_DIR": str(DIR / "neutron"),
        "OS_NEUTRON_CONFIG_FILES": "neutron.conf;ml2_conf.ini",
        "PYTHONWARNINGS": "ignore",
    }
    st["pids"]["neutron-api"] = start(
        [str(NEUTRON_VENV / "bin" / "gunicorn")],  # no arguments: Neutron parses sys.argv itself
        DIR / "neutron" / "gunicorn.log",
        cwd=DIR / "neutron",
        env=env,
    )
    st["pids"]["neutron-workers"] = start(
        [str(NEUTRON_VENV / "bin" / "neutron-periodic-workers"), *args],
        DIR / "neutron" / "workers.log",
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    save(st)
    # the lab: two hosts whose agents are Neutron's hosts (while Neutron starts)
    os.environ["POLICYFABRIC_TOKEN"] = st["token"]
    scenario_path = DIR / "lab.yaml"
    scenario_path.write_text(LAB_SCENARIO)
    lab = Lab.create(scenario_path, DIR / "lab", say)
    st["lab"] = str(DIR / "lab")
    save(st)
    lab.up(sc.load(scenario_path), authority=(st["authority_url"], st["opflex"]))
    say(f"lab hosts {', '.join(HOSTS)} up ({time.monotonic() - t0:.1f} s)")
    wait_http(st["neutron_url"] + "/", st["pids"]["neutron-api"], DIR / "neutron" / "gunicorn.log")
    say(f"neutron {st['neutron_url']} ({time.monotonic() - t0:.1f} s since start)")
    # the external network every project's routers may use
    token = keystone_token(st)
    net = neutron(
        st,
        "POST",
        "networks",
        token,
        json={
            "network": {
                "name": "public",
                "router:external": True,
                "provider:network_type": "flat",
                "provider:physical_network": "external",
                "shared": False,
            }
        },
    )["network"]
    neutron(
        st,
        "POST",
        "subnets",
        token,
        json={
            "subnet": {
                "network_id": net["id"],
                "cidr": PUBLIC_CIDR,
                "gateway_ip": PUBLIC_GATEWAY,
                "ip_version": 4,
                "enable_dhcp": False,
                "name": "public-v4",
            }
        },
    )
    st["public_network_id"] = net["id"]
    save(st)
    external_plumbing(st, net["id"])
    say(f"external network public ({PUBLIC_CIDR}) on every host, external host {EXTERNAL_HOST} "
        f"{EXTERNAL_HOST_IP} ({time.monotonic() - t0:.1f} s)")  # fmt: skip
    write_env(st)
    say(f'up in {time.monotonic() - t0:.1f} s; eval "$({ROOT}/integrations/neutron/stack.sh env)"')


def external_plumbing(st: dict[str, Any], network_id: str) -> None:
    """``public`` made real in the lab, once Neutron has named it (policyfabric's external network
    is named by the Neutron UUID, which is known only now, after the lab is up): the lab's
    external segment (a bridge that holds the upstream gateway 203.0.113.1), a port ``ext0`` on
    every host's br-int into it, each agent restarted with ``--external UUID=ext0`` (floating IPs
    are NATed on their endpoint's host), and the external host ``outside`` on it."""
    lab = the_lab(st)
    seg = ExternalSegment(network_id, 0, PUBLIC_CIDR, PUBLIC_GATEWAY)
    plumbing.add_segment(lab.state, seg)
    for name, info in lab.state.hosts.items():
        index = sorted(lab.state.hosts).index(name)
        plumbing.segment_link(lab.state, seg, info.netns, seg.port, f"h{index}")
        OvsInstance(Path(info.rundir)).vsctl("--may-exist", "add-port", "br-int", seg.port)
        info.external[network_id] = seg.port
        lab.state.save()
        lab.stop_agent(name)
        lab.start_agent(name)
    plumbing.add_external_host(lab.state, ExternalHost(EXTERNAL_HOST, network_id, EXTERNAL_HOST_IP, 0), seg)
    st["external_host"] = EXTERNAL_HOST
    save(st)


def write_env(st: dict[str, Any]) -> None:
    clouds = DIR / "clouds.yaml"
    clouds.write_text(
        f"""clouds:
  policyfabric:
    auth:
      auth_url: http://127.0.0.1:{st["keystone_port"]}/v3
      username: admin
      password: {ADMIN_PASSWORD}
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    identity_api_version: 3
"""
    )


def env() -> None:
    st = load()
    lines = {
        "OS_AUTH_URL": f"http://127.0.0.1:{st['keystone_port']}/v3",
        "OS_USERNAME": "admin",
        "OS_PASSWORD": ADMIN_PASSWORD,
        "OS_PROJECT_NAME": "admin",
        "OS_USER_DOMAIN_NAME": "Default",
        "OS_PROJECT_DOMAIN_NAME": "Default",
        "OS_REGION_NAME": "RegionOne",
        "OS_IDENTITY_API_VERSION": "3",
        "OS_CLIENT_CONFIG_FILE": str(DIR / "clouds.yaml"),
        "POLICYFABRIC_URL": st["authority_url"],
        "POLICYFABRIC_TOKEN": st["token"],
        "PF_NEUTRON_URL": st["neutron_url"],
        "PF_PUBLIC_NETWORK_ID": st.get("public_network_id", ""),
        "PATH": f"{TEMPEST_VENV / 'bin'}:{os.environ.get('PATH', '')}",
    }
    for key, value in lines.items():
        print(f"export {key}='{value}'")


def the_lab(st: dict[str, Any]) -> Lab:
    os.environ["POLICYFABRIC_TOKEN"] = st["token"]
    return Lab(LabState.load(Path(st["lab"])))


class OsVifEndpoint(LabEndpoint):
    """A lab endpoint plugged as os-vif plugs a Neutron port: ``external_ids:iface-id`` is the bare
    port UUID (the lab's own endpoints carry ``TENANT/NAME``). The agent asks the authority which
    tenant holds an endpoint of that name (docs/opflex.md) and declares the port there."""

    @property
    def key(self) -> str:
        return self.name


def plug(port_id: str, host: str, bare: bool = True) -> None:
    """Nova and os-vif's part: the port's namespace, plugged into ``host``'s br-int with
    ``iface-id`` the bare port UUID (``bare=False``: ``TENANT/PORT_ID``, for the benchmark's
    comparison)."""
    st = load()
    port = neutron(st, "GET", f"ports/{port_id}")["port"]
    net = neutron(st, "GET", f"networks/{port['network_id']}")["network"]
    tenant = net["project_id"]
    lab = the_lab(st)
    if host not in lab.state.hosts:
        raise SystemExit(f"stack: no lab host {host!r} (hosts: {', '.join(lab.state.hosts)})")
    index = 100 + len(lab.state.endpoints)
    kind = OsVifEndpoint if bare else LabEndpoint
    ep = kind(name=port_id, tenant=tenant, host=host, index=index)
    with Client(st["authority_url"], token=st["token"]) as client:
        deadline = time.monotonic() + 30
        while not client.list(k.ENDPOINT, tenant=tenant, name=port_id):
            if time.monotonic() > deadline:
                raise SystemExit(f"stack: port {port_id} did not reach the authority in 30 s")
            time.sleep(0.2)
        cfg = lab.plug(ep, client)
    say(f"plugged {port_id} on {host}: mac {cfg.mac}, {', '.join(cfg.configured)}, mtu {cfg.mtu}")


def unplug(port_id: str) -> None:
    st = load()
    lab = the_lab(st)
    lab.unplug(port_id)


def exec_in(port_id: str, cmd: list[str]) -> int:
    st = load()
    lab = the_lab(st)
    netns = lab.netns_of(port_id)
    if netns is None:
        raise SystemExit(f"stack: port {port_id} is not plugged")
    return subprocess.run(["ip", "netns", "exec", netns, *cmd]).returncode


def tempest(regex: str, concurrency: int) -> int:
    """tempest's network API tests against the stack (a workspace under the stack's directory)."""
    st = load()
    ws = DIR / "tempest"
    tempest_bin = str(TEMPEST_VENV / "bin" / "tempest")
    if not (ws / ".stestr.conf").exists():
        shutil.rmtree(ws, ignore_errors=True)
        st["tempest_workspace"] = f"pf-neutron-{os.getpid()}"
        save(st)
        done = subprocess.run(
            [tempest_bin, "init", "--name", st["tempest_workspace"], str(ws)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"stack: tempest init failed:\n{done.stderr[-2000:]}")
    aliases = sorted(e["alias"] for e in neutron(st, "GET", "extensions")["extensions"])
    (ws / "etc" / "tempest.conf").write_text(
        f"""[DEFAULT]
log_file = {ws / "tempest.log"}
[auth]
use_dynamic_credentials = true
admin_username = admin
admin_password = {ADMIN_PASSWORD}
admin_project_name = admin
admin_domain_name = Default
[identity]
uri_v3 = http://127.0.0.1:{st["keystone_port"]}/v3
auth_version = v3
region = RegionOne
[identity-feature-enabled]
api_v2 = false
[service_available]
neutron = true
nova = false
glance = false
cinder = false
swift = false
[network]
public_network_id = {st["public_network_id"]}
floating_network_name = public
project_network_cidr = 10.100.0.0/16
project_network_mask_bits = 28
project_networks_reachable = false
[network-feature-enabled]
api_extensions = {",".join(aliases)}
ipv6 = true
ipv6_subnet_attributes = true
[enforce_scope]
neutron = true
"""
    )
    return subprocess.run(
        [tempest_bin, "run", "--regex", regex, "--concurrency", str(concurrency)], cwd=ws
    ).returncode


def authority(action: str) -> None:
    """Stop the authority (Neutron keeps taking writes; the journal waits), or start it again on
    the same database and ports."""
    st = load()
    if action == "stop":
        processes.stop(st["pids"]["authority"], timeout=10)
        say("authority stopped")
        return
    pid = start(st["authority_cmd"], DIR / "authority" / "authority.log")
    st["pids"]["authority"] = pid
    save(st)
    deadline = time.monotonic() + 30
    while True:
        try:
            r = httpx.get(
                f"{st['authority_url']}/v1/revision",
                headers={"Authorization": f"Bearer {st['token']}"},
                timeout=2,
            )
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not processes.alive(pid):
            raise SystemExit("stack: the authority did not start again")
        time.sleep(0.2)
    say(f"authority started again (pid {pid})")


def down() -> None:
    if not (DIR / "stack.json").exists():
        say(f"nothing under {DIR}")
        return
    st = load()
    for role in ("neutron-workers", "neutron-api"):
        pid = st["pids"].get(role)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            processes.stop(pid)
    if st.get("lab") and (Path(st["lab"]) / "state.json").exists():
        os.environ["POLICYFABRIC_TOKEN"] = st["token"]
        problems = Lab(LabState.load(Path(st["lab"]))).down()
        for p in problems:
            say(f"lab: {p}")
    for role in ("authority", "keystone", "mariadb"):
        pid = st["pids"].get(role)
        if pid:
            processes.stop(pid, timeout=10)
    if st.get("tempest_workspace"):  # tempest's registry of workspaces (~/.tempest) forgets it
        subprocess.run(
            [str(TEMPEST_VENV / "bin" / "tempest"), "workspace", "remove", "--name", st["tempest_workspace"]],
            capture_output=True,
        )
    shutil.rmtree(DIR, ignore_errors=True)
    say("down")


def main() -> None:
    ap = argparse.ArgumentParser(prog="stack.sh")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up")
    sub.add_parser("down")
    sub.add_parser("env")
    p = sub.add_parser("plug")
    p.add_argument("port")
    p.add_argument("host")
    p = sub.add_parser("unplug")
    p.add_argument("port")
    p = sub.add_parser("authority")
    p.add_argument("action", choices=["stop", "start"])
    p = sub.add_parser("tempest")
    p.add_argument("--regex", default="^tempest.api.network")
    p.add_argument("--concurrency", type=int, default=2)
    p = sub.add_parser("exec")
    p.add_argument("port")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.cmd == "up":
        try:
            up()
        except BaseException:
            say("up failed; logs are under " + str(DIR) + " (stack.sh down removes everything)")
            raise
    elif a.cmd == "down":
        down()
    elif a.cmd == "env":
        env()
    elif a.cmd == "plug":
        plug(a.port, a.host)
    elif a.cmd == "unplug":
        unplug(a.port)
    elif a.cmd == "authority":
        authority(a.action)
    elif a.cmd == "tempest":
        raise SystemExit(tempest(a.regex, a.concurrency))
    elif a.cmd == "exec":
        raise SystemExit(exec_in(a.port, a.command))


if __name__ == "__main__":
    main()
