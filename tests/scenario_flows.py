"""Every flow the compiler emits for the lab's scenarios, compiled in process (no lab, no sockets).

The lab turns a scenario into flows through an authority, OpFlex and one agent per host. This
builds what each of those agents would compile, straight from the authority's own trees
(``tenant_tree``/``global_tree``) read by the agent's own reader: each host has its scenario
endpoints on ports 1, 2, ..., a tunnel port, a port on every external network (as the lab plugs
them), and the first gateway host of each router is the elected one. It is what the OpenFlow
channel's tests install on a real bridge: the shapes the compiler really emits, not a hand-made list.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from policyfabric.agent.endpoints import declaration, local_endpoint, remote_endpoints
from policyfabric.agent.reader import policy_view
from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.authority.opflex.policy_tree import global_tree, tenant_tree
from policyfabric.authority.service import Authority
from policyfabric.model import scenario as sc
from policyfabric.model.objects import ExternalNetwork
from policyfabric.opflex.gbp import endpoint_uri
from policyfabric.opflex.mo import MO
from policyfabric.store.sqlite import SqliteStore

ROOT = Path(__file__).parents[1]
SCENARIOS = [*sorted((ROOT / "tests" / "scenarios").glob("*.yaml")), ROOT / "examples" / "demo.yaml"]
TUNNEL = 100
EXTERNAL_PORT = 200  # a host's port on external network N is EXTERNAL_PORT + N


def _vtep(index: int) -> str:
    return f"192.0.2.{index + 1}"


def scenario_flows(path: Path) -> dict[str, list[Flow]]:
    """Each host of the scenario at ``path``: the flows its agent compiles (with a tunnel, enforcing
    policy), keyed ``scenario/host``."""
    scenario = sc.load(path)
    problems = sc.check(scenario)
    assert problems == [], problems
    hosts = [str(h["name"]) for h in scenario.raw.get("hosts", [])]
    vtep = {h: _vtep(i) for i, h in enumerate(hosts)}
    gateways: dict[str, dict[str, tuple[str, str]]] = {}
    for tenant in scenario.raw.get("tenants", []):
        for r in tenant.get("routers", []) or []:
            gw: dict[str, Any] = r.get("external_gateway") or {}
            if gw.get("hosts"):
                first = str(gw["hosts"][0])
                vtep.setdefault(first, _vtep(len(vtep)))  # a gateway the lab does not start (demo.yaml)
                gateways.setdefault(str(tenant["name"]), {})[str(r["name"])] = (first, vtep[first])
    with tempfile.TemporaryDirectory() as tmp:
        authority = Authority(SqliteStore(Path(tmp) / "db", sync="normal"))
        authority.create_many([(e.kind, e.spec) for e in scenario.in_order() if e.spec is not None])
        cache: dict[str, MO] = {}
        names = authority.tenants()
        objects, _ = authority.snapshot(None)
        nets = [n for n in objects.get("external_network", []) if isinstance(n, ExternalNetwork)]
        cache.update(global_tree(names, nets).mos)
        for t in names:
            objects, numbers = authority.snapshot(t)
            cache.update(tenant_tree(t, objects, numbers, gateways.get(t, {})).mos)
    view = policy_view(cache)
    endpoints = [
        (str(e["tenant"]), str(e["name"]), str(e["host"])) for e in scenario.raw.get("endpoints", [])
    ]
    out: dict[str, list[Flow]] = {}
    for host in hosts:
        local = []
        for port, (tenant, name, _) in enumerate((e for e in endpoints if e[2] == host), 1):
            ep = local_endpoint(cache, view.groups, f"{tenant}/{name}", endpoint_uri(tenant, name), port)
            assert ep is not None, name
            local.append(ep)
        registry: list[MO] = []
        for tenant, name, there in endpoints:
            if there != host:
                decl = declaration(cache, tenant, name, f"pf-{name}", vtep[there])
                assert decl is not None, name
                registry += decl.all
        remote = remote_endpoints({m.uri: m for m in registry}, vtep[host], {e.key for e in local})
        external = {
            uri: dataclasses.replace(ext, ofport=EXTERNAL_PORT + i)
            for i, (uri, ext) in enumerate(sorted(view.external.items()))
        }
        net = dataclasses.replace(
            view, local=tuple(local), remote=remote, external=external, host=host, tunnel_port=TUNNEL
        )
        out[f"{path.stem}/{host}"] = compile_pipeline(net, TUNNEL)
    return out


def every_scenario() -> dict[str, list[Flow]]:
    """``scenario_flows`` of every scenario under tests/scenarios and of examples/demo.yaml."""
    out: dict[str, list[Flow]] = {}
    for path in SCENARIOS:
        out.update(scenario_flows(path))
    return out
