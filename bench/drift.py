#!/usr/bin/env python3
"""Drift repair: what watching costs while nothing drifts, and how soon a drift is repaired.

Workload: the security-group bench's fabric (bench/secgroups.py) at N=1000 members, 50 of them
local, compiled by the agent's own compiler: its flows on a private Open vSwitch (ovsdb-server +
ovs-vswitchd, userspace datapath, own network namespace, stopped by PID), its nftables table in
that namespace, each through the agent's own applier / renderer with its watcher on
(``FlowApplier.watch``: a flow monitor; ``NftablesRenderer.watch``: ``nft monitor``).

Figures:
- idle cost, nothing drifting, over --idle seconds: CPU of this process (only the watchers'
  threads run: /proc/self/stat), of ``nft monitor`` and of ovs-vswitchd (/proc/PID/stat), as %
  of one core; ovs-vswitchd also over the same time before any watcher existed (its baseline);
- the alternative, a periodic check, per check: ``ovs-ofctl dump-flows`` parsed and compared
  with the mirror; ``ovs-ofctl dump-aggregate`` (a count: cheaper, but blind to a modified
  flow); ``nft list table`` compared with the applied text. CPU of this process, its children
  and ovs-vswitchd per check, and as % of one core at 2 checks a second (what repair within 1 s
  needs: a drift waits half a period on average, a whole one at worst);
- detection and repair, --trials times each: ``ovs-ofctl del-flows br-int table=T``, T the
  policy table (60-63) with the most flows, then what the agent does: the monitor reports it, the
  flows are compiled again and the applier's full sync puts them back; ``nft delete table inet
  policyfabric``, then the whole table applied again. From just before the deleting command to
  the report (detected) and to the apply's return (repaired): median and p99 (with 10 trials, the
  worst).
The last line is one JSON object.

    sudo .venv/bin/python bench/drift.py [--idle 30] [--trials 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import private_ovs, report
from policyfabric.agent.renderers.api import RendererContext
from policyfabric.agent.renderers.nftables.renderer import NftablesRenderer
from policyfabric.agent.renderers.ovs.applier import TLV_MAP, FlowApplier
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.renderers.ovs.tables import POLICY, POLICY_CT, SG_EGRESS, SG_INGRESS
from policyfabric.sh import run as sh_run
from secgroups import TUNNEL_PORT, network

N, LOCAL = 1000, 50
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | str = "self") -> float:  # also "self/task/TID": one thread
    """utime + stime of a process (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def pct(seconds: float, over: float) -> float:
    return round(100 * seconds / over, 3)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


class Reported:
    """A watcher's callback: when the last report came."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.at = 0.0
        self.what: list[str] = []

    def __call__(self, what: str) -> None:
        self.at = time.perf_counter()
        self.what.append(what)
        self.event.set()

    def wait(self, timeout: float = 5.0) -> float:
        if not self.event.wait(timeout):
            raise RuntimeError("no drift reported")
        self.event.clear()
        return self.at


def per_check(check: Any, vswitchd: int, rounds: int) -> float:
    """CPU seconds of one check: this process, its children and ovs-vswitchd."""
    before = cpu_s() + children_s() + cpu_s(vswitchd)
    for _ in range(rounds):
        check()
    return (cpu_s() + children_s() + cpu_s(vswitchd) - before) / rounds


def run(idle: float, trials: int) -> dict[str, Any]:
    net = network(N, LOCAL)
    flows = list(dict.fromkeys(compile_pipeline(net, TUNNEL_PORT)))
    # the policy table with the most flows is the one deleted (its repair puts back the most)
    sizes = {t: sum(1 for f in flows if f.table == t) for t in (POLICY, POLICY_CT, SG_EGRESS, SG_INGRESS)}
    table = max(sizes, key=lambda t: sizes[t])
    with (
        tempfile.TemporaryDirectory() as tmp,
        private_ovs(Path(tmp) / "ovs", f"pfdrift-{os.getpid()}") as ovs,
    ):
        target, netns = ovs.mgmt("br-int"), str(ovs.netns)
        vswitchd = ovs.pids()[0]
        ovs.ofctl("add-tlv-map", target, TLV_MAP)
        applier = FlowApplier(target, ovs.env)
        nft = NftablesRenderer(RendererContext("bench", options={"netns": netns}))
        ruleset = nft.compile(net)

        # baseline: ovs-vswitchd idle with the flows and no watcher
        applier.sync(flows)
        nft.apply(ruleset)
        start, v0 = time.monotonic(), cpu_s(vswitchd)
        time.sleep(idle)
        baseline = cpu_s(vswitchd) - v0
        baseline_s = time.monotonic() - start

        # the watchers on, nothing drifting
        ovs_seen, nft_seen = Reported(), Reported()
        assert applier.watch(ovs_seen) and nft.watch(nft_seen)
        assert applier.monitor is not None and nft.monitor is not None
        nft_pid = nft.monitor._proc.pid if nft.monitor._proc is not None else 0
        time.sleep(0.5)
        start = time.monotonic()
        me0, v0, n0 = cpu_s(), cpu_s(vswitchd), cpu_s(nft_pid)
        time.sleep(idle)
        watched_s = time.monotonic() - start
        me, v, nm = cpu_s() - me0, cpu_s(vswitchd) - v0, cpu_s(nft_pid) - n0
        assert not ovs_seen.what and not nft_seen.what, (ovs_seen.what, nft_seen.what)

        # the alternative: periodic checks
        mirror = {f.text().split(" actions=")[0] for f in flows}

        def dump_diff() -> None:
            text = ovs.ofctl("dump-flows", "--no-stats", "--no-names", target)
            lines = {line.strip() for line in text.splitlines() if "actions=" in line}
            assert len(lines) >= len(mirror)

        def aggregate() -> None:
            ovs.ofctl("dump-aggregate", target)

        applied_text = ruleset.text()

        def nft_list() -> None:
            listed = sh_run(["nft", "list", "table", "inet", "policyfabric"], netns=netns)
            assert listed and applied_text

        checks = {
            "dump_flows": per_check(dump_diff, vswitchd, 10),
            "dump_aggregate": per_check(aggregate, vswitchd, 10),
            "nft_list": per_check(nft_list, vswitchd, 10),
        }
        assert not ovs_seen.what and not nft_seen.what  # reading is not drift

        # detection and repair (and what reading the updates costs the monitor's thread)
        thread = applier.monitor._thread
        assert thread is not None and thread.native_id is not None
        task, updates0 = f"self/task/{thread.native_id}", applier.monitor.updates
        thread0 = cpu_s(task)
        detect: dict[str, list[float]] = {"ovs": [], "nft": []}
        repair: dict[str, list[float]] = {"ovs": [], "nft": []}
        for _ in range(trials):
            t0 = time.perf_counter()
            ovs.ofctl("del-flows", target, f"table={table}")
            detect["ovs"].append(ovs_seen.wait() - t0)
            applier.sync(compile_pipeline(net, TUNNEL_PORT))  # the reconcile: compile, full sync
            repair["ovs"].append(time.perf_counter() - t0)
            time.sleep(0.2)
            t0 = time.perf_counter()
            sh_run(["nft", "delete", "table", "inet", "policyfabric"], netns=netns)
            detect["nft"].append(nft_seen.wait() - t0)
            nft.apply(nft.compile(net))
            repair["nft"].append(time.perf_counter() - t0)
            time.sleep(0.2)
        per_update = (cpu_s(task) - thread0) / max(1, applier.monitor.updates - updates0)
        restored = ovs.ofctl("dump-flows", target, f"table={table}").count("cookie=")
        assert restored == sizes[table], (restored, sizes)
        assert len(ovs_seen.what) == trials and len(nft_seen.what) == trials, (ovs_seen.what, nft_seen.what)
        applier.unwatch()
        nft.unwatch()

    return {
        "members": N,
        "local": LOCAL,
        "flows": len(flows),
        "table": table,
        "table_flows": sizes[table],
        "idle_s": round(watched_s, 1),
        "idle_watchers_pct": pct(me, watched_s),
        "idle_nft_monitor_pct": pct(nm, watched_s),
        "idle_vswitchd_pct": pct(v, watched_s),
        "idle_vswitchd_baseline_pct": pct(baseline, baseline_s),
        **{f"check_{k}_ms_cpu": ms(v) for k, v in checks.items()},
        **{f"check_{k}_pct_at_2hz": pct(2 * v, 1.0) for k, v in checks.items()},
        "trials": trials,
        "monitor_us_per_update": round(per_update * 1e6, 1),
        **{f"{k}_detect_median_ms": ms(statistics.median(v)) for k, v in detect.items()},
        **{f"{k}_detect_p99_ms": ms(p99(v)) for k, v in detect.items()},
        **{f"{k}_repair_median_ms": ms(statistics.median(v)) for k, v in repair.items()},
        **{f"{k}_repair_p99_ms": ms(p99(v)) for k, v in repair.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement (each)")
    parser.add_argument("--trials", type=int, default=10, help="drifts repaired, per renderer")
    args = parser.parse_args()
    r = run(args.idle, args.trials)

    def pair(label: str, a: str, b: str, unit_a: str = " ms", unit_b: str = " ms") -> list[str]:
        return [label, f"{r[a]}{unit_a}", f"{r[b]}{unit_b}" if b else ""]

    checks = (
        ("dump-flows + diff", "dump_flows"),
        ("dump-aggregate", "dump_aggregate"),
        ("nft list table", "nft_list"),
    )
    rows = [
        pair("idle: watchers' threads (agent side)", "idle_watchers_pct", "", "%"),
        pair("idle: nft monitor process", "idle_nft_monitor_pct", "", "%"),
        pair("idle: ovs-vswitchd, watched / baseline", "idle_vswitchd_pct", "idle_vswitchd_baseline_pct",
             "%", "%"),
        *(
            pair(f"periodic {name}, CPU per check / at 2 Hz", f"check_{key}_ms_cpu",
                 f"check_{key}_pct_at_2hz", " ms", "%")
            for name, key in checks
        ),
        pair(f"OVS, table {r['table']} deleted: detected, median / p99", "ovs_detect_median_ms",
             "ovs_detect_p99_ms"),
        pair("OVS: repaired (compile + full sync), median / p99", "ovs_repair_median_ms",
             "ovs_repair_p99_ms"),
        pair("OVS: the monitor's CPU per flow update read", "monitor_us_per_update", "", " µs"),
        pair("nft, table deleted: detected, median / p99", "nft_detect_median_ms", "nft_detect_p99_ms"),
        pair("nft: repaired (compile + whole table), median / p99", "nft_repair_median_ms",
             "nft_repair_p99_ms"),
    ]  # fmt: skip
    title = f"drift at N={r['members']} ({r['local']} local, {r['flows']} flows), idle {r['idle_s']} s"
    report(title, ["", "figure", "figure"], rows, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
