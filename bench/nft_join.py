#!/usr/bin/env python3
"""The nftables renderer on small changes of a big view: a member joining a security group of N,
and one local endpoint's groups changing, against a baseline version of the code, same run.

Workload (bench/secgroups.py's): N endpoints, all members of one security group whose rules
admit tcp/22 and icmp from its members and tcp/80 from anywhere; 50 of them on this host
(hybrid-plugged), the rest remote. Through the renderer's own ``compile`` and ``apply`` (the
agent's two steps, and the agent's compare of the desired state with the last one), into the
nftables of a network namespace of the bench's own:

- ``join``: a new remote member (its address into the group's set); each sample one more;
- ``local``: one local endpoint leaves the group, then joins it again (its chains change, and
  its address leaves or enters the set), alternately.

Each (code, N) is measured in a process of its own (``--code SRC`` is put first on its
``PYTHONPATH``), the current code and the baseline (``--baseline SRC``, e.g. a checkout of the
commit before) in turn, several rounds each, so the machine's load falls on both alike. Reported:
p50 and p99 of compile, apply and their total (plus the compare), in ms; the ratio of the
baseline's total p50 to ours. The last line is one JSON object.

    sudo .venv/bin/python bench/nft_join.py --n 1000,10000 --samples 30 --baseline /tmp/base/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OURS = HERE.parent / "src"
SG = "/PolicyUniverse/PolicySpace/bench/GbpSecGroup/sg/"
BD = "/PolicyUniverse/PolicySpace/bench/GbpBridgeDomain/bd/"
LOCAL = 50


def child(n: int, samples: int, netns: str) -> dict[str, Any]:
    """In the measured process: build the view, apply it whole, then time the small changes."""
    from policyfabric.agent.renderers.api import RendererContext
    from policyfabric.agent.renderers.nftables.renderer import NftablesRenderer
    from policyfabric.agent.view import BridgeDomain, Endpoint, IpAddress, Mac, Network, SecurityGroup, SgRule

    rules = (
        SgRule(f"{SG}#0", 0, True, "in", 0x0800, 6, (22, 22), remote_group=SG),
        SgRule(f"{SG}#1", 1, True, "in", 0x0800, 1, None, remote_group=SG),
        SgRule(f"{SG}#2", 2, True, "in", 0x0800, 6, (80, 80)),
    )

    def member(i: int, local: bool) -> Endpoint:
        mac = Mac(f"02:50:00:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}")
        ip = IpAddress(f"10.{(i >> 16) & 0xFF}.{(i >> 8) & 0xFF}.{i & 0xFF}")
        where: dict[str, Any] = {"ofport": i, "interface": f"qvo{i}"} if local else {"vtep": "192.0.2.2"}
        return Endpoint(f"bench/ep{i}", mac, (ip,), BD, 0, security_groups=(SG,), **where)

    eps = [member(i, i <= LOCAL) for i in range(1, n + 1)]
    net = Network(
        local=tuple(e for e in eps if e.ofport),
        remote=tuple(e for e in eps if not e.ofport),
        bds={BD: BridgeDomain(BD, vni=0x10001, vrf=0x10000)},
        security_groups={SG: SecurityGroup(SG, rules)},
        address_sets={SG: tuple(e.ips[0] for e in eps)},
    )
    renderer = NftablesRenderer(RendererContext("bench", options={"netns": netns}))
    last = renderer.compile(net)
    t0 = time.perf_counter()
    renderer.apply(last)
    whole = time.perf_counter() - t0
    timings: dict[str, dict[str, list[float]]] = {}
    changed: dict[str, list[int]] = {}

    def step(kind: str, view: Network) -> None:
        nonlocal last
        t0 = time.perf_counter()
        desired = renderer.compile(view)
        t1 = time.perf_counter()
        same = desired == last  # the agent's check: apply only a changed desired state
        t2 = time.perf_counter()
        assert not same
        applied = renderer.apply(desired)
        t3 = time.perf_counter()
        last = desired
        times = timings.setdefault(kind, {"compile": [], "compare": [], "apply": [], "total": []})
        spans = {"compile": t1 - t0, "compare": t2 - t1, "apply": t3 - t2, "total": t3 - t0}
        for key, value in spans.items():
            times[key].append(value)
        changed.setdefault(kind, []).append(applied.added + applied.removed)

    for i in range(samples):  # a member joins (remote): one more each time
        new = member(n + 1 + i, local=False)
        net = replace(net, remote=(*net.remote, new), address_sets={SG: (*net.address_sets[SG], new.ips[0])})
        step("join", net)
    mover = net.local[0]
    for i in range(samples):  # one local endpoint leaves the group, then joins again
        gone = i % 2 == 0
        ep = replace(mover, security_groups=() if gone else (SG,))
        addresses = net.address_sets[SG]
        addresses = tuple(a for a in addresses if a != mover.ips[0]) if gone else (*addresses, mover.ips[0])
        net = replace(net, local=(ep, *net.local[1:]), address_sets={SG: addresses})
        step("local", net)
    import policyfabric

    return {"whole_s": whole, "timings": timings, "changed": changed, "code": policyfabric.__file__}


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, round(0.99 * (len(values) - 1)))]


def measure(code: Path, n: int, samples: int, netns: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    argv = [sys.executable, __file__, "--child", str(n), "--samples", str(samples), "--netns", netns]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{code} N={n}: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="1000,10000", help="group sizes, comma-separated")
    parser.add_argument("--samples", type=int, default=30, help="samples per kind of change, per N and code")
    parser.add_argument("--rounds", type=int, default=3, help="processes per (code, N), taken in turn")
    parser.add_argument("--baseline", type=Path, help="the src directory of the code to compare with")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--netns", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.samples, args.netns)))
        return 0
    if os.geteuid() != 0:
        print("bench/nft_join.py needs root (nftables in a network namespace of its own)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))
    from common import netns, report

    codes = {"ours": OURS, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    per_round = max(1, args.samples // args.rounds)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with netns(f"pfnj-{os.getpid()}") as ns:
        for n in (int(x) for x in args.n.split(",")):
            for r in range(args.rounds):
                for name, code in codes.items():
                    runs.setdefault((name, n), []).append(measure(code, n, per_round, ns))
                    print(f"N={n} round {r + 1}: {name} done", file=sys.stderr)
    results: dict[str, Any] = {}
    rows = []
    for (name, n), done in runs.items():
        assert all(d["code"].startswith(str(codes[name])) for d in done), [d["code"] for d in done]
        for kind in ("join", "local"):
            figures: dict[str, Any] = {"samples": sum(len(d["timings"][kind]["total"]) for d in done)}
            for key in ("compile", "compare", "apply", "total"):
                values = [v for d in done for v in d["timings"][kind][key]]
                figures[f"{key}_p50_ms"] = round(statistics.median(values) * 1000, 2)
                figures[f"{key}_p99_ms"] = round(p99(values) * 1000, 2)
            figures["changed_p50"] = statistics.median([c for d in done for c in d["changed"][kind]])
            figures["whole_table_ms"] = round(statistics.median([d["whole_s"] for d in done]) * 1000, 1)
            results[f"{name} N={n} {kind}"] = figures
    for (name, n), _ in runs.items():
        for kind in ("join", "local"):
            f = results[f"{name} N={n} {kind}"]
            base = results.get(f"baseline N={n} {kind}")
            ratio = round(base["total_p50_ms"] / f["total_p50_ms"], 1) if base and name == "ours" else ""
            rows.append([
                name, n, kind, f["samples"],
                f"{f['compile_p50_ms']} / {f['compile_p99_ms']}",
                f"{f['compare_p50_ms']} / {f['compare_p99_ms']}",
                f"{f['apply_p50_ms']} / {f['apply_p99_ms']}",
                f"{f['total_p50_ms']} / {f['total_p99_ms']}",
                f["changed_p50"], f["whole_table_ms"], ratio,
            ])  # fmt: skip
    columns = ["code", "N", "change", "samples", "compile p50/p99 ms", "compare p50/p99 ms",
               "apply p50/p99 ms", "total p50/p99 ms", "changed", "whole table ms", "ratio"]  # fmt: skip
    title = "nftables renderer: small changes of a big view"
    report(title, columns, rows, {"bench": "nft_join", "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
