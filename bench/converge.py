#!/usr/bin/env python3
"""Agent convergence on one Open vSwitch host: intent → flows on the bridge.

Workload (the OVN comparison's, see ../shared/ANCHORS.md): N endpoints on one
host, 4 bridge domains on one l3_context, EPGs `web` and `app` (alternating),
`app` consumes tcp/80 provided by `web`. Every endpoint is a real OVS port
with an OpenFlow port number and `iface-id` TENANT/NAME, plugged before the
intent is applied (as a compute service would): type internal by default, or
with `--ports patch` a patch port to nowhere. Why both: on the userspace
(netdev) bridge the tests use, ovs-vswitchd's main thread polls every tap
device (internal ports) once per loop iteration and takes at most 50 OpenFlow
messages per iteration, so installing F flows costs ~F/50 x ports: measured
here, 45,000 flows in 0.27 s on an empty bridge, 0.26 s with 2,000 patch
ports, 2.75 s with 2,000 internal ports. That is the datapath's cost, not the
agent's (a kernel datapath, or DPDK's PMD threads, do not poll taps in the
main loop); patch ports measure the control plane without it. Both floors
(below) are measured on the benchmarked bridge, so the ratios stay fair.

Figures per N:
- apply_s: the REST writes of the intent (N endpoint creates, 4 clients; with
  --batch, the whole intent in one POST /v1/batch, one transaction);
- converge_s: from the first REST write until the last flow change on the
  bridge with every endpoint ACTIVE; render_s: from the last REST write;
- member_change_s: one endpoint moves from `app` to `web` (REST PUT) until its
  classification flow on the bridge carries the new group (OpenFlow monitor);
- rule_add_s: a tcp/8080 rule added to the contract until its flow is on the
  bridge;
- change_from_ack_s (p50, p99): both kinds of change timed from the REST
  acknowledgement instead, and rest_ack_s, the write's own latency;
- flows, agent RSS.
Baselines in the same run: the floor for installing the same flows
(`ovs-ofctl --bundle replace-flows` of the final table into an empty
bridge; render_vs_floor = render_s / that), and a bare two-flow bundle
through ovs-ofctl, on an empty bridge and on the benchmarked one (the floor
of any change made through ovs-ofctl). The last line is one JSON object.

    .venv/bin/python bench/converge.py [--n 50,500,1000,2000,5000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from common import flow_count, private_ovs, report
from policyfabric.lab.authority import authority_in
from policyfabric.lab.ovs import OvsInstance
from profiling.frametrace import FrameTrace

console = Console(stderr=True)
TENANT = "bench"
BDS = 4


class FlowMonitor:
    """``ovs-ofctl monitor``: every flow added, modified or deleted, with the time it was seen."""

    def __init__(self, ovs: OvsInstance, bridge: str = "br-int") -> None:
        # the initial reply goes to stdout, later events to stderr (unbuffered): read both
        self.proc = subprocess.Popen(
            ["ovs-ofctl", "monitor", ovs.mgmt(bridge), "watch:!initial"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ovs.env,
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.3)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line))

    def wait_for(self, pattern: str, timeout: float = 60.0) -> float:
        """The monotonic time of the first event line matching ``pattern``."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            try:
                when, line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if rx.search(line):
                return when
        raise TimeoutError(f"no flow event matching {pattern!r} in {timeout} s")

    def drain(self) -> None:
        """Forget the events seen so far."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.lines.get_nowait()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) the process has used so far: on a machine shared
    with other work, what it cost is steadier than how long it took."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def iface_id(i: int) -> str:
    return f"{TENANT}/ep{i}"


PORT_TYPES = {  # --ports: what an endpoint's port is on the userspace bridge
    "internal": (("type", "internal"),),
    "patch": (("type", "patch"),),  # + options:peer, a port that does not exist: never up
}


def port_columns(kind: str, i: int) -> tuple[tuple[str, object], ...]:
    """The Interface columns of endpoint port ``i`` of ``kind`` (see ``PORT_TYPES``)."""
    if kind == "patch":
        return (*PORT_TYPES[kind], ("options", {"peer": f"absent{i}"}))
    return PORT_TYPES[kind]


def _plug_idl(ovsdb: str, n: int, batch: int, ids: list[str], kind: str = "internal") -> None:
    from ovsdbapp.backend.ovs_idl import connection
    from ovsdbapp.schema.open_vswitch import impl_idl

    conn = connection.Connection(idl=connection.OvsdbIdl.from_server(ovsdb, "Open_vSwitch"), timeout=900)
    api = impl_idl.OvsdbIdl(conn, start=True)
    try:
        for first in range(0, n, batch):
            with api.transaction(check_error=True) as txn:
                for i in range(first, min(n, first + batch)):
                    txn.add(api.add_port("br-int", f"p{i}"))
                    txn.add(
                        api.db_set(
                            "Interface",
                            f"p{i}",
                            *port_columns(kind, i),
                            ("external_ids", {"iface-id": ids[i]}),
                        )
                    )
    finally:
        conn.stop()


def plug_ports(
    ovs: OvsInstance,
    n: int,
    how: str = "idl",
    batch: int = 10_000,
    iface: Callable[[int], str] = iface_id,
    kind: str = "internal",
) -> float:
    """Plug N ports of ``kind`` (``PORT_TYPES``) with their ``iface-id`` and wait until every one
    has an OpenFlow port number; returns the seconds it took. ``how``: ``idl``, one OVSDB
    transaction of ``batch`` ports at a time on one ovsdbapp connection (the default); ``vsctl``, one
    ``ovs-vsctl --no-wait`` per ``batch`` ports. Most of the time is ovs-vswitchd's, and it is O(N) per
    transaction (it reconfigures every port each time, and creates a tap device per new port in
    the userspace datapath), so few large transactions win. Measured here (2 cores, busy), until
    every port has its OpenFlow number: N=5,000: ovs-vsctl 500 a call 34.7 s, 1,000 a call 35.0 s,
    all in one call 32.8 s (18.4 s of it in ovs-vsctl: its name lookups are linear, O(N²) in one
    call); ovsdbapp 500 a transaction 20.6 s. N=10,000 through ovsdbapp: 500 a transaction 246 s,
    2,000 164 s, all in one 111 s (ovs-vswitchd 86 s of CPU)."""
    start = time.monotonic()
    if how == "vsctl":
        for first in range(0, n, batch):
            args: list[str] = []
            for i in range(first, min(n, first + batch)):
                args += ["--", "add-port", "br-int", f"p{i}", "--", "set", "Interface", f"p{i}"]
                args += [f"{k}={v}" for k, v in port_columns(kind, i) if isinstance(v, str)]
                args += [f"options:peer=absent{i}"] if kind == "patch" else []
                args += [f"external_ids:iface-id={iface(i)}"]
            ovs.vsctl("--no-wait", *args, timeout=900)
    else:  # in a child process: a second ovsdbapp connection in one process never connects
        # (python-ovs keeps state across connections), and a bench plugs once per run
        child = multiprocessing.get_context("spawn").Process(
            target=_plug_idl, args=(ovs.ovsdb, n, batch, [iface(i) for i in range(n)], kind)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"plugging {n} ports through ovsdbapp failed (exit code {child.exitcode})")
    deadline = time.monotonic() + 600 + n * 0.1
    while time.monotonic() < deadline:  # one bulk read a poll
        out = ovs.vsctl("--bare", "--columns=ofport", "list", "Interface", timeout=120).split()
        if sum(1 for v in out if v.isdigit() and int(v) > 0) >= n:
            return time.monotonic() - start
        time.sleep(0.5)
    raise TimeoutError(f"ovs-vswitchd did not number {n} ports in time")


def intent_objects(
    n: int, log: bool = False
) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """(the shared objects, the N endpoints) as (collection, body) and endpoint bodies; with ``log``
    the contract's rule logs what it allows (``action: log``: rule logging's cost)."""
    shared: list[tuple[str, dict[str, Any]]] = [
        ("tenants", {"name": TENANT}),
        ("l3-contexts", {"name": "vrf", "tenant": TENANT}),
    ]
    for b in range(BDS):
        shared.append(("bridge-domains", {"name": f"bd{b}", "tenant": TENANT, "l3_context": "vrf"}))
        subnet = {"name": f"s{b}", "tenant": TENANT, "bridge_domain": f"bd{b}", "cidr": f"10.{b}.0.0/16"}
        shared.append(("subnets", subnet))
    rule = {
        "name": "web-in",
        "classifier": {"protocol": "tcp", "port": 80},
        "action": "log" if log else "allow",
    }
    shared.append(("contracts", {"name": "http", "tenant": TENANT, "rules": [rule]}))
    for b in range(BDS):
        for role, key in (("web", "provides"), ("app", "consumes")):
            shared.append(
                (
                    "endpoint-groups",
                    {"name": f"{role}{b}", "tenant": TENANT, "bridge_domain": f"bd{b}", key: ["http"]},
                )
            )
    endpoints = []
    for i in range(n):
        b = i % BDS
        epg = f"{'app' if (i // BDS) % 2 else 'web'}{b}"
        endpoints.append(
            {"name": f"ep{i}", "tenant": TENANT, "epg": epg, "ip": f"10.{b}.{(i // 250) % 256}.{i % 250 + 2}"}
        )
    return shared, endpoints


def apply_intent(
    url: str, n: int, batch: bool = False, log: bool = False
) -> tuple[float, float, dict[str, str]]:
    """The intent over REST: one request per object (4 clients for the endpoints), or with
    ``batch`` all of it in one POST /v1/batch (one transaction, as ovn-nbctl does). Returns
    (start, end, ids of what later steps change); ep4, an app endpoint on bd0, moves to web0 later."""
    shared, endpoints = intent_objects(n, log)
    ids: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=600) as http:
        start = time.monotonic()
        if batch:
            items = [{"kind": c, "object": body} for c, body in shared]
            items += [{"kind": "endpoints", "object": body} for body in endpoints]
            r = http.post("/v1/batch", json={"create": items})
            r.raise_for_status()
            created = r.json()["created"]
            ids["contract"] = created[[c for c, _ in shared].index("contracts")]["id"]
            ids["mover"] = created[len(shared) + BDS]["id"]
            return start, time.monotonic(), ids
        for collection, body in shared:
            r = http.post(f"/v1/{collection}", json=body)
            r.raise_for_status()
            if collection == "contracts":
                ids["contract"] = r.json()["id"]

    def create(i: int) -> tuple[int, str]:
        r = clients[threading.get_ident() % len(clients)].post("/v1/endpoints", json=endpoints[i])
        r.raise_for_status()
        return i, r.json()["id"]

    clients = [httpx.Client(base_url=url, timeout=120) for _ in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            for i, eid in pool.map(create, range(n)):
                if i == BDS:
                    ids["mover"] = eid
    finally:
        for c in clients:
            c.close()
    return start, time.monotonic(), ids


def wait_connected(agent_log: Path, since: float, timeout: float = 120.0) -> float:
    """Seconds from ``since`` until the agent's log says its OpFlex client connected. The intent is
    written only then, as on a host whose agent runs before its endpoints' intent arrives: at
    10,000 plugged ports the agent takes seconds to start (imports, its first OVSDB read), which
    a fixed pause of 1 s counted as convergence."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        text = agent_log.read_text(errors="replace") if agent_log.exists() else ""
        if "opflex client bench-host: connected to" in text:
            return time.monotonic() - since
        time.sleep(0.05)
    raise TimeoutError(f"the agent did not connect in {timeout} s")


