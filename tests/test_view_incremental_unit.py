"""The agent's view kept up to date incrementally is the view built whole, after every change.

A world: an authority's model of one tenant (every kind of object), written as MO trees by the
authority's own writer (``tenant_tree``) and sent to a real ``PolicyClient`` as the authority's
repository sends it (``repository.diff``: replace, merge_children, delete, through the JSON wire
form and the client's ``_handle``); other hosts' declarations sent to its registry as
``endpoint_update``s (in random parts: children before their entry, entries before their
children); interfaces plugged and unplugged. Random sequences of changes to it (hypothesis):
endpoints moving between groups, joining and leaving security groups, appearing and going; rules
added to and removed from contracts; groups, subnets, router legs and floating IPs coming and
going; class ids and VNIs renumbered; hostile values put into any property of any object and
taken out again. After every step, the incremental view (``ViewState`` fed the URIs the client
reported changed) must equal a view built whole from the same cache (records and problems), as
must a view that runs the safety net's check at every step (which must find nothing missed) and
one built whole at every step from the state before; a record that reads as it did must be the
same object as before.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
import random
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyfabric.agent.endpoints import declaration
from policyfabric.agent.reader import local_endpoint, policy_view, remote_endpoints
from policyfabric.agent.renderers.ovs.ovsdb import Plugged
from policyfabric.agent.view import Invalid, Network
from policyfabric.agent.viewstate import ViewState
from policyfabric.authority.opflex.policy_tree import EndpointMemo, global_tree, tenant_tree
from policyfabric.authority.opflex.repository import diff
from policyfabric.model import objects as o
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.gbp import Cls, Prop, endpoint_uri, uri_of
from policyfabric.opflex.mo import MO, Tree

T = "acme"
HOST, VTEP = "h1", "192.0.2.1"
VTEPS = {"h1": VTEP, "h2": "192.0.2.2", "h3": "192.0.2.3"}
EXTERNAL = {"public": "eth-pub"}
TUNNEL_PORT = 100
HOSTILE: list[Any] = [
    "10.1.0.77 actions=drop",
    "not an address",
    -1,
    1 << 40,
    True,
    [1, 2],
    {"subject": "GbpEpGroup", "reference_uri": "/a b/,actions=NORMAL/"},
    "fe80::1%eth0",
    "02:00:00:00:00:01\n",
    {"subject": "GbpEpGroup", "reference_uri": uri_of(T, Cls.GBP_SEC_GROUP, "sg0")},  # the wrong object
    {"subject": "GbpEpGroup", "reference_uri": uri_of(T, Cls.GBP_EP_GROUP, "g1")},
    {"subject": "GbpBridgeDomain", "reference_uri": uri_of(T, Cls.GBP_BRIDGE_DOMAIN, "bd1")},
    {"subject": "GbpContract", "reference_uri": uri_of(T, Cls.GBP_CONTRACT, "c0")},
]
PUBLIC = o.ExternalNetwork(name="public", cidr="203.0.113.0/24", gateway_ip="203.0.113.1")


def wire(mos: Iterable[MO]) -> list[dict[str, Any]]:
    """MOs as JSON carries them (a copy: nothing is shared with the sender's objects)."""
    return [json.loads(json.dumps(m.to_wire())) for m in mos]


class World:
    """One tenant's intent at the authority, and host h1's agent cache that follows it."""

    def __init__(self) -> None:
        self.specs: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        self.ids: dict[str, dict[str, int]] = {"vni": {}, "classid": {}}
        self.gateways: dict[str, tuple[str, str]] = {"r0": ("h1", VTEP)}
        self.corrupt: dict[tuple[str, str], Any] = {}  # (URI, property) → hostile value (policy)
        self.registry_corrupt: dict[tuple[str, str], Any] = {}
        self.memo: EndpointMemo = {}
        self.tree: Tree | None = None
        self.globals = global_tree([T], [PUBLIC])
        self.sent: dict[str, MO] = {}  # the registry as last sent to the client
        self.changed: set[str] | None = None  # what the client reported since the last view
        self.client = PolicyClient(HOST, [("127.0.0.1", 1)], on_change=self._collect)
        self.plugged: list[Plugged] = []
        self.ofports: dict[str, int] = {"eth-pub": 5}
        self.ports = 10
        self._seed()

    def _collect(self, uris: set[str]) -> None:
        if self.changed is not None:
            self.changed |= uris

    def take(self) -> set[str] | None:
        changed, self.changed = self.changed, set()
        return changed

    def _seed(self) -> None:
        s = self.specs
        for vrf in ("vrf1", "vrf2"):
            s["l3_context"][vrf] = o.L3Context(name=vrf, tenant=T)
            self.ids["vni"][f"l3_context/{vrf}"] = 7000 + len(s["l3_context"])
        for i in range(3):
            s["bridge_domain"][f"bd{i}"] = o.BridgeDomain(
                name=f"bd{i}", tenant=T, l3_context=f"vrf{1 + i % 2}"
            )
            self.ids["vni"][f"bridge_domain/bd{i}"] = 5000 + i
            s["subnet"][f"s{i}"] = o.Subnet(
                name=f"s{i}", tenant=T, bridge_domain=f"bd{i}", cidr=f"10.{i}.0.0/24"
            )
        for i in range(2):
            s["contract"][f"c{i}"] = o.Contract(name=f"c{i}", tenant=T, rules=[rule(i, 0), rule(i, 1)])
        for i in range(4):
            s["endpoint_group"][f"g{i}"] = o.EndpointGroup(
                name=f"g{i}",
                tenant=T,
                bridge_domain=f"bd{i % 3}",
                provides=[f"c{i % 2}"],
                consumes=[f"c{(i + 1) % 2}"],
                intra_group="deny" if i == 3 else "allow",
            )
            self.ids["classid"][f"endpoint_group/g{i}"] = 16000 + i
        for i in range(2):
            s["security_group"][f"sg{i}"] = o.SecurityGroup(
                name=f"sg{i}",
                tenant=T,
                rules=[
                    o.SecurityGroupRule(direction="ingress", protocol="tcp", port=22, remote_group=f"sg{i}"),
                    o.SecurityGroupRule(
                        direction="ingress", protocol="tcp", port=80, remote_ip_prefix="0.0.0.0/0"
                    ),
                    o.SecurityGroupRule(direction="egress"),
                ],
            )
        for i in range(10):
            self.put_endpoint(i, epg=f"g{i % 4}", sgs=[f"sg{i % 2}"], host=("h1", "h2", "h3")[i % 3])
        s["router"]["r0"] = o.Router(
            name="r0",
            tenant=T,
            l3_context="vrf1",
            interfaces=["s0", "s1"],
            external_gateway=o.ExternalGateway(network="public", hosts=["h1", "h2"], ip="203.0.113.2"),
        )
        for i in range(3):
            s["floating_ip"][f"f{i}"] = o.FloatingIp(
                name=f"f{i}", tenant=T, network="public", ip=f"203.0.113.{10 + i}", endpoint=f"e{i}"
            )
        for i in range(0, 10, 3):  # the h1 endpoints, plugged
            self.plug(f"e{i}")

    def put_endpoint(self, i: int, epg: str | None, sgs: list[str], host: str) -> None:
        bd = self.specs["endpoint_group"][epg].bridge_domain if epg in self.specs["endpoint_group"] else "bd0"
        subnet = f"s{bd[2:]}" if epg is None else None
        self.specs["endpoint"][f"e{i}"] = o.Endpoint(
            name=f"e{i}",
            tenant=T,
            epg=epg,
            subnet=subnet,
            ip=[f"10.{bd[2:]}.0.{10 + i}"],
            mac=f"02:00:00:00:{i // 256:02x}:{i % 256:02x}",
            security_groups=sgs,
            host=host,
        )

    def plug(self, name: str, iface_id: str | None = None) -> None:
        self.ports += 1
        port = Plugged(iface_id or f"{T}/{name}", f"tap{self.ports}", self.ports)
        self.plugged = sorted([*self.plugged, port], key=lambda p: p.iface_id)  # a new list, as OVSDB's

    # ---- the authority's side
    def push_policy(self, share: int = 3) -> None:
        """The tenant's tree (with the hostile values in it) sent as the repository sends it, or
        ``share`` (0..3) thirds of each list in it: the rest comes later (an agent also gets
        objects in parts: an answer to a resolve, then a push; an object before the one naming it,
        or after)."""
        objects = {kind: list(specs.values()) for kind, specs in self.specs.items()}
        tree = tenant_tree(T, objects, self.ids, self.gateways, self.memo)
        for (uri, prop), value in self.corrupt.items():
            if uri in tree.mos:
                mo = tree.mos[uri]
                tree.mos[uri] = replace(mo, properties={**mo.properties, prop: value})
        self.tree = tree
        wanted, have = Tree(), Tree()
        wanted.mos = {**tree.mos, **self.globals.mos}
        have.mos = dict(self.client.policy)
        changed, merged, removed = (part[: len(part) * share // 3] for part in diff(have, wanted))
        if share % 2:
            changed.reverse()  # children before their parents
        if changed or merged or removed:
            params = {
                "replace": wire(changed),
                "merge_children": wire(merged),
                "delete": [{"subject": m.subject, "uri": m.uri} for m in removed],
            }
            handle(self.client, "policy_update", params)

    def registry_wanted(self) -> dict[str, MO]:
        """What the hosts declare (h1's own endpoints too: the agent sees its own come back)."""
        out: dict[str, MO] = {}
        for name, ep in self.specs["endpoint"].items():
            decl = declaration(self.client.policy, T, name, f"tap-{name}", VTEPS[ep.host])
            if decl is not None:
                out.update((m.uri, m) for m in decl.all)
        for (uri, prop), value in self.registry_corrupt.items():
            if uri in out:
                out[uri] = replace(out[uri], properties={**out[uri].properties, prop: value})
        return out

    def push_registry(self, share: int) -> None:
        """``share`` (0..3) quarters of what changed in the registry, in some order: the rest
        arrives later (a large answer comes in parts; children may come before their entry)."""
        wanted = self.registry_wanted()
        todo = [m for u, m in sorted(wanted.items()) if self.sent.get(u) != m]
        gone = sorted(u for u in self.sent if u not in wanted)
        todo, gone = todo[: len(todo) * share // 3], gone[: len(gone) * share // 3]
        if share % 2:
            todo.reverse()  # children (longer URIs) first
        if todo or gone:
            handle(
                self.client, "endpoint_update", {"replace": wire(todo), "delete": [{"uri": u} for u in gone]}
            )
        for m in todo:
            self.sent[m.uri] = m
        for u in gone:
            del self.sent[u]


def handle(client: PolicyClient, method: str, params: dict[str, Any]) -> None:
    """A message from the authority, through the client's own handler (in a loop of its own: the
    client resolves what new objects refer to, which goes nowhere with no session)."""

    async def go() -> None:
        await client._handle(None, method, [params])  # type: ignore[arg-type]

    asyncio.run(go())


def rule(contract: int, n: int) -> o.ContractRule:
    protocol = ("tcp", "udp", "icmp")[n % 3]
    return o.ContractRule(
        name=f"r{n}",
        classifier=o.Classifier(
            protocol=protocol,
            port=1000 + n if protocol != "icmp" else None,
            direction=("in", "out", "bidirectional")[(n + contract) % 3],
        ),
        action="drop" if n % 4 == 3 else "allow",
    )


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


# ---- the changes --------------------------------------------------------------------------------


def move(w: World, n: int) -> None:
    """An endpoint moves to another group (or to none: a plain Neutron port on a subnet)."""
    name = sorted(w.specs["endpoint"])[n % len(w.specs["endpoint"])]
    ep = w.specs["endpoint"][name]
    groups = [*sorted(w.specs["endpoint_group"]), None]
    epg = groups[(groups.index(ep.epg) + 1 + n // 7) % len(groups)] if ep.epg in groups else groups[0]
    w.put_endpoint(int(name[1:]), epg, list(ep.security_groups), ep.host)


def membership(w: World, n: int) -> None:
    """An endpoint joins or leaves a security group (a member set gains or loses a member)."""
    name = sorted(w.specs["endpoint"])[n % len(w.specs["endpoint"])]
    ep = w.specs["endpoint"][name]
    sg = f"sg{n // 5 % 2}"
    sgs = (
        [g for g in ep.security_groups if g != sg] if sg in ep.security_groups else [*ep.security_groups, sg]
    )
    w.put_endpoint(int(name[1:]), ep.epg, sgs, ep.host)


def endpoint_comes_or_goes(w: World, n: int) -> None:
    name = f"e{n % 14}"
    if name in w.specs["endpoint"]:
        del w.specs["endpoint"][name]
    else:
        groups: list[str | None] = [*sorted(w.specs["endpoint_group"])] or [None]
        w.put_endpoint(n % 14, groups[n % len(groups)], [f"sg{n % 2}"], ("h1", "h2", "h3")[n % 3])


def contract_rule(w: World, n: int) -> None:
    """A rule added to a contract, or its last one removed."""
    name = f"c{n % 2}"
    c = w.specs["contract"][name]
    rules = c.rules[:-1] if n // 2 % 2 and c.rules else [*c.rules, rule(n % 2, len(c.rules) + n % 5)]
    if len({r.name for r in rules}) == len(rules):
        w.specs["contract"][name] = c.model_copy(update={"rules": rules})


def provides(w: World, n: int) -> None:
    name = f"g{n % 4}"
    g = w.specs["endpoint_group"].get(name)
    if g is not None:
        c = f"c{n // 4 % 2}"
        new = [x for x in g.provides if x != c] if c in g.provides else [*g.provides, c]
        w.specs["endpoint_group"][name] = g.model_copy(update={"provides": new})


def group_comes_or_goes(w: World, n: int) -> None:
    """A group removed (its endpoints still name it) or put back."""
    name = f"g{n % 4}"
    if name in w.specs["endpoint_group"]:
        del w.specs["endpoint_group"][name]
    else:
        w.specs["endpoint_group"][name] = o.EndpointGroup(
            name=name, tenant=T, bridge_domain=f"bd{n % 3}", provides=[f"c{n % 2}"]
        )


def leg(w: World, n: int) -> None:
    """A router leg added or removed; or a subnet going away under one."""
    r = w.specs["router"]["r0"]
    s = f"s{n % 3}"
    if n // 3 % 3 == 2:
        if s in w.specs["subnet"]:
            del w.specs["subnet"][s]
        else:
            w.specs["subnet"][s] = o.Subnet(
                name=s, tenant=T, bridge_domain=f"bd{n % 3}", cidr=f"10.{n % 3}.0.0/24"
            )
        return
    legs = [x for x in r.interfaces if x != s] if s in r.interfaces else [*r.interfaces, s]
    w.specs["router"]["r0"] = r.model_copy(update={"interfaces": legs})


def floating(w: World, n: int) -> None:
    """A floating IP bound to another endpoint, unbound, or the gateway elected elsewhere."""
    if n % 5 == 4:
        w.gateways["r0"] = ("h2", VTEPS["h2"]) if w.gateways["r0"][0] == "h1" else ("h1", VTEP)
        return
    name = f"f{n % 3}"
    f = w.specs["floating_ip"][name]
    target = None if f.endpoint is not None and n % 2 else f"e{n % 10}"
    w.specs["floating_ip"][name] = f.model_copy(update={"endpoint": target})


def renumber(w: World, n: int) -> None:
    """A group's class id or a bridge domain's VNI changes; or a bridge domain moves VRF."""
    if n % 3 == 0:
        w.ids["classid"][f"endpoint_group/g{n % 4}"] = 16100 + n % 50
    elif n % 3 == 1:
        w.ids["vni"][f"bridge_domain/bd{n % 3}"] = 5100 + n % 50
    else:
        bd = w.specs["bridge_domain"][f"bd{n % 3}"]
        vrf = "vrf2" if bd.l3_context == "vrf1" else "vrf1"
        w.specs["bridge_domain"][bd.name] = bd.model_copy(update={"l3_context": vrf})


def sg_rule(w: World, n: int) -> None:
    """A security group gains or loses a rule naming another group as its remote side."""
    name = f"sg{n % 2}"
    sg = w.specs["security_group"][name]
    other = o.SecurityGroupRule(direction="ingress", protocol="udp", port=53, remote_group=f"sg{(n + 1) % 2}")
    rules = [r for r in sg.rules if r != other] if other in sg.rules else [*sg.rules, other]
    w.specs["security_group"][name] = sg.model_copy(update={"rules": rules})


def dhcp_options(w: World, n: int) -> None:
    """A subnet's DHCP options change (on or off, name servers, host routes), or its bridge
    domain's MTU: what the bridge domain's record reads from its subnets and itself."""
    i = n % 3
    if n // 3 % 4 == 3:
        bd = w.specs["bridge_domain"][f"bd{i}"]
        w.specs["bridge_domain"][f"bd{i}"] = bd.model_copy(update={"mtu": 1400 if bd.mtu != 1400 else 1442})
        return
    sub = w.specs["subnet"].get(f"s{i}")
    if sub is None:
        return
    what = n // 3 % 4
    if what == 0:
        update: dict[str, Any] = {"enable_dhcp": not sub.enable_dhcp}
    elif what == 1:
        update = {"dns_nameservers": [] if sub.dns_nameservers else [ipaddress.ip_address(f"10.{i}.0.2")]}
    else:
        route = o.HostRoute(destination=f"10.9{i}.0.0/16", nexthop=f"10.{i}.0.254")
        update = {"host_routes": [] if sub.host_routes else [route]}
    w.specs["subnet"][f"s{i}"] = sub.model_copy(update=update)


def corrupt(w: World, n: int) -> None:
    """A hostile value in some property of some object (or one taken out again)."""
    if n % 4 == 0 and w.corrupt:
        del w.corrupt[sorted(w.corrupt)[n % len(w.corrupt)]]
        return
    assert w.tree is not None
    mos = [m for _, m in sorted(w.tree.mos.items()) if m.properties]
    mo = mos[n % len(mos)]
    props = sorted(mo.properties)
    w.corrupt[(mo.uri, props[n // 7 % len(props)])] = HOSTILE[n // 3 % len(HOSTILE)]


def corrupt_registry(w: World, n: int) -> None:
    if n % 3 == 0 and w.registry_corrupt:
        del w.registry_corrupt[sorted(w.registry_corrupt)[n % len(w.registry_corrupt)]]
        return
    entries = [m for _, m in sorted(w.registry_wanted().items()) if m.properties]
    if entries:
        mo = entries[n % len(entries)]
        props = sorted(mo.properties)
        w.registry_corrupt[(mo.uri, props[n // 5 % len(props)])] = HOSTILE[n // 2 % len(HOSTILE)]


def plugging(w: World, n: int) -> None:
    """An interface plugged (an endpoint of this host or another, or a stray iface-id), unplugged,
    or given another OpenFlow port; or the external network's port comes or goes."""
    if n % 5 == 4:
        if w.ofports:
            w.ofports = {}
        else:
            w.ofports = {"eth-pub": 5 + n % 3}
        return
    if n % 3 == 0 and w.plugged:
        gone = w.plugged[n % len(w.plugged)]
        w.plugged = [p for p in w.plugged if p is not gone]
    elif n % 3 == 1 and w.plugged:
        moved = w.plugged[n % len(w.plugged)]
        w.plugged = [p if p is not moved else replace(p, ofport=p.ofport + 1000) for p in w.plugged]
    else:
        w.plug(f"e{n % 12}", iface_id="stray" if n % 11 == 0 else None)


CHANGES = [
    move,
    membership,
    endpoint_comes_or_goes,
    contract_rule,
    provides,
    group_comes_or_goes,
    leg,
    floating,
    renumber,
    sg_rule,
    corrupt,
    corrupt_registry,
    plugging,
    dhcp_options,
]


# ---- the checks ---------------------------------------------------------------------------------


def whole(w: World) -> Network:
    """The view built whole from the same cache (a fresh state: nothing carried over)."""
    return ViewState(HOST, VTEP, EXTERNAL).network(
        w.client.policy, w.client.endpoints, w.plugged, TUNNEL_PORT, w.ofports, None
    )


def composed(w: World) -> Network:
    """The view composed from the readers' own full builds, as ``OvsAgent.network`` once built it:
    ``policy_view``, ``local_endpoint`` per plugged interface, ``remote_endpoints``."""
    invalid: list[Invalid] = []
    base = policy_view(w.client.policy, invalid)
    local = []
    for p in w.plugged:
        tenant, sep, name = p.iface_id.partition("/")
        if sep and tenant and name:
            ep = local_endpoint(
                w.client.policy,
                base.groups,
                p.iface_id,
                endpoint_uri(tenant, name),
                p.ofport,
                p.name,
                invalid,
            )
            if ep is not None:
                local.append(ep)
    remote = remote_endpoints(w.client.endpoints, VTEP, {e.key for e in local}, invalid)
    external = {}
    for uri, ext in base.external.items():
        ofport = w.ofports.get(EXTERNAL.get(ext.name, ""))
        external[uri] = replace(ext, ofport=ofport) if ofport else ext
    return replace(
        base,
        local=tuple(local),
        remote=remote,
        external=external,
        host=HOST,
        tunnel_port=TUNNEL_PORT,
        invalid=tuple(sorted(set(invalid), key=lambda i: (i.uri, i.field, i.value, i.why))),
    )


MAPS = ("groups", "contracts", "bds", "security_groups", "address_sets", "routers", "external")
TUPLES = ("local", "remote", "floating_ips", "invalid")


def assert_kept(before: Network, after: Network) -> None:
    """What reads as it did is the same object: each record, and each map and tuple as a whole."""
    for field in (*MAPS, *TUPLES):
        was, now = getattr(before, field), getattr(after, field)
        if was == now:
            assert was is now, field
    for field in MAPS:
        was, now = getattr(before, field), getattr(after, field)
        for key in was.keys() & now.keys():
            if was[key] == now[key]:
                assert was[key] is now[key], (field, key)
    for field in ("local", "remote", "floating_ips"):
        old = {repr(x): x for x in getattr(before, field)}
        for x in getattr(after, field):
            if repr(x) in old:
                assert old[repr(x)] is x, (field, x)


class Views:
    """The ways the agent's view is kept, fed the same changes: incrementally with no safety net;
    incrementally with the safety net's check at every step; built whole at every step from the
    state before (what it takes over by identity)."""

    def __init__(self) -> None:
        self.inc = ViewState(HOST, VTEP, EXTERNAL, check_every=float("inf"))
        self.checked = ViewState(HOST, VTEP, EXTERNAL, check_every=0)
        self.rebuilt = ViewState(HOST, VTEP, EXTERNAL)
        self.last: tuple[Network, Network] | None = None

    def step(self, w: World) -> Network:
        """Each view after the changes since the last step: all equal to the view built whole (by
        a state with nothing to take over) and to the readers' own composition; nothing missed;
        what reads as it did, the same object."""
        changed = w.take()
        args = (w.client.policy, w.client.endpoints, w.plugged, TUNNEL_PORT, w.ofports)
        net = self.inc.network(*args, changed)
        checked = self.checked.network(*args, changed)
        rebuilt = self.rebuilt.network(*args, None)
        assert net == whole(w) == checked == rebuilt
        assert net == composed(w)
        assert self.checked.stats.missed == 0
        if self.last is not None:
            assert_kept(self.last[0], net)
            assert_kept(self.last[1], rebuilt)
        self.last = (net, rebuilt)
        return net


STEP = st.tuples(
    st.sampled_from(CHANGES), st.integers(0, 1000), st.integers(0, 3), st.integers(0, 3), st.booleans()
)


def run(changes: Iterable[tuple[Any, int, int, int, bool]]) -> None:
    """Apply ``changes`` (change, its number, thirds of the policy and of the registry updates
    sent now, the registry first) to a world, checking the views after each."""
    w = World()
    w.push_policy()
    w.push_registry(3)
    views = Views()
    views.step(w)
    steps = 1
    for change, n, policy_share, registry_share, registry_first in changes:
        change(w, n)
        if registry_first:
            w.push_registry(registry_share)
        w.push_policy(policy_share)
        if not registry_first:
            w.push_registry(registry_share)
        views.step(w)
        steps += 1
    w.push_policy()
    w.push_registry(3)
    views.step(w)
    assert views.inc.stats.full == 1 and views.inc.stats.incremental == steps
    assert views.checked.stats.checks == steps


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(STEP, min_size=1, max_size=30))
def test_the_incremental_view_is_the_view_built_whole_after_every_change(
    changes: list[tuple[Any, int, int, int, bool]],
) -> None:
    run(changes)


@pytest.mark.parametrize("seed", range(40))
def test_the_same_over_long_random_sequences(seed: int) -> None:
    """Uniformly random steps, more of them (hypothesis favours small values and short lists)."""
    rnd = random.Random(seed)
    run(
        (rnd.choice(CHANGES), rnd.randint(0, 1000), rnd.randint(0, 3), rnd.randint(0, 3), rnd.random() < 0.5)
        for _ in range(40)
    )


# ---- what a change costs ------------------------------------------------------------------------


def settled() -> tuple[World, ViewState, Network]:
    w = World()
    w.push_policy()
    w.push_registry(3)
    inc = ViewState(HOST, VTEP, EXTERNAL, check_every=float("inf"))
    net = inc.network(w.client.policy, w.client.endpoints, w.plugged, TUNNEL_PORT, w.ofports, w.take())
    return w, inc, net


def update(w: World, inc: ViewState) -> Network:
    w.push_policy()
    w.push_registry(3)
    return inc.network(w.client.policy, w.client.endpoints, w.plugged, TUNNEL_PORT, w.ofports, w.take())


def test_an_endpoint_moving_group_reads_that_endpoint_again_and_nothing_else() -> None:
    w, inc, before = settled()
    e0 = w.specs["endpoint"]["e0"]  # plugged here, in g0 (on bd0, as g3: the same address)
    w.put_endpoint(0, "g3", list(e0.security_groups), e0.host)
    after = update(w, inc)
    assert inc.policy.reads == [] and inc.local.reads == 1
    [moved] = [e for e in after.local if e.key == f"{T}/e0"]
    assert moved.classid == w.ids["classid"]["endpoint_group/g3"]
    assert all(a is b for a, b in zip(before.local, after.local, strict=True) if a.key != moved.key)
    assert (
        after.groups is before.groups
        and after.contracts is before.contracts
        and after.remote is before.remote
    )


def test_a_new_list_of_the_same_interfaces_reads_no_endpoint_again() -> None:
    """The agent hands the view a new plugged list on every reconcile (its iface-ids located
    afresh): the same interfaces, in a new list or as new equal objects, are not walked again
    (no replug) and keep the endpoints; one interface whose port changed is a replug that reads
    that one endpoint alone."""
    w, inc, before = settled()
    assert len(w.plugged) > 1
    replugs = inc.local.replugs
    for plugged in ([*w.plugged], [replace(p) for p in w.plugged]):
        after = inc.network(w.client.policy, w.client.endpoints, plugged, TUNNEL_PORT, w.ofports, set())
        assert inc.local.replugs == replugs and inc.local.reads == 0 and after.local is before.local
    first = w.plugged[0]
    w.plugged = [replace(first, ofport=first.ofport + 1000), *w.plugged[1:]]
    after = update(w, inc)
    assert inc.local.replugs == replugs + 1 and inc.local.reads == 1
    [moved] = [e for e in after.local if e.ofport == first.ofport + 1000]
    assert all(a is b for a, b in zip(before.local, after.local, strict=True) if b is not moved)


def test_a_rule_added_to_a_contract_reads_that_contract_again() -> None:
    w, inc, before = settled()
    c0 = w.specs["contract"]["c0"]
    w.specs["contract"]["c0"] = c0.model_copy(update={"rules": [*c0.rules, rule(0, 2)]})
    after = update(w, inc)
    c0_uri = uri_of(T, Cls.GBP_CONTRACT, "c0")
    assert inc.policy.reads == [c0_uri] and inc.local.reads == 0
    assert len(after.contracts[c0_uri].rules) == len(before.contracts[c0_uri].rules) + 1
    assert after.groups is before.groups and after.local is before.local
    c1_uri = uri_of(T, Cls.GBP_CONTRACT, "c1")
    assert after.contracts[c1_uri] is before.contracts[c1_uri]


def test_a_member_joining_a_security_group_reads_one_member() -> None:
    w, inc, before = settled()
    e1 = w.specs["endpoint"]["e1"]  # in sg1, whose rules name sg1's members
    w.put_endpoint(1, e1.epg, ["sg0", "sg1"], e1.host)
    after = update(w, inc)
    sg0 = uri_of(T, Cls.GBP_SEC_GROUP, "sg0")
    assert inc.policy.member_reads == 1
    assert set(after.address_sets[sg0]) == {*before.address_sets[sg0], "10.1.0.11"}
    # the security group whose rules read the member set is read again, and is the same record
    assert inc.policy.reads == [sg0] and after.security_groups is before.security_groups


def test_a_deleted_member_leaves_the_address_set() -> None:
    """The authority deletes the member's object and does not resend its container (the cache
    takes it out of the container's children and reports the container changed)."""
    w, inc, before = settled()
    e0 = w.specs["endpoint"]["e0"]
    w.put_endpoint(0, e0.epg, [], e0.host)
    after = update(w, inc)
    sg0 = uri_of(T, Cls.GBP_SEC_GROUP, "sg0")
    assert "10.0.0.10" in before.address_sets[sg0] and "10.0.0.10" not in after.address_sets[sg0]
    assert after == whole(w)


def test_registry_updates_reach_the_view_through_on_change() -> None:
    """An ``endpoint_update`` (another host's endpoint gone) is reported by the client like a
    policy update: the incremental view drops the remote endpoint."""
    w, inc, before = settled()
    assert f"{T}/e1" in {e.key for e in before.remote}
    l2 = [
        u
        for u, m in w.sent.items()
        if m.subject == Cls.EPR_L2_EP and m.properties.get(Prop.UUID) == f"{T}/e1"
    ]
    handle(w.client, "endpoint_update", {"replace": [], "delete": [{"uri": u} for u in l2]})
    changed = w.take()
    assert changed is not None and set(l2) <= changed
    after = inc.network(w.client.policy, w.client.endpoints, w.plugged, TUNNEL_PORT, w.ofports, changed)
    assert f"{T}/e1" not in {e.key for e in after.remote} and after.local is before.local


def test_unknown_changes_or_new_maps_build_the_view_whole() -> None:
    w, inc, _ = settled()
    inc.network(w.client.policy, w.client.endpoints, w.plugged, TUNNEL_PORT, w.ofports, None)
    assert inc.stats.full == 2
    other = copy.copy(w.client.policy)
    inc.network(other, w.client.endpoints, w.plugged, TUNNEL_PORT, w.ofports, set())
    assert inc.stats.full == 3


def test_the_safety_net_finds_a_change_no_one_reported_reads_it_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A change the client did not report (here: the cache changed behind its back) is found by
    the periodic check of every node's inputs, read, counted and logged."""
    now = [0.0]
    w = World()
    w.push_policy()
    w.push_registry(3)
    inc = ViewState(HOST, VTEP, EXTERNAL, check_every=60, clock=lambda: now[0])
    inc.network(w.client.policy, w.client.endpoints, w.plugged, TUNNEL_PORT, w.ofports, w.take())
    c0 = uri_of(T, Cls.GBP_CONTRACT, "c0")
    w.client.policy[c0] = replace(w.client.policy[c0], properties={Prop.NAME: "renamed"})  # unreported
    stale = inc.network(w.client.policy, w.client.endpoints, w.plugged, TUNNEL_PORT, w.ofports, set())
    assert stale != whole(w) and inc.stats.missed == 0
    now[0] = 61
    fixed = inc.network(w.client.policy, w.client.endpoints, w.plugged, TUNNEL_PORT, w.ofports, set())
    assert fixed == whole(w) and inc.stats.missed == 1 and inc.stats.checks == 1 and inc.stats.full == 1
    assert f"1 change(s) no one reported, now read: {c0}" in caplog.text


def test_a_failed_update_is_followed_by_a_whole_build(monkeypatch: pytest.MonkeyPatch) -> None:
    w, inc, _ = settled()
    e0 = w.specs["endpoint"]["e0"]
    w.put_endpoint(0, "g2", list(e0.security_groups), e0.host)
    w.push_policy()
    changed = w.take()

    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(inc.remote, "update", broken)
    with pytest.raises(RuntimeError):
        inc.network(w.client.policy, w.client.endpoints, w.plugged, TUNNEL_PORT, w.ofports, changed)
    monkeypatch.undo()
    net = inc.network(w.client.policy, w.client.endpoints, w.plugged, TUNNEL_PORT, w.ofports, set())
    assert net == whole(w) and inc.stats.full == 2


def test_an_endpoint_follows_what_is_refused_under_the_object_its_group_reference_names() -> None:
    """A local endpoint is left out while something under its group's URI is refused, even when
    the reference names an object that is no group (here a security group, whose record stays):
    its refusals coming and going reach the endpoint."""
    w = World()
    w.push_policy()
    w.push_registry(3)
    views = Views()
    views.step(w)
    sg0 = uri_of(T, Cls.GBP_SEC_GROUP, "sg0")
    w.corrupt[(endpoint_uri(T, "e0"), Prop.EPG)] = {"subject": Cls.GBP_EP_GROUP, "reference_uri": sg0}
    w.push_policy()
    assert f"{T}/e0" in {e.key for e in views.step(w).local}
    assert w.tree is not None
    rule0 = next(
        u for u, m in w.tree.mos.items() if m.subject == Cls.GBP_SEC_GROUP_RULE and u.startswith(sg0)
    )
    w.corrupt[(rule0, Prop.ORDER)] = -1
    w.push_policy()
    net = views.step(w)
    assert f"{T}/e0" not in {e.key for e in net.local} and sg0 in net.security_groups
    del w.corrupt[(rule0, Prop.ORDER)]
    w.push_policy()
    assert f"{T}/e0" in {e.key for e in views.step(w).local}


@pytest.mark.integration  # a subprocess
def test_the_view_benchmark_runs_and_prints_its_figures() -> None:
    bench = Path(__file__).resolve().parent.parent / "bench" / "view.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--n", "40", "--samples", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])["n40"]
    assert set(figures) == {"cold", "full", "check", "group", "rule", "join"}
    assert all(figures[case]["p50"] > 0 and figures[case]["ratio"] > 0 for case in ("group", "rule", "join"))


@pytest.mark.integration  # a subprocess
def test_the_reconcile_benchmark_runs_and_prints_its_figures() -> None:
    bench = Path(__file__).resolve().parent.parent / "bench" / "reconcile.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--n", "40", "--samples", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])["n40"]
    assert set(figures) == {"group", "rule", "group+save"}
    assert all(f["p99"] >= f["p50"] > 0 for f in figures.values())
