"""The agent's view (``view.Network``), kept up to date between reconciles from what changed.

Inputs: the OpFlex cache's policy and endpoint registry maps (with the URIs the client reports
changed), the plugged OVSDB interfaces (the same list object until OVSDB reports a change), the
tunnel port and the bridge's ports (external networks' ports). Nodes:

- the policy records (``policystate.PolicyState``: groups, contracts, bridge domains, security
  groups and their address sets, routers, external networks, floating IPs);
- one local endpoint per plugged interface, reading its ``PfEndpoint`` (re-read when that URI
  changed, the parse kept while the object is the same), its group's record (class id) and whether
  something of its group was refused (then it is left out): reached by a changed URI, a changed
  group record, a change in what the policy refused, or a change of the interface; one whose
  intent lists ``slaac`` also reads its bridge domain's SLAAC prefixes (its EUI-64 addresses), and
  is reached by any changed bridge domain record (rare: no index for it);
- the remote endpoints (``endpoints.RemoteEndpoints``), one per registry entry, also reached when
  a local endpoint with the same key comes or goes.

A change costs what it reaches: one endpoint moving group re-reads one ``PfEndpoint``; a rule added
to a contract re-reads that contract; a member joining a security group reads one member. Every
record that reads as it did keeps its identity, and so does each of the Network's maps that did
not change (a fresh copy is handed out only when it did), so the compilers' memos keep hitting.

The full build is the same code with every node a target, in a new state (so nothing derived is
carried over): when the changes are not known (``changed`` None: the first build, a flood of
changes), after an update that failed, or when the cache's maps were replaced. It takes over from
the old state every node whose inputs are the identical objects (checked, not read again: objects
are replaced, never mutated), so its records keep their identity and it costs about what the
agent's memoised full build did before. Built with no old state (``policy_view``, the tests'
reference) it reads everything.

The safety net, every ``check_every`` seconds (in a reconcile with nothing changed if one comes
in time, see ``check_due``): every node's inputs are checked by identity
(``stale``: no reading; measured 0.3-0.6 s at 10,000 endpoints on a loaded machine, where a
full build costs 1.5 s),
and what changed that no reported change named is logged, counted (``stats.missed``) and read
as if reported: the declarer's ``FULL_EVERY`` check, made on a clock so that a burst of changes
meets it at most once per period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from policyfabric.agent.declarer import PluggedPort, split_iface_id
from policyfabric.agent.endpoints import LocalIntent, RemoteEndpoints, local_record, read_local
from policyfabric.agent.incremental import DependencyIndex, problem_order, same
from policyfabric.agent.policystate import PolicyState
from policyfabric.agent.view import Endpoint, ExternalNet, Group, Invalid, Network
from policyfabric.opflex.gbp import endpoint_uri
from policyfabric.opflex.mo import MO

log = logging.getLogger(__name__)
CHECK_EVERY_S = 30.0  # seconds between the safety net's checks of every node's inputs
LocalKey = tuple[str, str]  # (iface-id, interface name): two interfaces may claim one iface-id


class Plugged(PluggedPort, Protocol):
    """A plugged interface (``ovsdb.Plugged``): its iface-id, name and OpenFlow port."""

    @property
    def ofport(self) -> int: ...


@dataclass(slots=True)
class _Local:
    """A plugged interface's node: what it read, and the endpoint it made (None: none)."""

    iface_id: str
    name: str
    ofport: int
    uri: str | None = None  # its PfEndpoint (indexed)
    epg: str | None = None  # its group (indexed)
    mo: MO | None = None  # the PfEndpoint object it last parsed, and what that read as
    intent: LocalIntent | Invalid | None = None
    group: Group | None = None  # the group record it was made with
    endpoint: Endpoint | None = None
    prior: _Local | None = None  # the same interface's node in a replaced state: reused if the same
    position: int = 0  # in the plugged list


