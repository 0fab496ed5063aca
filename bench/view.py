#!/usr/bin/env python3
"""The agent's view: what ``OvsAgent.network`` costs after one change, against a full build.

Workload: one tenant of N endpoints, all plugged on this host (h1): N/50 groups over N/500 bridge
domains (one subnet each, all joined by one router with an external gateway), N/200 contracts of
three rules, every endpoint in security group ``default`` and every other one in ``web`` (both
with a rule whose remote side is the group's own members), ten floating IPs. The cache is filled
as an agent's is: the authority's own tree (``tenant_tree``) diffed by the repository's ``diff``
into ``policy_update``s, and the registry with the host's own declarations, through the client's
message handler (``PolicyClient._handle``); the changed URIs reach the agent as in its loop
(``on_change``). No OVS: ``network()`` is pure apart from reading the bridge's ports.

Per N, each figure over ``--samples`` samples (p50, p99, in ms), all in the same run:
- cold: the first build, with nothing to reuse (one sample);
- full: ``network()`` with the changes unknown (a full build: it reuses what read the identical
  objects, as the agent's memoised build did before);
- group: after one endpoint moved to another group (same bridge domain, same address);
- rule: after one rule added to a contract;
- join: after one endpoint joined security group ``web`` (a member set gains a member);
- check: the safety net's check of every node's inputs (by identity), with no change;
and each change's p50 over the full build's. After each case the view is checked equal to one
built whole from the same cache. Run the same script on a tree whose agent rebuilds the view on
every call (``PYTHONPATH=OLD/src``) for the before figures: each change then costs a full build.
With ``--freeze``, the cache is moved out of the cyclic collector's sight once filled
(``gc.freeze()``): at 10,000 endpoints a full collection scans millions of objects, tens of ms
that land in whichever sample it interrupts. The last line is one JSON object.

    .venv/bin/python bench/view.py [--n 1000,10000] [--samples 40] [--freeze]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import statistics
import time
from types import SimpleNamespace
from typing import Any

from common import report
from policyfabric.agent.endpoints import declaration
from policyfabric.agent.ovs_agent import AgentConfig, OvsAgent
from policyfabric.agent.renderers.ovs.ovsdb import Plugged
from policyfabric.agent.view import Network
from policyfabric.authority.opflex.policy_tree import EndpointMemo, global_tree, tenant_tree
from policyfabric.authority.opflex.repository import diff
from policyfabric.model import objects as o
from policyfabric.opflex.mo import MO, Tree

T = "bench"
VTEP = "192.0.2.1"
TUNNEL_PORT = 100


def wire(mos: list[MO]) -> list[dict[str, Any]]:
    return [json.loads(json.dumps(m.to_wire())) for m in mos]


class Tenant:
    """The tenant's intent, written and sent to the agent's client as the authority does."""

    def __init__(self, n: int, agent: OvsAgent) -> None:
        self.n, self.agent = n, agent
        self.groups, self.bds, self.contracts = max(4, n // 50), max(2, n // 500), max(2, n // 200)
        self.specs: dict[str, dict[str, Any]] = {}
        self.ids: dict[str, dict[str, int]] = {"vni": {"l3_context/vrf": 7000}, "classid": {}}
        self.memo: EndpointMemo = {}
        self.tree: Tree | None = None
        self.rules = 0
        self._intent()

    def _intent(self) -> None:
        s: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        s["l3_context"]["vrf"] = o.L3Context(name="vrf", tenant=T)
        for b in range(self.bds):
            s["bridge_domain"][f"bd{b}"] = o.BridgeDomain(name=f"bd{b}", tenant=T, l3_context="vrf")
            s["subnet"][f"s{b}"] = o.Subnet(
                name=f"s{b}", tenant=T, bridge_domain=f"bd{b}", cidr=f"10.{b}.0.0/16"
            )
            self.ids["vni"][f"bridge_domain/bd{b}"] = 5000 + b
        for c in range(self.contracts):
            s["contract"][f"c{c}"] = o.Contract(
                name=f"c{c}",
                tenant=T,
                rules=[
                    o.ContractRule(name=f"r{r}", classifier=o.Classifier(protocol="tcp", port=8000 + r))
                    for r in range(3)
                ],
            )
        for g in range(self.groups):
            s["endpoint_group"][f"g{g}"] = o.EndpointGroup(
                name=f"g{g}",
                tenant=T,
                bridge_domain=f"bd{g % self.bds}",
                provides=[f"c{g % self.contracts}"],
                consumes=[f"c{(g + 1) % self.contracts}"],
            )
            self.ids["classid"][f"endpoint_group/g{g}"] = 16000 + g
        for sg in ("default", "web"):
            s["security_group"][sg] = o.SecurityGroup(
                name=sg,
                tenant=T,
                rules=[
                    o.SecurityGroupRule(direction="ingress", protocol="tcp", port=22, remote_group=sg),
                    o.SecurityGroupRule(
                        direction="ingress", protocol="tcp", port=80, remote_ip_prefix="0.0.0.0/0"
                    ),
                    o.SecurityGroupRule(direction="egress"),
                ],
            )
        self.specs = s
        for i in range(self.n):
            self.endpoint(i, i % self.groups, ["default", "web"] if i % 2 == 0 else ["default"])
        s["router"]["r0"] = o.Router(
            name="r0",
            tenant=T,
            l3_context="vrf",
            interfaces=[f"s{b}" for b in range(self.bds)],
            external_gateway=o.ExternalGateway(network="public", hosts=["h1"], ip="203.0.113.2"),
        )
        for f in range(10):
            s["floating_ip"][f"f{f}"] = o.FloatingIp(
                name=f"f{f}", tenant=T, network="public", ip=f"203.0.113.{10 + f}", endpoint=f"ep{f}"
            )

    def endpoint(self, i: int, group: int, sgs: list[str]) -> None:
        b = group % self.bds
        self.specs["endpoint"][f"ep{i}"] = o.Endpoint(
            name=f"ep{i}",
            tenant=T,
            epg=f"g{group}",
            ip=[f"10.{b}.{i // 250}.{i % 250 + 2}"],
            mac=f"02:50:00:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}",
            security_groups=sgs,
            host="h1",
        )

    async def push(self) -> None:
        """The tree after the last change, as the difference from the one before."""
        objects = {kind: list(specs.values()) for kind, specs in self.specs.items()}
        tree = tenant_tree(T, objects, self.ids, {"r0": ("h1", VTEP)}, self.memo)
        updates = [diff(self.tree, tree)]
        if self.tree is None:
            updates.append(diff(None, global_tree([T], [PUBLIC])))
        self.tree = tree
        for changed, merged, removed in updates:
            params = {
                "replace": wire(changed),
                "merge_children": wire(merged),
                "delete": [{"subject": m.subject, "uri": m.uri} for m in removed],
            }
            await self.agent.client._handle(None, "policy_update", [params])  # type: ignore[arg-type]

    async def declare(self) -> None:
        """The host's own declarations, back from the registry (filtered out of the remote ones)."""
        mos: list[MO] = []
        for i in range(self.n):
            decl = declaration(self.agent.client.policy, T, f"ep{i}", f"tap{i}", VTEP)
            assert decl is not None
            mos += decl.all
        await self.agent.client._handle(None, "endpoint_update", [{"replace": wire(mos), "delete": []}])  # type: ignore[arg-type]


