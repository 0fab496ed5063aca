"""The Open vSwitch pipeline of ``br-int``, compiled as a pure function, in sections.

``compile_pipeline(network, tunnel_port)`` returns every flow the bridge
should hold; it does no I/O. It only assembles the parts, one module each:
``switching`` (classification, port security, ARP, L2, flooding, output),
``routing`` (distributed routing), ``external`` (floating IPs, SNAT),
``group_policy`` (contracts), ``secgroups`` (security groups). The tables
(what each may match, set and go to) and the registers' roles are declared
once, in ``tables.py``; the tests hold every flow to them (``verify``).

A new connection passes only if every layer that applies to it allows it:
group policy when either end is in an EPG (an end without one, class 0, is
never a contract party), then the sender's security groups (on the sender's
host) and the receiver's (on the receiver's host) for endpoints they govern.
Remote groups are address sets: one clause flow per member address, shared by
every rule that names the group, so flows grow with members + rules.

Group policy is checked on both hosts of a cross-host flow: the sender knows the
destination's group from the registry, the receiver gets the source group in
a Geneve option (``tun_metadata0``, class 0x5046). VXLAN-GBP would be the
OpFlex way, but OVS's userspace datapath does not put the GBP extension on
the wire (checked with OVS 3.1), so the tunnels are Geneve. Each host's conntrack sees both
directions, so replies pass as established on both.

**Sections.** The flows come in sections, one per object they come from
(``sections.py``: a local or remote endpoint, a bridge domain, a router, an
external port, a floating IP, a group, a contract, a security group, an
address set, the fixed flows). ``SectionCompiler`` keeps what it compiled
last and, for a new view, rebuilds only the sections whose inputs changed:
endpoints are told apart by identity (the view keeps an unchanged record the
same object; a new object that is merely equal is rebuilt through the memo
caches, which give back the very tuple of before; ``tracked.py``), and the
aggregates that several sections read (a bridge domain's ports and remote
hosts, a security group's local endpoints, the groups with local endpoints,
an address set's members) are counted up and down by what comes and goes,
so a one-endpoint change costs that endpoint's sections plus the few objects
around it, not a walk of every endpoint in Python. A local port's part of
its security groups (its clause in each rule) is in its endpoint's section,
and each member address of a remote group is a section of its own, so
neither a port nor a member joining rebuilds a group's flows. The result is
still a pure function of the view: the same sections a fresh compiler gives
for that view (tests/test_sections_unit.py holds it to that).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from policyfabric.agent.renderers.ovs import external, group_policy, secgroups
from policyfabric.agent.renderers.ovs.flows import Flow, flow
from policyfabric.agent.renderers.ovs.routing import routed_flows, router_flows
from policyfabric.agent.renderers.ovs.sections import SectionKey, Sections, cookie_of, stamp
from policyfabric.agent.renderers.ovs.switching import base_flows, bd_flows, local_endpoint_flows
from policyfabric.agent.renderers.ovs.switching import remote_endpoint_flows as remote_l2
from policyfabric.agent.renderers.ovs.tables import OUTPUT, POLICY, ROUTING, goto
from policyfabric.agent.renderers.ovs.tracked import AddressSet, EndpointIndex, pick, sorted_bump
from policyfabric.agent.view import (
    BridgeDomain,
    Contract,
    Endpoint,
    ExternalNet,
    Group,
    Network,
    Router,
    SecurityGroup,
)

Routes = tuple[tuple[int, str], ...]  # (number, MAC) of the active routers on a bridge domain
Section = tuple[Flow, ...]
SgContext = tuple[SecurityGroup, secgroups.Families]  # a security group, its remote groups' families


# ---- section builders: memoised, so equal inputs give the identical tuple


@lru_cache(maxsize=1 << 17)
def local_section(
    ep: Endpoint,
    bd: BridgeDomain | None,
    routes: Routes,
    tunnel: int | None,
    enforce: bool,
    sgs: tuple[SgContext, ...],
) -> Section:
    """A local endpoint: classification, port security, ARP, L2, output; the routes to it; its
    port's default deny and its clauses in the rules of its security groups (``sgs``)."""
    key = ("ep", ep.key)
    cookie = cookie_of(key)
    flows: list[Flow] = []
    if bd is not None:
        flows += local_endpoint_flows(ep, bd, cookie)
        if not (ep.ofport is None and tunnel is None):
            for number, mac in routes:
                flows += routed_flows(ep, bd, number, mac, tunnel or 0, cookie)
    if enforce and ep.sg_governed:
        flows.append(secgroups.port_flow(ep.ofport or 0, cookie, secgroups.logs(sgs)))
        flows += secgroups.port_flows(ep.ofport or 0, sgs, cookie)
    return stamp(key, flows, cookie)


