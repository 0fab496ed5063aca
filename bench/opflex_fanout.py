#!/usr/bin/env python3
"""OpFlex fan-out: one authority, A agents, a contract change pushed to all.

Each simulated agent is a real OpFlex client (policyfabric's own client
library) over TCP. It resolves the policy of E endpoints (their PfEndpoint
objects, in one request, and, by following references and their needs as an
agent does (``subscriptions.follow_needs`` from its endpoints' places, read
again when one of its endpoints changes), their EPG, bridge domain, routing
domain, contract, rules and classifiers, and the EPG on the contract's other
side). Then one REST write changes the contract's port, and each agent records
when the new port is in its cache. The agents of one process share one event
loop: ``pusher_process`` (the authority replaced by a minimal pusher) measures
what that loop alone takes, the bench's floor (bench/replicas.py reports it).

Figures per A: the time until each agent has applied the update (p50, p99,
max); the messages/s the authority served while agents resolved; the
authority's CPU seconds and RSS. The baseline measured in the same run is
the smallest A: ratios are p99(A) / p99(smallest). The last line is one JSON
object.

With ``--tls``, every size also runs over mutual TLS, in the same run: the
authority requires client certificates from a CA (trustme), each agent has its
own certificate with its name as DNS SAN, so the authority binds each name to
its certificate as in production. The table then has one row per size and
transport.

    .venv/bin/python bench/opflex_fanout.py [--agents 10,100,1000] [--endpoints 100] [--procs 2] [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from policyfabric.agent.subscriptions import follow_needs, placement
from policyfabric.lab.authority import authority_in
from policyfabric.opflex import wire
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.gbp import Cls, endpoint_uri
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import Session
from policyfabric.opflex.tls import client_context
from policyfabric.opflex.uri import space

CLASSIFIER = "/PolicyUniverse/PolicySpace/bench/GbpeL24Classifier/http.web-in/"
SETTLE_TIMEOUT = 600.0  # seconds the agents of one process may take to resolve everything
console = Console(stderr=True)


def setup(url: str, endpoints: int) -> str:
    """The intent: two EPGs on one bridge domain, app consumes http from web; returns the contract id."""
    with httpx.Client(base_url=url, timeout=60) as http:

        def post(collection: str, body: dict[str, Any]) -> dict[str, Any]:
            r = http.post(f"/v1/{collection}", json=body)
            r.raise_for_status()
            return dict(r.json())

        post("tenants", {"name": "bench"})
        post("l3-contexts", {"name": "vrf", "tenant": "bench"})
        post("bridge-domains", {"name": "bd", "tenant": "bench", "l3_context": "vrf"})
        post("subnets", {"name": "s", "tenant": "bench", "bridge_domain": "bd", "cidr": "10.0.0.0/16"})
        contract = post(
            "contracts",
            {
                "name": "http",
                "tenant": "bench",
                "rules": [{"name": "web-in", "classifier": {"protocol": "tcp", "port": 80}}],
            },
        )
        post(
            "endpoint-groups", {"name": "web", "tenant": "bench", "bridge_domain": "bd", "provides": ["http"]}
        )
        post(
            "endpoint-groups", {"name": "app", "tenant": "bench", "bridge_domain": "bd", "consumes": ["http"]}
        )
        for i in range(endpoints):
            post(
                "endpoints",
                {
                    "name": f"ep{i}",
                    "tenant": "bench",
                    "epg": "web" if i % 2 else "app",
                    "ip": f"10.0.{i // 250}.{i % 250 + 2}",
                },
            )
        return str(contract["id"])


def certificates(directory: Path, agents: int) -> list[str]:
    """A CA, the authority's certificate and one per agent (its name as DNS SAN), as PEM files in
    ``directory``; the authority's TLS options."""
    import trustme  # a test dependency: only --tls needs it

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    for n in range(agents):
        ca.issue_cert(f"agent{n}").private_key_and_cert_chain_pem.write_to_path(
            str(directory / f"agent{n}.pem")
        )
    return [
        "--tls-cert",
        str(directory / "server.pem"),
        "--tls-key",
        str(directory / "server.key"),
        "--tls-ca",
        str(directory / "ca.pem"),
    ]


