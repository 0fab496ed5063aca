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
caches, which give back the very tuple of before), and the aggregates that
several sections read (the ports of a bridge domain or of a security group,
the groups with local endpoints) are counted up and down by the endpoints
that come and go, so a one-endpoint change costs that endpoint's sections
plus the few objects around it, not a walk of every endpoint in Python. Its
result is still a pure function of the view: the same sections a fresh
compiler gives for that view (the property tests hold it to that).
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


# ---- section builders: memoised, so equal inputs give the identical tuple


@lru_cache(maxsize=1 << 17)
def local_section(
    ep: Endpoint, bd: BridgeDomain | None, routes: Routes, tunnel: int | None, enforce: bool
) -> Section:
    """A local endpoint: classification, port security, ARP, L2, output; the routes to it; the
    default deny of the port its security groups govern."""
    flows: list[Flow] = []
    if bd is not None:
        flows += local_endpoint_flows(ep, bd)
        if not (ep.ofport is None and tunnel is None):
            for number, mac in routes:
                flows += routed_flows(ep, bd, number, mac, tunnel or 0)
    if enforce and ep.sg_governed:
        flows.append(secgroups.port_flow(ep.ofport or 0))
    return stamp(("ep", ep.key), flows)


@lru_cache(maxsize=1 << 17)
def remote_section(
    ep: Endpoint, bd: BridgeDomain | None, local: bool, routes: Routes, tunnel: int | None
) -> Section:
    """A remote endpoint: L2 through the tunnel and ARP answers (in a bridge domain with local
    endpoints), and the routes to it through a router active here."""
    flows: list[Flow] = []
    if bd is not None and tunnel is not None:
        if local and ep.vtep is not None:
            flows += remote_l2(ep, bd, tunnel)
        if not (ep.ofport is None and tunnel is None):
            for number, mac in routes:
                flows += routed_flows(ep, bd, number, mac, tunnel)
    return stamp(("remote", ep.key), flows)


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
def sg_section(sg: SecurityGroup, ports: tuple[int, ...], families: secgroups.Families) -> Section:
    return stamp(("sg", sg.uri), secgroups.sg_flows(sg, ports, families))


@lru_cache(maxsize=64)
def base_section(tunnel: int | None, enforce: bool) -> Section:
    """The fixed flows: table misses, conntrack and the fixed group policy (or, when another
    renderer enforces policy, POLICY passing everything to OUTPUT), the tunnel's output."""
    rules = (
        [*group_policy.base_flows(), *secgroups.base_flows()]
        if enforce
        else [flow(POLICY, 0, None, goto(OUTPUT))]
    )
    return stamp(
        ("base",), [*base_flows(tunnel), flow(ROUTING, 0, None, "drop"), *external.base_flows(), *rules]
    )


class _AddressSet:
    """One remote group's address set as a section: each member's clause flows, kept by address
    so that a member joining costs its own flows (and a pass over the list, no flow rebuilt)."""

    def __init__(self, key: SectionKey, signature: secgroups.Signature) -> None:
        self.key, self.signature, self.cookie = key, signature, cookie_of(key)
        self.members: tuple[str, ...] = ()
        self.section: Section = ()
        self._of: dict[str, tuple[Flow, ...]] = {}

    def update(self, members: tuple[str, ...]) -> Section:
        if members is self.members or members == self.members:
            return self.section
        of, old = {}, self._of
        for address in dict.fromkeys(members):
            flows = old.get(address)
            of[address] = (
                flows if flows is not None else secgroups.member_flows(address, self.signature, self.cookie)
            )
        self._of, self.members = of, members
        self.section = tuple(f for flows in of.values() for f in flows)
        return self.section


def _families(members: Sequence[str]) -> tuple[bool, bool]:
    """(has an IPv4 member, has an IPv6 member)."""
    return any(":" not in a for a in members), any(":" in a for a in members)


