"""The repository's incremental flush (``tenant_model.py``) against the whole-tenant build it replaced.

Random sequences of REST-level writes (the service layer, a real SQLite store: many are refused,
as they would be over REST) to one tenant: endpoints created, moved between groups and subnets,
re-addressed, joining and leaving security groups; EPGs, contracts and their rules, security
groups and their rules naming remote groups and prefixes, subnets, bridge domains, routers with
external gateways, floating IPs; and the gateway election's result changing under the routers.
After every flush:

- the patched tree equals ``tenant_tree`` built from scratch from the store (children compared as
  sets: a container's order is not meaningful, and the patched one moves its last child into a
  removed one's place);
- the intent index equals one built from scratch from that tree (entries and URI index);
- a client cache that started from the first tree and applied every push the flushes made holds
  that tree too (the pushes carried every change, as a whole-tree diff would have);
- the repository kept its model (the flushes were incremental, not whole rebuilds in disguise).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from policyfabric.authority.gateways import RouterKey
from policyfabric.authority.opflex.intent_index import IntentIndex, tenant_endpoints
from policyfabric.authority.opflex.policy_tree import tenant_tree
from policyfabric.authority.opflex.repository import PolicyRepository, revision_mo
from policyfabric.authority.opflex.tenant_model import TenantModel
from policyfabric.authority.service import Authority
from policyfabric.model import objects as o
from policyfabric.model.errors import PolicyError
from policyfabric.model.kinds import BY_NAME as K
from policyfabric.opflex.cache import apply_policy_update
from policyfabric.opflex.mo import MO
from policyfabric.store.sqlite import SqliteStore

T = "acme"
SUBNETS = {
    "s1": "10.1.0.0/24",
    "s2": "10.2.0.0/24",
    "s3": "10.3.0.0/24",
    "s4": "2001:db8:4::/64",
    "s5": "2001:db8:5::/64",
}
HOSTS = ("h1", "h2", "h3")

Canonical = dict[str, tuple[Any, ...]]
POOLS: dict[str, list[str]] = {
    "l3_context": ["v1", "v2"],
    "bridge_domain": ["b1", "b2", "b3"],
    "subnet": list(SUBNETS),
    "contract": ["c1", "c2"],
    "security_group": ["g1", "g2", "g3"],
    "endpoint_group": ["e1", "e2", "e3"],
    "endpoint": [f"x{i}" for i in range(10)],
    "router": ["r1", "r2"],
    "floating_ip": ["f1", "f2"],
}
WEIGHTS: dict[str, int] = {  # how often each kind is written
    "l3_context": 1,
    "bridge_domain": 2,
    "subnet": 3,
    "contract": 3,
    "security_group": 4,
    "endpoint_group": 4,
    "endpoint": 12,
    "router": 3,
    "floating_ip": 2,
}


def canonical(mos: Mapping[str, MO]) -> Canonical:
    return {
        uri: (
            m.subject,
            m.properties,
            sorted(m.children),
            m.parent_subject,
            m.parent_uri,
            m.parent_relation or m.subject,
        )
        for uri, m in mos.items()
    }


class Writer:
    """Random REST-level writes to tenant ``T``."""

    def __init__(self, authority: Authority, rng: random.Random) -> None:
        self.a, self.rng = authority, rng
        self.accepted = self.refused = 0

    def existing(self, kind: str) -> list[dict[str, Any]]:
        items, _ = self.a.list(K[kind], T)
        return items

    def names(self, kind: str) -> list[str]:
        return [i["name"] for i in self.existing(kind)]

    def some(self, pool: list[str], most: int = 2) -> list[str]:
        return self.rng.sample(pool, self.rng.randint(0, min(most, len(pool))))

    def spec(self, kind: str, name: str) -> o.Spec:
        r = self.rng
        vrfs, bds = self.names("l3_context") or ["v1"], self.names("bridge_domain") or ["b1"]
        groups = ["g1", "g2", "g3"]
        body: dict[str, Any] = {"name": name, "tenant": T}
        if kind == "l3_context":
            pass
        elif kind == "bridge_domain":
            body["l3_context"] = r.choice(vrfs)
        elif kind == "subnet":
            body.update(bridge_domain=r.choice(bds), cidr=SUBNETS[name])
            if ":" in SUBNETS[name]:
                body["ipv6_ra_mode"] = r.choice(["slaac", None])
        elif kind == "contract":
            body["rules"] = [
                {
                    "name": f"r{i}",
                    "classifier": {"protocol": r.choice(["tcp", "udp"]), "port": r.choice([22, 80, 443])},
                    "action": r.choice(["allow", "drop", "log"]),
                }
                for i in range(r.randint(0, 3))
            ]
        elif kind == "security_group":
            rules = []
            for _ in range(r.randint(0, 3)):
                rule: dict[str, Any] = {"direction": r.choice(["ingress", "egress"]), "protocol": "tcp"}
                rule["port"] = r.choice([22, 80])
                choice = r.random()
                if choice < 0.5:
                    rule["remote_group"] = r.choice(groups)
                elif choice < 0.7:
                    rule["remote_ip_prefix"] = r.choice(["192.0.2.0/24", "198.51.100.0/24"])
                rules.append(rule)
            body["rules"] = rules
        elif kind == "endpoint_group":
            contracts = self.names("contract")
            body.update(
                bridge_domain=r.choice(bds),
                provides=self.some(contracts),
                consumes=self.some(contracts),
                intra_group=r.choice(["allow", "deny"]),
            )
        elif kind == "endpoint":
            epgs, subnets = self.names("endpoint_group"), self.names("subnet")
            if epgs and r.random() < 0.7:
                body["epg"] = r.choice(epgs)
            if subnets and ("epg" not in body or r.random() < 0.3):
                body["subnet"] = r.choice(subnets)
            ips = []
            for s in self.some(subnets):
                if ":" in SUBNETS[s]:
                    ips.append(r.choice(["slaac", SUBNETS[s].replace(":/64", f":{r.randint(16, 99):x}")]))
                else:
                    ips.append(SUBNETS[s].replace("0/24", str(r.randint(10, 99))))
            body.update(ip=ips, security_groups=self.some(self.names("security_group")))
            body["host"] = r.choice([None, *HOSTS])
        elif kind == "router":
            body.update(l3_context=r.choice(vrfs), interfaces=self.some(self.names("subnet")))
            if r.random() < 0.6:
                body["external_gateway"] = {"network": "ext", "hosts": self.some(list(HOSTS), 3)}
        elif kind == "floating_ip":
            body.update(network="ext", endpoint=r.choice([None, *self.names("endpoint")]))
        return K[kind].spec.model_validate(body)

    def write(self) -> None:
        r = self.rng
        kind = r.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        name = r.choice(POOLS[kind])
        found = [i for i in self.existing(kind) if i["name"] == name]
        try:
            if found and r.random() < 0.25:
                self.a.delete(K[kind], found[0]["id"])
            elif found:
                self.a.replace(K[kind], found[0]["id"], self.spec(kind, name))
            else:
                self.a.create(K[kind], self.spec(kind, name))
            self.accepted += 1
        except (PolicyError, ValueError):  # refused, or a body REST would answer 422 (ValueError)
            self.refused += 1


def seeded(tmp_path: Path) -> Authority:
    authority = Authority(SqliteStore(tmp_path / "db", sync="normal"))
    authority.create_many(
        [
            (K["tenant"], o.Tenant(name=T)),
            (K["external_network"], o.ExternalNetwork(name="ext", cidr="203.0.113.0/24")),
            (K["l3_context"], o.L3Context(name="v1", tenant=T)),
            (K["bridge_domain"], o.BridgeDomain(name="b1", tenant=T, l3_context="v1")),
            (K["subnet"], o.Subnet(name="s1", tenant=T, bridge_domain="b1", cidr=SUBNETS["s1"])),
            (K["endpoint_group"], o.EndpointGroup(name="e1", tenant=T, bridge_domain="b1")),
        ]
    )
    return authority


def check(
    repo: PolicyRepository,
    authority: Authority,
    gateways: Mapping[RouterKey, tuple[str, str]],
    cache: dict[str, MO],
) -> None:
    objects, numbers = authority.snapshot(T)
    active = {r: v for (t, r), v in gateways.items() if t == T}
    reference = tenant_tree(T, objects, numbers, active)
    assert canonical(repo.trees[T].mos) == canonical(reference.mos)
    # the agent also holds the tenant's PfRevision (sent beside the tree): the revision it reflects
    stamp = revision_mo(T, 0).uri  # (absent from a cache that was copied from the tree, not pushed)
    assert stamp not in cache or cache[stamp].properties["revision"] == authority.revision()
    assert canonical({u: m for u, m in cache.items() if u != stamp}) == canonical(reference.mos)
    fresh = IntentIndex()
    fresh.update({T: tenant_endpoints(T, reference)})
    assert repo.intent._tenants.get(T, {}) == fresh._tenants.get(T, {})
    assert repo.intent._by_uri == fresh._by_uri


def run(tmp_path: Path, seed: int, flushes: int, writes: Callable[[random.Random], int]) -> Writer:
    rng = random.Random(seed)
    authority = seeded(tmp_path)
    gateways: dict[RouterKey, tuple[str, str]] = {}
    pushes: list[dict[str, Any]] = []

    def fan_out(method: str, table: Any, parts: dict[str, Any]) -> None:
        pushes.append({k: [form for _, form in v] for k, v in parts.items()})

    async def go() -> Writer:
        repo = PolicyRepository(
            authority,
            fan_out=fan_out,
            schedule=lambda: None,
            gateways=lambda: gateways,
            rebuilt=lambda t: None,
        )
        await repo.rebuild({None, T}, push=False)
        model = repo._models[T]
        cache = {uri: MO.from_wire(mo.to_wire()) for uri, mo in repo.trees[T].mos.items()}
        writer = Writer(authority, rng)
        for _ in range(flushes):
            for _ in range(writes(rng)):
                writer.write()
            if rng.random() < 0.2:  # the election moves a router's gateway
                router = rng.choice(["r1", "r2"])
                if rng.random() < 0.3:
                    gateways.pop((T, router), None)
                else:
                    host = rng.choice(HOSTS)
                    gateways[(T, router)] = (host, f"192.0.2.{HOSTS.index(host) + 1}")
            pushes.clear()
            await repo.rebuild({T}, push=True)
            for push in pushes:
                apply_policy_update(
                    cache,
                    [MO.from_wire(m) for m in push["replace"]],
                    [MO.from_wire(m) for m in push["merge_children"]],
                    [d["uri"] for d in push["delete"]],
                )
            check(repo, authority, gateways, cache)
            assert repo._models[T] is model  # incremental all along
        return writer

    return asyncio.run(go())


@pytest.mark.parametrize("seed", range(6))
def test_random_writes_patch_the_tree_as_a_whole_build_would(tmp_path: Path, seed: int) -> None:
    writer = run(tmp_path, seed, flushes=60, writes=lambda rng: rng.randint(1, 3))
    assert writer.accepted >= 60  # the sequence did things (refusals are part of it)


def test_a_flush_after_many_writes_at_once(tmp_path: Path) -> None:
    """Bursts (the coalesced flush of many writes) patch as well as single writes."""
    writer = run(tmp_path, 99, flushes=12, writes=lambda rng: rng.randint(10, 30))
    assert writer.accepted >= 60


def test_a_subnet_moving_to_another_bridge_domain_takes_its_endpoints_and_router_legs(tmp_path: Path) -> None:
    """An endpoint on a subnet alone (no group) is in that subnet's bridge domain, and a router's
    leg points into the subnet's container: both follow the subnet when it moves."""
    authority = seeded(tmp_path)
    authority.create_many(
        [
            (K["bridge_domain"], o.BridgeDomain(name="b2", tenant=T, l3_context="v1")),
            (K["subnet"], o.Subnet(name="s2", tenant=T, bridge_domain="b1", cidr=SUBNETS["s2"])),
            (K["endpoint"], o.Endpoint(name="x1", tenant=T, subnet="s2", ip=["10.2.0.10"])),
            (K["router"], o.Router(name="r1", tenant=T, l3_context="v1", interfaces=["s2"])),
        ]
    )
    cache: dict[str, MO] = {}
    pushes: list[dict[str, Any]] = []

    async def go() -> None:
        repo = PolicyRepository(
            authority,
            fan_out=lambda method, table, parts: pushes.append(
                {k: [f for _, f in v] for k, v in parts.items()}
            ),
            schedule=lambda: None,
            gateways=dict,
            rebuilt=lambda t: None,
        )
        await repo.rebuild({None, T}, push=False)
        cache.update({uri: MO.from_wire(mo.to_wire()) for uri, mo in repo.trees[T].mos.items()})
        [s2], _ = authority.list(K["subnet"], T, "s2")
        moved = o.Subnet(name="s2", tenant=T, bridge_domain="b2", cidr=SUBNETS["s2"])
        authority.replace(K["subnet"], s2["id"], moved)
        await repo.rebuild({T}, push=True)
        for push in pushes:
            apply_policy_update(
                cache,
                [MO.from_wire(m) for m in push["replace"]],
                [MO.from_wire(m) for m in push["merge_children"]],
                [d["uri"] for d in push["delete"]],
            )
        check(repo, authority, {}, cache)
        entry = repo.intent.get(f"{T}/x1")
        assert entry is not None and entry.bd is not None and entry.bd.endswith("/GbpBridgeDomain/b2/")

    asyncio.run(go())