def agents_process(
    first: int,
    count: int,
    endpoints: int,
    addr: tuple[str, int],
    tls: str | None,
    conn: Any,
    settle: float = SETTLE_TIMEOUT,
) -> None:
    """Run `count` agents in one event loop; report readiness, then each agent's update time.
    ``tls``: the directory of the certificates (mutual TLS), or None (TCP). ``settle``: seconds
    the agents may take to resolve everything (their handshakes and resolves all at once)."""

    async def main() -> None:
        arrived: dict[int, float] = {}
        clients = []
        for n in range(first, first + count):
            ctx = None
            if tls is not None:
                pem = Path(tls) / f"agent{n}.pem"
                ctx = client_context(Path(tls) / "ca.pem", pem, pem)
            client = PolicyClient(
                f"agent{n}", [addr], keepalive=60, backoff=(0.1, 2.0), connect_timeout=30, tls=ctx
            )

            mine = [endpoint_uri("bench", f"ep{i}") for i in range(endpoints)]
            needed: dict[str, str] = {}  # this agent's: what its endpoints need, as last followed
            places: list[set[str]] = [set(), set()]  # its endpoints' groups and bridge domains

            def changed(
                uris: set[str],
                n: int = n,
                client: PolicyClient = client,
                mine: list[str] = mine,
                needed: dict[str, str] = needed,
                places: list[set[str]] = places,
            ) -> None:
                # where its endpoints are is read again only when one of them changed, as an agent
                # that keeps its endpoints' places (reading 100 of them on every push was most of
                # what an agent of this bench did with a push)
                if not places[0] or not uris.isdisjoint(mine):
                    found = [placement(client.policy.get(uri)) for uri in mine]
                    places[0] = {g for g, _ in found if g is not None}
                    places[1] = {b for _, b in found if b is not None}
                now = follow_needs(client, places[0], places[1], needed)
                needed.clear()
                needed.update(now)
                mo = client.policy.get(CLASSIFIER)
                if mo is not None and mo.properties.get("dFromPort") == 8080 and n not in arrived:
                    arrived[n] = time.time()

            client.on_change = changed
            clients.append(client)
        tasks = [asyncio.create_task(c.run()) for c in clients]
        for client in clients:
            for i in range(endpoints):
                client.resolve("PfEndpoint", endpoint_uri("bench", f"ep{i}"))
        ok = await asyncio.gather(*[c.settled(timeout=settle, quiet=0.5) for c in clients])
        lacking = [c for c in clients if CLASSIFIER not in c.policy]
        if lacking:  # what one of them holds and asks for: where its resolution stopped
            c = lacking[0]
            held = sorted(u for u in c.policy if "/PfEndpoint/" not in u)
            wanted = sorted(u for u in c.wanted if "/PfEndpoint/" not in u)
            print(
                f"{c.name} lacks the classifier; holds {held}; wants {wanted}; session {c.connected_to}",
                file=sys.stderr,
            )
        conn.send(("ready", all(ok), len(lacking), sum(c.requests + 1 for c in clients)))  # +1: send_identity
        conn.recv()  # "go"
        deadline = time.time() + 60
        while len(arrived) < count and time.time() < deadline:
            await asyncio.sleep(0.005)
        conn.send(("done", arrived))
        for c in clients:
            await c.stop()
        for t in tasks:
            t.cancel()

    asyncio.run(main())


async def snapshot(addr: tuple[str, int]) -> dict[str, dict[str, Any]]:
    """Every MO of the bench's tenant (and what it refers to) as the authority serves it (wire
    form, by URI): what the minimal pusher answers resolves from. (A name of its own each time:
    replicas hold one session per name for the cluster.)"""
    name = f"bench-snapshot-{os.getpid()}-{time.monotonic_ns()}"
    client = PolicyClient(name, [addr], keepalive=60, backoff=(0.1, 2.0), connect_timeout=30)
    task = asyncio.create_task(client.run())
    client.resolve(Cls.POLICY_SPACE, space("bench"))
    try:
        if not await client.settled(timeout=60, quiet=0.5):
            raise RuntimeError("the snapshot client did not settle")
        return {uri: mo.to_wire() for uri, mo in client.policy.items()}
    finally:
        await client.stop()
        task.cancel()