class LocalEndpoints:
    """The endpoints plugged here, one node per interface, in the plugged list's order."""

    def __init__(self, donor: LocalEndpoints | None = None) -> None:
        """``donor``: the state this one replaces (a full build's), whose endpoints (and parses)
        this one's first update reuses where they read the same."""
        self._donor = donor
        self.endpoints: tuple[Endpoint, ...] = ()
        self.problems: dict[LocalKey, Invalid] = {}
        self.keys: dict[str, int] = {}  # local endpoint key → how many endpoints have it
        self.reads = 0  # nodes read by the last update (what it cost)
        self.replugs = 0  # updates that took the plugged list as changed (each walks every interface)
        self._nodes: dict[LocalKey, _Local] = {}
        self._by_uri: DependencyIndex[LocalKey] = DependencyIndex()  # PfEndpoint URI → its nodes
        self._by_epg: dict[str, set[LocalKey]] = {}  # group URI → nodes of endpoints in it
        self._epg_refused: dict[str, bool] = {}  # what each group's endpoints were read with
        self._plugged: list[Plugged] | None = None  # a copy of what the last update saw
        self._slots: list[Endpoint | None] = []  # each node's endpoint, at its position

    def update(
        self,
        cache: Mapping[str, MO],
        policy: PolicyState,
        plugged: Sequence[Plugged],
        changed: set[str] | None,
    ) -> tuple[set[str], bool, bool]:
        """Bring the endpoints up to date with the cache (``changed`` URIs changed; None: read
        every one again), ``policy`` (just updated) and ``plugged``. Returns the keys that came or
        went, whether the endpoints changed, whether their problems did."""
        donor, self._donor = self._donor, None
        dirty: set[LocalKey] = set()
        gone: list[LocalKey] = []
        replugged = changed is None or not self._same_plugged(plugged)
        if replugged:
            self.replugs += 1
            now = {(p.iface_id, p.name): p for p in plugged}
            gone = [k for k in self._nodes if k not in now]
            for key, p in now.items():
                node = self._nodes.get(key)
                if node is None:
                    node = self._nodes[key] = _Local(p.iface_id, p.name, p.ofport)
                    was = donor._nodes.get(key) if donor is not None else None
                    if was is not None:
                        node.mo, node.intent, node.prior = was.mo, was.intent, was
                    dirty.add(key)
                elif changed is None or node.ofport != p.ofport:
                    node.ofport = p.ofport
                    dirty.add(key)
            self._plugged = list(plugged)
        if changed is not None:
            for uri in changed:
                dirty.update(self._by_uri.users_of(uri))
        for group in policy.changed_groups:
            dirty |= self._by_epg.get(group, set())
        if "bds" in policy.touched:  # a bridge domain's SLAAC prefixes may have changed
            dirty |= {
                k for k, n in self._nodes.items() if isinstance(n.intent, LocalIntent) and n.intent.slaac
            }
        if policy.problems_changed:
            for epg, keys in self._by_epg.items():
                if self._epg_refused.get(epg) != policy.refused_under(epg):
                    dirty |= keys
        keys_changed: set[str] = set()
        moved = problems = False
        for key in gone:
            node = self._nodes.pop(key)
            self._index(key, node, None, None)
            moved |= self._count(node.endpoint, None, keys_changed)
            problems |= self.problems.pop(key, None) is not None
        dirty.difference_update(gone)
        self.reads = len(dirty)
        for key in dirty:
            node = self._nodes[key]
            old = node.endpoint
            self._read(cache, policy, key, node)
            if self._count(old, node.endpoint, keys_changed):
                moved = True
                if not replugged:
                    self._slots[node.position] = node.endpoint
            problem = node.intent if isinstance(node.intent, Invalid) else None
            if problem != self.problems.get(key):
                problems = True
                if problem is None:
                    del self.problems[key]
                else:
                    self.problems[key] = problem
        if replugged:  # in the plugged list's order (OVSDB's, by iface-id)
            self._nodes = {(p.iface_id, p.name): self._nodes[(p.iface_id, p.name)] for p in plugged}
            self._slots = [n.endpoint for n in self._nodes.values()]
            for position, node in enumerate(self._nodes.values()):
                node.position = position
        if moved or replugged:
            made = tuple(filter(None, self._slots))  # (an Endpoint is true)
            self.endpoints = same(donor.endpoints if donor is not None else self.endpoints, made)
        return keys_changed, moved or replugged, problems

    def _same_plugged(self, plugged: Sequence[Plugged]) -> bool:
        """Whether ``plugged`` lists what the last update saw. The agent hands a new list on every
        reconcile (its iface-ids located afresh), mostly of the same objects: compared as lists
        (identity first, element by element, in C: ~0.1 ms at 10,000) rather than by the list's own
        identity, which read every interface again on every change (tens of ms at 10,000)."""
        last = self._plugged
        if last is None or len(last) != len(plugged):
            return False
        return last == (plugged if isinstance(plugged, list) else list(plugged))

    def stale(self, cache: Mapping[str, MO]) -> set[str]:
        """The ``PfEndpoint`` URIs whose object is no longer the one read (by identity)."""
        return {n.uri for n in self._nodes.values() if n.uri is not None and cache.get(n.uri) is not n.mo}

    def _read(self, cache: Mapping[str, MO], policy: PolicyState, key: LocalKey, node: _Local) -> None:
        if node.prior is not None:
            uri = node.prior.uri  # the same iface-id
        else:
            split = split_iface_id(node.iface_id)
            uri = endpoint_uri(*split) if split is not None else None
        mo = cache.get(uri) if uri is not None else None
        if uri is None:
            intent: LocalIntent | Invalid | None = None
        elif node.mo is mo and mo is not None and node.intent is not None:
            intent = node.intent  # the same object on the same interface: parsed already
        else:
            intent = read_local(mo, uri, node.name)
        epg = intent.epg if isinstance(intent, LocalIntent) else None
        self._index(key, node, uri, epg)
        node.mo, node.intent = mo, intent
        endpoint, group = None, None
        if isinstance(intent, LocalIntent):
            refused = False
            if epg is not None:
                refused = self._epg_refused[epg] = policy.refused_under(epg)
            if not refused:
                group = policy.groups.get(epg or "")
                prior = node.prior
                if (
                    prior is not None
                    and prior.endpoint is not None
                    and prior.mo is mo
                    and prior.group is group
                    and prior.ofport == node.ofport
                    and not intent.slaac
                ):
                    endpoint = prior.endpoint  # the same inputs: the same endpoint
                else:
                    bd = policy.bds.get(intent.bd) if intent.slaac else None
                    made = local_record(
                        intent, node.iface_id, node.ofport, node.name, group, bd.slaac if bd else ()
                    )
                    endpoint = same(node.endpoint or (prior.endpoint if prior else None), made)
        node.group = group
        node.endpoint, node.prior = endpoint, None

    def _count(self, old: Endpoint | None, new: Endpoint | None, keys_changed: set[str]) -> bool:
        """Count the local endpoints' keys (``old`` became ``new``); whether anything changed."""
        if old is new:
            return False
        for ep, step in ((old, -1), (new, 1)):
            if ep is not None:
                count = self.keys.get(ep.key, 0) + step
                if count:
                    self.keys[ep.key] = count
                else:
                    del self.keys[ep.key]
                if count == (1 if step > 0 else 0):
                    keys_changed.add(ep.key)
        return True

    def _index(self, key: LocalKey, node: _Local, uri: str | None, epg: str | None) -> None:
        """File ``node`` under its PfEndpoint's URI and its group's (None: under none)."""
        if node.uri != uri:
            if node.uri is not None:
                self._by_uri.discard(key, node.uri)
            if uri is not None:
                self._by_uri.add(key, uri)
        if node.epg != epg:
            if node.epg is not None:
                self._by_epg[node.epg].discard(key)
                if not self._by_epg[node.epg]:
                    del self._by_epg[node.epg]
                    self._epg_refused.pop(node.epg, None)
            if epg is not None:
                self._by_epg.setdefault(epg, set()).add(key)
        node.uri, node.epg = uri, epg