def test_a_group_created_again_between_flushes_gives_its_endpoints_its_new_class_id(tmp_path: Path) -> None:
    """Between two flushes an EPG and its endpoint are deleted and created again, the same: the
    endpoint's spec and MO are unchanged, but the group has a new class id, which its entry reads."""
    authority = seeded(tmp_path)
    endpoint = o.Endpoint(name="x1", tenant=T, epg="e1", ip=["10.1.0.10"], mac="02:00:00:00:00:01")
    authority.create(K["endpoint"], endpoint)

    async def go() -> None:
        repo = PolicyRepository(
            authority, fan_out=lambda *a: None, schedule=lambda: None, gateways=dict, rebuilt=lambda t: None
        )
        await repo.rebuild({None, T}, push=False)
        before = repo.intent.get(f"{T}/x1")
        [x1], _ = authority.list(K["endpoint"], T, "x1")
        [e1], _ = authority.list(K["endpoint_group"], T, "e1")
        authority.delete(K["endpoint"], x1["id"])
        authority.delete(K["endpoint_group"], e1["id"])
        authority.create(K["endpoint_group"], o.EndpointGroup(name="e1", tenant=T, bridge_domain="b1"))
        authority.create(K["endpoint"], endpoint)
        await repo.rebuild({T}, push=True)
        check(repo, authority, {}, {uri: MO.from_wire(mo.to_wire()) for uri, mo in repo.trees[T].mos.items()})
        after = repo.intent.get(f"{T}/x1")
        assert before is not None and after is not None and after.classid != before.classid

    asyncio.run(go())


