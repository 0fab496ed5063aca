#!/usr/bin/env python3
"""The agent's own cost of one change: a whole ``OvsAgent.reconcile`` after one membership change
or one rule add, in process, at N endpoints.

bench/converge.py times a change end to end (REST write → authority → OpFlex → agent → bridge),
where the authority, the wire and the machine's load are in every sample. This times the agent's
part alone, as its loop runs it: the OVSDB read (the plugged list, unchanged), locating and
declaring, the view, the rule log's names, the OVS compile and the applier's plan down to the
flow mods (sent to a bridge that only takes them: the bundle's own cost is bench/ofchannel.py's),
the status reports. Workload: bench/view.py's tenant (N endpoints plugged here, N/50 groups, N/200
contracts of three rules, two security groups whose rules name their members), its intent sent
to the agent's real OpFlex client as the authority sends it. Cases:

- group: one endpoint moves to another group (a PfEndpoint changes);
- rule: a rule is added to a contract (the contract and the new classifier arrive together);
- group+save: a membership change while the OpFlex client's cache file is being written in a
  thread, as the client does after changes (here: written again and again for the whole case).

Per case, p50 and p99 of ``--samples`` reconciles (ms), and the milliseconds the cyclic garbage
collector took during them (the heap frozen once the cache is loaded, as the agent does after a
big step). ``--profile`` prints the functions with the most time of their own over all samples.
Run the same script with ``PYTHONPATH=OTHER/src`` for another tree's figures (before/after); the
machine's load moves the absolute figures, so compare runs made one after the other. The last
line is one JSON object.

    .venv/bin/python bench/reconcile.py [--n 1000,10000] [--samples 20] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import view as viewbench
from common import report
from policyfabric.agent.ovs_agent import AgentConfig, OvsAgent
from policyfabric.agent.renderers.ovs.ovsdb import Plugged
from policyfabric.model import objects as o
from policyfabric.opflex.cache import CacheContents, CacheFile


class GcPauses:
    """The cyclic collector's pauses while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.total = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif self.on:
            self.total += time.perf_counter() - self._start


async def measure(n: int, samples: int, profile: cProfile.Profile | None) -> dict[str, Any]:
    config = AgentConfig("h1", [("127.0.0.1", 1)], "unix:/nonexistent/db.sock", tunnel_ip=viewbench.VTEP)
    agent = OvsAgent(config)
    plugged = [Plugged(f"{viewbench.T}/ep{i}", f"tap{i}", i + 1) for i in range(n)]
    agent.ovsdb = SimpleNamespace(  # type: ignore[assignment]
        ofports={}, interfaces=lambda: (plugged, viewbench.TUNNEL_PORT)
    )
    agent.applier.execute = lambda commands: None  # type: ignore[method-assign]
    agent.applier.ensure_tlv_map = lambda: None  # type: ignore[method-assign]
    agent.dhcp = None
    agent.client.on_change = agent._cache_changed
    tenant = viewbench.Tenant(n, agent)
    await tenant.push()
    await tenant.declare()
    await agent.reconcile()  # the first: whole
    await agent.reconcile()
    gc.collect()
    gc.freeze()
    pauses = GcPauses()
    gc.callbacks.append(pauses)
    out: dict[str, Any] = {}
    mover = 1
    c = agent.client
    cache = CacheFile(Path(tempfile.mkdtemp(prefix="pf-reconcile-")) / "opflex-cache.json", "h1")
    contents = CacheContents(
        c.version, dict(c.policy), dict(c.endpoints), dict(c.wanted), dict(c.ep_wanted), sorted(c.followed)
    )
    stop = threading.Event()

    def saving() -> None:
        while not stop.is_set():
            cache.save(contents)

    try:
        for case in ("group", "rule", "group+save"):
            times: list[float] = []
            pauses.total = 0.0
            saver = threading.Thread(target=saving) if case == "group+save" else None
            if saver is not None:
                stop.clear()
                saver.start()
            for k in range(samples):
                if case != "rule":  # to a group on the same bridge domain: the same address
                    i = mover = (mover + 2) % n
                    spec = tenant.specs["endpoint"][f"ep{i}"]
                    group = (int(spec.epg[1:]) + tenant.bds) % tenant.groups
                    tenant.endpoint(i, group, list(spec.security_groups))
                else:
                    tenant.rules += 1
                    name = f"c{k % tenant.contracts}"
                    c = tenant.specs["contract"][name]
                    extra = o.ContractRule(
                        name=f"x{tenant.rules}", classifier=o.Classifier(protocol="udp", port=9000 + k)
                    )
                    tenant.specs["contract"][name] = c.model_copy(update={"rules": [*c.rules, extra]})
                await tenant.push()
                pauses.on = True
                if profile is not None:
                    profile.enable()
                t0 = time.perf_counter()
                await agent.reconcile()
                times.append(time.perf_counter() - t0)
                if profile is not None:
                    profile.disable()
                pauses.on = False
            if saver is not None:
                stop.set()
                saver.join()
            ms = sorted(t * 1000 for t in times)
            out[case] = {
                "p50": round(statistics.median(ms), 2),
                "p99": round(statistics.quantiles(ms, n=100, method="inclusive")[98], 2),
                "gc_ms": round(pauses.total * 1000, 1),
            }
    finally:
        stop.set()
        shutil.rmtree(cache.path.parent, ignore_errors=True)
        gc.callbacks.remove(pauses)
        gc.unfreeze()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1000,10000", help="endpoints, comma-separated")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="print the top functions (own time)")
    args = parser.parse_args()
    result: dict[str, Any] = {}
    rows = []
    for n in (int(x) for x in args.n.split(",")):
        profile = cProfile.Profile() if args.profile else None
        figures = asyncio.run(measure(n, args.samples, profile))
        result[f"n{n}"] = figures
        for case, f in figures.items():
            rows.append([n, case, f["p50"], f["p99"], f["gc_ms"]])
        if profile is not None:
            print(f"N={n}: the functions with the most time of their own, over every sample")
            pstats.Stats(profile).sort_stats("tottime").print_stats(20)
    report(
        f"OvsAgent.reconcile() after one change, {args.samples} samples per case",
        ["endpoints", "case", "p50 ms", "p99 ms", "GC ms (all samples)"],
        rows,
        result,
    )


if __name__ == "__main__":
    main()
