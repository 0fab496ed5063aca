#!/usr/bin/env python3
"""The authority on etcd beside SQLite: REST writes/s and write latency.

One real authority process on loopback per figure, on each store in the same run, alternated run
by run so that drift on the machine hits both alike:

  * sqlite: ``--db FILE`` (synchronous=FULL: one fsync per write);
  * etcd:   ``--store etcd://...`` on a 3-member etcd cluster on loopback (policyfabric.lab.etcd;
    each member fsyncs its WAL, a write is acknowledged once a majority has it), a fresh key prefix
    per run.

The workload is endpoint creation (the hot write: references, an address and a MAC claim) by 1
and 4 concurrent clients; every request's latency is kept: writes/s, p50 and p99 per run, the
median of --repeat runs reported, and the ratios etcd/sqlite. Replicas (several authorities on
one cluster) and the OpFlex fan-out are not measured yet: they do not exist yet.

    .venv/bin/python bench/replicas.py [--writes 300] [--clients 1,4] [--repeat 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from common import SETUP, addresses, report
from policyfabric.lab.authority import authority_in
from policyfabric.lab.etcd import EtcdCluster, missing

STORES = ("sqlite", "etcd")
console = Console(stderr=True)




def writes(port: int, clients: int, bodies: list[dict[str, Any]]) -> tuple[float, list[float]]:
    """POST every body, split over ``clients`` threads with a kept-alive connection each:
    (writes/s, each write's latency in seconds)."""
    shares = [bodies[i::clients] for i in range(clients)]

    def worker(share: list[dict[str, Any]]) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        took = []
        try:
            for body in share:
                start = time.perf_counter()
                conn.request("POST", "/v1/endpoints", json.dumps(body), {"content-type": "application/json"})
                response = conn.getresponse()
                text = response.read()
                took.append(time.perf_counter() - start)
                assert response.status == 201, text
        finally:
            conn.close()
        return took

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for share in pool.map(worker, shares) for t in share]
    return len(bodies) / (time.perf_counter() - start), latencies


def one_run(store: str, cluster: EtcdCluster | None, clients: int, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        extra = []
        if store == "etcd":
            assert cluster is not None
            extra = ["--store", f"{cluster.url}/bench-{uuid.uuid4().hex[:8]}"]
        with authority_in(Path(tmp), extra=extra) as server, httpx.Client(base_url=server.url) as client:
            for collection, body in SETUP:
                client.post(f"/v1/{collection}", json=body).raise_for_status()
            rate, latencies = writes(server.port, clients, addresses(n))
    latencies.sort()
    return {
        "per_s": rate,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writes", type=int, default=300, help="endpoints created per run (default 300)")
    parser.add_argument("--clients", default="1,4", help="concurrent clients, comma-separated (default 1,4)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; medians reported (default 3)")
    args = parser.parse_args()
    why = missing()
    if why is not None:
        console.print(f"[red]replicas: {why}[/]")
        return 1
    client_counts = [int(c) for c in args.clients.split(",")]
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    with EtcdCluster() as cluster:
        for clients in client_counts:
            for r in range(args.repeat):
                for store in STORES:  # alternated, so that drift on the machine hits both alike
                    console.print(f"[dim]{store}, {clients} client(s), run {r + 1}/{args.repeat}[/]")
                    runs.setdefault((store, clients), []).append(
                        one_run(store, cluster, clients, args.writes)
                    )
    med = {
        key: {f: statistics.median(run[f] for run in values) for f in ("per_s", "p50_ms", "p99_ms")}
        for key, values in runs.items()
    }
    rows = []
    for clients in client_counts:
        s, e = med["sqlite", clients], med["etcd", clients]
        rows.append(
            [
                clients,
                f"{s['per_s']:.0f}",
                f"{e['per_s']:.0f}",
                f"{e['per_s'] / s['per_s']:.2f}",
                f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f}",
                f"{e['p50_ms']:.1f} / {e['p99_ms']:.1f}",
            ]
        )
    summary: dict[str, Any] = {
        "bench": "replicas",
        "writes_per_run": args.writes,
        "repeat": args.repeat,
        "etcd_members": 3,
        "replicas": 1,
    }
    for store in STORES:
        summary[store] = {str(c): {f: round(v, 2) for f, v in med[store, c].items()} for c in client_counts}
    summary["ratio_etcd_vs_sqlite_writes_per_s"] = {
        str(c): round(med["etcd", c]["per_s"] / med["sqlite", c]["per_s"], 3) for c in client_counts
    }
    summary["ratio_etcd_vs_sqlite_p50"] = {
        str(c): round(med["etcd", c]["p50_ms"] / med["sqlite", c]["p50_ms"], 3) for c in client_counts
    }
    report(
        f"REST endpoint creates, 1 authority: SQLite vs etcd (3 members), median of {args.repeat} runs "
        f"of {args.writes}",
        ["clients", "sqlite/s", "etcd/s", "etcd/sqlite", "sqlite p50/p99 ms", "etcd p50/p99 ms"],
        rows,
        summary,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