def _pick(records: Sequence[Endpoint]) -> Endpoint:
    """Of several records with one key (not in valid input), the one that counts: the last in a
    fixed order, so that the result does not depend on the order of the view."""
    return records[0] if len(records) == 1 else sorted(records, key=repr)[-1]


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
        self._parts: dict[SectionKey, Section] = {}
        # the endpoints of the last view, by identity, and what is counted from them
        self._local: dict[int, Endpoint] = {}
        self._remote: dict[int, Endpoint] = {}
        self._local_view: tuple[Endpoint, ...] | None = None
        self._remote_view: tuple[Endpoint, ...] | None = None
        self._local_keys: dict[str, list[Endpoint]] = {}  # section key's id → records
        self._remote_keys: dict[str, list[Endpoint]] = {}
        self._local_in: dict[str, dict[int, Endpoint]] = {}  # bridge domain URI → its local endpoints
        self._remote_in: dict[str, dict[int, Endpoint]] = {}
        self._ports: dict[str, Counter[int]] = {}  # bridge domain URI → local ports (flooding)
        self._vteps: dict[str, Counter[str]] = {}  # bridge domain URI → remote hosts (flooding)
        self._classids: Counter[int] = Counter()  # groups with local endpoints
        self._sg_ports: dict[str, Counter[int]] = {}  # security group → the local ports it governs
        self._sg_sorted: dict[str, tuple[int, ...]] = {}
        self._dirty_bds: set[str] = set()
        self._dirty_sgs: set[str] = set()
        # per bridge domain: the context its endpoints' sections are built in
        self._ctx: dict[str, tuple[BridgeDomain | None, bool, Routes]] = {}
        self._bd_inputs: dict[str, tuple[Any, ...]] = {}
        self._small: dict[SectionKey, Section] = {}  # every section but the endpoints'
        self._memo: dict[SectionKey, tuple[Callable[..., Section], tuple[Any, ...], Section]] = {}
        self._addrsets: dict[str, _AddressSet] = {}
        self._families: dict[str, tuple[tuple[str, ...], tuple[bool, bool]]] = {}

    # ---- endpoints come and go: index them, count what others read

    def _delta(
        self, view: tuple[Endpoint, ...], known: dict[int, Endpoint]
    ) -> tuple[dict[int, Endpoint], list[Endpoint], list[Endpoint]]:
        now = dict(zip(map(id, view), view, strict=True))
        gone = [known[i] for i in known.keys() - now.keys()]
        came = [now[i] for i in now.keys() - known.keys()]
        return now, gone, came

    def _local_delta(self, view: tuple[Endpoint, ...], dirty: set[str]) -> None:
        if view is self._local_view:
            return
        self._local, gone, came = self._delta(view, self._local)
        self._local_view = view
        for ep, n in ((e, -1) for e in gone):
            self._count_local(ep, n, dirty)
        for ep in came:
            self._count_local(ep, 1, dirty)

    def _count_local(self, ep: Endpoint, n: int, dirty: set[str]) -> None:
        dirty.add(ep.key)
        records = self._local_keys.setdefault(ep.key, [])
        in_bd = self._local_in.setdefault(ep.bd, {})
        if n > 0:
            records.append(ep)
            in_bd[id(ep)] = ep
        else:
            records[:] = [r for r in records if r is not ep]
            in_bd.pop(id(ep), None)
            if not records:
                del self._local_keys[ep.key]
            if not in_bd:
                del self._local_in[ep.bd]
        port = ep.ofport or 0
        _bump(self._ports, ep.bd, port, n)
        self._dirty_bds.add(ep.bd)
        if ep.classid:
            self._classids[ep.classid] += n
            if not self._classids[ep.classid]:
                del self._classids[ep.classid]
        for g in ep.security_groups:
            _bump(self._sg_ports, g, port, n)
            self._dirty_sgs.add(g)

    def _remote_delta(self, view: tuple[Endpoint, ...], dirty: set[str]) -> None:
        if view is self._remote_view:
            return
        self._remote, gone, came = self._delta(view, self._remote)
        self._remote_view = view
        for ep, n in [*((e, -1) for e in gone), *((e, 1) for e in came)]:
            dirty.add(ep.key)
            records = self._remote_keys.setdefault(ep.key, [])
            in_bd = self._remote_in.setdefault(ep.bd, {})
            if n > 0:
                records.append(ep)
                in_bd[id(ep)] = ep
            else:
                records[:] = [r for r in records if r is not ep]
                in_bd.pop(id(ep), None)
                if not records:
                    del self._remote_keys[ep.key]
                if not in_bd:
                    del self._remote_in[ep.bd]
            if ep.vtep is not None:
                _bump(self._vteps, ep.bd, ep.vtep, n)
                self._dirty_bds.add(ep.bd)

    # ---- the view

    def compile(self, net: Network, tunnel_port: int | None) -> Sections:
        """The sections of ``net`` (with the tunnel on ``tunnel_port``): those of the last compile
        where nothing they read changed, the very same object if nothing did."""
        if tunnel_port != self.tunnel or self.last is None:
            self._reset(tunnel_port)  # the tunnel is in nearly every section: start afresh
        dirty_local: set[str] = set()
        dirty_remote: set[str] = set()
        self._local_delta(net.local, dirty_local)
        self._remote_delta(net.remote, dirty_remote)
        local_bds = frozenset(self._local_in)
        routers = sorted(net.routers.values(), key=lambda r: r.uri)
        active = [r for r in routers if r.bds & local_bds or net.is_active_gateway(r)]

        # each bridge domain's context; its endpoints are rebuilt when it changes
        routes: dict[str, list[tuple[int, str]]] = {}
        for r in active:
            for b in r.bds:
                routes.setdefault(b, []).append((r.number, r.mac))
        ctx: dict[str, tuple[BridgeDomain | None, bool, Routes]] = {}
        for b in self._local_in.keys() | self._remote_in.keys():
            ctx[b] = (net.bds.get(b), b in local_bds, tuple(routes.get(b, ())))
            if self._ctx.get(b) != ctx[b]:
                dirty_local.update(e.key for e in self._local_in.get(b, {}).values())
                dirty_remote.update(e.key for e in self._remote_in.get(b, {}).values())
                self._dirty_bds.add(b)
        self._ctx = ctx

        updates: dict[SectionKey, Section] = {}  # () for a section that goes
        for kind, dirty, index, build in (
            ("ep", dirty_local, self._local_keys, self._local_section),
            ("remote", dirty_remote, self._remote_keys, self._remote_section),
        ):
            for key in sorted(dirty):
                skey: SectionKey = (kind, key)
                records = index.get(key)
                section = build(records) if records else ()
                if self._parts.get(skey, ()) is not section:
                    updates[skey] = section
        small = self._small_sections(net, local_bds, routers)
        for skey in self._small.keys() - small.keys():
            updates[skey] = ()
        for skey, section in small.items():
            if self._small.get(skey) is not section:
                updates[skey] = section
        self._small = small

        if self.last is not None and not updates:
            return self.last
        parts = self._parts.copy()  # the last Sections keeps its own
        for skey, section in updates.items():
            if section:
                parts[skey] = section
            else:
                parts.pop(skey, None)
        self._parts = parts
        self.last = self.last.derive(parts, updates) if self.last is not None else Sections(parts)
        return self.last

    def _local_section(self, records: Sequence[Endpoint]) -> Section:
        if len(records) == 1:
            ep = records[0]
            bd, _, routes = self._ctx.get(ep.bd, (None, False, ()))
            return local_section(ep, bd, routes, self.tunnel, self.enforce)
        return stamp(
            ("ep", records[0].key), [f for ep in sorted(records, key=repr) for f in self._local_section([ep])]
        )

    def _remote_section(self, records: Sequence[Endpoint]) -> Section:
        if len(records) == 1:
            ep = records[0]
            bd, local, routes = self._ctx.get(ep.bd, (None, False, ()))
            return remote_section(ep, bd, local, routes, self.tunnel)
        return stamp(
            ("remote", records[0].key),
            [f for ep in sorted(records, key=repr) for f in self._remote_section([ep])],
        )

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
        self, net: Network, local_bds: frozenset[str], routers: list[Router]
    ) -> dict[SectionKey, Section]:
        """Every section but the endpoints': bridge domains, routers, external ports, floating IPs,
        groups, contracts, security groups, address sets, the fixed flows."""
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
                ports = tuple(sorted(self._ports[b].elements())) if b in self._ports else ()
                vteps = tuple(sorted(self._vteps[b])) if tunnel is not None and b in self._vteps else ()
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

        fip_endpoints = {f.endpoint for f in net.floating_ips}
        local = {k: _pick(self._local_keys[k]) for k in fip_endpoints if k in self._local_keys}
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
            providers, consumers = group_policy.parties(net.groups.values(), outside=bool(fips))
            for uri, c in sorted(net.contracts.items()):
                key = ("contract", uri)
                prov, cons = providers.get(uri, ()), consumers.get(uri, ())
                put(key, self._memoised(memo, key, contract_section, c, prov, cons))
            self._security_groups(net, put, memo)

        put(("base",), base_section(tunnel, self.enforce))
        self._memo = memo
        return out

    def _security_groups(
        self, net: Network, put: Callable[[SectionKey, Section], None], memo: dict[SectionKey, Any]
    ) -> None:
        for g in self._dirty_sgs:
            counted = self._sg_ports.get(g)
            if counted:
                self._sg_sorted[g] = tuple(sorted(counted))
            else:
                self._sg_sorted.pop(g, None)
        self._dirty_sgs.clear()
        active = [net.security_groups[g] for g in sorted(self._sg_sorted) if g in net.security_groups]
        named = sorted(
            {r.remote_group for sg in active for r in sg.rules if r.remote_group and r.remote_prefix is None}
        )
        families: dict[str, tuple[bool, bool]] = {}
        for g in named:
            members = net.address_sets.get(g, ())
            last = self._families.get(g)
            if last is None or last[0] is not members:
                last = (members, _families(members))
                self._families[g] = last
            families[g] = last[1]
        for g in [g for g in self._families if g not in families]:
            del self._families[g]
        for sg in active:
            mine = tuple(
                (g, *families[g]) for g in sorted({r.remote_group or "" for r in sg.rules} & families.keys())
            )
            key = ("sg", sg.uri)
            put(key, self._memoised(memo, key, sg_section, sg, self._sg_sorted[sg.uri], mine))
        addrsets: dict[str, _AddressSet] = {}
        for g in named:
            signature = secgroups.member_signature(g, active)
            kept = self._addrsets.get(g)
            if kept is None or kept.signature != signature:
                kept = _AddressSet(("addrset", g), signature)
            addrsets[g] = kept
            put(kept.key, kept.update(net.address_sets.get(g, ())))
        self._addrsets = addrsets


def _bump(counters: dict[str, Counter[Any]], key: str, value: Any, n: int) -> None:
    c = counters.setdefault(key, Counter())
    c[value] += n
    if c[value] <= 0:
        del c[value]
    if not c:
        del counters[key]


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
