#!/usr/bin/env python3
"""Security groups that scale: address sets against per-address expansion.

Workload: N endpoints, all members of one security group `sg` whose rules
are ingress tcp/22 and icmp from members of `sg` (remote_group), ingress
tcp/80 from anywhere; egress open. One host serves L = min(N, 50) of them
(the rest are on other hosts, reached through the tunnel), so its bridge
holds the overlay flows of all N plus the security group flows.

Per N, on a real Open vSwitch (private ovsdb-server + ovs-vswitchd in their
own network namespace), through the agent's own compiler and applier:
- flows on the bridge, and those of the security group tables (62, 63);
- full sync: compile (pure; memo caches cleared first) + apply (one
  ``replace-flows`` bundle into an empty bridge);
- one member joining (a new remote address): compile (by the same
  ``SectionCompiler``, as the renderer keeps one: only the sections that
  changed) + apply (the sections that changed, one delta bundle), and how
  many flows that changed (all: the new endpoint's L2 and ARP flows too; and
  those of the security group tables);
- the nftables renderer on the same view, into the same namespace, through
  its own apply: set elements, rules, compile + apply of the whole table
  (one ``nft -f`` transaction), and of a member joining (one transaction of
  set element updates);
- in the same run, the naive expansion (one flow per local port x rule x
  member address, what per-address rules need without sets) and the ratio.
The last line is one JSON object.

    sudo .venv/bin/python bench/secgroups.py [--n 10,100,1000,10000] [--repeat 3] [--local 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from common import flow_count, private_ovs, report
from policyfabric.agent.renderers.api import RendererContext
from policyfabric.agent.renderers.nftables.renderer import NftablesRenderer
from policyfabric.agent.renderers.ovs import pipeline, sections, tables
from policyfabric.agent.renderers.ovs.applier import FlowApplier
from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.view import BridgeDomain, Endpoint, IpAddress, Mac, Network, SecurityGroup, SgRule

console = Console(stderr=True)
SG = "/PolicyUniverse/PolicySpace/bench/GbpSecGroup/sg/"
BD_URI = "/PolicyUniverse/PolicySpace/bench/GbpBridgeDomain/bd/"
BD = BridgeDomain(BD_URI, vni=0x10001, vrf=0x10000)
TUNNEL_PORT = 1000
V4 = 0x0800
RULES = (
    SgRule(f"{SG}#0", 0, True, "in", V4, 6, (22, 22), remote_group=SG),
    SgRule(f"{SG}#1", 1, True, "in", V4, 1, None, remote_group=SG),
    SgRule(f"{SG}#2", 2, True, "in", V4, 6, (80, 80)),
)


def address(i: int) -> str:
    return f"10.{(i >> 16) & 0xFF}.{(i >> 8) & 0xFF}.{i & 0xFF}"


def member(i: int, local: bool) -> Endpoint:
    mac = f"02:50:00:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"
    where: dict[str, Any] = (
        {"ofport": i + 1, "interface": f"qvo{i + 1}"} if local else {"vtep": f"192.0.2.{2 + i % 200}"}
    )
    return Endpoint(
        f"bench/ep{i}", Mac(mac), (IpAddress(address(i + 1)),), BD_URI, 0, security_groups=(SG,), **where
    )


def network(n: int, local: int) -> Network:
    eps = [member(i, i < local) for i in range(n)]
    return Network(
        local=tuple(e for e in eps if e.ofport),
        remote=tuple(e for e in eps if e.vtep),
        bds={BD_URI: BD},
        security_groups={SG: SecurityGroup(SG, RULES)},
        address_sets={SG: tuple(e.ips[0] for e in eps)},
    )


def joined(net: Network, n: int) -> Network:
    new = member(n, local=False)
    return replace(
        net,
        remote=(*net.remote, new),
        address_sets={SG: (*net.address_sets[SG], new.ips[0])},
    )


def clear_memo() -> None:
    """Every memo cache of the compiler (a fresh agent)."""
    for module in (pipeline, sections):
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


def naive_flows(local: int, n: int) -> int:
    """Per-address expansion: a flow per local port, rule and member address (rules without a
    remote side: a flow per local port)."""
    per_member = sum(1 for r in RULES if r.remote_group)
    return local * per_member * n + local * sum(1 for r in RULES if not r.remote_group)


def nft_figures(net: Network, bigger: Network, netns: str) -> dict[str, Any]:
    """The nftables renderer on the same view, into the bench's namespace, through its own apply:
    set elements, rules, the whole table (compile + one transaction), then a member joining
    (compile + one transaction of set element updates)."""
    renderer = NftablesRenderer(RendererContext("bench", options={"netns": netns}))
    t0 = time.perf_counter()
    ruleset = renderer.compile(net)
    renderer.apply(ruleset)
    full_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    joined = renderer.apply(renderer.compile(bigger))
    join_s = time.perf_counter() - t0
    rules = sum(1 for line in ruleset.chains.splitlines() if line.startswith("    ") and " hook " not in line)
    return {
        "nft_set_elements": ruleset.elements,
        "nft_rules": rules,
        "nft_full_s": round(full_s, 4),
        "nft_join_s": round(join_s, 4),
        "nft_join_elements_changed": joined.added + joined.removed,
    }


def sg_flows(flows: list[Flow]) -> set[Flow]:
    return {f for f in flows if f.table in (tables.SG_EGRESS, tables.SG_INGRESS)}


def one_run(n: int, local: int, workdir: Path) -> dict[str, Any]:
    with private_ovs(workdir / "ovs", f"pfsg-{os.getpid()}-{n}") as ovs:
        applier = FlowApplier(ovs.mgmt("br-int"), ovs.env)
        net = network(n, local)
        clear_memo()
        compiler = pipeline.SectionCompiler()  # the renderer's: it keeps the last view's sections
        t0 = time.perf_counter()
        before = compiler.compile(net, TUNNEL_PORT)
        compile_s = time.perf_counter() - t0
        applied = applier.sync(before)
        bigger = joined(net, n)
        t0 = time.perf_counter()
        sections_after = compiler.compile(bigger, TUNNEL_PORT)
        join_compile = time.perf_counter() - t0
        delta = applier.sync(sections_after)
        flows, after = list(before), list(sections_after)
        assert flow_count(ovs) == len(after), (flow_count(ovs), len(after))
        naive, sets = naive_flows(local, n), len(sg_flows(flows))
        return {
            "flows": len(flows),
            "sg_flows": sets,
            "naive_sg_flows": naive,
            "naive_vs_sets": round(naive / sets, 1),
            "full_compile_s": round(compile_s, 4),
            "full_apply_s": round(applied.seconds, 4),
            "join_compile_s": round(join_compile, 4),
            "join_apply_s": round(delta.seconds, 4),
            "join_s": round(join_compile + delta.seconds, 4),
            "join_flows_changed": delta.added + delta.removed,  # the overlay's included
            "join_sg_flows_changed": len(sg_flows(flows) ^ sg_flows(after)),
            **nft_figures(net, bigger, str(ovs.netns)),
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="10,100,1000,10000", help="group sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="runs per N (medians are reported)")
    parser.add_argument("--local", type=int, default=50, help="members on the measured host (at most N)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        console.print("bench/secgroups.py needs root (it runs Open vSwitch in its own network namespace)")
        return 2
    results: dict[str, dict[str, Any]] = {}
    for n in (int(x) for x in args.n.split(",")):
        runs = []
        for r in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="pf-secgroups-") as tmp:
                runs.append(one_run(n, min(n, args.local), Path(tmp)))
            console.print(f"N={n} run {r + 1}: {runs[-1]}")
        results[str(n)] = {
            key: statistics.median([r[key] for r in runs])
            if isinstance(runs[0][key], float)
            else runs[0][key]
            for key in runs[0]
        }
    columns = ("flows", "sg_flows", "naive_sg_flows", "naive_vs_sets", "full_compile_s", "full_apply_s",
               "join_s", "join_flows_changed", "join_sg_flows_changed", "nft_set_elements", "nft_rules",
               "nft_full_s", "nft_join_s")  # fmt: skip
    rows = [[n, *(figures[c] for c in columns)] for n, figures in results.items()]
    report("security groups: address sets vs per-address expansion (medians)", ["N", *columns], rows,
           {"bench": "secgroups", "results": results})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
