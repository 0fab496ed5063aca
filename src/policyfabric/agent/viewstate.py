"""The agent's view (``view.Network``), kept up to date between reconciles from what changed.

Inputs: the OpFlex cache's policy and endpoint registry maps (with the URIs the client reports
changed), the plugged OVSDB interfaces (the same list object until OVSDB reports a change), the
tunnel port and the bridge's ports (external networks' ports). Nodes:

- the policy records (``policystate.PolicyState``: groups, contracts, bridge domains, security
  groups and their address sets, routers, external networks, floating IPs);
- one local endpoint per plugged interface, reading its ``PfEndpoint`` (re-read when that URI
  changed, the parse kept while the object is the same), its group's record (class id) and whether
  something of its group was refused (then it is left out): reached by a changed URI, a changed
  group record, a change in what the policy refused, or a change of the interface;
- the remote endpoints (``endpoints.RemoteEndpoints``), one per registry entry, also reached when
  a local endpoint with the same key comes or goes.

A change costs what it reaches: one endpoint moving group re-reads one ``PfEndpoint``; a rule added
to a contract re-reads that contract; a member joining a security group reads one member. Every
record that reads as it did keeps its identity, and so does each of the Network's maps that did
not change (a fresh copy is handed out only when it did), so the compilers' memos keep hitting.

The full build is the same code with every node a target: when the changes are not known
(``changed`` None), when the cache's maps were replaced, and, as a safety net, every ``full_every``
seconds, when it also counts (``missed``, logged) records that changed although no reported change
reached them: the incremental path's own check, as the declarer's ``FULL_EVERY`` is its.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from policyfabric.agent.declarer import PluggedPort, split_iface_id
from policyfabric.agent.endpoints import LocalIntent, RemoteEndpoints, local_record, read_local
from policyfabric.agent.incremental import problem_order, same
from policyfabric.agent.policystate import PolicyState
from policyfabric.agent.view import Endpoint, ExternalNet, Group, Invalid, Network
from policyfabric.opflex.gbp import endpoint_uri
from policyfabric.opflex.mo import MO

log = logging.getLogger(__name__)
FULL_EVERY_S = 60.0  # seconds between the safety net's full builds (a spike only once a minute)
LocalKey = tuple[str, str]  # (iface-id, interface name): two interfaces may claim one iface-id


class Plugged(PluggedPort, Protocol):
    """A plugged interface (``ovsdb.Plugged``): its iface-id, name and OpenFlow port."""

    @property
    def ofport(self) -> int: ...


@dataclass
class _Local:
    """A plugged interface's node: what it read, and the endpoint it made (None: none)."""

    iface_id: str
    name: str
    ofport: int
    uri: str | None = None  # its PfEndpoint
    mo: MO | None = None
    intent: LocalIntent | Invalid | None = None
    epg: str | None = None
    endpoint: Endpoint | None = None


@dataclass
class ViewStats:
    full: int = 0
    incremental: int = 0
    missed: int = 0  # records the safety net found changed that no reported change had reached


