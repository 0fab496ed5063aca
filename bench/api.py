#!/usr/bin/env python3
"""REST API throughput of the Policy Authority: creates and reads with 1, 4
and 16 concurrent clients against a real authority process on loopback.

Baselines measured in the same run:
  * the same creates through the service layer in-process (no HTTP): what
    the REST layer costs on top of validation + SQLite;
  * the same with SQLite synchronous=NORMAL: what one fsync per write costs.
The workload is endpoint creation (the hot write: references, address and
MAC claims) and reads by id. Medians of --repeat runs. The last line is one
JSON object with every figure.

--tokens adds, in the same run, every HTTP figure again against an authority
started with --tokens, the creates and reads made with a member token of the
tenant (what authentication, scoping and the audit line cost), run by run
alternating with the figures without tokens.

    .venv/bin/python bench/api.py [--creates 400] [--reads 2000] [--repeat 3] [--tokens]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from common import SETUP, addresses
from policyfabric.authority.service import Authority
from policyfabric.lab.authority import authority_in
from policyfabric.model import kinds as k
from policyfabric.model.parse import parse_spec
from policyfabric.store.sqlite import SqliteStore

CLIENTS = (1, 4, 16)
ADMIN, MEMBER = "bench-admin-0123456789abcdef", "bench-member-0123456789abcdef"
TOKENS = f"""tokens:
  - {{token: {ADMIN}, role: admin, name: bench-admin}}
  - {{token: {MEMBER}, role: member, tenant: bench, name: bench-member}}