@lru_cache(maxsize=1 << 17)
def remote_section(
    ep: Endpoint, bd: BridgeDomain | None, local: bool, routes: Routes, tunnel: int | None
) -> Section:
    """A remote endpoint: L2 through the tunnel and ARP answers (in a bridge domain with local
    endpoints), and the routes to it through a router active here."""
    key = ("remote", ep.key)
    cookie = cookie_of(key)
    flows: list[Flow] = []
    if bd is not None and tunnel is not None:
        if local and ep.vtep is not None:
            flows += remote_l2(ep, bd, tunnel, cookie)
        for number, mac in routes:
            flows += routed_flows(ep, bd, number, mac, tunnel, cookie)
    return stamp(key, flows, cookie)


@lru_cache(maxsize=1 << 12)
def bd_section(
    bd: BridgeDomain, ports: tuple[int, ...], vteps: tuple[str, ...], tunnel: int | None
) -> Section:
    return stamp(("bd", bd.uri), bd_flows(bd, ports, vteps, tunnel))


@lru_cache(maxsize=1 << 12)
def router_section(
    router: Router,
    legs: tuple[tuple[BridgeDomain, Any], ...],
    ext: ExternalNet | None,
    gateway_here: bool,
    has_local: bool,
    tunnel: int | None,
    vrf_zone: int,
) -> Section:
    flows = router_flows(router, legs)
    flows += external.router_external_flows(
        router, ext, gateway_here=gateway_here, has_local=has_local, tunnel_port=tunnel, vrf_zone=vrf_zone
    )
    return stamp(("router", router.uri), flows)


@lru_cache(maxsize=1 << 12)
def extnet_section(ext: ExternalNet) -> Section:
    key = ("extnet", ext.uri)
    return stamp(key, external.port_flows(ext, cookie_of(key, learned=True)))


@lru_cache(maxsize=1 << 12)
def fip_section(fips: tuple[tuple[external.LocalFip, int], ...]) -> Section:
    return stamp(("fip", fips[0][0].fip.ip), [f for fip, zone in fips for f in external.fip_flows(fip, zone)])


@lru_cache(maxsize=1 << 14)
def group_section(group: Group) -> Section:
    return stamp(("group", group.uri), [group_policy.group_flow(group)])


@lru_cache(maxsize=1 << 14)
def contract_section(contract: Contract, providers: tuple[int, ...], consumers: tuple[int, ...]) -> Section:
    return stamp(("contract", contract.uri), group_policy.contract_flows(contract, providers, consumers))


@lru_cache(maxsize=1 << 12)
def sg_section(sg: SecurityGroup, families: secgroups.Families) -> Section:
    return stamp(("sg", sg.uri), secgroups.sg_flows(sg, families))


@lru_cache(maxsize=64)
def base_section(tunnel: int | None, enforce: bool) -> Section:
    """The fixed flows: table misses, conntrack and the fixed group policy (or, when another
    renderer enforces policy, POLICY passing everything to OUTPUT), the tunnel's output."""
    rules = [*group_policy.base_flows(), *secgroups.base_flows()]
    if not enforce:
        rules = [flow(POLICY, 0, None, goto(OUTPUT))]
    return stamp(
        ("base",), [*base_flows(tunnel), flow(ROUTING, 0, None, "drop"), *external.base_flows(), *rules]
    )