def test_a_failed_update_falls_back_to_a_whole_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Should patching ever fail, the tenant is built whole (and logged), not left stale."""
    authority = seeded(tmp_path)

    async def go() -> None:
        repo = PolicyRepository(
            authority, fan_out=lambda *a: None, schedule=lambda: None, gateways=dict, rebuilt=lambda t: None
        )
        await repo.rebuild({None, T}, push=False)
        first = repo._models[T]
        authority.create(K["endpoint"], o.Endpoint(name="late", tenant=T, epg="e1", ip=["10.1.0.77"]))

        def broken(*args: Any) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(TenantModel, "update", broken)
        await repo.rebuild({T}, push=True)
        assert repo._models[T] is not first
        assert "/PolicyUniverse/PolicySpace/acme/PfEndpoint/late/" in repo.trees[T].mos
        assert repo.intent.get("acme/late") is not None
        monkeypatch.undo()

        # and should applying a patch to the tree fail, the tenant is marked to be built whole
        marked: list[str | None] = []
        repo.mark_dirty = lambda tenants: marked.extend(tenants)  # type: ignore[method-assign]
        authority.create(K["endpoint"], o.Endpoint(name="later", tenant=T, epg="e1", ip=["10.1.0.78"]))
        monkeypatch.setattr(TenantModel, "apply", broken)
        await repo.rebuild({T}, push=True)
        assert marked == [T] and T not in repo._models
        monkeypatch.undo()
        await repo.rebuild({T}, push=True)
        assert "/PolicyUniverse/PolicySpace/acme/PfEndpoint/later/" in repo.trees[T].mos
        assert repo.intent.get("acme/later") is not None

    asyncio.run(go())