def pusher_process(mos: dict[str, dict[str, Any]], conn: Any) -> None:
    """The authority replaced by a minimal pusher, to measure the agents' processes alone (the
    bench's floor): it answers the handshake and each resolve from ``mos`` (no store, no trees, no
    subscriptions), sends its address, and on "go" writes one ``policy_update`` (the contract's
    classifier on port 8080, encoded once) to every session, then sends the time it began."""
    changed = MO.from_wire(mos[CLASSIFIER])
    changed.properties["dFromPort"] = changed.properties["dToPort"] = 8080
    update = {"replace": [changed.to_wire()], "merge_children": [], "delete": []}

    def subtree(uri: str) -> list[dict[str, Any]]:
        out, todo = [], [uri]
        while todo:
            mo = mos.get(todo.pop())
            if mo is not None:
                out.append(mo)
                todo.extend(mo["children"])
        return out

    async def handle(session: Session, method: str, params: list[Any]) -> Any:
        if method == "send_identity":
            session.ready = True
            return {"name": "pusher", "domain": "policyfabric", "my_role": ["policy_repository"], "peers": []}
        if method == "policy_resolve":
            return {"policy": [mo for p in params for mo in subtree(str(p["policy_uri"]))]}
        return {}

    async def main() -> None:
        sessions: list[Session] = []

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            session = Session(reader, writer, handle, label="pusher", keepalive=60)
            sessions.append(session)
            await session.run()

        server = await asyncio.start_server(accept, "127.0.0.1", 0, backlog=4096, limit=1 << 20)
        conn.send(server.sockets[0].getsockname()[:2])
        await asyncio.to_thread(conn.recv)  # "go"
        began = time.time()
        frame = wire.encode(wire.request("policy_update", 1, [update]))  # once, for every session
        for session in sessions:
            if session.ready and not session.closed.is_set():
                session.writer.write(frame)
        conn.send(began)
        await asyncio.to_thread(conn.recv)  # "stop"
        server.close()
        for session in sessions:
            await session.close("done")

    asyncio.run(main())


def floor(agents: int, endpoints: int, procs: int, mos: dict[str, dict[str, Any]]) -> list[float]:
    """The bench's own floor: ``agents`` (over ``procs`` processes, as in the measured runs) on the
    minimal pusher (``pusher_process``); each agent's time from the push's first write to the new
    port in its cache (seconds)."""
    parent, child = mp.Pipe()
    pusher = mp.Process(target=pusher_process, args=(mos, child), daemon=True)
    pusher.start()
    try:
        addr = tuple(parent.recv())
        pipes, workers = start_agents(agents, endpoints, procs, [addr])
        ready = [p.recv() for p in pipes]
        assert all(r[1] for r in ready) and sum(r[2] for r in ready) == 0, f"agents did not resolve: {ready}"
        for p in pipes:
            p.send("go")
        parent.send("go")
        began = parent.recv()
        arrived: dict[int, float] = {}
        for p in pipes:
            arrived.update(p.recv()[1])
        for w in workers:
            w.join(30)
        parent.send("stop")
    finally:
        pusher.join(30)
        if pusher.is_alive():
            pusher.kill()
    assert len(arrived) == agents, f"only {len(arrived)} of {agents} agents got the push"
    return [t - began for t in arrived.values()]