class SectionCompiler:
    """Views into ``Sections``, rebuilding only what changed since the last view it compiled (the
    module docstring says how). One per renderer: it holds the last view's indexes."""

    def __init__(self, enforce_policy: bool = True) -> None:
        self.enforce = enforce_policy
        self._reset(None)

    def _reset(self, tunnel: int | None) -> None:
        self.tunnel = tunnel
        self.last: Sections | None = None
        self.announcements: frozenset[external.Announcement] = frozenset()
        self._local = EndpointIndex()
        self._remote = EndpointIndex()
        # what several sections read, counted up and down as endpoints come and go
        self._ports: dict[str, list[int]] = {}  # bridge domain URI → its local ports, sorted (flooding)
        self._vteps: dict[str, Counter[str]] = {}  # bridge domain URI → the hosts of its remote endpoints
        self._classids: Counter[int] = Counter()  # groups with local endpoints
        self._sg_in: dict[str, dict[int, Endpoint]] = {}  # security group → its local endpoints
        # the context each endpoint's section was built in: its bridge domain's, its groups'
        self._ctx: dict[str, tuple[BridgeDomain | None, bool, Routes]] = {}
        self._sg_ctx: dict[str, SgContext | None] = {}
        self._dirty_bds: set[str] = set()
        self._bd_inputs: dict[str, tuple[BridgeDomain, tuple[int, ...], tuple[str, ...]]] = {}
        self._small: dict[SectionKey, Section] = {}  # every section but the endpoints'
        self._memo: dict[SectionKey, tuple[Callable[..., Section], tuple[Any, ...], Section]] = {}
        self._addrsets: dict[str, AddressSet] = {}  # remote groups that active security groups name
        self._parties: tuple[Any, bool, tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]] = (
            None,
            False,
            ({}, {}),
        )  # (the groups, the outside is a party, each contract's providers and consumers)

    def compile(self, net: Network, tunnel_port: int | None) -> Sections:
        """The sections of ``net`` (with the tunnel on ``tunnel_port``): those of the last compile
        where nothing they read changed, the very same object if nothing did."""
        if tunnel_port != self.tunnel or self.last is None:
            self._reset(tunnel_port)  # the tunnel is in nearly every section: start afresh
        dirty_local, dirty_remote = self._endpoints(net)
        local_bds = frozenset(self._local.in_bd)
        routers = sorted(net.routers.values(), key=lambda r: r.uri)
        self._contexts(net, local_bds, routers, dirty_local, dirty_remote)

        updates: dict[SectionKey, Section] = {}  # () for a section that goes
        for kind, dirty, index, build in (
            ("ep", dirty_local, self._local.by_key, self._local_section),
            ("remote", dirty_remote, self._remote.by_key, self._remote_section),
        ):
            for key in dirty:  # in the view's order (a fresh compile: the view's)
                skey: SectionKey = (kind, key)
                records = index.get(key)
                section = build(records) if records else ()
                updates[skey] = section  # kept below only if it changed
        small = self._small_sections(net, local_bds, routers, updates)
        for skey in self._small.keys() - small.keys():
            updates[skey] = ()
        for skey, section in small.items():
            if self._small.get(skey) is not section:
                updates[skey] = section
        self._small = small

        updates = {k: v for k, v in updates.items() if (old := self._get(k)) is not v and (old or v)}
        if self.last is None:
            self.last = Sections({k: v for k, v in updates.items() if v})
        elif updates:
            self.last = self.last.derive(updates)
        return self.last

    def _get(self, key: SectionKey) -> Section:
        return self.last.get(key) if self.last is not None else ()

    def _endpoints(self, net: Network) -> tuple[dict[str, None], dict[str, None]]:
        """Take in the endpoints that left and joined; the keys whose sections they change."""
        gone, came = self._local.update(net.local)
        ports: Counter[tuple[str, int]] = Counter()
        for ep, n in [*((e, -1) for e in gone), *((e, 1) for e in came)]:
            ports[ep.bd, ep.ofport or 0] += n
            if ep.classid:
                self._classids[ep.classid] += n
            for g in ep.security_groups:
                members = self._sg_in.setdefault(g, {})
                if n > 0:
                    members[id(ep)] = ep
                else:
                    members.pop(id(ep), None)
                    if not members:
                        del self._sg_in[g]
        self._classids = +self._classids  # drop the groups that have none left
        for (bd, port), n in ports.items():
            if n:
                sorted_bump(self._ports.setdefault(bd, []), port, n)
                if not self._ports[bd]:
                    del self._ports[bd]
                self._dirty_bds.add(bd)
        dirty_local = dict.fromkeys(e.key for e in (*gone, *came))

        gone, came = self._remote.update(net.remote)
        vteps: Counter[tuple[str, str]] = Counter()
        for ep, n in [*((e, -1) for e in gone), *((e, 1) for e in came)]:
            if ep.vtep is not None:
                vteps[ep.bd, ep.vtep] += n
        for (bd, vtep), n in vteps.items():
            hosts = self._vteps.setdefault(bd, Counter())
            before = hosts[vtep] > 0
            hosts[vtep] += n
            if (hosts[vtep] > 0) != before:  # a host new to the bridge domain, or gone from it
                self._dirty_bds.add(bd)
            if hosts[vtep] <= 0:
                del hosts[vtep]
            if not hosts:
                del self._vteps[bd]
        return dirty_local, dict.fromkeys(e.key for e in (*gone, *came))

    def _contexts(
        self,
        net: Network,
        local_bds: frozenset[str],
        routers: list[Router],
        dirty_local: dict[str, None],
        dirty_remote: dict[str, None],
    ) -> None:
        """Each bridge domain's and security group's context; the endpoints of one that changed
        are rebuilt."""
        routes: dict[str, list[tuple[int, str]]] = {}
        for r in routers:
            if r.bds & local_bds or net.is_active_gateway(r):
                for b in r.bds:
                    routes.setdefault(b, []).append((r.number, r.mac))
        ctx: dict[str, tuple[BridgeDomain | None, bool, Routes]] = {}
        for b in self._local.in_bd.keys() | self._remote.in_bd.keys():
            ctx[b] = (net.bds.get(b), b in local_bds, tuple(routes.get(b, ())))
            if self._ctx.get(b) != ctx[b]:
                dirty_local.update(dict.fromkeys(e.key for e in self._local.in_bd.get(b, {}).values()))
                dirty_remote.update(dict.fromkeys(e.key for e in self._remote.in_bd.get(b, {}).values()))
                self._dirty_bds.add(b)
        self._ctx = ctx
        sg_ctx: dict[str, SgContext | None] = {}
        for g, members in self._sg_in.items():
            sg = net.security_groups.get(g)
            sg_ctx[g] = (sg, self._families_of(sg, net)) if sg is not None and self.enforce else None
            if self._sg_ctx.get(g) != sg_ctx[g]:
                dirty_local.update(dict.fromkeys(e.key for e in members.values()))
        self._sg_ctx = sg_ctx

    def _families_of(self, sg: SecurityGroup, net: Network) -> secgroups.Families:
        """Which of the remote groups ``sg``'s rules name have IPv4 and IPv6 members."""
        out = []
        for g in secgroups.remote_groups(sg):
            addresses = self._addrsets.get(g)
            if addresses is None:
                addresses = self._addrsets[g] = AddressSet(g)
            addresses.take(net.address_sets.get(g, ()))
            out.append((g, *addresses.families))
        return tuple(out)

    def _local_section(self, records: Sequence[Endpoint]) -> Section:
        if len(records) == 1:
            ep = records[0]
            bd, _, routes = self._ctx.get(ep.bd, (None, False, ()))
            sgs = tuple(c for c in map(self._sg_ctx.get, ep.security_groups) if c is not None)
            return local_section(ep, bd, routes, self.tunnel, self.enforce, sgs)
        ordered = sorted(records, key=repr)
        return stamp(("ep", records[0].key), [f for ep in ordered for f in self._local_section([ep])])

    def _remote_section(self, records: Sequence[Endpoint]) -> Section:
        if len(records) == 1:
            ep = records[0]
            bd, local, routes = self._ctx.get(ep.bd, (None, False, ()))
            return remote_section(ep, bd, local, routes, self.tunnel)
        ordered = sorted(records, key=repr)
        return stamp(("remote", records[0].key), [f for ep in ordered for f in self._remote_section([ep])])

    def _memoised(
        self, memo: dict[SectionKey, Any], key: SectionKey, build: Callable[..., Section], *args: Any
    ) -> Section:
        """``build(*args)``, without even hashing ``args`` when each is the object of last time."""
        last = self._memo.get(key)
        if last is not None and last[0] is build and all(a is b for a, b in zip(last[1], args, strict=True)):
            memo[key] = last
            return last[2]
        section = build(*args)
        memo[key] = (build, args, section)
        return section

    def _small_sections(
        self,
        net: Network,
        local_bds: frozenset[str],
        routers: list[Router],
        updates: dict[SectionKey, Section],
    ) -> dict[SectionKey, Section]:
        """Every section but the endpoints' and the address sets' members: bridge domains, routers,
        external ports, floating IPs, groups, contracts, security groups, the fixed flows."""
        out: dict[SectionKey, Section] = {}
        memo: dict[SectionKey, Any] = {}
        tunnel = self.tunnel

        def put(key: SectionKey, section: Section) -> None:
            if section:
                out[key] = section

        for b in sorted(local_bds):
            bd = net.bds.get(b)
            if bd is None:
                continue
            if b in self._dirty_bds or b not in self._bd_inputs:
                ports = tuple(self._ports.get(b, ()))
                vteps = tuple(sorted(self._vteps.get(b, ()))) if tunnel is not None else ()
                self._bd_inputs[b] = (bd, ports, vteps)
            _, ports, vteps = self._bd_inputs[b]
            put(("bd", b), self._memoised(memo, ("bd", b), bd_section, bd, ports, vteps, tunnel))
        self._dirty_bds.clear()
        for b in [b for b in self._bd_inputs if b not in local_bds]:
            del self._bd_inputs[b]

        for r in routers:
            has_local = bool(r.bds & local_bds)
            here = net.is_active_gateway(r)
            if not has_local and not here:
                continue
            legs = tuple((net.bds[i.bd], i) for i in r.interfaces if i.bd in net.bds and i.bd in local_bds)
            ext = net.external.get(r.gateway.network) if r.gateway else None
            vrf = next((net.bds[i.bd].zone for i in r.interfaces if i.bd in net.bds), 0)
            key = ("router", r.uri)
            put(key, self._memoised(memo, key, router_section, r, legs, ext, here, has_local, tunnel, vrf))

        for ext in net.external.values():
            if ext.ofport is not None:
                key = ("extnet", ext.uri)
                put(key, self._memoised(memo, key, extnet_section, ext))

        by_key = self._local.by_key
        local = {f.endpoint: pick(by_key[f.endpoint]) for f in net.floating_ips if f.endpoint in by_key}
        fips = list(external.local_fips(net.floating_ips, local, net.external, routers))
        by_ip: dict[str, list[tuple[external.LocalFip, int]]] = {}
        for f in fips:
            bd = net.bds.get(f.endpoint.bd)
            by_ip.setdefault(f.fip.ip, []).append((f, bd.zone if bd else 0))
        for ip, these in by_ip.items():
            put(("fip", ip), fip_section(tuple(these)))
        announcements = frozenset(external.announcements(net, fips))
        if announcements != self.announcements:
            self.announcements = announcements

        if self.enforce:
            for g in net.groups.values():
                if g.classid in self._classids:
                    put(("group", g.uri), group_section(g))
            if self._parties[0] is not net.groups or self._parties[1] != bool(fips):
                self._parties = (
                    net.groups,
                    bool(fips),
                    group_policy.parties(net.groups.values(), bool(fips)),
                )
            providers, consumers = self._parties[2]
            for uri, c in sorted(net.contracts.items()):
                key = ("contract", uri)
                prov, cons = providers.get(uri, ()), consumers.get(uri, ())
                put(key, self._memoised(memo, key, contract_section, c, prov, cons))
            self._security_groups(put, memo, updates)
        else:
            for name in list(self._addrsets):
                self._addrsets.pop(name).removed(updates)

        put(("base",), base_section(tunnel, self.enforce))
        self._memo = memo
        return out

    def _security_groups(
        self,
        put: Callable[[SectionKey, Section], None],
        memo: dict[SectionKey, Any],
        updates: dict[SectionKey, Section],
    ) -> None:
        """The security groups with local endpoints, and (into ``updates``: they are many, and
        change by a few) the member sections of the address sets their rules name."""
        active: list[SecurityGroup] = []
        for g in sorted(self._sg_ctx):
            context = self._sg_ctx[g]
            if context is not None:
                sg, families = context
                active.append(sg)
                put(("sg", g), self._memoised(memo, ("sg", g), sg_section, sg, families))
        named = {g for sg in active for g in secgroups.remote_groups(sg)}
        for g in sorted(named):
            self._addrsets[g].sections(secgroups.member_signature(g, active), updates)
        for g in [g for g in self._addrsets if g not in named]:
            self._addrsets.pop(g).removed(updates)


def compile_sections(net: Network, tunnel_port: int | None, enforce_policy: bool = True) -> Sections:
    """The sections of ``net``, compiled afresh (a renderer keeps a ``SectionCompiler`` instead)."""
    return SectionCompiler(enforce_policy).compile(net, tunnel_port)


def compile_pipeline(net: Network, tunnel_port: int | None, enforce_policy: bool = True) -> list[Flow]:
    """Every flow ``br-int`` should hold for this network view, one per key (shared flows
    resolved: ``sections.resolve``). With ``enforce_policy=False`` (another renderer, e.g.
    nftables, enforces policy on this host) the bridge forwards and checks port security only:
    POLICY passes everything to OUTPUT."""
    return list(compile_sections(net, tunnel_port, enforce_policy))


__all__ = ["SectionCompiler", "compile_pipeline", "compile_sections"]
