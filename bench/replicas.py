#!/usr/bin/env python3
"""The authority on etcd beside SQLite, and its replicas: REST writes/s, fan-out, failover.

Real authority processes on loopback; etcd is a 3-member cluster on loopback
(policyfabric.lab.etcd; each member fsyncs its WAL, a write is acknowledged once a majority has
it), a fresh key prefix per run. The machine is shared: compare within one run.

1. Writes: endpoint creation (references, an address and a MAC claim) by each of --clients
   concurrent clients, on ``sqlite`` (``--db``, synchronous=FULL), ``etcd x1`` (one authority on
   the cluster) and ``etcd x3`` (three replicas on one prefix, client i writing to replica i mod
   3; every replica follows the others' commits). Runs alternate between the setups so drift
   hits all alike; writes/s, p50 and p99 per run, the median of --repeat runs, ratios to SQLite.
2. Fan-out: --fanout-agents OpFlex agents (real clients of policyfabric's library, one session
   each, --endpoints each resolved) in --fanout-procs client processes, spread over 3 replicas,
   against the same agents in the same processes on 1 authority; one contract change written
   through replica 0: the time until each agent has the new port, p50/p99, and by replica (the
   others learn the change from etcd's watch). Then the floor: the same agents on a minimal
   pusher instead of an authority (opflex_fanout.pusher_process: it answers resolves from a
   snapshot and writes one push, encoded once, to every session), from its write: what the
   agents' processes alone take. The figure asked for is 900 agents (3 replicas x 300 against
   1 x 900) with 100 endpoints each: ``--fanout-agents 900 --endpoints 100 --skip
   writes,failover`` (about 2 minutes; figures in docs/operations.md).
3. Failover: one agent given replica A's address only (it learns the others from the
   handshake); the replica it is on is killed (-9), the time until it is connected to another
   and has resynced (declared and resolved everything again); --rounds times, the median.

    .venv/bin/python bench/replicas.py [--writes 300] [--clients 1,3] [--repeat 3]
        [--fanout-agents 300] [--endpoints 20] [--fanout-procs 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from common import SETUP, addresses, report
from opflex_fanout import floor, percentile, snapshot, start_agents
from opflex_fanout import setup as fanout_setup
from policyfabric.lab.authority import AuthorityProcess, authority_in
from policyfabric.lab.etcd import EtcdCluster, missing
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.gbp import endpoint_uri

SETUPS = ("sqlite", "etcd x1", "etcd x3")
console = Console(stderr=True)


@contextlib.contextmanager
def authorities(
    setup: str, cluster: EtcdCluster, tmp: Path, extra: list[str]
) -> Iterator[list[AuthorityProcess]]:
    """The authorities of ``setup``: one on SQLite, or 1 or 3 replicas on one fresh etcd prefix."""
    count = 3 if setup.endswith("x3") else 1
    store = [] if setup == "sqlite" else ["--store", f"{cluster.url}/bench-{uuid.uuid4().hex[:8]}"]
    servers = [authority_in(tmp / f"r{i}", extra=[*store, *extra]) for i in range(count)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.kill()


def writes(ports: list[int], clients: int, bodies: list[dict[str, Any]]) -> tuple[float, list[float], int]:
    """POST every body, split over ``clients`` threads with a kept-alive connection each, client i
    to ``ports[i % len(ports)]``: (writes/s, each write's latency in seconds, 503s retried)."""
    shares = [bodies[i::clients] for i in range(clients)]
    retried = [0] * clients

    def worker(i: int) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", ports[i % len(ports)], timeout=60)
        took = []
        try:
            for body in shares[i]:
                start = time.perf_counter()
                while True:  # a 503 (lost to other replicas' writes too often) is retried, as a client should
                    conn.request(
                        "POST", "/v1/endpoints", json.dumps(body), {"content-type": "application/json"}
                    )
                    response = conn.getresponse()
                    text = response.read()
                    if response.status != 503:
                        break
                    retried[i] += 1
                took.append(time.perf_counter() - start)
                assert response.status == 201, text
        finally:
            conn.close()
        return took

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for share in pool.map(worker, range(clients)) for t in share]
    return len(bodies) / (time.perf_counter() - start), latencies, sum(retried)