def busy_threads(pid: int) -> int:
    """How many of ``pid``'s threads are running or runnable now (state R in /proc)."""
    busy = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            busy += stat[stat.rindex(")") + 2] == "R"
    return busy


def wait_converged(
    ovs: OvsInstance,
    url: str,
    n: int,
    timeout: float,
    agent_log: Path | None = None,
    agent_pid: int | None = None,
) -> float:
    """Until every endpoint is ACTIVE, the flow count has not moved for 1 s and (given its pid) the
    agent has been idle for 1 s; returns when the flows last moved. Raises ReconnectLoop early
    when the agent's log shows it cannot converge.

    Why the agent's idleness: every endpoint ACTIVE and the flows still for 1 s is not the end on
    a loaded machine. The registry echoes the host's own declarations back (its bridge domains'
    members) and the agent compiles that second wave for seconds, during which the flow count
    stands still: the first change timed then waited for the rest of the convergence (a
    "cold first change" of 0.3-0.5 s, and a converge time that was too short)."""
    deadline = time.monotonic() + timeout
    last_count, last_change = -1, time.monotonic()
    last_busy = time.monotonic()
    active = 0
    next_rest = 0.0
    with httpx.Client(base_url=url, timeout=60) as http:
        while time.monotonic() < deadline:
            polled = time.monotonic()
            count = flow_count(ovs)
            now = time.monotonic()
            # an ovs-ofctl process and a walk of every flow in ovs-vswitchd: at 120,000 flows, every
            # 20 ms took a good part of one of the two cores from what is measured; at most a
            # fifth of the time goes to this poll (the flows' last change is then known to ~0.1 s)
            pause = max(0.02, 4 * (now - polled))
            if agent_pid is not None and busy_threads(agent_pid):
                last_busy = now
            if count != last_count:
                last_count, last_change = count, now
            if now >= next_rest and active < n:
                eps = http.get("/v1/endpoints", params={"tenant": TENANT}).json()["items"]
                active = sum(1 for e in eps if e.get("status") == "ACTIVE")
                # a list of N endpoints costs the authority O(N) (0.36 s at N=5,000, profiled): at
                # most a fifth of its time goes to this poll, the rest to what is measured
                next_rest = time.monotonic() + max(0.5, 4 * (time.monotonic() - now))
                trouble = agent_trouble(agent_log) if agent_log is not None else None
                if trouble and active < n:
                    raise ReconnectLoop(f"{trouble} ({active}/{n} ACTIVE, {last_count} flows)")
            if active >= n and now - last_change >= 1.0 and now - last_busy >= 1.0:
                return last_change
            time.sleep(pause)
    raise TimeoutError(f"not converged after {timeout} s: {active}/{n} ACTIVE, {last_count} flows")