@dataclass
class ViewStats:
    full: int = 0
    incremental: int = 0
    checks: int = 0  # the safety net's
    missed: int = 0  # URIs the safety net found changed that no reported change named


class ViewState:
    """What ``OvsAgent.network`` returns, one ``network`` call per reconcile."""

    def __init__(
        self,
        host: str,
        tunnel_ip: str | None,
        external: Mapping[str, str],
        check_every: float = CHECK_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host, self.tunnel_ip, self.external_ports = host, tunnel_ip, external
        self.check_every, self.clock = check_every, clock
        self.policy = PolicyState()
        self.local = LocalEndpoints()
        self.remote = RemoteEndpoints(tunnel_ip or "")
        self.stats = ViewStats()
        self._sources: tuple[object, object] | None = None
        self._ofports: object = None
        self._last_check = float("-inf")
        self._parts: dict[str, Any] = {}
        self._net: Network | None = None

    def network(
        self,
        policy: Mapping[str, MO],
        registry: Mapping[str, MO],
        plugged: Sequence[Plugged],
        tunnel_port: int | None,
        ofports: Mapping[str, int],
        changed: set[str] | None,
    ) -> Network:
        """The view, brought up to date with ``changed`` (the cache URIs changed since the last
        call; None: unknown, build it whole). If it fails, the next call builds it whole."""
        last, now = self._sources, self.clock()
        full = changed is None or last is None or last[0] is not policy or last[1] is not registry
        self._sources = None  # until this update completes
        if full:  # a new state, reusing from the old one what read the identical objects
            self.policy, self.local = PolicyState(self.policy), LocalEndpoints(self.local)
            self.remote = RemoteEndpoints(self.remote.own_vtep, self.remote)
            flags = self._update(policy, registry, plugged, None)
            self._last_check = now
            self.stats.full += 1
        else:
            assert changed is not None
            if self.check_due(now, bool(changed)):
                changed = changed | self._missed(policy, registry, changed)
                self._last_check = now
            flags = self._update(policy, registry, plugged, changed)
            self.stats.incremental += 1
        self._sources = (policy, registry)
        return self._assemble(tunnel_port, ofports, full, *flags)

    def check_due(self, now: float, busy: bool) -> bool:
        """Whether the safety net's check runs in an update at ``now``: ``check_every`` after the
        last, but not in an update that carries a change (``busy``) until twice that. The check
        reads every node's inputs (0.3-0.6 s at 10,000 endpoints): made on the change after a
        quiet spell, it was that change's latency (the "cold first change"); the agent wakes
        with nothing changed every ``check_every`` seconds of quiet (``OvsAgent``), where it
        costs no one."""
        since = now - self._last_check
        return since >= self.check_every and (not busy or since >= 2 * self.check_every)

    def _update(
        self,
        policy: Mapping[str, MO],
        registry: Mapping[str, MO],
        plugged: Sequence[Plugged],
        changed: set[str] | None,
    ) -> tuple[bool, bool]:
        """(whether the remote endpoints or their problems changed, whether the local ones' problems
        did)."""
        self.policy.update(policy, changed)
        keys_changed, _, local_problems = self.local.update(policy, self.policy, plugged, changed)
        remote_changed = self.remote.update(registry, changed, self.local.keys, keys_changed)
        return remote_changed, local_problems

    def _missed(self, policy: Mapping[str, MO], registry: Mapping[str, MO], changed: set[str]) -> set[str]:
        """The safety net: the URIs whose object is not the one a node read, or that no node read
        though it should have, and that no reported change names (logged, counted)."""
        stale = self.policy.stale(policy) | self.local.stale(policy) | self.remote.stale(registry)
        missed = stale - changed
        self.stats.checks += 1
        if missed:
            self.stats.missed += len(missed)
            shown = ", ".join(sorted(missed)[:5])
            log.warning("agent %s: %d change(s) no one reported, now read: %s", self.host, len(missed), shown)
        return missed

    @staticmethod
    def _problems(policy: PolicyState, local: LocalEndpoints, remote: RemoteEndpoints) -> tuple[Invalid, ...]:
        found = {*policy.problems(), *local.problems.values(), *remote.problems}
        return tuple(sorted(found, key=problem_order))

    # ---- the Network
    def _assemble(
        self,
        tunnel_port: int | None,
        ofports: Mapping[str, int],
        full: bool,
        remote_changed: bool,
        local_problems: bool,
    ) -> Network:
        """The Network from the parts that changed and those kept (``full``: a new state, every part
        made again, each kept if equal)."""
        parts = self._parts
        touched = self.policy.touched
        for name in ("groups", "contracts", "bds", "security_groups", "address_sets", "routers"):
            if full or name in touched or name not in parts:
                copy = dict(getattr(self.policy, name))  # a copy: the state goes on changing
                parts[name] = same(parts.get(name), copy)
        parts["floating_ips"] = self.policy.floating_ips
        if full or "external" in touched or ofports is not self._ofports or "external" not in parts:
            parts["external"] = same(parts.get("external"), self._attach(ofports, parts.get("external", {})))
            self._ofports = ofports
        parts["local"] = self.local.endpoints
        parts["remote"] = self.remote.endpoints
        if full or self.policy.problems_changed or local_problems or remote_changed or "invalid" not in parts:
            invalid = self._problems(self.policy, self.local, self.remote)
            parts["invalid"] = same(parts.get("invalid"), invalid)
        parts["tunnel_port"] = tunnel_port if self.tunnel_ip else None
        last = self._net
        if last is not None and all(_kept(getattr(last, k), v) for k, v in parts.items()):
            return last  # nothing changed: the same view
        self._net = Network(host=self.host, **parts)
        return self._net

    def _attach(self, ofports: Mapping[str, int], last: Mapping[str, ExternalNet]) -> dict[str, ExternalNet]:
        """The external networks with this host's port on each (None: not attached here)."""
        out = {}
        for uri, ext in self.policy.external.items():
            iface = self.external_ports.get(ext.name)
            ofport = ofports.get(iface) if iface else None
            out[uri] = same(last.get(uri), replace(ext, ofport=ofport) if ofport else ext)
        return out


def _kept(last: object, now: object) -> bool:
    return last is now or (isinstance(now, int) and last == now)
