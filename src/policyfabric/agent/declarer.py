"""Declaring the host's plugged endpoints to the authority's endpoint registry.

Why this is its own module: declaring is the agent's one stateful conversation
with the registry (what it said, so it can take it back), and it changes for
reasons of its own (registry layout, memoisation) that have nothing to do with
rendering. ``endpoints.declaration`` builds what to declare (pure); the
``Declarer`` decides when: it declares an endpoint once its policy is
resolved, again only when something the declaration is computed from
changed, undeclares the old L2 endpoint when its MAC or bridge domain moved,
and undeclares endpoints that were unplugged. It resolves each endpoint's
``PfEndpoint`` (the client follows its references), and, knowing where its
endpoints are (their groups and bridge domains), what they need beyond that
(``subscriptions.follow_needs``): the agent resolves by need, never a whole
PolicySpace.

It talks to the client through ``DeclaringClient`` (the subset of
``opflex.client.PolicyClient`` it uses), so tests drive it with a plain fake.

An interface's ``iface-id`` is ``TENANT/NAME``, or a bare endpoint name (what os-vif writes under
Nova: the Neutron port UUID). ``located`` (with a ``Locator``, agent/locate.py) turns the bare ones
into ``TENANT/NAME`` once the authority has said which tenant holds the name, and leaves out those
it has not; the agent hands what it returns to ``sync`` and to the view alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from policyfabric.agent.endpoints import bd_members_prefix, declaration, subnet_uris
from policyfabric.agent.locate import Locator
from policyfabric.agent.renderers.ovs.ovsdb import Plugged
from policyfabric.agent.subscriptions import follow_needs, placement
from policyfabric.model.types import SLAAC
from policyfabric.opflex.gbp import Cls, endpoint_uri
from policyfabric.opflex.mo import MO

log = logging.getLogger(__name__)


class DeclaringClient(Protocol):
    """What the declarer needs of the OpFlex client."""

    @property
    def policy(self) -> Mapping[str, MO]: ...

    def resolve(self, subject: str, uri: str) -> None: ...

    def unresolve(self, uri: str) -> None: ...

    def resolve_endpoints(self, subject: str, uri: str) -> None: ...

    def declare(self, mos: list[MO]) -> None: ...

    def undeclare(self, uri: str) -> None: ...


class PluggedPort(Protocol):
    """An interface that names an endpoint (``ovsdb.Plugged`` is one)."""

    @property
    def iface_id(self) -> str: ...

    @property
    def name(self) -> str: ...


def split_iface_id(iface_id: str) -> tuple[str, str] | None:
    """``TENANT/NAME`` → (tenant, name); None if it is not of that form."""
    tenant, sep, name = iface_id.partition("/")
    return (tenant, name) if sep and tenant and name else None


FULL_EVERY = 50  # syncs: every so often each endpoint is looked at again, changed or not


class Declarer:
    """Declares the endpoints plugged on this host (``sync``, once per reconcile).

    Incremental: given the URIs that changed in the cache since the last sync, an endpoint still
    plugged on the same interface is looked at again only if one of the objects its declaration
    was computed from is among them (a reverse index, ``_deps``), so a reconcile after one change
    costs what the change touches, not the number of endpoints; every ``FULL_EVERY`` syncs, and
    whenever the changes are not known, every endpoint is looked at (a safety net)."""

    def __init__(
        self,
        client: DeclaringClient,
        host: str,
        tunnel_ip: str | None,
        locator: Locator | None = None,
        send_later: bool = False,
    ) -> None:
        self.client, self.host, self.tunnel_ip = client, host, tunnel_ip
        self.send_later = send_later  # declarations wait for ``send`` rather than leave with ``sync``
        self.locator = locator  # None: bare iface-ids are not resolved (logged and ignored)
        self.declared: dict[str, str] = {}  # iface-id -> L2 declaration URI
        self._memo: dict[str, tuple[tuple[object, ...], str]] = {}
        self._deps: dict[str, set[str]] = {}  # URI of an input -> iface-ids computed from it
        self._inputs_of: dict[str, tuple[str, frozenset[str]]] = {}  # iface-id -> (interface, URIs)
        self._syncs = 0
        self._placed: dict[str, tuple[str | None, str | None]] = {}  # iface-id -> (group, bridge domain)
        self._groups: dict[str, int] = {}  # group URI -> endpoints of this host in it
        self._bds: dict[str, int] = {}  # bridge domain URI -> endpoints of this host in it
        self.needed: dict[str, str] = {}  # what the endpoints need (URI -> class), as last resolved
        # the last list ``located`` was given and what it answered (reused while no name is bare)
        self._located: tuple[list[Plugged], list[Plugged], bool] | None = None
        self._synced: list[PluggedPort] | None = None  # the list the last sync went through whole
        self._by_iface: dict[str, PluggedPort] = {}  # ... by iface-id
        # declarations (and their undeclarations, their bridge domains' members) to send once this
        # sync has asked for what the endpoints need: see ``send``
        self._outbox: list[tuple[Callable[..., None], Any] | tuple[Callable[..., None], Any, Any]] = []

    def located(self, plugged: list[Plugged]) -> list[Plugged]:
        """The plugged interfaces with every bare iface-id the authority located as ``TENANT/NAME``;
        bare ones not located (yet) are left out (``Locator.located``)."""
        if self.locator is None:
            return plugged
        last = self._located
        if last is not None and last[0] is plugged and not last[2]:
            return last[1]  # the same interfaces (OVSDB unchanged), none bare: the same answer
        policy = self.client.policy
        out = self.locator.located(plugged, lambda tenant, name: endpoint_uri(tenant, name) in policy)
        self._located = (plugged, out, any("/" not in p.iface_id for p in plugged))
        return out

    def sync(self, plugged: Iterable[PluggedPort], changed: set[str] | None = None) -> list[str]:
        """Resolve and declare what is plugged; undeclare what is not. ``changed``: the cache URIs
        changed since the last call (None: unknown, look at everything). Returns the iface-ids
        that were unplugged since the last call."""
        self._syncs += 1
        # the periodic full pass waits for a sync with no change (the agent makes one after a quiet
        # spell), up to twice as long: on a change it was that change's latency (250 ms at 10,000)
        full = changed is None or self._syncs >= (FULL_EVERY if not changed else 2 * FULL_EVERY)
        if full:
            self._syncs = 0
        touched: set[str] = set()
        if not full:
            assert changed is not None
            for uri in changed:
                touched |= self._deps.get(uri, set())
            if isinstance(plugged, list) and plugged is self._synced:
                return self._sync_touched(touched)
        seen = set()
        for p in plugged:
            if not full and p.iface_id not in touched:
                known = self._inputs_of.get(p.iface_id)
                if known is not None and known[0] == p.name:
                    seen.add(p.iface_id)
                    continue  # nothing it depends on changed
            key = split_iface_id(p.iface_id)
            if key is None:
                log.warning(
                    "agent %s: interface %s: iface-id %r is not TENANT/NAME", self.host, p.name, p.iface_id
                )
                continue
            seen.add(p.iface_id)
            self._declare(p.iface_id, *key, p.name)
        for iface_id in [i for i in self._inputs_of if i not in seen]:
            self._forget_inputs(iface_id)
            key = split_iface_id(iface_id)
            if key is not None:  # unplugged: its intent is not needed any more
                self.client.unresolve(endpoint_uri(*key))
        for iface_id in [i for i in self._placed if i not in seen]:
            self._place(iface_id, None, None)
        self.needed = follow_needs(self.client, self._groups, self._bds, self.needed)
        gone = [iface_id for iface_id in self.declared if iface_id not in seen]
        for iface_id in gone:
            self._memo.pop(iface_id, None)
            log.info("agent %s: %s unplugged", self.host, iface_id)
            # through the outbox, after the declaration it may hold: sent before it, the undeclare
            # would find nothing declared, and the declaration then go out for an unplugged port
            self._outbox.append((self.client.undeclare, self.declared.pop(iface_id)))
        if not self.send_later:
            self.send()
        if isinstance(plugged, list):
            self._synced, self._by_iface = plugged, {p.iface_id: p for p in plugged}
        return gone

    def send(self) -> None:
        """Send the declarations made so far (after the resolutions their sync asked for). Why not
        at once: the authority answers a session's requests in order, and at 1,000 endpoints its
        1,000 declarations took 1.5 s, which the policy the endpoints' flows need (their contracts,
        their bridge domains' routing domain and subnets, followed as they arrive) waited behind;
        the agent (``send_later``) sends them once what it asked for is answered."""
        outbox, self._outbox = self._outbox, []
        for call, *args in outbox:
            call(*args)

    @property
    def unsent(self) -> int:
        """Calls waiting for ``send``."""
        return len(self._outbox)

    def _sync_touched(self, touched: set[str]) -> list[str]:
        """``sync`` when the plugged interfaces are the very list the last sync went through (OVSDB
        unchanged): nothing was plugged or unplugged, so only the endpoints whose inputs changed
        are looked at, without a walk of every interface (10-20 ms at 10,000 on each of the
        hundreds of reconciles a host's start makes)."""
        for iface_id in touched:
            p = self._by_iface.get(iface_id)
            key = split_iface_id(iface_id)
            if p is not None and key is not None:
                self._declare(iface_id, *key, p.name)
        self.needed = follow_needs(self.client, self._groups, self._bds, self.needed)
        if not self.send_later:
            self.send()
        return []

    def _remember_inputs(self, iface_id: str, interface: str, uris: set[str]) -> None:
        self._forget_inputs(iface_id)
        self._inputs_of[iface_id] = (interface, frozenset(uris))
        for uri in uris:
            self._deps.setdefault(uri, set()).add(iface_id)

    def _forget_inputs(self, iface_id: str) -> None:
        known = self._inputs_of.pop(iface_id, None)
        for uri in known[1] if known else ():
            users = self._deps.get(uri)
            if users is not None:
                users.discard(iface_id)
                if not users:
                    del self._deps[uri]

    def _place(self, iface_id: str, group: str | None, bd: str | None) -> None:
        """Count the endpoint in its group and bridge domain (None, None: nowhere, unplugged)."""
        old = self._placed.pop(iface_id, (None, None))
        if (group, bd) != (None, None):
            self._placed[iface_id] = (group, bd)
        for table, was, now in ((self._groups, old[0], group), (self._bds, old[1], bd)):
            if was == now:
                continue
            if was is not None:
                table[was] -= 1
                if not table[was]:
                    del table[was]
            if now is not None:
                table[now] = table.get(now, 0) + 1

    def _declare(self, iface_id: str, tenant: str, name: str, interface: str) -> None:
        uri = endpoint_uri(tenant, name)
        self.client.resolve(Cls.PF_ENDPOINT, uri)
        self._place(iface_id, *placement(self.client.policy.get(uri)))
        inputs, uris = self._inputs(uri, interface)
        last = self._memo.get(iface_id)
        if last is not None and _same(last[0], inputs):
            known = self._inputs_of.get(iface_id)
            if known is None or known[0] != interface:  # (the same inputs: the same URIs)
                self._remember_inputs(iface_id, interface, uris)
            return  # same objects as last time: nothing to declare again
        self._remember_inputs(iface_id, interface, uris)
        decl = declaration(self.client.policy, tenant, name, interface, self.tunnel_ip)
        if decl is None:
            return  # its policy is not resolved yet
        self._memo[iface_id] = (inputs, decl.l2.uri)
        old = self.declared.get(iface_id)
        if old is not None and old != decl.l2.uri:
            self._outbox.append((self.client.undeclare, old))  # the endpoint's MAC or bridge domain changed
        self._outbox.append((self.client.declare, decl.all))
        self.declared[iface_id] = decl.l2.uri
        members = bd_members_prefix(decl.bridge_domain)
        self._outbox.append((self.client.resolve_endpoints, Cls.EPR_L2_EP, members))

    def _inputs(self, uri: str, interface: str) -> tuple[tuple[object, ...], set[str]]:
        """Everything a declaration is computed from (MOs are replaced, never mutated, so identity
        tells whether anything changed), and the URIs of those objects, resolved or not yet."""
        policy = self.client.policy
        ep = policy.get(uri)
        props = ep.properties if ep is not None else {}
        refs = [
            v.get("reference_uri")
            for v in (props.get("epg"), props.get("bridgeDomain"))
            if isinstance(v, dict)
        ]
        related = [policy.get(r) for r in refs if isinstance(r, str)]
        kids = [c for mo in related if mo is not None for c in mo.children]
        bd = props.get("bridgeDomain")
        if (
            SLAAC in (props.get("ip") or ())
            and isinstance(bd, dict)
            and isinstance(bd.get("reference_uri"), str)
        ):
            kids += subnet_uris(policy, bd["reference_uri"])  # its SLAAC addresses are read from them
        children = [policy.get(c) for c in kids]
        uris = {uri, *(r for r in refs if isinstance(r, str)), *kids}
        return (ep, interface, self.tunnel_ip, *related, *children), uris


def _same(last: tuple[object, ...], inputs: tuple[object, ...]) -> bool:
    """The same objects (strings compared by value)."""
    return len(last) == len(inputs) and all(
        a is b or (isinstance(a, str) and a == b) for a, b in zip(last, inputs, strict=True)
    )