def floor_install(ovs: OvsInstance, workdir: Path) -> tuple[float, float]:
    """Seconds for ovs-ofctl to install the agent's final flow table into an empty bridge (bundle),
    and for a bare two-flow bundle."""
    flows = ovs.ofctl("--no-names", "dump-flows", ovs.mgmt("br-int"), "--no-stats")
    lines = [ln.strip() for ln in flows.splitlines() if ln.strip().startswith("cookie=")]
    path = workdir / "floor.flows"
    path.write_text("\n".join(lines) + "\n")
    with private_ovs(workdir / "spare-ovs", f"{ovs.netns}-floor") as spare:
        spare.ofctl("add-tlv-map", spare.mgmt("br-int"), "{class=0x5046,type=0x01,len=4}->tun_metadata0")
        start = time.monotonic()
        spare.ofctl("--no-names", "--bundle", "replace-flows", spare.mgmt("br-int"), str(path))
        took = time.monotonic() - start
        two = workdir / "two.flows"
        two.write_text("".join(f"flow add table=99,priority=1,reg0={i} actions=drop\n" for i in (1, 2)))
        start = time.monotonic()
        spare.ofctl("--no-names", "bundle", spare.mgmt("br-int"), str(two))
        return took, time.monotonic() - start


def floor_install_ported(ovs: OvsInstance, workdir: Path) -> float:
    """Seconds to install the same table (floor.flows) into the benchmarked bridge itself, emptied
    first: with its N ports. ovs-vswitchd's cost per flow grows with the ports of a userspace
    bridge (45,000 flows: 0.3 s with no port, 1.5 s with 1,000, 15 s with 5,000), so this, not the
    empty bridge, is what the agent's first install competes with. Run after the agent stopped."""
    ovs.ofctl("--no-names", "del-flows", ovs.mgmt("br-int"))
    start = time.monotonic()
    table = str(workdir / "floor.flows")
    ovs.ofctl("--no-names", "--bundle", "replace-flows", ovs.mgmt("br-int"), table, timeout=900)
    return time.monotonic() - start