def one_run(setup: str, cluster: EtcdCluster, clients: int, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, authorities(setup, cluster, Path(tmp), []) as servers:
        with httpx.Client(base_url=servers[0].url) as client:
            for collection, body in SETUP:
                client.post(f"/v1/{collection}", json=body).raise_for_status()
        rate, latencies, retried = writes([s.port for s in servers], clients, addresses(n))
    latencies.sort()
    return {
        "retried_503": retried,
        "per_s": rate,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def caught_up(others: list[AuthorityProcess], mos: dict[str, Any], within: float = 60.0) -> None:
    """Wait until every other replica serves the tenant as the first one does (``mos``, its
    snapshot): they learn the setup's writes from etcd's watch, and the agents must resolve a
    finished setup (the measure is of one change after it, not of the setup's catching up)."""
    def same(mos: dict[str, Any]) -> dict[str, Any]:  # children in any order (patched or built)
        return {u: {**mo, "children": sorted(mo["children"])} for u, mo in mos.items()}

    deadline = time.monotonic() + within
    for server in others:
        while True:
            theirs = asyncio.run(snapshot(server.opflex))
            if same(theirs) == same(mos):
                break
            if time.monotonic() > deadline:
                differ = sorted(u for u in set(mos) | set(theirs) if mos.get(u) != theirs.get(u))
                raise AssertionError(
                    f"replica {server.opflex} did not catch up: {differ[:3]} "
                    f"{[(mos.get(u), theirs.get(u)) for u in differ[:2]]}"
                )
            time.sleep(0.5)


def fanout(setup: str, cluster: EtcdCluster, agents: int, endpoints: int, procs: int) -> dict[str, Any]:
    """``agents`` over the authorities of ``setup`` in ``procs`` client processes (process i's
    agents on replica i mod the replicas: the same processes for every setup, so the same client
    floor); one contract change through the first replica: each agent's time until it has it,
    overall and by replica (the others learn the change from etcd's watch). Also the snapshot
    of the tenant's MOs the minimal pusher serves (``opflex_fanout.floor``)."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--keepalive", "60", "--log-level", "warning"]
        with authorities(setup, cluster, Path(tmp), extra) as servers:
            contract_id = fanout_setup(servers[0].url, endpoints)
            mos = asyncio.run(snapshot(servers[0].opflex))
            caught_up(servers[1:], mos)
            start = time.monotonic()
            pipes, workers = start_agents(agents, endpoints, procs, [s.opflex for s in servers])
            ready = [p.recv() for p in pipes]
            resolve_s = time.monotonic() - start
            assert all(r[1] for r in ready) and sum(r[2] for r in ready) == 0, (
                f"agents did not resolve: {ready}"
            )
            with httpx.Client(base_url=servers[0].url, timeout=60) as http:
                body = http.get(f"/v1/contracts/{contract_id}").json()
                body["rules"][0]["classifier"]["port"] = 8080
                t0 = time.time()
                for p in pipes:
                    p.send("go")
                http.put(f"/v1/contracts/{contract_id}", json=body).raise_for_status()
                acked = time.time() - t0
            arrived: dict[int, float] = {}
            by_replica: dict[int, list[float]] = {}
            for i, p in enumerate(pipes):
                got = p.recv()[1]
                arrived.update(got)
                by_replica.setdefault(i % len(servers), []).extend(t - t0 for t in got.values())
            for w in workers:
                w.join(30)
    latencies = [t - t0 for t in arrived.values()]
    assert len(latencies) == agents, f"only {len(latencies)} of {agents} agents got the update"
    return {
        "setup": setup,
        "agents": agents,
        "p50_s": round(statistics.median(latencies), 4),
        "p99_s": round(percentile(latencies, 99), 4),
        "max_s": round(max(latencies), 4),
        "rest_ack_s": round(acked, 4),
        "resolve_s": round(resolve_s, 1),
        "resolve_requests": sum(r[3] for r in ready),
        "by_replica": {
            f"r{i}": {"p50_s": round(statistics.median(v), 4), "p99_s": round(percentile(v, 99), 4)}
            for i, v in sorted(by_replica.items())
        },
        "snapshot": mos,
    }


def failover(cluster: EtcdCluster, rounds: int) -> list[float]:
    """Seconds from kill -9 of the agent's replica to the agent connected elsewhere and resynced."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--keepalive", "0.5", "--log-level", "warning"]
        with authorities("etcd x3", cluster, Path(tmp), extra) as servers:
            fanout_setup(servers[0].url, 10)
            by_address = {s.opflex: s for s in servers}

            async def go() -> list[float]:
                client = PolicyClient("agent0", [servers[0].opflex], keepalive=0.5, backoff=(0.2, 2.0))
                task = asyncio.create_task(client.run())
                for i in range(10):
                    client.resolve("PfEndpoint", endpoint_uri("bench", f"ep{i}"))
                assert await client.settled(30)
                took = []
                try:
                    for _ in range(rounds):
                        victim = by_address[client.connected_to] if client.connected_to else servers[0]
                        victim.kill()
                        killed = time.monotonic()
                        while client.connected_to in (None, victim.opflex) or not client.ready.is_set():
                            await asyncio.sleep(0.005)
                            assert time.monotonic() - killed < 30, "the agent did not fail over"
                        took.append(time.monotonic() - killed)
                        console.print(f"[dim]failover {len(took)}: {took[-1]:.3f} s[/]")
                        await asyncio.to_thread(victim.start)  # back, for the next round
                        await asyncio.sleep(1.0)
                finally:
                    await client.stop()
                    task.cancel()
                return took

            return asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writes", type=int, default=300, help="endpoints created per run (default 300)")
    parser.add_argument("--clients", default="1,3", help="concurrent clients, comma-separated (default 1,3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; medians reported (default 3)")
    parser.add_argument("--fanout-agents", type=int, default=300, help="agents in the fan-out (default 300)")
    parser.add_argument(
        "--endpoints", type=int, default=20, help="endpoints each agent resolves (default 20)"
    )
    parser.add_argument(
        "--fanout-procs", type=int, default=3, help="client processes the fan-out's agents run in (default 3)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="failovers measured (default 5)")
    parser.add_argument("--skip", default="", help="parts to skip, comma-separated: writes,fanout,failover")
    args = parser.parse_args()
    why = missing()
    if why is not None:
        console.print(f"[red]replicas: {why}[/]")
        return 1
    skip = set(args.skip.split(",")) - {""}
    client_counts = [int(c) for c in args.clients.split(",")]
    summary: dict[str, Any] = {"bench": "replicas", "etcd_members": 3, "machine": "shared, loaded"}
    with EtcdCluster() as cluster:
        if "writes" not in skip:
            runs: dict[tuple[str, int], list[dict[str, float]]] = {}
            for clients in client_counts:
                for r in range(args.repeat):
                    for setup in SETUPS:  # alternated, so that drift on the machine hits all alike
                        console.print(f"[dim]{setup}, {clients} client(s), run {r + 1}/{args.repeat}[/]")
                        runs.setdefault((setup, clients), []).append(
                            one_run(setup, cluster, clients, args.writes)
                        )
            med = {
                key: {
                    f: statistics.median(run[f] for run in values)
                    for f in ("per_s", "p50_ms", "p99_ms", "retried_503")
                }
                for key, values in runs.items()
            }
            rows = []
            for clients in client_counts:
                base = med["sqlite", clients]["per_s"]
                for setup in SETUPS:
                    m = med[setup, clients]
                    rows.append(
                        [clients, setup, f"{m['per_s']:.0f}", f"{m['per_s'] / base:.2f}",
                         f"{m['p50_ms']:.1f} / {m['p99_ms']:.1f}", f"{m['retried_503']:.0f}"]
                    )  # fmt: skip
            summary["writes"] = {
                f"{setup} c{c}": {f: round(v, 2) for f, v in med[setup, c].items()}
                for setup in SETUPS
                for c in client_counts
            }
            summary["writes_ratio_vs_sqlite"] = {
                f"{setup} c{c}": round(med[setup, c]["per_s"] / med["sqlite", c]["per_s"], 3)
                for setup in SETUPS
                for c in client_counts
            }
            report(
                f"REST endpoint creates, median of {args.repeat} runs of {args.writes}",
                ["clients", "setup", "writes/s", "vs sqlite", "p50 / p99 ms", "503s retried"],
                rows,
                {},
            )
        if "fanout" not in skip:
            found = []
            for setup in ("etcd x1", "etcd x3"):
                console.print(f"[dim]fan-out: {setup}, {args.fanout_agents} agents[/]")
                found.append(fanout(setup, cluster, args.fanout_agents, args.endpoints, args.fanout_procs))
            console.print(f"[dim]fan-out: minimal pusher (the bench's floor), {args.fanout_agents} agents[/]")
            mos = found[0].pop("snapshot")
            found[1].pop("snapshot")
            took = floor(args.fanout_agents, args.endpoints, args.fanout_procs, mos)
            found.append(
                {
                    "setup": "floor",
                    "agents": args.fanout_agents,
                    "p50_s": round(statistics.median(took), 4),
                    "p99_s": round(percentile(took, 99), 4),
                    "max_s": round(max(took), 4),
                }
            )
            summary["fanout"] = found
            summary["fanout_endpoints_per_agent"] = args.endpoints
            summary["fanout_agent_processes"] = args.fanout_procs
            summary["fanout_p99_vs_1_replica"] = round(found[1]["p99_s"] / found[0]["p99_s"], 2)
            base = found[2]["p99_s"]
            summary["fanout_p99_vs_floor"] = {f["setup"]: round(f["p99_s"] / base, 2) for f in found}
            report(
                f"A contract change written on one replica, reaching {args.fanout_agents} agents "
                f"({args.endpoints} endpoints each; agents in {args.fanout_procs} processes; floor: "
                "the same agents on a minimal pusher, from its write)",
                ["setup", "agents", "p50 s", "p99 s", "max s", "by replica p50/p99 s", "resolve s"],
                [
                    [f["setup"], f["agents"], f["p50_s"], f["p99_s"], f["max_s"],
                     " ".join(f"{r['p50_s']}/{r['p99_s']}" for r in f.get("by_replica", {}).values()),
                     f.get("resolve_s", "")]
                    for f in found
                ],
                {},
            )  # fmt: skip
        if "failover" not in skip:
            took = failover(cluster, args.rounds)
            summary["failover_s"] = {
                "median": round(statistics.median(took), 3),
                "each": [round(t, 3) for t in took],
            }
            report(
                "Agent failover: kill -9 of its replica to connected and resynced elsewhere",
                ["rounds", "median s", "max s"],
                [[len(took), f"{statistics.median(took):.3f}", f"{max(took):.3f}"]],
                {},
            )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
