#!/usr/bin/env python3
"""The Open vSwitch renderer's own cost per change: compile + plan, in process.

Workload (the converge bench's shape, as view records): N local endpoints on
one host, 4 bridge domains joined by one router, EPGs `web` and `app` per
bridge domain (alternating), `app` consumes tcp/80 of `web` (contract
`http`), every endpoint in one security group `sg` (ingress tcp/22 and icmp
from members of `sg`, tcp/80 from anywhere, egress open), and N/5 remote
endpoints (members of `sg` too) on 20 other hosts.

What is timed is the agent's render path for the OVS renderer, as
``OvsAgent._render`` runs it: ``renderer.compile(net)``, the agent's
``last == desired`` check, and ``renderer.apply(desired)`` down to the flow
mods (the plan); the flow mods go to a stand-in bridge that only counts
them (no ovs-ofctl, no socket: the bundle's own cost is bench/ofchannel.py's).
Each change is a new ``Network`` in which the records that did not change are
the same objects (what the agent's view keeps across reconciles).

- ``full``: a fresh renderer (memo caches cleared) compiling and planning
  the whole bridge (a first sync: ``replace-flows``);
- ``same``: a reconcile with nothing changed (a new ``Network`` of the same
  records): compile + the equality check, no apply;
- ``copied``: nothing changed, but every endpoint record a new object, merely
  equal to the last (a view that does not keep identity);
- ``group``: one endpoint moves between ``web`` and ``app`` (then back,
  untimed);
- ``rule``: a rule (tcp/8000+i) added to ``http`` (then removed, untimed);
- ``join``: a new remote endpoint joins ``sg`` (its address in the address
  set; then leaves, untimed);
- ``plug``: a new local endpoint (a port, in ``sg`` too; then unplugged,
  untimed).

Per scenario: p50 and p99 of the samples (ms) and the flow mods sent.
Run it against another tree (the "before") with PYTHONPATH pointing there:

    PYTHONPATH=src python bench/compile.py [--n 1000,10000] [--samples 30]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import pkgutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from policyfabric.agent.renderers import api
from policyfabric.agent.renderers.ovs import applier as applier_module
from policyfabric.agent.renderers.ovs.renderer import OvsRenderer
from policyfabric.agent.view import (
    BridgeDomain,
    Contract,
    Endpoint,
    Group,
    IpAddress,
    Ipv4Address,
    Mac,
    Network,
    Prefix,
    Router,
    RouterInterface,
    Rule,
    SecurityGroup,
    SgRule,
    router_identity,
)

P = "/PolicyUniverse/PolicySpace/bench"
TUNNEL = 65000  # above every endpoint's port
BDS = 4
SG = f"{P}/GbpSecGroup/sg/"
HTTP = f"{P}/GbpContract/http/"
V4 = 0x0800


class CountingApplier(applier_module.FlowApplier):
    """The real applier (mirror, planner) in front of a bridge that only counts flow mods."""

    def __init__(self) -> None:
        super().__init__("unix:/nonexistent.mgmt", run=self._no_run, channel=False)
        self.mods = 0

    @staticmethod
    def _no_run(argv: Sequence[str], **_: Any) -> str:
        raise AssertionError(f"the bench runs nothing: {argv}")

    def ensure_tlv_map(self) -> None:
        pass

    def execute(self, commands: Sequence[Any]) -> None:
        self.mods = sum(len(getattr(c, "flows", (None,))) for c in commands)


def bd_uri(b: int) -> str:
    return f"{P}/GbpBridgeDomain/bd{b}/"


def group_uri(kind: str, b: int) -> str:
    return f"{P}/GbpEpGroup/{kind}{b}/"


def classid(kind: str, b: int) -> int:
    return 0x4001 + 2 * b + (kind == "app")


def address(i: int, net: int = 10) -> IpAddress:
    return IpAddress(f"{net}.{(i >> 16) & 0xFF}.{(i >> 8) & 0xFF}.{i & 0xFF}")


def endpoint(i: int, kind: str | None = None, *, remote: bool = False) -> Endpoint:
    b = i % BDS
    kind = kind or ("web", "app")[(i // BDS) % 2]
    mac = Mac(
        f"02:{0x51 if remote else 0x50:02x}:00:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"
    )
    where: dict[str, Any] = (
        {"vtep": Ipv4Address(f"192.0.2.{2 + i % 20}")}
        if remote
        else {"ofport": i + 1, "interface": f"tap{i}"}
    )
    return Endpoint(
        f"bench/{'r' if remote else ''}ep{i}",
        mac,
        (address(i + 1, 11 if remote else 10),),
        bd_uri(b),
        classid(kind, b),
        security_groups=(SG,),
        **where,
    )


def http(extra: int = 0) -> Contract:
    rules = [Rule(f"{HTTP}#http", 0, True, "in", V4, 6, (80, 80))]
    rules += [Rule(f"{HTTP}#r{k}", 1 + k, True, "in", V4, 6, (8000 + k, 8000 + k)) for k in range(extra)]
    return Contract(HTTP, tuple(rules))


def network(n: int) -> Network:
    local = tuple(endpoint(i) for i in range(n))
    remote = tuple(endpoint(i, remote=True) for i in range(n // 5))
    groups = {
        group_uri(kind, b): Group(
            group_uri(kind, b),
            classid(kind, b),
            bd_uri(b),
            True,
            provides=(HTTP,) if kind == "web" else (),
            consumes=(HTTP,) if kind == "app" else (),
        )
        for b in range(BDS)
        for kind in ("web", "app")
    }
    bds = {bd_uri(b): BridgeDomain(bd_uri(b), 0x10001 + b, 0x10000) for b in range(BDS)}
    number, mac = router_identity(f"{P}/PfRouter/r/")
    legs = tuple(
        RouterInterface(bd_uri(b), IpAddress(f"10.{200 + b}.0.1"), Prefix(f"10.{200 + b}.0.0/16"))
        for b in range(BDS)
    )
    rules = (
        SgRule(f"{SG}#0", 0, True, "in", V4, 6, (22, 22), remote_group=SG),
        SgRule(f"{SG}#1", 1, True, "in", V4, 1, None, remote_group=SG),
        SgRule(f"{SG}#2", 2, True, "in", V4, 6, (80, 80)),
        SgRule(f"{SG}#3", 3, True, "out", V4),
    )
    return Network(
        local=local,
        remote=remote,
        groups=groups,
        contracts={HTTP: http()},
        bds=bds,
        security_groups={SG: SecurityGroup(SG, rules)},
        address_sets={SG: tuple(sorted({e.ips[0] for e in (*local, *remote)}))},
        routers={f"{P}/PfRouter/r/": Router(f"{P}/PfRouter/r/", number, mac, legs)},
        host="h1",
        tunnel_port=TUNNEL,
    )


def clear_memo() -> None:
    """Every memo cache of the OVS renderer's modules (a fresh agent)."""
    import policyfabric.agent.renderers.ovs as package

    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for value in list(vars(module).values()):
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