def two_flow_bundle(ovs: OvsInstance, workdir: Path) -> float:
    """Median seconds of a two-flow ``ovs-ofctl bundle`` (add, then delete) on the benchmarked bridge
    itself: the floor of any change the agent makes through ovs-ofctl at this size (with
    ``--no-names``, as the agent calls it)."""
    add, delete = workdir / "add.flows", workdir / "del.flows"
    add.write_text("".join(f"flow add table=99,priority=1,reg0={i} actions=drop\n" for i in (1, 2)))
    delete.write_text("".join(f"flow delete_strict table=99,priority=1,reg0={i}\n" for i in (1, 2)))
    times = []
    for _ in range(5):
        for path in (add, delete):
            start = time.monotonic()
            ovs.ofctl("--no-names", "bundle", ovs.mgmt("br-int"), str(path))
            times.append(time.monotonic() - start)
    return statistics.median(times)


def quantiles(samples: list[float]) -> tuple[float, float]:
    """(median, p99) of ``samples`` (p99 by linear interpolation: about the largest of 20)."""
    if len(samples) < 2:
        return samples[0], samples[0]
    return statistics.median(samples), statistics.quantiles(samples, n=100, method="inclusive")[98]


class ReconnectLoop(RuntimeError):
    """The agent's OpFlex session keeps closing (it cannot converge)."""