class ViewState:
    """What ``OvsAgent.network`` returns, one ``network`` call per reconcile."""

    def __init__(
        self,
        host: str,
        tunnel_ip: str | None,
        external: Mapping[str, str],
        full_every: float = FULL_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host, self.tunnel_ip, self.external_ports = host, tunnel_ip, external
        self.full_every, self.clock = full_every, clock
        self.policy = PolicyState()
        self.remote = RemoteEndpoints(tunnel_ip or "")
        self.stats = ViewStats()
        self._local: dict[LocalKey, _Local] = {}  # in the plugged list's order
        self._by_uri: dict[str, set[LocalKey]] = {}  # PfEndpoint URI → its nodes
        self._by_epg: dict[str, set[LocalKey]] = {}  # group URI → nodes of endpoints in it
        self._epg_refused: dict[str, bool] = {}
        self._keys: dict[str, int] = {}  # local endpoint key → how many
        self._local_problems: dict[LocalKey, Invalid] = {}
        self._locals: tuple[Endpoint, ...] = ()
        self._plugged: object = None
        self._sources: tuple[object, object] | None = None
        self._ofports: object = None
        self._last_full = float("-inf")
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
        last = self._sources
        now = self.clock()
        if last is None or last[0] is not policy or last[1] is not registry:
            changed = None  # the first build, one after a failed one, or new maps: nothing says what changed
        audit = changed is not None and now - self._last_full >= self.full_every
        full = changed is None or audit
        if full:
            self._last_full = now
            self.stats.full += 1
        else:
            self.stats.incremental += 1
        self._sources = None  # until this update completes
        missed = self.policy.missed + self.remote.missed
        self.policy.update(policy, changed, audit)
        keys_changed, local_changed, local_problems = self._update_local(policy, plugged, changed, full)
        remote_changed = self.remote.update(registry, changed, self._keys, keys_changed, audit)
        self._sources = (policy, registry)
        found = self.policy.missed + self.remote.missed - missed
        if found:
            self.stats.missed += found
            log.warning(
                "agent %s: the view's full build found %d record(s) no change reached", self.host, found
            )
        return self._assemble(tunnel_port, ofports, local_changed, remote_changed, local_problems)

    # ---- local endpoints
    def _update_local(
        self, policy: Mapping[str, MO], plugged: Sequence[Plugged], changed: set[str] | None, full: bool
    ) -> tuple[set[str], bool, bool]:
        """(keys that came or went, whether the local endpoints changed, whether their problems did)."""
        dirty: set[LocalKey] = set()
        gone: list[LocalKey] = []
        reordered = False
        if full or plugged is not self._plugged:
            now = {(p.iface_id, p.name): p for p in plugged}
            gone = [k for k in self._local if k not in now]
            for key, p in now.items():
                node = self._local.get(key)
                if node is None:
                    self._local[key] = _Local(p.iface_id, p.name, p.ofport)
                    dirty.add(key)
                elif full or node.ofport != p.ofport:
                    node.ofport = p.ofport
                    dirty.add(key)
            reordered = list(now) != [k for k in self._local if k in now]
            self._plugged = plugged
        if changed is not None:
            for uri in changed:
                dirty |= self._by_uri.get(uri, set())
        for group in self.policy.changed_groups:
            dirty |= self._by_epg.get(group, set())
        if self.policy.problems_changed or full:
            for epg, keys in self._by_epg.items():
                refused = self.policy.refused_under(epg)
                if self._epg_refused.get(epg) != refused:
                    self._epg_refused[epg] = refused
                    dirty |= keys
        keys_changed: set[str] = set()
        moved = problems = False
        for key in gone:
            node = self._local.pop(key)
            self._index(self._by_uri, key, node.uri, None)
            self._index(self._by_epg, key, node.epg, None)
            if node.epg is not None and node.epg not in self._by_epg:
                self._epg_refused.pop(node.epg, None)
            moved |= self._count(node.endpoint, None, keys_changed)
            problems |= self._local_problems.pop(key, None) is not None
        for key in dirty - set(gone):
            node = self._local[key]
            old = node.endpoint
            self._read_local(policy, key, node)
            moved |= self._count(old, node.endpoint, keys_changed)
            problem = node.intent if isinstance(node.intent, Invalid) else None
            if problem != self._local_problems.get(key):
                problems = True
                if problem is None:
                    del self._local_problems[key]
                else:
                    self._local_problems[key] = problem
        if reordered:
            self._local = {(p.iface_id, p.name): self._local[(p.iface_id, p.name)] for p in plugged}
        if moved or reordered:
            self._locals = tuple(n.endpoint for n in self._local.values() if n.endpoint is not None)
        return keys_changed, moved or reordered, problems

    def _count(self, old: Endpoint | None, new: Endpoint | None, keys_changed: set[str]) -> bool:
        """Count the local endpoints' keys (``old`` became ``new``); whether anything changed."""
        if old is new:
            return False
        for ep, step in ((old, -1), (new, 1)):
            if ep is not None:
                count = self._keys.get(ep.key, 0) + step
                if count:
                    self._keys[ep.key] = count
                else:
                    del self._keys[ep.key]
                if count == (1 if step > 0 else 0):
                    keys_changed.add(ep.key)
        return True

    def _read_local(self, policy: Mapping[str, MO], key: LocalKey, node: _Local) -> None:
        split = split_iface_id(node.iface_id)
        uri = endpoint_uri(*split) if split is not None else None
        mo = policy.get(uri) if uri is not None else None
        if uri is None:
            intent: LocalIntent | Invalid | None = None
        elif node.uri == uri and node.mo is mo and node.intent is not None:
            intent = node.intent  # the same object on the same interface: parsed already
        else:
            intent = read_local(mo, uri, node.name)
        self._index(self._by_uri, key, node.uri, uri)
        epg = intent.epg if isinstance(intent, LocalIntent) else None
        self._index(self._by_epg, key, node.epg, epg)
        if node.epg is not None and node.epg not in self._by_epg:
            self._epg_refused.pop(node.epg, None)
        node.uri, node.mo, node.intent, node.epg = uri, mo, intent, epg
        endpoint = None
        if isinstance(intent, LocalIntent):
            refused = epg is not None and self._refused(epg)
            if not refused:
                group: Group | None = self.policy.groups.get(epg or "")
                made = local_record(intent, node.iface_id, node.ofport, node.name, group)
                endpoint = same(node.endpoint, made)
        node.endpoint = endpoint

    def _refused(self, epg: str) -> bool:
        """Whether something of group ``epg`` was refused (remembered: what its endpoints used)."""
        refused = self._epg_refused[epg] = self.policy.refused_under(epg)
        return refused

    @staticmethod
    def _index(index: dict[str, set[LocalKey]], key: LocalKey, was: str | None, now: str | None) -> None:
        if was == now:
            return
        if was is not None:
            index[was].discard(key)
            if not index[was]:
                del index[was]
        if now is not None:
            index.setdefault(now, set()).add(key)

    # ---- the Network
    def _assemble(
        self,
        tunnel_port: int | None,
        ofports: Mapping[str, int],
        local_changed: bool,
        remote_changed: bool,
        local_problems: bool,
    ) -> Network:
        parts = self._parts
        touched = self.policy.touched
        for name in ("groups", "contracts", "bds", "security_groups", "address_sets", "routers"):
            if name in touched or name not in parts:
                parts[name] = dict(getattr(self.policy, name))  # a copy: the state goes on changing
        parts["floating_ips"] = self.policy.floating_ips
        if "external" in touched or ofports is not self._ofports or "external" not in parts:
            parts["external"] = self._attach(ofports, parts.get("external", {}))
            self._ofports = ofports
        if local_changed or "local" not in parts:
            parts["local"] = self._locals
        parts["remote"] = self.remote.endpoints
        if self.policy.problems_changed or local_problems or remote_changed or "invalid" not in parts:
            found = {*self.policy.problems(), *self._local_problems.values(), *self.remote.problems}
            invalid = tuple(sorted(found, key=problem_order))
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
