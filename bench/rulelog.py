#!/usr/bin/env python3
"""Rule logging's cost per connection, with real packets, in one lab (tests/scenarios/rulelog.yaml).

The same two endpoints, the same contract: tcp/80 is allowed by a rule that logs (`action: log`),
tcp/8080 by one that does not. Rounds alternate the two ports (so the machine's load hits both
alike); each connection is timed from `connect()` to its completion in the client's namespace
(the first packet is the one copied to the agent). Figures: p50 and p99 of each, their ratio,
and the lines the agent wrote (one per logged connection, while under the rate limit: the
connections are paced below it).

    .venv/bin/python bench/rulelog.py [--connections 200] [--renderer ovs|nftables]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "tests" / "scenarios" / "rulelog.yaml"

CLIENT = """
import json, socket, sys, time
target, ports, n = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], int(sys.argv[3])
out = {p: [] for p in ports}
for i in range(n):
    for p in ports if i % 2 else ports[::-1]:
        s = socket.socket()
        t0 = time.perf_counter()
        s.connect((target, p))
        out[p].append((time.perf_counter() - t0) * 1e3)
        s.close()
    time.sleep(0.02)  # 2 connections per 20 ms: below the log's 100 lines a second
print(json.dumps(out))
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=200, help="connections per port")
    parser.add_argument("--renderer", choices=("ovs", "nftables"), default="ovs")
    args = parser.parse_args()

    from policyfabric.lab.lab import Lab
    from policyfabric.model import scenario as sc

    with TemporaryDirectory() as tmp:
        path = SCENARIO
        if args.renderer == "nftables":
            path = Path(tmp) / "rulelog-nft.yaml"
            text = SCENARIO.read_text().replace(
                "hosts: [{name: h1}]", "hosts: [{name: h1, renderer: nftables}]"
            )
            path.write_text(text)
        lab = Lab.create(path, Path(tmp) / "lab", lambda s: print(s, file=sys.stderr))
        servers = []
        try:
            lab.up(sc.load(path))
            web, app = lab.state.endpoints["web1"], lab.state.endpoints["app1"]
            for port in (80, 8080):
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", web.netns, sys.executable, "-m", "policyfabric.lab.probe",
                     "serve", "tcp", str(port)],
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
                servers.append(proc)
            log = lab.dir / "h1" / "agent" / "rulelog.jsonl"
            before = len(log.read_text().splitlines()) if log.exists() else 0
            done = subprocess.run(
                ["ip", "netns", "exec", app.netns, sys.executable, "-c", CLIENT, "10.7.0.10", "80,8080",
                 str(args.connections)],
                capture_output=True, text=True, check=True, timeout=600,
            )  # fmt: skip
            times = {int(k): v for k, v in json.loads(done.stdout).items()}
            subprocess.run(["sleep", "1"], check=True)
            lines = (len(log.read_text().splitlines()) if log.exists() else 0) - before
        finally:
            for proc in servers:
                proc.kill()
                proc.wait()
            lab.down()
    logged, plain = times[80], times[8080]
    figures = {
        "renderer": args.renderer,
        "connections_per_port": args.connections,
        "logged_connect_p50_ms": round(statistics.median(logged), 3),
        "logged_connect_p99_ms": round(pct(logged, 0.99), 3),
        "plain_connect_p50_ms": round(statistics.median(plain), 3),
        "plain_connect_p99_ms": round(pct(plain, 0.99), 3),
        "p50_ratio": round(statistics.median(logged) / statistics.median(plain), 2),
        "lines_written": lines,
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