PUBLIC = o.ExternalNetwork(name="public", cidr="203.0.113.0/24", gateway_ip="203.0.113.1")
KINDS = (
    "l3_context",
    "bridge_domain",
    "subnet",
    "contract",
    "endpoint_group",
    "security_group",
    "endpoint",
    "router",
    "floating_ip",
)


def stats(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    return {"p50": round(statistics.median(ms), 3), "p99": round(statistics.quantiles(ms, n=100)[98], 3)}


async def measure(n: int, samples: int, freeze: bool) -> dict[str, dict[str, float]]:
    agent = OvsAgent(AgentConfig("h1", [("127.0.0.1", 1)], "unix:/nonexistent/db.sock", tunnel_ip=VTEP))
    agent.ovsdb = SimpleNamespace(ofports={})  # type: ignore[assignment]
    agent.client.on_change = agent._cache_changed
    incremental = "changed" in inspect.signature(agent.network).parameters
    plugged = [Plugged(f"{T}/ep{i}", f"tap{i}", i + 1) for i in range(n)]
    tenant = Tenant(n, agent)
    await tenant.push()
    await tenant.declare()
    if freeze:  # the cache as it is now: never looked at by the cyclic collector again
        gc.collect()
        gc.freeze()

    def network(changed: set[str] | None) -> tuple[Network, float]:
        t0 = time.perf_counter()
        if incremental:
            net = agent.network(plugged, TUNNEL_PORT, changed)
        else:
            net = agent.network(plugged, TUNNEL_PORT)  # the agent before: a whole build every time
        return net, time.perf_counter() - t0

    def take() -> set[str] | None:
        changed, agent._changed = agent._changed, set()
        return changed

    first, cold = network(take())
    assert len(first.local) == n, len(first.local)
    out: dict[str, dict[str, float]] = {"cold": {"p50": round(cold * 1000, 3), "p99": round(cold * 1000, 3)}}
    out["full"] = stats([network(None)[1] for _ in range(samples)])
    mover = joiner = 1

    async def change(case: str, k: int) -> None:
        nonlocal mover, joiner
        if case == "group":  # to a group on the same bridge domain: the same address
            i = mover = (mover + 2) % n
            group = (int(tenant.specs["endpoint"][f"ep{i}"].epg[1:]) + tenant.bds) % tenant.groups
            tenant.endpoint(i, group, list(tenant.specs["endpoint"][f"ep{i}"].security_groups))
        elif case == "rule":
            tenant.rules += 1
            name = f"c{k % tenant.contracts}"
            c = tenant.specs["contract"][name]
            extra = o.ContractRule(
                name=f"x{tenant.rules}", classifier=o.Classifier(protocol="udp", port=9000 + k)
            )
            tenant.specs["contract"][name] = c.model_copy(update={"rules": [*c.rules, extra]})
        else:  # an odd endpoint (in default only) joins web
            i = joiner = (joiner + 2) % n
            ep = tenant.specs["endpoint"][f"ep{i}"]
            tenant.endpoint(i, int(ep.epg[1:]), [*ep.security_groups, "web"])
        await tenant.push()

    if incremental:  # the safety net's check of every node's inputs, with no change
        checks = []
        for _ in range(samples):
            agent.view._last_check = float("-inf")
            checks.append(network(set())[1])
        out["check"] = stats(checks)
    for case in ("group", "rule", "join"):
        times = []
        for k in range(samples):
            await change(case, k)
            net, seconds = network(take())
            times.append(seconds)
        out[case] = stats(times)
        if incremental:  # what was measured is right: the view built whole from the same cache
            whole, _ = network(None)
            assert net == whole, case
            take()
        out[case]["ratio"] = round(out[case]["p50"] / out["full"]["p50"], 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1000,10000", help="endpoints, comma-separated")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument(
        "--freeze",
        action="store_true",
        help="gc.freeze() once the cache is filled (no full collections of it)",
    )
    args = parser.parse_args()
    result: dict[str, Any] = {}
    rows = []
    for n in (int(x) for x in args.n.split(",")):
        figures = asyncio.run(measure(n, args.samples, args.freeze))
        gc.unfreeze()
        result[f"n{n}"] = figures
        for case, f in figures.items():
            rows.append([n, case, f["p50"], f["p99"], f.get("ratio", "")])
    report(
        f"OvsAgent.network(), {args.samples} samples per case",
        ["endpoints", "case", "p50 ms", "p99 ms", "p50 / full p50"],
        rows,
        result,
    )


if __name__ == "__main__":
    main()
