"""How long `explain` takes on a running 2-host lab, against what it is made of, in one run.

Brings up tests/scenarios/two_hosts.yaml (or --scenario), then for each `expect` line, --rounds
times: the whole explanation (the probe's packet read from the source's namespace, one trace
per host crossed, naming), one bare `ofproto/trace` of the same packet on the source host (the
floor: what OVS itself costs), and the real probes (what `lab verify` spends to measure the same
verdicts with packets, all expectations 4 at a time, once). Prints medians and p99 in ms, and
the ratios, as one JSON line.

Needs root (namespaces, Open vSwitch). Run: sudo python bench/explain.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=ROOT / "tests" / "scenarios" / "two_hosts.yaml")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    from policyfabric.cli.explain import explain_expect, scenario_catalog
    from policyfabric.lab import explain as lab_explain
    from policyfabric.lab.lab import Lab
    from policyfabric.lab.plan import plan
    from policyfabric.model import scenario as sc

    scenario = sc.load(args.scenario)
    expects = plan(scenario).expect
    with TemporaryDirectory() as tmp:
        lab = Lab.create(args.scenario, Path(tmp) / "lab", lambda s: print(s, file=sys.stderr))
        try:
            lab.up(scenario)
            cat = scenario_catalog(args.scenario)
            lab.probe(expects)  # probe servers up once and neighbours resolved, as in `lab verify`
            times: dict[str, list[float]] = {"explain": [], "trace": []}
            all_explained: list[float] = []
            for _ in range(args.rounds):
                for x in expects:
                    t0 = time.perf_counter()
                    explain_expect(lab, cat, x)
                    t1 = time.perf_counter()
                    host, flow = lab_explain.probe_flow(lab.state, x)
                    t2 = time.perf_counter()
                    lab_explain.trace(lab.state, host, flow)
                    t3 = time.perf_counter()
                    times["explain"].append((t1 - t0) * 1e3)
                    times["trace"].append((t3 - t2) * 1e3)
                all_explained.append(sum(times["explain"][-len(expects) :]) / 1e3)
            t0 = time.perf_counter()
            lab.probe(expects)  # what `lab verify` spends measuring them with packets (4 at once)
            probed = time.perf_counter() - t0
        finally:
            lab.down()
    figures: dict[str, float | int] = {"expectations": len(expects), "rounds": args.rounds}
    for name, values in times.items():
        figures[f"{name}_median_ms"] = round(statistics.median(values), 1)
        figures[f"{name}_p99_ms"] = round(pct(values, 0.99), 1)
    figures["explain_over_trace"] = round(figures["explain_median_ms"] / figures["trace_median_ms"], 2)
    figures["explain_all_median_s"] = round(statistics.median(all_explained), 3)  # one after another
    figures["probe_all_s"] = round(probed, 3)
    figures["probe_all_over_explain_all"] = round(probed / statistics.median(all_explained), 1)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