"""
console = Console(stderr=True)




def call(
    conn: http.client.HTTPConnection, method: str, path: str, body: Any = None, token: str = ""
) -> tuple[int, bytes]:
    """One request on a kept-alive connection (stdlib: the client must cost less than the server)."""
    payload = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    conn.request(method, path, body=payload, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def run_parallel(
    clients: int, jobs: list[Any], work: Callable[[http.client.HTTPConnection, Any], None], port: int
) -> float:
    """Split jobs over `clients` threads, each with its own connection; returns ops/s."""
    shares = [jobs[i::clients] for i in range(clients)]

    def worker(share: list[Any]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for job in share:
                work(conn, job)
        finally:
            conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, shares))
    return len(jobs) / (time.perf_counter() - start)


def http_round(clients: int, creates: int, reads: int, tokens: bool = False) -> tuple[float, float]:
    """Creates/s and reads/s; ``tokens``: the authority runs with --tokens, the work uses a member token."""
    with tempfile.TemporaryDirectory() as tmp:
        extra, admin, member = [], "", ""
        if tokens:
            (Path(tmp) / "tokens.yaml").write_text(TOKENS)
            extra, admin, member = ["--tokens", str(Path(tmp) / "tokens.yaml")], ADMIN, MEMBER
        with (
            authority_in(Path(tmp), extra=extra, token=admin) as server,
            httpx.Client(
                base_url=server.url, headers={"authorization": f"Bearer {admin}"} if admin else {}
            ) as client,
        ):
            return _measure(server.port, client, clients, creates, reads, member)


def _measure(
    port: int, client: httpx.Client, clients: int, creates: int, reads: int, token: str
) -> tuple[float, float]:
    for collection, body in SETUP:
        client.post(f"/v1/{collection}", json=body).raise_for_status()

    def create(conn: http.client.HTTPConnection, body: dict[str, Any]) -> None:
        status, text = call(conn, "POST", "/v1/endpoints", body, token)
        assert status == 201, text

    create_rate = run_parallel(clients, addresses(creates), create, port)
    ids = [e["id"] for e in client.get("/v1/endpoints").json()["items"]]

    def read(conn: http.client.HTTPConnection, id: str) -> None:
        status, text = call(conn, "GET", f"/v1/endpoints/{id}", token=token)
        assert status == 200, text

    read_rate = run_parallel(clients, [ids[i % len(ids)] for i in range(reads)], read, port)
    return create_rate, read_rate


def inprocess_round(creates: int, sync: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "db", sync=sync)  # type: ignore[arg-type]
        authority = Authority(store)
        for collection, body in SETUP:
            kind = k.BY_COLLECTION[collection]
            authority.create(kind, parse_spec(kind, body))
        bodies = addresses(creates)
        start = time.perf_counter()
        for body in bodies:
            authority.create(k.ENDPOINT, parse_spec(k.ENDPOINT, body))
        rate = creates / (time.perf_counter() - start)
        store.close()
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--creates", type=int, default=400, help="endpoints created per run (default 400)")
    parser.add_argument("--reads", type=int, default=2000, help="reads per run (default 2000)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per figure; the median is reported (default 3)"
    )
    parser.add_argument(
        "--tokens", action="store_true", help="also measure with --tokens and a member token (same run)"
    )
    args = parser.parse_args()

    modes = (False, True) if args.tokens else (False,)
    create: dict[tuple[int, bool], float] = {}
    read: dict[tuple[int, bool], float] = {}
    for clients in CLIENTS:
        runs: dict[bool, list[tuple[float, float]]] = {mode: [] for mode in modes}
        for r in range(args.repeat):
            for mode in modes:  # alternated, so that drift on the machine hits both alike
                label = ", member token" if mode else ""
                console.print(f"[dim]HTTP, {clients} client(s){label}, run {r + 1}/{args.repeat}[/]")
                runs[mode].append(http_round(clients, args.creates, args.reads, tokens=mode))
        for mode in modes:
            create[clients, mode] = statistics.median(c for c, _ in runs[mode])
            read[clients, mode] = statistics.median(rd for _, rd in runs[mode])
    baseline: dict[str, float] = {}
    for sync in ("full", "normal"):
        console.print(f"[dim]in-process service, synchronous={sync}[/]")
        baseline[sync] = statistics.median(inprocess_round(args.creates, sync) for _ in range(args.repeat))

    table = Table(
        title=f"policyfabric REST API throughput (median of {args.repeat}; "
        f"{args.creates} creates, {args.reads} reads per run)"
    )
    columns = ["clients", "creates/s", "reads/s", "creates vs 1 client", "reads vs 1 client"]
    if args.tokens:
        columns += ["creates/s, token", "reads/s, token", "creates token/none", "reads token/none"]
    for column in columns:
        table.add_column(column, justify="right")
    for clients in CLIENTS:
        c, rd = create[clients, False], read[clients, False]
        row = [
            str(clients),
            f"{c:.0f}",
            f"{rd:.0f}",
            f"{c / create[1, False]:.2f}x",
            f"{rd / read[1, False]:.2f}x",
        ]
        if args.tokens:
            ct, rt = create[clients, True], read[clients, True]
            row += [f"{ct:.0f}", f"{rt:.0f}", f"{ct / c:.2f}", f"{rt / rd:.2f}"]
        table.add_row(*row)
    Console().print(table)
    print(
        f"baseline, same creates in-process without HTTP: {baseline['full']:.0f}/s (synchronous=FULL), "
        f"{baseline['normal']:.0f}/s (synchronous=NORMAL)"
    )
    print(
        f"HTTP (1 client) / in-process: {create[1, False] / baseline['full']:.2f}; "
        f"fsync cost: NORMAL/FULL = {baseline['normal'] / baseline['full']:.2f}x"
    )
    result: dict[str, Any] = {
        "bench": "api",
        "creates_per_run": args.creates,
        "reads_per_run": args.reads,
        "repeat": args.repeat,
        "create_per_s": {str(c): round(create[c, False], 1) for c in CLIENTS},
        "read_per_s": {str(c): round(read[c, False], 1) for c in CLIENTS},
        "baseline_inprocess_create_per_s": {s: round(v, 1) for s, v in baseline.items()},
        "ratio_http_vs_inprocess_create": round(create[1, False] / baseline["full"], 3),
        "ratio_create_16_vs_1": round(create[16, False] / create[1, False], 3),
        "ratio_read_16_vs_1": round(read[16, False] / read[1, False], 3),
    }
    if args.tokens:
        result["member_token"] = {
            "create_per_s": {str(c): round(create[c, True], 1) for c in CLIENTS},
            "read_per_s": {str(c): round(read[c, True], 1) for c in CLIENTS},
            "ratio_create_vs_no_tokens": {
                str(c): round(create[c, True] / create[c, False], 3) for c in CLIENTS
            },
            "ratio_read_vs_no_tokens": {str(c): round(read[c, True] / read[c, False], 3) for c in CLIENTS},
        }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
