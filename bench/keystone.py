#!/usr/bin/env python3
"""REST request latency with Keystone tokens (--keystone) against bearer tokens (--tokens), same run.

A real Keystone (policyfabric.lab.keystone: MariaDB, Keystone under gunicorn; installed by
scripts/install-keystone.sh) and two authority processes on loopback: one with --tokens, one
with --keystone. One client, one kept-alive connection each, reads an object by id as a
member of its tenant; the two alternate block by block so that drift on the machine hits both
alike. The Keystone token is validated once before measuring, so the figures are with
keystonemiddleware's token cache warm (what nearly every request of a client sees); the cost
of a cache miss (a token the authority has not seen: one round trip to Keystone) is measured
apart, with fresh tokens. Prints median and p99 of each and their ratio; the last line is one
JSON object with every figure.

    .venv/bin/python bench/keystone.py [--requests 2000] [--blocks 10] [--fresh 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from policyfabric.lab.authority import AuthorityProcess, authority_in
from policyfabric.lab.keystone import ADMIN_PASSWORD, SERVICE_SPEC, KeystoneServer

ADMIN, MEMBER = "bench-admin-0123456789abcdef", "bench-member-0123456789abcdef"
TOKENS = f"""tokens:
  - {{token: {ADMIN}, role: admin, name: bench-admin}}
  - {{token: {MEMBER}, role: member, tenant: bench, name: bench-member}}
"""
PASSWORD = "bench-secret-0123"
console = Console(stderr=True)


def get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> float:
    """One GET on a kept-alive connection; its latency in seconds (asserting 200)."""
    start = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    took = time.perf_counter() - start
    assert response.status == 200, body
    return took


def prepare(server: AuthorityProcess, headers: dict[str, str]) -> str:
    """Tenant bench with one l3_context, made by the admin; its read path."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for path, body in (
        ("/v1/tenants", {"name": "bench"}),
        ("/v1/l3-contexts", {"name": "vrf", "tenant": "bench"}),
    ):
        conn.request(
            "POST", path, body=json.dumps(body), headers={"content-type": "application/json", **headers}
        )
        response = conn.getresponse()
        made = json.loads(response.read())
        assert response.status == 201, made
    conn.close()
    return f"/v1/l3-contexts/{made['id']}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="reads per mode (default 2000)")
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks per mode (default 10)")
    parser.add_argument("--fresh", type=int, default=20, help="cache misses: fresh tokens (default 20)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        console.print("[dim]starting Keystone (MariaDB, keystone-manage, gunicorn)[/]")
        with KeystoneServer(base / "keystone") as keystone:
            keystone.setup(
                {
                    "projects": [*SERVICE_SPEC["projects"], {"name": "bench"}],
                    "users": [
                        *SERVICE_SPEC["users"],
                        {
                            "name": "bench",
                            "password": PASSWORD,
                            "grants": [{"project": "bench", "role": "member"}],
                        },
                    ],
                }
            )
            console.print(f"[dim]Keystone ready: {keystone.timings}[/]")
            (base / "tokens.yaml").write_text(TOKENS)
            conf = keystone.authority_config(base / "keystone.conf", cache_time=300)
            admin = keystone.token("admin", ADMIN_PASSWORD, project="admin")
            member = keystone.token("bench", PASSWORD, project="bench")
            with (
                authority_in(
                    base / "a-tokens", extra=["--tokens", str(base / "tokens.yaml")], token=ADMIN
                ) as plain,
                authority_in(base / "a-keystone", extra=["--keystone", str(conf)], token=admin) as ks,
            ):
                # both: the admin makes the object, a member of its tenant reads it
                paths = {
                    "tokens": prepare(plain, {"authorization": f"Bearer {ADMIN}"}),
                    "keystone": prepare(ks, {"X-Auth-Token": admin}),
                }
                headers = {
                    "tokens": {"authorization": f"Bearer {MEMBER}"},
                    "keystone": {"X-Auth-Token": member},
                }
                conns = {
                    "tokens": http.client.HTTPConnection("127.0.0.1", plain.port, timeout=30),
                    "keystone": http.client.HTTPConnection("127.0.0.1", ks.port, timeout=30),
                }
                for mode in conns:  # warm: the connection, and Keystone's token into the cache
                    for _ in range(50):
                        get(conns[mode], paths[mode], headers[mode])
                times: dict[str, list[float]] = {"tokens": [], "keystone": []}
                per_block = max(1, args.requests // args.blocks)
                for block in range(args.blocks):
                    console.print(f"[dim]block {block + 1}/{args.blocks}[/]")
                    for mode in conns:
                        times[mode] += [
                            get(conns[mode], paths[mode], headers[mode]) for _ in range(per_block)
                        ]
                misses = []
                for _ in range(args.fresh):
                    token = keystone.token("bench", PASSWORD, project="bench")
                    misses.append(get(conns["keystone"], paths["keystone"], {"X-Auth-Token": token}))
                for conn in conns.values():
                    conn.close()

    figures = {
        mode: {"median_ms": statistics.median(t) * 1e3, "p99_ms": pct(t, 0.99) * 1e3, "n": len(t)}
        for mode, t in times.items()
    }
    figures["keystone, cache miss"] = {
        "median_ms": statistics.median(misses) * 1e3,
        "p99_ms": pct(misses, 0.99) * 1e3,
        "n": len(misses),
    }
    table = Table(title="REST GET by id, one client, kept-alive: --keystone (cache warm) vs --tokens")
    for column in ("mode", "requests", "median ms", "p99 ms"):
        table.add_column(column, justify="right")
    for mode, f in figures.items():
        table.add_row(mode, str(f["n"]), f"{f['median_ms']:.2f}", f"{f['p99_ms']:.2f}")
    Console().print(table)
    ratio_median = figures["keystone"]["median_ms"] / figures["tokens"]["median_ms"]
    ratio_p99 = figures["keystone"]["p99_ms"] / figures["tokens"]["p99_ms"]
    overhead_us = (figures["keystone"]["median_ms"] - figures["tokens"]["median_ms"]) * 1e3
    print(
        f"keystone/tokens: median {ratio_median:.2f}x, p99 {ratio_p99:.2f}x; "
        f"Keystone validation with a warm cache adds {overhead_us:.0f} us per request (median)"
    )
    result = {
        "bench": "keystone",
        "figures": {m: {k: round(v, 3) for k, v in f.items()} for m, f in figures.items()},
        "ratio_median_keystone_vs_tokens": round(ratio_median, 3),
        "ratio_p99_keystone_vs_tokens": round(ratio_p99, 3),
        "overhead_us_median": round(overhead_us),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