def start_agents(
    agents: int, endpoints: int, procs: int, addrs: list[tuple[str, int]]
) -> tuple[list[Any], list[mp.Process]]:
    """``agents`` agents in ``procs`` processes (as even as can be), process i's connected to
    ``addrs[i % len(addrs)]``: the pipes to them and the processes. The same layout for every
    setup compared, so that each has the same client floor."""
    procs = max(1, min(procs, agents))
    share = [agents // procs + (1 if i < agents % procs else 0) for i in range(procs)]
    pipes, workers, first = [], [], 0
    for i, count in enumerate(share):
        parent, child = mp.Pipe()
        worker = mp.Process(  # daemons: a run that fails does not leave them waiting for ever
            target=agents_process,
            args=(first, count, endpoints, addrs[i % len(addrs)], None, child),
            daemon=True,
        )
        worker.start()
        pipes.append(parent)
        workers.append(worker)
        first += count
    return pipes, workers


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS kB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS")
    )
    return cpu, rss


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def run_one(agents: int, endpoints: int, procs: int, tls: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        options = certificates(Path(tmp), agents) if tls else []
        server = authority_in(
            Path(tmp), sync="normal", extra=["--keepalive", "60", "--log-level", "warning", *options]
        )
        server.start()
        try:
            contract_id = setup(server.url, endpoints)
            assert server.proc is not None
            pid = server.proc.pid
            cpu0, _ = proc_stats(pid)
            procs = max(1, min(procs, agents))
            share = [agents // procs + (1 if i < agents % procs else 0) for i in range(procs)]
            pipes, workers, first = [], [], 0
            start = time.time()
            for count in share:
                parent, child = mp.Pipe()
                worker = mp.Process(
                    target=agents_process,
                    args=(first, count, endpoints, server.opflex, tmp if tls else None, child),
                )
                worker.start()
                pipes.append(parent)
                workers.append(worker)
                first += count
            ready = [p.recv() for p in pipes]
            resolve_s = time.time() - start
            assert all(r[1] for r in ready) and sum(r[2] for r in ready) == 0, (
                f"agents did not resolve: {ready}"
            )
            cpu1, rss_ready = proc_stats(pid)
            requests = sum(r[3] for r in ready)  # requests the authority answered while agents resolved
            with httpx.Client(base_url=server.url, timeout=60) as http:
                body = http.get(f"/v1/contracts/{contract_id}").json()
                body["rules"][0]["classifier"]["port"] = 8080
                t0 = time.time()
                for p in pipes:
                    p.send("go")
                http.put(f"/v1/contracts/{contract_id}", json=body).raise_for_status()
            arrived: dict[int, float] = {}
            for p in pipes:
                arrived.update(p.recv()[1])
            cpu2, rss = proc_stats(pid)
            for w in workers:
                w.join(30)
            latencies = [t - t0 for t in arrived.values()]
            assert len(latencies) == agents, f"only {len(latencies)} of {agents} agents got the update"
            return {
                "transport": "tls" if tls else "tcp",
                "agents": agents,
                "endpoints_per_agent": endpoints,
                "update_p50_s": round(statistics.median(latencies), 4),
                "update_p99_s": round(percentile(latencies, 99), 4),
                "update_max_s": round(max(latencies), 4),
                "updates_per_s": round(agents / max(max(latencies), 1e-6), 1),
                "resolve_s": round(resolve_s, 2),
                "resolve_requests": requests,
                "resolve_msgs_per_s": round(requests / resolve_s, 1),
                "authority_cpu_resolve_s": round(cpu1 - cpu0, 2),
                "authority_cpu_update_s": round(cpu2 - cpu1, 3),
                "authority_rss_kb": rss,
                "authority_rss_ready_kb": rss_ready,
            }
        finally:
            server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--agents", default="10,100,1000", help="comma-separated agent counts (default 10,100,1000)"
    )
    parser.add_argument(
        "--endpoints", type=int, default=100, help="endpoints each agent resolves (default 100)"
    )
    parser.add_argument(
        "--procs", type=int, default=2, help="client processes (default 2: this machine's cores)"
    )
    parser.add_argument(
        "--tls", action="store_true", help="also run every size over mutual TLS (one certificate per agent)"
    )
    args = parser.parse_args()
    sizes = [int(a) for a in args.agents.split(",")]
    transports = ["tcp", "tls"] if args.tls else ["tcp"]
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for agents in sizes:
        for transport in transports:
            console.print(f"[dim]{agents} agents x {args.endpoints} endpoints over {transport}...[/]")
            results[(transport, agents)] = run_one(agents, args.endpoints, args.procs, transport == "tls")
    table = Table(title="OpFlex fan-out: one contract change to A agents")
    columns = ("transport", "agents", "p50", "p99", "max", "p99 vs smallest", "resolve msgs/s")
    for column in (*columns, "CPU (update)", "RSS"):
        table.add_column(column, justify="right")
    for (transport, agents), r in results.items():
        base = results[(transport, min(sizes))]
        table.add_row(
            transport,
            str(agents),
            f"{r['update_p50_s'] * 1000:.0f} ms",
            f"{r['update_p99_s'] * 1000:.0f} ms",
            f"{r['update_max_s'] * 1000:.0f} ms",
            f"{r['update_p99_s'] / base['update_p99_s']:.1f}x",
            f"{r['resolve_msgs_per_s']:.0f}",
            f"{r['authority_cpu_update_s']:.2f} s",
            f"{r['authority_rss_kb'] / 1024:.0f} MB",
        )
    Console().print(table)
    for transport in transports:
        largest = results[(transport, max(sizes))]
        print(
            f"target ({transport}): A={max(sizes)} p99 < 1 s: "
            f"{'met' if largest['update_p99_s'] < 1 else 'NOT met'} ({largest['update_p99_s'] * 1000:.0f} ms)"
        )
    print(
        json.dumps(
            {
                "bench": "opflex_fanout",
                "results": {f"{t}/{a}": v for (t, a), v in results.items()},
                "ratio_p99_vs_smallest": {
                    f"{t}/{a}": round(v["update_p99_s"] / results[(t, min(sizes))]["update_p99_s"], 2)
                    for (t, a), v in results.items()
                },
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