class Agent:
    """The agent's render step for the OVS renderer (``OvsAgent._render``), timed."""

    def __init__(self) -> None:
        self.applier = CountingApplier()
        self.renderer = OvsRenderer(api.RendererContext("h1"), self.applier)
        self.last: Any = None

    def render(self, net: Network) -> tuple[float, int]:
        """(seconds, flow mods sent) of one reconcile of ``net``."""
        self.applier.mods = 0
        t0 = time.perf_counter()
        desired = self.renderer.compile(net)
        if self.last is not None and self.last == desired:
            return time.perf_counter() - t0, 0
        self.renderer.apply(desired)
        self.last = desired
        return time.perf_counter() - t0, self.applier.mods


def quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3), "p99_ms": round(p99 * 1000, 3)}


def measure(n: int, samples: int) -> dict[str, Any]:
    base = network(n)
    out: dict[str, Any] = {}
    fulls, mods = [], 0
    for _ in range(3):
        clear_memo()
        gc.collect()
        agent = Agent()
        seconds, mods = agent.render(base)
        fulls.append(seconds)
    out["full"] = {**quantiles(fulls), "mods": mods, "samples": len(fulls)}

    def timed(change: Callable[[int], Network], name: str) -> None:
        times, sent = [], []
        for k in range(samples):
            changed = change(k)
            seconds, m = agent.render(changed)
            times.append(seconds)
            sent.append(m)
            agent.render(replace(base))  # back (untimed): a new Network, the same records
        out[name] = {**quantiles(times), "mods": statistics.median(sent), "samples": samples}

    local = list(base.local)

    def moved(k: int) -> Network:
        i = (k * 7919) % n
        ep = local[i]
        kind = "app" if ep.classid == classid("web", i % BDS) else "web"
        eps = local.copy()
        eps[i] = replace(ep, classid=classid(kind, i % BDS))
        return replace(base, local=tuple(eps))

    def rule_added(k: int) -> Network:
        contract = http()
        rule = Rule(f"{HTTP}#x{k}", 50, True, "in", V4, 6, (9000 + k, 9000 + k))
        return replace(base, contracts={HTTP: replace(contract, rules=(*base.contracts[HTTP].rules, rule))})

    def plugged(k: int) -> Network:
        new = endpoint(n + k)
        members = base.address_sets[SG]
        return replace(base, local=(*base.local, new), address_sets={SG: (*members, new.ips[0])})

    def joined(k: int) -> Network:
        new = endpoint(n + k, remote=True)
        members = base.address_sets[SG]
        return replace(base, remote=(*base.remote, new), address_sets={SG: (*members, new.ips[0])})

    def copied(k: int) -> Network:
        """The same view, every endpoint a new object (what a view without identity gives)."""
        return replace(base, local=tuple(map(replace, base.local)), remote=tuple(map(replace, base.remote)))

    gc.collect()
    timed(lambda k: replace(base), "same")
    timed(copied, "copied")
    timed(moved, "group")
    timed(rule_added, "rule")
    timed(joined, "join")
    timed(plugged, "plug")
    out["flows"] = agent.renderer.flows
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="1000,10000", help="local endpoints, comma-separated")
    parser.add_argument("--samples", type=int, default=30, help="changes timed per scenario")
    parser.add_argument("--label", default="", help="a name for this tree in the JSON line")
    args = parser.parse_args()
    results = {}
    for n in (int(x) for x in args.n.split(",")):
        results[str(n)] = measure(n, args.samples)
        print(f"N={n}: {json.dumps(results[str(n)])}", file=sys.stderr)
    print(json.dumps({"bench": "compile", "label": args.label, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
