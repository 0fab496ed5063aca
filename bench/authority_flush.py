#!/usr/bin/env python3
"""The authority's flush after a small write to a large tenant: what the policy repository costs.

An in-process authority (SQLite in a temporary directory, ``synchronous=NORMAL``) holds one tenant
of N endpoints: two EPGs on one bridge domain, a contract between them, two security groups, one
of which names its own members as the remote side of a rule (so its member set is a GbpSubnets
container with one GbpSubnet per member address). A ``PolicyRepository`` serves it, its push
handed to a recorder instead of sessions.

Each sample is one REST-level write through the service layer (not timed), then one flush
(``PolicyRepository.rebuild(..., push=True)``: read the store, bring the tree and the intent
index up to date, diff) timed up to the moment the ``policy_update`` is handed to fan-out:

- ``group``: one endpoint moves to the other EPG (and back, the next sample);
- ``rule``: the contract gains a rule (and loses it, the next sample);
- ``member``: one endpoint joins the remote-group security group (and leaves it).

The baseline, measured in the same run after the same writes: the whole-tenant flush the repository
did before it was incremental, composed of the same public pieces (``Authority.snapshot``,
``tenant_tree`` with its endpoint memo, ``tenant_endpoints`` with its memo, ``diff``). Figures:
p50 and p99 of each, and the ratio baseline p50 / flush p50. The last line is one JSON object.

    .venv/bin/python bench/authority_flush.py [--n 1000] [--samples 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from common import report
from policyfabric.authority.opflex.intent_index import IntentMemo, tenant_endpoints
from policyfabric.authority.opflex.policy_tree import EndpointMemo, tenant_tree
from policyfabric.authority.opflex.repository import PolicyRepository, diff
from policyfabric.authority.service import Authority
from policyfabric.model import objects as o
from policyfabric.model.kinds import BY_NAME as K
from policyfabric.opflex.mo import Tree
from policyfabric.store.sqlite import SqliteStore

T = "bench"
BATCH = 5000  # endpoints per create transaction while setting up
console = Console(stderr=True)


def address(i: int) -> str:
    return f"10.{i // 62500 + 1}.{i // 250 % 250}.{i % 250 + 2}"


def setup(authority: Authority, n: int) -> None:
    """The tenant of ``n`` endpoints (see the module's docstring)."""
    rule = o.ContractRule(name="http", classifier=o.Classifier(protocol="tcp", port=80))
    ssh = o.SecurityGroupRule(direction="ingress", protocol="tcp", port=22, remote_group="peers")
    authority.create_many(
        [
            (K["tenant"], o.Tenant(name=T)),
            (K["l3_context"], o.L3Context(name="vrf", tenant=T)),
            (K["bridge_domain"], o.BridgeDomain(name="bd", tenant=T, l3_context="vrf")),
            (K["subnet"], o.Subnet(name="s", tenant=T, bridge_domain="bd", cidr="10.0.0.0/8")),
            (K["contract"], o.Contract(name="http", tenant=T, rules=[rule])),
            (
                K["endpoint_group"],
                o.EndpointGroup(name="web", tenant=T, bridge_domain="bd", provides=["http"]),
            ),
            (
                K["endpoint_group"],
                o.EndpointGroup(name="app", tenant=T, bridge_domain="bd", consumes=["http"]),
            ),
            (K["security_group"], o.SecurityGroup(name="peers", tenant=T, rules=[ssh])),
            (K["security_group"], o.SecurityGroup(name="base", tenant=T)),
        ]
    )
    for start in range(0, n, BATCH):
        authority.create_many(
            [
                (
                    K["endpoint"],
                    o.Endpoint(
                        name=f"ep{i}",
                        tenant=T,
                        epg="web" if i % 2 else "app",
                        ip=[address(i)],
                        security_groups=["base", "peers"] if i % 10 == 0 else ["base"],
                    ),
                )
                for i in range(start, min(n, start + BATCH))
            ]
        )


def find(authority: Authority, kind: str, name: str) -> dict[str, Any]:
    items, _ = authority.list(K[kind], T, name)
    return items[0]


def writer(authority: Authority, op: str, n: int) -> Callable[[int], None]:
    """The write of sample ``i`` for ``op``: each undoes the previous one, so the tenant keeps its size."""

    def replace(kind: str, name: str, **changes: Any) -> None:
        current = find(authority, kind, name)
        body = {k: v for k, v in current.items() if k not in ("id", "revision", "status", "vni", "classid")}
        authority.replace(K[kind], current["id"], K[kind].spec.model_validate({**body, **changes}))

    def group(i: int) -> None:
        name = f"ep{(n // 2) | 1}"
        replace("endpoint", name, epg="app" if i % 2 == 0 else "web")

    def rule(i: int) -> None:
        rules = [{"name": "http", "classifier": {"protocol": "tcp", "port": 80}}]
        if i % 2 == 0:
            rules.append({"name": "https", "classifier": {"protocol": "tcp", "port": 443}})
        replace("contract", "http", rules=rules)

    def member(i: int) -> None:
        name = f"ep{(n // 3) * 10 % n + 1}"  # not a member to begin with (i % 10 != 0)
        replace("endpoint", name, security_groups=["base", "peers"] if i % 2 == 0 else ["base"])

    return {"group": group, "rule": rule, "member": member}[op]


class WholeTenant:
    """The flush as it was before it was incremental: every object read, every MO built (endpoints'
    objects kept by the memo), every endpoint indexed (by its memo), the whole tree diffed."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self.memo: EndpointMemo = {}
        self.intent_memo: IntentMemo = {}
        self.tree: Tree | None = None

    def flush(self) -> int:
        objects, numbers = self.authority.snapshot(T)
        tree = tenant_tree(T, objects, numbers, {}, self.memo)
        tenant_endpoints(T, tree, self.intent_memo)
        changed, merged, removed = diff(self.tree, tree)
        self.tree = tree
        return len(changed) + len(merged) + len(removed)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def run(n: int, samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        authority = Authority(SqliteStore(Path(tmp) / "db", sync="normal"))
        start = time.monotonic()
        setup(authority, n)
        console.print(f"[dim]N={n}: set up in {time.monotonic() - start:.1f} s[/]")
        handed: list[float] = []
        sizes: list[int] = []

        def fan_out(method: str, table: Any, parts: dict[str, Any]) -> None:
            handed.append(time.perf_counter())
            sizes.append(sum(len(v) for v in parts.values()))

        repo = PolicyRepository(
            authority, fan_out=fan_out, schedule=lambda: None, gateways=dict, rebuilt=lambda trees: None
        )
        start = time.monotonic()
        await repo.rebuild({None, T}, push=False)
        first = time.monotonic() - start
        whole = WholeTenant(authority)
        whole.flush()
        results: dict[str, Any] = {"n": n, "first_build_s": round(first, 3)}
        for op in ("group", "rule", "member"):
            write = writer(authority, op, n)
            flush_s: list[float] = []
            base_s: list[float] = []
            for i in range(samples):
                write(i)
                handed.clear()
                began = time.perf_counter()
                await repo.rebuild({T}, push=True)
                if not handed:
                    raise SystemExit(f"{op}: the flush pushed nothing")
                flush_s.append(handed[0] - began)
                began = time.perf_counter()
                whole.flush()
                base_s.append(time.perf_counter() - began)
            results[op] = {
                "flush_p50_ms": round(statistics.median(flush_s) * 1000, 3),
                "flush_p99_ms": round(percentile(flush_s, 0.99) * 1000, 3),
                "whole_p50_ms": round(statistics.median(base_s) * 1000, 3),
                "whole_p99_ms": round(percentile(base_s, 0.99) * 1000, 3),
                "pushed_mos": sizes[-1] if sizes else 0,
            }
            results[op]["ratio_whole_vs_flush_p50"] = round(
                results[op]["whole_p50_ms"] / max(results[op]["flush_p50_ms"], 1e-6), 1
            )
        results["rss_kb"] = rss_kb()
        return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", default="1000", help="endpoints in the tenant, comma-separated sizes (default 1000)"
    )
    parser.add_argument("--samples", type=int, default=20, help="writes per operation (default 20)")
    args = parser.parse_args()
    runs = [asyncio.run(run(int(n), args.samples)) for n in args.n.split(",")]
    rows = []
    for r in runs:
        for op in ("group", "rule", "member"):
            f = r[op]
            rows.append(
                (
                    r["n"],
                    op,
                    f"{f['flush_p50_ms']:.2f} ms",
                    f"{f['flush_p99_ms']:.2f} ms",
                    f"{f['whole_p50_ms']:.2f} ms",
                    f"{f['whole_p99_ms']:.2f} ms",
                    f"{f['ratio_whole_vs_flush_p50']:.1f}x",
                    f["pushed_mos"],
                    f"{r['rss_kb'] / 1024:.0f} MB",
                )
            )
    report(
        "Authority flush after one write (to fan-out), and the whole-tenant flush in the same run",
        (
            "N",
            "write",
            "flush p50",
            "flush p99",
            "whole p50",
            "whole p99",
            "whole / flush",
            "MOs pushed",
            "RSS",
        ),
        rows,
        {"bench": "authority_flush", "samples": args.samples, "results": runs},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