def agent_trouble(log_path: Path, closes: int = 3) -> str | None:
    """Why the agent cannot converge, when its log shows its OpFlex session closed ``closes``
    times (a reconnect loop): the last reason, e.g. a frame over the 4 MiB limit."""
    if not log_path.exists():
        return None
    reasons = [ln.split("session closed: ", 1)[1] for ln in log_path.read_text(errors="replace").splitlines()
               if "session closed: " in ln]  # fmt: skip
    if len(reasons) >= closes:
        return f"the agent's OpFlex session closed {len(reasons)} times; last: {reasons[-1]}"
    return None


def reconcile_phases(log_path: Path) -> dict[str, Any]:
    """The agent's own breakdown of its slow reconciles (over 100 ms): count and summed ms per phase."""
    rx = re.compile(
        r"slow reconcile (\d+) ms \(ovsdb (\d+), declare (\d+), view (\d+), compile (\d+), apply (\d+)\)"
    )
    names = ("total", "ovsdb", "declare", "view", "compile", "apply")
    sums = dict.fromkeys(names, 0)
    count = 0
    for line in log_path.read_text(errors="replace").splitlines():
        m = rx.search(line)
        if m:
            count += 1
            for name, value in zip(names, m.groups(), strict=True):
                sums[name] += int(value)
    return {"slow_reconciles": count, **{f"{k}_ms": v for k, v in sums.items()}}


