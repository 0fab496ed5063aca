"""What watching costs: commit-to-event latency of ``GET /v1/events`` and the cost of a
``/metrics`` scrape, against a real authority process (SQLite).

- Events: ``--writes`` endpoint updates, one PUT each, while one stream (``since``) reads; for
  each revision, the time from the PUT being sent to its event being read, and from the REST
  acknowledgement to the event (negative: the event arrived before the acknowledgement). The
  baseline, in the same run, is the PUT's own round trip.
- Scrape: ``GET /metrics`` against ``GET /v1/revision`` (the cheapest route), with the tenant
  holding ``--endpoints`` endpoints.

    python bench/events.py --endpoints 1000 --writes 200
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from policyfabric.client import Client
from policyfabric.client.events import follow
from policyfabric.lab.authority import authority_in
from policyfabric.model import kinds as k


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(values) * 1000, "p99_ms": pct(values, 0.99) * 1000}


def setup(client: Client, n: int) -> None:
    items: list[dict[str, Any]] = [
        {"op": "create", "kind": "tenants", "object": {"name": "b"}},
        {"op": "create", "kind": "l3-contexts", "object": {"name": "v", "tenant": "b"}},
        {
            "op": "create",
            "kind": "bridge-domains",
            "object": {"name": "bd", "tenant": "b", "l3_context": "v"},
        },
        {
            "op": "create",
            "kind": "subnets",
            "object": {"name": "s", "tenant": "b", "bridge_domain": "bd", "cidr": "10.0.0.0/16"},
        },
        {"op": "create", "kind": "epgs", "object": {"name": "g", "tenant": "b", "bridge_domain": "bd"}},
    ]
    for i in range(n):
        body = {"name": f"e{i}", "tenant": "b", "epg": "g", "ip": f"10.0.{1 + i // 250}.{1 + i % 250}"}
        items.append({"op": "create", "kind": "endpoints", "object": body})
    client.batch(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process = authority_in(Path(tmp) / "authority")
        process.start()
        try:
            run(process.url, args)
        finally:
            process.kill()


def run(url: str, args: argparse.Namespace) -> None:
    client = Client(url, timeout=600)  # a batch of 10,000 endpoints takes a while on a loaded machine
    setup(client, args.endpoints)
    received: dict[int, float] = {}
    opened = threading.Event()

    def read() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),  # the authority is killed at the end
            Client(url) as reader,
            follow(reader, since=client.revision()) as events,
        ):
            opened.set()
            for event in events:
                if event.name == "change":
                    received.setdefault(event.data["revision"], time.perf_counter())

    threading.Thread(target=read, daemon=True).start()
    opened.wait(10)
    target = client.list(k.ENDPOINT, "b", "e0")[0]
    body = {f: v for f, v in target.items() if f not in ("id", "revision", "status", "applied_by")}
    sent_at: dict[int, float] = {}
    acked_at: dict[int, float] = {}
    for i in range(args.writes):
        body["ip"] = [f"10.0.200.{1 + i % 250}"]
        sent = time.perf_counter()
        done = client.replace(k.ENDPOINT, target["id"], body)
        acked = time.perf_counter()
        sent_at[done["revision"]], acked_at[done["revision"]] = sent, acked
        time.sleep(0.005)
    deadline = time.monotonic() + 10
    while len([r for r in sent_at if r in received]) < len(sent_at) and time.monotonic() < deadline:
        time.sleep(0.01)
    revisions = [r for r in sent_at if r in received]
    from_send = [received[r] - sent_at[r] for r in revisions]
    from_ack = [received[r] - acked_at[r] for r in revisions]
    round_trip = [acked_at[r] - sent_at[r] for r in sent_at]

    http = httpx.Client(base_url=url)
    http.get("/metrics")
    scrape, baseline = [], []
    for _ in range(args.scrapes):
        t0 = time.perf_counter()
        http.get("/metrics").raise_for_status()
        t1 = time.perf_counter()
        http.get("/v1/revision").raise_for_status()
        t2 = time.perf_counter()
        scrape.append(t1 - t0)
        baseline.append(t2 - t1)
    size = len(http.get("/metrics").content)
    result = {
        "endpoints": args.endpoints,
        "writes": args.writes,
        "events_missing": len(sent_at) - len(revisions),
        "event_from_send": summary(from_send),
        "event_from_ack": summary(from_ack),
        "put_round_trip": summary(round_trip),
        "metrics_scrape": summary(scrape),
        "revision_get": summary(baseline),
        "metrics_ratio_p50": statistics.median(scrape) / statistics.median(baseline),
        "metrics_bytes": size,
    }
    for name, value in result.items():
        print(f"{name:>18}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
