#!/usr/bin/env python3
"""How long ``GET /v1/explain`` (``policyfabric explain`` on a running fabric) takes, against its
floors, in one run.

Two set-ups, each with its baselines measured in the same run, samples interleaved:

- ``--lab``: tests/scenarios/two_hosts.yaml as a lab (2 hosts, real authority and agents): every
  expectation explained through the API (the agents' traces, one or two hosts), the lab's own
  ``explain`` of it (traces from this process), and one bare ``ofproto/trace`` of the packet on
  the source host (what OVS itself costs); with ``--nftables`` h2 renders with nftables.
- ``--n N`` (default 1000): N endpoints on one host (converge.py's workload: 4 bridge domains,
  web/app groups, tcp/80; patch ports), the agent's bridge holding their ~12 flows each; three
  pairs explained through the API (allowed, denied by the contract's default, intra-group),
  against a bare ``ofproto/trace`` of the same packet and a ``GET /v1/revision`` (the REST floor).

Prints medians and p99 in ms and the ratios, as one JSON line. Needs root.

    .venv/bin/python bench/explain_fabric.py --lab [--rounds 10]
    .venv/bin/python bench/explain_fabric.py --n 1000 [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
NEW = ("--ct-next", "trk,new")  # every ct() recirculation: a new connection, as the agents trace


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def summary(times: dict[str, list[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, values in times.items():
        out[f"{name}_median_ms"] = round(statistics.median(values), 1)
        out[f"{name}_p99_ms"] = round(pct(values, 0.99), 1)
    return out


def lab_run(rounds: int, nftables: bool) -> dict[str, Any]:
    from policyfabric.cli.explain import explain_expect, scenario_catalog
    from policyfabric.lab import explain as lab_explain
    from policyfabric.lab.lab import Lab
    from policyfabric.lab.plan import plan
    from policyfabric.model import scenario as sc

    with tempfile.TemporaryDirectory() as tmp:
        path = ROOT / "tests" / "scenarios" / "two_hosts.yaml"
        if nftables:
            text = path.read_text().replace("{name: h2}", "{name: h2, renderer: nftables}")
            path = Path(tmp) / "two_hosts.yaml"
            path.write_text(text)
        scenario = sc.load(path)
        expects = plan(scenario).expect
        lab = Lab.create(path, Path(tmp) / "lab", lambda s: print(s, file=sys.stderr))
        try:
            lab.up(scenario)
            cat = scenario_catalog(path)
            lab.probe(expects)  # neighbours resolved, as in `lab verify`
            times: dict[str, list[float]] = {"api": [], "lab": [], "trace": []}
            keys = {name: ep.key for name, ep in lab.state.endpoints.items()}
            with httpx.Client(base_url=lab.state.url, timeout=30) as http:
                for _ in range(rounds):
                    for x in expects:
                        query = {"from": keys[x.source], "to": keys[x.target], "probe": x.probe}
                        times["api"].append(
                            timed(lambda q=query: http.get("/v1/explain", params=q).raise_for_status())
                        )
                        times["lab"].append(timed(lambda x=x: explain_expect(lab, cat, x)))
                        if lab.state.hosts[lab.state.endpoints[x.source].host].renderer == "ovs":
                            host, flow = lab_explain.probe_flow(lab.state, x)
                            times["trace"].append(
                                timed(lambda h=host, f=flow: lab_explain.trace(lab.state, h, f))
                            )
        finally:
            lab.down()
    figures: dict[str, Any] = {"setup": "2-host lab" + (" (h2 nftables)" if nftables else ""),
                               "expectations": len(expects), "rounds": rounds, **summary(times)}  # fmt: skip
    figures["api_over_trace"] = round(figures["api_median_ms"] / figures["trace_median_ms"], 2)
    figures["api_over_lab"] = round(figures["api_median_ms"] / figures["lab_median_ms"], 2)
    return figures


def n_run(n: int, rounds: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    from common import flow_count, private_ovs  # type: ignore[import-not-found]
    from converge import TENANT, apply_intent, plug_ports, wait_converged  # type: ignore[import-not-found]
    from policyfabric.lab.authority import authority_in

    with (
        tempfile.TemporaryDirectory() as tmp,
        private_ovs(Path(tmp) / "ovs", f"pfexplain-{os.getpid()}") as ovs,
    ):
        work = Path(tmp)
        server = authority_in(work / "authority", extra=["--max-body", str(64 << 20)])
        agent = None
        try:
            plug_ports(ovs, n, kind="patch")
            server.start()
            log = (work / "agent.log").open("wb")
            agent = subprocess.Popen(
                [sys.executable, "-m", "policyfabric", "agent", "--host", "bench-host",
                 "--opflex", "{}:{}".format(*server.opflex), "--ovsdb", ovs.ovsdb,
                 "--state-dir", str(work / "agent"), "--log-level", "info"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            time.sleep(1.0)
            apply_intent(server.url, n, batch=True)
            wait_converged(ovs, server.url, n, timeout=120 + n * 0.2)
            flows = flow_count(ovs)
            with httpx.Client(base_url=server.url, timeout=30) as http:
                eps = {
                    e["name"]: e for e in http.get("/v1/endpoints", params={"tenant": TENANT}).json()["items"]
                }
                # ep4: app0; ep0, ep8: web0 (bd0). app consumes tcp/80 from web.
                pairs = [("ep4", "ep0", "tcp/80"), ("ep4", "ep0", "tcp/22"), ("ep0", "ep8", "icmp")]
                verdicts = {}
                times: dict[str, list[float]] = {"api": [], "trace": [], "revision": []}
                for _ in range(rounds):
                    for a, b, probe in pairs:
                        q = {"from": f"{TENANT}/{a}", "to": f"{TENANT}/{b}", "probe": probe}
                        t0 = time.perf_counter()
                        doc = http.get("/v1/explain", params=q).json()
                        times["api"].append((time.perf_counter() - t0) * 1e3)
                        verdicts[f"{a}->{b} {probe}"] = f"{doc['verdict']} by {doc['by']} ({doc['source']})"
                        src, dst = eps[a], eps[b]
                        port = ovs.vsctl("get", "Interface", f"p{a[2:]}", "ofport").strip()
                        l2 = f"in_port={port},dl_src={src['mac']},dl_dst={dst['mac']}"
                        l3 = f"nw_src={src['ip'][0]},nw_dst={dst['ip'][0]},nw_ttl=64"
                        flow = f"tcp,{l2},{l3},tp_src=40000,tp_dst=80,tcp_flags=0x002"
                        times["trace"].append(
                            timed(lambda f=flow: ovs.appctl("ofproto/trace", "br-int", f, *NEW, *NEW))
                        )
                        times["revision"].append(timed(lambda: http.get("/v1/revision").raise_for_status()))
        finally:
            if agent is not None:
                agent.terminate()
                agent.wait(10)
            server.stop(10)
    figures: dict[str, Any] = {"setup": f"N={n} endpoints on one host", "flows": flows, "rounds": rounds}
    figures |= {"samples": len(times["api"]), **summary(times), "verdicts": verdicts}
    figures["api_over_trace"] = round(figures["api_median_ms"] / figures["trace_median_ms"], 2)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", action="store_true", help="the 2-host lab instead of N on one host")
    parser.add_argument("--nftables", action="store_true", help="with --lab: h2 renders with nftables")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(lab_run(args.rounds, args.nftables) if args.lab else n_run(args.n, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