def measure_changes(
    ovs: OvsInstance, url: str, ids: dict[str, str], samples: int, acked: list[float] | None = None
) -> tuple[list[float], list[float]]:
    """``samples`` membership changes (``ep4`` moves between ``app0`` and ``web0``, back and forth)
    and ``samples`` rule adds (tcp/8080, 8081, ... added to the contract one by one), each timed
    from the REST write until its flow event is seen on the bridge. The changes are sequential,
    with a pause between them so that each is a lone change. ``acked`` (if given) gets, per
    change, the seconds the REST write took to be acknowledged (members first, then rules): the
    change's time from its acknowledgement is its time less that."""
    members: list[float] = []
    rules: list[float] = []
    acks = acked if acked is not None else []
    monitor = FlowMonitor(ovs)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            mover = http.get(f"/v1/endpoints/{ids['mover']}").json()
            classid = {}
            for name in ("web0", "app0"):
                found = http.get("/v1/endpoint-groups", params={"tenant": TENANT, "name": name}).json()
                classid[name] = found["items"][0]["classid"]
            port = ovs.vsctl("get", "Interface", f"p{BDS}", "ofport").strip()
            for k in range(samples):
                epg = ("web0", "app0")[k % 2]
                body = {key: mover[key] for key in ("name", "tenant", "ip", "mac")} | {"epg": epg}
                group = rf"(load:{classid[epg]:#x}->NXM_NX_REG0\[\]|set_field:{classid[epg]:#x}->reg0)"
                monitor.drain()
                t0 = time.monotonic()
                http.put(f"/v1/endpoints/{ids['mover']}", json=body).raise_for_status()
                acks.append(time.monotonic() - t0)
                members.append(monitor.wait_for(rf"table=0 .*in_port={port} .*{group}") - t0)
                time.sleep(0.2)
            rule_list = [{"name": "web-in", "classifier": {"protocol": "tcp", "port": 80}, "action": "allow"}]
            for k in range(samples):
                tcp = {"protocol": "tcp", "port": 8080 + k}
                rule_list.append({"name": f"alt{k}", "classifier": tcp, "action": "allow"})
                monitor.drain()
                t0 = time.monotonic()
                contract = {"name": "http", "tenant": TENANT, "rules": rule_list}
                http.put(f"/v1/contracts/{ids['contract']}", json=contract).raise_for_status()
                acks.append(time.monotonic() - t0)
                rules.append(monitor.wait_for(rf"event=ADDED.*tp_dst={8080 + k}\b") - t0)
                time.sleep(0.2)
    finally:
        monitor.stop()
    return members, rules


