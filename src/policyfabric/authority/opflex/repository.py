"""The policy repository role: the stored model as GBP MO trees, served and pushed.

One tree per tenant (and one global tree: the universe and the external
networks), built by ``policy_tree.py`` and rebuilt when the tenant changes.
``policy_resolve`` returns a subtree and subscribes the session to it for
``prr`` seconds. A commit marks its tenants dirty; the server's next flush
rebuilds them (off the event loop), diffs each against its previous tree and
sends one ``policy_update`` per session, holding only the changed MOs under
that session's subscriptions.

It talks to the rest of the server through its constructor: ``fan_out`` to
push, ``schedule`` to ask for a flush, ``gateways`` for the election's
current result (written into ``PfExternalGateway``) and ``rebuilt`` to hand
each fresh tree back (the election reads its candidates from it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from policyfabric.authority.gateways import RouterKey
from policyfabric.authority.opflex.intent_index import EndpointIntent, IntentIndex, tenant_endpoints
from policyfabric.authority.opflex.params import Resolve, Unresolve, parse
from policyfabric.authority.opflex.peers import FanOut, Peer, refs, wire
from policyfabric.authority.opflex.policy_tree import global_tree, tenant_tree
from policyfabric.authority.service import Authority
from policyfabric.model.objects import ExternalNetwork
from policyfabric.opflex.gbp import Cls
from policyfabric.opflex.mo import MO, Tree
from policyfabric.opflex.rpc import RpcError
from policyfabric.opflex.uri import UNIVERSE, child, unescape
from policyfabric.opflex.wire import Code
from policyfabric.store.base import Change

Trees = Mapping[str | None, Tree]  # tenant (None: the global tree) -> its tree


def tenant_of(uri: str) -> str | None:
    """The tenant whose PolicySpace holds ``uri`` (None for global URIs)."""
    prefix = child(UNIVERSE, Cls.POLICY_SPACE)
    if not uri.startswith(prefix):
        return None
    return unescape(uri[len(prefix) :].split("/", 1)[0])


def affected_tenants(changes: Iterable[Change]) -> set[str | None]:
    """The trees a commit's changes touch: a tenant's own, and the global one when the set of
    tenants changes (the universe lists them)."""
    tenants: set[str | None] = set()
    for change in changes:
        if change.kind == "tenant":
            tenants.update((None, change.name))
        else:
            tenants.add(change.tenant)
    return tenants


def diff(old: Tree | None, new: Tree) -> tuple[list[MO], list[MO], list[MO]]:
    """(new or changed MOs, MOs whose only change is in their children, removed MOs) between two
    versions of a tree. An MO whose properties stayed goes out as ``merge_children`` listing only
    the children it gained (a lost child's URI is under the parent's, so its deletion says it),
    or not at all: adding or removing one member of a large set is a small update."""
    before = old.mos if old else {}
    changed, merged = [], []
    for uri, mo in new.mos.items():
        was = before.get(uri)
        if was == mo:
            continue
        if was is not None and was.properties == mo.properties and was.parent_uri == mo.parent_uri:
            had = set(was.children)
            gained = [c for c in mo.children if c not in had]
            if gained:
                merged.append(MO(mo.subject, mo.uri, mo.properties, gained, mo.parent_subject, mo.parent_uri))
            continue
        changed.append(mo)
    removed = [mo for uri, mo in before.items() if uri not in new.mos]
    return changed, merged, removed


class PolicyRepository:
    def __init__(
        self,
        authority: Authority,
        *,
        fan_out: FanOut,
        schedule: Callable[[], None],
        gateways: Callable[[], Mapping[RouterKey, tuple[str, str]]],
        rebuilt: Callable[[Trees], None],
    ) -> None:
        self.authority = authority
        self._fan_out, self._schedule = fan_out, schedule
        self._gateways, self._rebuilt = gateways, rebuilt
        self.trees: dict[str | None, Tree] = {}
        self.intent = IntentIndex()  # the endpoints of the trees: what declarations are checked against
        self._dirty: set[str | None] = set()

    # ---- requests
    async def resolve(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        if any(isinstance(p, dict) and "policy_ident" in p for p in params):
            raise RpcError(Code.EUNSUPPORTED, "Policy resolution by ident is not supported")
        policy: list[dict[str, Any]] = []
        for entry in parse(Resolve, params):
            tree = self.trees.get(tenant_of(entry.policy_uri))
            mos = tree.subtree(entry.policy_uri) if tree else []
            if mos and mos[0].subject != entry.subject:
                raise RpcError(
                    Code.ERROR,
                    f"Unknown subject: {entry.subject} (the object at that URI is a {mos[0].subject})",
                )
            peer.subs[entry.policy_uri] = time.monotonic() + max(entry.prr, 1)
            policy += [mo.to_wire() for mo in mos]
        return {"policy": policy}

    async def unresolve(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        for entry in parse(Unresolve, params):
            peer.subs.pop(entry.policy_uri, None)
        return {}

    # ---- changes
    def mark_dirty(self, tenants: Iterable[str | None]) -> None:
        """Rebuild these trees at the next flush (None: the global tree)."""
        self._dirty.update(tenants)
        self._schedule()

    def take_dirty(self) -> set[str | None]:
        dirty, self._dirty = self._dirty, set()
        return dirty

    async def rebuild(self, tenants: set[str | None], push: bool) -> None:
        """Rebuild ``tenants``' trees from the store; with ``push``, send what changed."""
        gateways = dict(self._gateways())
        authority = self.authority

        def build() -> tuple[dict[str | None, Tree], dict[str, dict[str, EndpointIntent]]]:
            out: dict[str | None, Tree] = {}
            names = authority.tenants()
            for tenant in tenants:
                objects, numbers = authority.snapshot(tenant)
                if tenant is None:
                    nets = [n for n in objects.get("external_network", []) if isinstance(n, ExternalNetwork)]
                    out[None] = global_tree(names, nets)
                elif tenant in names:
                    active = {r: v for (t, r), v in gateways.items() if t == tenant}
                    out[tenant] = tenant_tree(tenant, objects, numbers, active)
                else:
                    out[tenant] = Tree()  # the tenant is gone
            return out, {t: tenant_endpoints(t, tree) for t, tree in out.items() if t is not None}

        fresh, endpoints = await asyncio.to_thread(build)
        self.intent.update(endpoints)  # before any push: an agent's next declaration meets this intent
        changed: list[MO] = []
        merged: list[MO] = []
        removed: list[MO] = []
        for tenant, tree in fresh.items():
            c, m, r = diff(self.trees.get(tenant), tree)
            changed += c
            merged += m
            removed += r
            if tree.mos:
                self.trees[tenant] = tree
            else:
                self.trees.pop(tenant, None)
        self._rebuilt(fresh)  # routers may have gained or lost an external gateway
        if push and (changed or merged or removed):
            await self._fan_out(
                "policy_update",
                lambda peer: peer.subs,
                {"replace": wire(changed), "merge_children": wire(merged), "delete": refs(removed)},
            )


__all__ = ["PolicyRepository", "Trees", "affected_tenants", "diff", "tenant_of"]
