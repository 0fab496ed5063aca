"""Figures for the Neutron integration, against a stack that is up (stack.sh up).

``latency``: the driver's added latency per API call. A second Neutron API process is started on
the same database with ML2's ``logger`` mechanism driver (it does nothing but log) instead of
``policyfabric``; network create, port create and port delete are timed against both, alternating
call by call in one run, so the machine's load falls on both alike. Medians and p90s per call.

``sync``: a full sync of N ports. N ports are created in one bulk request (their journal rows go
out meanwhile); then the authority's endpoints are deleted and ``policyfabric-neutron-sync``
restores them (creates), and is run again with nothing to change (updates that write nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack

from policyfabric.lab import processes
from policyfabric.lab.authority import free_port


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def latency(n: int) -> None:
    st = stack.load()
    d = stack.DIR / "neutron"
    noop = d / "noop"
    noop.mkdir(exist_ok=True)
    port = free_port()
    (noop / "neutron.conf").write_text((d / "neutron.conf").read_text().replace("log_file =", "# log_file ="))
    (noop / "ml2_conf.ini").write_text(
        (d / "ml2_conf.ini")
        .read_text()
        .replace("mechanism_drivers = policyfabric", "mechanism_drivers = logger")
    )
    (noop / "gunicorn.conf.py").write_text(
        (d / "gunicorn.conf.py").read_text().replace(str(st["neutron_port"]), str(port))
    )
    env = {
        **os.environ,
        "OS_NEUTRON_CONFIG_DIR": str(noop),
        "OS_NEUTRON_CONFIG_FILES": "neutron.conf;ml2_conf.ini",
        "PYTHONWARNINGS": "ignore",
    }
    pid = stack.start(
        [str(stack.NEUTRON_VENV / "bin" / "gunicorn")], noop / "gunicorn.log", cwd=noop, env=env
    )
    try:
        url = f"http://127.0.0.1:{port}"
        stack.wait_http(url + "/", pid, noop / "gunicorn.log")
        token = stack.keystone_token(st)
        h = {"X-Auth-Token": token}
        apis = {"policyfabric": st["neutron_url"], "noop": url}
        times: dict[str, dict[str, list[float]]] = {a: {} for a in apis}
        with httpx.Client(timeout=60, headers=h) as c:
            nets = {}
            for a, base in apis.items():  # one network each, with a subnet, for the ports
                r = c.post(f"{base}/v2.0/networks", json={"network": {"name": f"bench-{a}"}})
                r.raise_for_status()
                nets[a] = r.json()["network"]["id"]
                cidr = "10.250.0.0/16" if a == "noop" else "10.251.0.0/16"
                c.post(
                    f"{base}/v2.0/subnets",
                    json={"subnet": {"network_id": nets[a], "cidr": cidr, "ip_version": 4}},
                ).raise_for_status()
            for _ in range(n):
                for a, base in apis.items():
                    t0 = time.perf_counter()
                    r = c.post(f"{base}/v2.0/networks", json={"network": {"name": "bench-x"}})
                    t1 = time.perf_counter()
                    r.raise_for_status()
                    c.delete(f"{base}/v2.0/networks/{r.json()['network']['id']}").raise_for_status()
                    t2 = time.perf_counter()
                    r = c.post(f"{base}/v2.0/ports", json={"port": {"network_id": nets[a]}})
                    t3 = time.perf_counter()
                    r.raise_for_status()
                    c.delete(f"{base}/v2.0/ports/{r.json()['port']['id']}").raise_for_status()
                    t4 = time.perf_counter()
                    for call, dt in (
                        ("network create", t1 - t0),
                        ("network delete", t2 - t1),
                        ("port create", t3 - t2),
                        ("port delete", t4 - t3),
                    ):
                        times[a].setdefault(call, []).append(dt * 1000)
        print(f"Neutron API latency, ms (n={n} each, alternating; machine shared and loaded):")
        for call in times["noop"]:
            p, q = times["policyfabric"][call], times["noop"][call]
            print(
                f"  {call:15s} policyfabric p50 {statistics.median(p):6.1f} p90 {pct(p, 0.9):6.1f} | "
                f"no-op p50 {statistics.median(q):6.1f} p90 {pct(q, 0.9):6.1f} | "
                f"added p50 {statistics.median(p) - statistics.median(q):+6.1f} "
                f"({statistics.median(p) / statistics.median(q):.2f}x)"
            )
    finally:
        os.killpg(pid, signal.SIGTERM)
        processes.stop(pid)


def sync(n: int) -> None:
    st = stack.load()
    token = stack.keystone_token(st)
    pf = {"Authorization": f"Bearer {st['token']}"}
    with httpx.Client(timeout=600, headers={"X-Auth-Token": token}) as c:
        net = c.post(f"{st['neutron_url']}/v2.0/networks", json={"network": {"name": "bench-sync"}})
        net.raise_for_status()
        nid = net.json()["network"]["id"]
        c.post(
            f"{st['neutron_url']}/v2.0/subnets",
            json={"subnet": {"network_id": nid, "cidr": "10.252.0.0/16", "ip_version": 4}},
        ).raise_for_status()
        t0 = time.perf_counter()
        for start in range(0, n, 250):
            body = {"ports": [{"network_id": nid} for _ in range(min(250, n - start))]}
            c.post(f"{st['neutron_url']}/v2.0/ports", json=body).raise_for_status()
        print(f"{n} ports created in Neutron (bulk) in {time.perf_counter() - t0:.1f} s")
    # wait for the journal to send them
    t0 = time.perf_counter()
    while True:
        items = httpx.get(f"{st['authority_url']}/v1/endpoints", headers=pf, timeout=60).json()["items"]
        if len(items) >= n or time.perf_counter() - t0 > 900:
            break
        time.sleep(2)
    print(f"journal: {len(items)} endpoints at the authority {time.perf_counter() - t0:.1f} s later")
    with httpx.Client(timeout=60, headers=pf) as a:
        for e in items:
            a.delete(f"{st['authority_url']}/v1/endpoints/{e['id']}")
    cmd = [
        str(stack.NEUTRON_VENV / "bin" / "policyfabric-neutron-sync"),
        "--config-file",
        str(stack.DIR / "neutron" / "neutron.conf"),
        "--config-file",
        str(stack.DIR / "neutron" / "ml2_conf.ini"),
    ]
    for what in ("endpoints deleted at the authority", "nothing to change"):
        t0 = time.perf_counter()
        out = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
        dt = time.perf_counter() - t0
        last = (out.stdout.strip().splitlines() or [out.stderr[-500:]])[-1]
        print(f"full sync, {what}: {dt:.1f} s wall (process start included): {last}")
    count = len(httpx.get(f"{st['authority_url']}/v1/endpoints", headers=pf, timeout=60).json()["items"])
    print(f"endpoints at the authority after the sync: {count}")


def cli_env() -> dict[str, str]:
    """The environment ``stack.sh env`` prints, for the openstack CLI."""
    out = subprocess.run(
        [str(Path(__file__).resolve().parents[1] / "stack.sh"), "env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'")
    return env


def active(n: int, cli: bool = False, compare: bool = False) -> None:
    """``port create --host h1`` to ACTIVE, n times: the create (bound at once: h1's agent is
    live), the plug (stack.sh plug: a namespace on h1's br-int, as os-vif would), and from the
    plug's end to ACTIVE (the agent renders, reports ACTIVE; the worker completes the provisioning
    block; Neutron sets ACTIVE): what Nova waits for before it boots the VM. With ``cli`` the create
    is ``openstack port create --host h1`` (a process and a Keystone login each, as the figure is
    usually quoted) instead of one request to Neutron's API. With ``compare``, 2n ports alternate
    between ``iface-id=PORT_ID`` (os-vif's; the agent asks the authority for its tenant) and
    ``iface-id=TENANT/PORT_ID`` (the lab's own form), so both are measured in one run."""
    st = stack.load()
    token = stack.keystone_token(st)
    h = {"X-Auth-Token": token}
    base = st["neutron_url"] + "/v2.0"
    env = cli_env() if cli else {}
    with httpx.Client(timeout=60, headers=h) as c:
        net = c.post(f"{base}/networks", json={"network": {"name": "bench-active"}}).json()["network"]["id"]
        c.post(
            f"{base}/subnets", json={"subnet": {"network_id": net, "cidr": "10.253.0.0/24", "ip_version": 4}}
        ).raise_for_status()
        create, plug, up, total = [], [], [], []
        up_by_form: dict[str, list[float]] = {"PORT_ID": [], "TENANT/PORT_ID": []}
        for i in range(2 * n if compare else n):
            t0 = time.perf_counter()
            if cli:
                made = subprocess.run(
                    ["openstack", "port", "create", f"bench-active-{i}", "--network", net, "--host", "h1",
                     "--device-owner", "compute:nova", "-f", "json"],
                    capture_output=True, text=True, check=True, env=env,
                )  # fmt: skip
                port = c.get(f"{base}/ports/{json.loads(made.stdout)['id']}").json()["port"]
            else:
                body = {"network_id": net, "binding:host_id": "h1", "device_owner": "compute:nova"}
                r = c.post(f"{base}/ports", json={"port": body})
                r.raise_for_status()
                port = r.json()["port"]
            assert port["binding:vif_type"] == "ovs", port["binding:vif_type"]
            t1 = time.perf_counter()
            stack.plug(port["id"], "h1", bare=not (compare and i % 2))
            t2 = time.perf_counter()
            while c.get(f"{base}/ports/{port['id']}").json()["port"]["status"] != "ACTIVE":
                assert time.perf_counter() - t2 < 60, "not ACTIVE within 60 s"
                time.sleep(0.1)
            t3 = time.perf_counter()
            create.append(t1 - t0)
            plug.append(t2 - t1)
            up.append(t3 - t2)
            up_by_form["TENANT/PORT_ID" if compare and i % 2 else "PORT_ID"].append(t3 - t2)
            total.append(t3 - t0)
    print(f"port create{' (openstack CLI)' if cli else ' (Neutron API)'} --host h1 -> ACTIVE:")
    rows = [("create (bound)", create), ("plug", plug), ("plugged -> ACTIVE", up), ("total", total)]
    if compare:
        rows += [(f"  iface-id={form}", v) for form, v in up_by_form.items()]
    for what, v in rows:
        print(
            f"  {what:26s} p50 {statistics.median(v):5.2f} s  p90 {pct(v, 0.9):5.2f} s"
            f"  p99 {pct(v, 0.99):5.2f} s  (n={len(v)}; at n<100 the p99 is the max)"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["latency", "sync", "active"])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--cli", action="store_true", help="active: create with the openstack CLI")
    ap.add_argument("--compare", action="store_true", help="active: bare and TENANT/ iface-ids alternately")
    a = ap.parse_args()
    if a.what == "active":
        active(a.n, a.cli, a.compare)
    else:
        {"latency": latency, "sync": sync}[a.what](a.n)


if __name__ == "__main__":
    main()