@contextlib.contextmanager
def profiled(directory: Path | None) -> Iterator[dict[str, str]]:
    """The environment for a daemon started under cProfile (bench/profiling/sitecustomize.py),
    also set in this process's own for the duration (the authority's launcher inherits it)."""
    if directory is None:
        yield dict(os.environ)
        return
    hook = str(Path(__file__).resolve().parent / "profiling")
    extra = {"PF_BENCH_PROFILE": str(directory), "PYTHONPATH": os.pathsep.join(
        p for p in (hook, os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield dict(os.environ)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def one_run(
    n: int,
    workdir: Path,
    batch: bool = False,
    samples: int = 20,
    plug: str = "idl",
    profile: Path | None = None,
    trace_frames: bool = False,
    ports: str = "internal",
    log: bool = False,
) -> dict[str, Any]:
    with private_ovs(workdir / "ovs", f"pfbench-{os.getpid()}-{n}") as ovs:
        # a batch of 10,000 endpoints is about 1 MiB of JSON, the default --max-body
        server = authority_in(workdir / "authority", extra=["--max-body", str(64 << 20)])
        agent = None
        relay: FrameTrace | None = None
        try:
            console.print(f"N={n}: plugging {n} {ports} ports ({plug})")
            plug_s = plug_ports(ovs, n, plug, kind=ports)
            console.print(f"N={n}: plugged in {plug_s:.1f} s")
            agent_log = workdir / "agent.log"
            with profiled(profile) as env:
                server.start()
                opflex = server.opflex
                if trace_frames:
                    relay = FrameTrace(server.opflex, workdir / "frames.log")
                    opflex = ("127.0.0.1", relay.port)
                log = agent_log.open("wb")
                agent = subprocess.Popen(
                    [sys.executable, "-m", "policyfabric", "agent", "--host", "bench-host",
                     "--opflex", "{}:{}".format(*opflex), "--ovsdb", ovs.ovsdb,
                     "--state-dir", str(workdir / "agent"), "--log-level", "info"],
                    stdout=log, stderr=subprocess.STDOUT, env=env,
                )  # fmt: skip
            agent_start = wait_connected(agent_log, time.monotonic())
            time.sleep(0.5)  # its first reconcile (the plugged ports, nothing resolved yet) is through
            agent_cpu0 = cpu_s(agent.pid)
            assert server.proc is not None
            authority_cpu0 = cpu_s(server.proc.pid)
            console.print(f"N={n}: applying the intent")
            start, applied, ids = apply_intent(server.url, n, batch, log)
            console.print(f"N={n}: applied in {applied - start:.1f} s; waiting for the flows")
            done = wait_converged(
                ovs, server.url, n, timeout=120 + n * 0.2, agent_log=agent_log, agent_pid=agent.pid
            )
            flows = flow_count(ovs)
            rss = rss_kb(agent.pid)
            agent_cpu = cpu_s(agent.pid) - agent_cpu0
            authority_cpu = cpu_s(server.proc.pid) - authority_cpu0
            phases = reconcile_phases(agent_log)
            time.sleep(1.0)  # changes are timed on a settled host: the last status reports are through
            acks: list[float] = []
            members, rules = measure_changes(ovs, server.url, ids, samples, acks)
            after_ack = [t - a for t, a in zip([*members, *rules], acks, strict=True)]
            console.print(f"N={n}: changes from the acknowledgement, ms, in order: "
                          + " ".join(f"{t * 1000:.0f}" for t in after_ack))  # fmt: skip
            floor, tiny = floor_install(ovs, workdir)
            agent.terminate()  # (the bridge is changed next: the agent must not see it, or it repairs)
            agent.wait(60 if profile else 10)
            busy = two_flow_bundle(ovs, workdir)
            floor_ported = floor_install_ported(ovs, workdir)
            slow = [ln for ln in agent_log.read_text().splitlines() if "slow reconcile" in ln]
            for line in slow[-4:]:
                console.print(f"N={n} agent: {line.split(': ', 2)[-1]}")
            member_p50, member_p99 = quantiles(members)
            rule_p50, rule_p99 = quantiles(rules)
            return {
                "plug_s": round(plug_s, 2),
                "agent_start_s": round(agent_start, 2),
                "apply_s": round(applied - start, 3),
                "converge_s": round(done - start, 3),
                "render_s": round(max(done - applied, 0.0), 3),
                "member_change_s": round(member_p50, 4),
                "member_change_p99_s": round(member_p99, 4),
                "rule_add_s": round(rule_p50, 4),
                "rule_add_p99_s": round(rule_p99, 4),
                # the same changes from the REST acknowledgement (the write's own latency left out)
                "change_from_ack_s": round(quantiles(after_ack)[0], 4),
                "change_from_ack_p99_s": round(quantiles(after_ack)[1], 4),
                "rest_ack_s": round(quantiles(acks)[0], 4),
                "samples": len(members),
                "flows": flows,
                "rss_kb": rss,
                # CPU seconds from the write until convergence was seen (the 1 s of quiet included)
                "agent_cpu_s": round(agent_cpu, 2),
                "authority_cpu_s": round(authority_cpu, 2),
                "floor_install_s": round(floor, 3),
                "floor_install_ported_s": round(floor_ported, 3),
                "ofctl_two_flow_bundle_s": round(tiny, 4),
                "ofctl_two_flow_bundle_busy_s": round(busy, 4),
                "agent_phases_ms": phases,
            }
        finally:
            if agent is not None:
                agent.terminate()
                try:
                    agent.wait(60 if profile else 10)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
            server.stop(60 if profile else 10)
            if relay is not None:
                relay.close()
                console.print(f"N={n}: largest OpFlex frame: {relay.largest[1]}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="50,500,1000,2000,5000", help="endpoint counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="runs per N (medians are reported)")
    parser.add_argument(
        "--batch", action="store_true", help="the intent in one POST /v1/batch (one transaction)"
    )
    parser.add_argument("--keep", type=Path, help="copy the agent's and authority's logs here after each run")
    parser.add_argument(
        "--samples", type=int, default=20, help="membership changes and rule adds timed per run (p50, p99)"
    )
    parser.add_argument(
        "--plug", choices=("idl", "vsctl"), default="idl",
        help="plug the ports through one ovsdbapp connection or ovs-vsctl (10,000 ports a transaction)",
    )  # fmt: skip
    parser.add_argument(
        "--ports", choices=tuple(PORT_TYPES), default="internal",
        help="endpoint ports: internal (a tap device each, polled by ovs-vswitchd's main thread on a "
        "userspace bridge, which makes every flow install O(ports)) or patch (an OpenFlow port, no device)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="run the authority and the agent under cProfile (every thread); DIR/<N>-<run>/*.prof",
    )  # fmt: skip
    parser.add_argument(
        "--trace-frames", action="store_true",
        help="relay the agent's OpFlex session and log every frame's size (frames.log, with --keep)",
    )  # fmt: skip
    parser.add_argument(
        "--log-rules", choices=("off", "on", "both"), default="off",
        help="the contract's rule logs (action: log); both: each N without, then with, in the same run",
    )  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        console.print("bench/converge.py needs root (a network namespace and Open vSwitch)")
        return 2

    def terminate(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second TERM must not interrupt the cleanup
        sys.exit(143)

    signal.signal(signal.SIGTERM, terminate)  # clean up (finally blocks) when killed
    sizes = [int(x) for x in args.n.split(",")]
    variants = {"off": (False,), "on": (True,), "both": (False, True)}[args.log_rules]
    results: dict[str, dict[str, Any]] = {}
    for n, log_rules in ((n, v) for n in sizes for v in variants):
        label = f"{n}+log" if log_rules and args.log_rules == "both" else str(n)
        runs: list[dict[str, Any]] = []
        errors: list[str] = []
        for r in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix=f"pf-converge-{n}-") as tmp:
                profile = args.profile / f"{n}-{r}" if args.profile else None
                try:
                    runs.append(
                        one_run(
                            n,
                            Path(tmp),
                            args.batch,
                            args.samples,
                            args.plug,
                            profile,
                            args.trace_frames,
                            args.ports,
                            log_rules,
                        )
                    )
                    console.print(f"N={n} run {r + 1}: {runs[-1]}")
                except (ReconnectLoop, TimeoutError) as exc:  # reported, and the next N still runs
                    errors.append(str(exc))
                    console.print(f"[red]N={n} run {r + 1} did not converge: {exc}[/]")
                finally:
                    if args.keep:
                        args.keep.mkdir(parents=True, exist_ok=True)
                        for name in ("agent.log", "authority/authority.log", "frames.log", "floor.flows"):
                            if (Path(tmp) / name).exists():
                                shutil.copy(Path(tmp) / name, args.keep / f"{n}-{r}-{Path(name).name}")
        if not runs:
            results[label] = {"error": errors[-1]}
            continue
        fig = {k: statistics.median(run[k] for run in runs) for k in runs[0] if k != "agent_phases_ms"}
        fig["agent_phases_ms"] = runs[len(runs) // 2]["agent_phases_ms"]
        fig["render_vs_floor"] = round(fig["render_s"] / max(fig["floor_install_s"], 1e-3), 2)
        fig["render_vs_ported_floor"] = round(fig["render_s"] / max(fig["floor_install_ported_s"], 1e-3), 2)
        if errors:
            fig["errors"] = errors
        results[label] = fig
    cols = [
        *(
            "apply_s",
            "converge_s",
            "render_s",
            "floor_install_s",
            "render_vs_floor",
            "floor_install_ported_s",
        ),
        *("render_vs_ported_floor", "member_change_s"),
        *("member_change_p99_s", "rule_add_s", "rule_add_p99_s", "change_from_ack_s"),
        *("change_from_ack_p99_s", "rest_ack_s", "ofctl_two_flow_bundle_s"),
        *("ofctl_two_flow_bundle_busy_s", "flows", "rss_kb", "agent_cpu_s", "authority_cpu_s", "plug_s"),
    ]
    rows = [[n, *(fig.get(c, "-") for c in cols)] for n, fig in results.items()]
    report(
        "agent convergence on one OVS host (median of runs; changes: p50 and p99 of --samples)",
        ["N", *cols],
        rows,
        {"bench": "converge", "results": results},
    )
    return 0 if all("error" not in fig for fig in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
