"""The policy repository role: the stored model as GBP MO trees, served and pushed.

One tree per tenant (and one global tree: the universe and the external
networks). ``policy_resolve`` of any object's URI (a PolicySpace, or one group,
contract, bridge domain...: our agents resolve by need, object by object, as a
reference agent does) returns its subtree and subscribes the session to it for
``prr`` seconds. A commit marks its tenants dirty; the server's next flush
brings them up to date and sends one ``policy_update`` to each session
subscribed to a changed MO (or to one of its ancestors), holding only those
MOs. The sessions are found by the changed MOs' URIs (``Subscribers``, an
index by subscribed URI), not by looking at every session's subscriptions: a
change to a contract costs the sessions that follow it.

A tenant's tree is kept by its ``TenantModel`` (``tenant_model.py``): off the
event loop the flush reads the records changed since the model's revision and
rebuilds the MOs of those objects and of those that read them; on the loop it
patches the tree in place (resolves read it there, so they never see half a
patch) and the patch says what to push; the intent index is patched endpoint
by endpoint. A flush costs what changed, not the tenant's size. The tree is
built whole (``TenantModel.load``, diffed against the previous tree) the first
time, when the tenant is created or deleted, after more than
``CHANGES_AT_ONCE`` changes, or should patching fail; the global tree is
always built whole (it is small).

Read-your-writes: a resolve must see every write acknowledged before it
arrived, though rebuilds are coalesced and run at the next flush. Each
``mark_dirty`` numbers the change (``_marked``: the latest number per
tenant); a rebuild records the number it covers (``_built``: the number
taken when it read the dirty set, which is before it reads the store). A
resolve that reads a tenant whose tree is behind its latest mark waits for
the rebuild in progress or scheduled, not for the tenant to be clean (a
tenant written to without pause would starve it); nothing else waits, and
pushes go at the same pace as before.

It talks to the rest of the server through its constructor: ``fan_out`` to
push, ``schedule`` to ask for a flush, ``gateways`` for the election's
current result (written into ``PfExternalGateway``) and ``rebuilt`` to hand
each fresh tree back (the election reads its candidates from it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policyfabric.authority.gateways import RouterKey
from policyfabric.authority.opflex.chunks import Oversized, resolve_parts
from policyfabric.authority.opflex.intent_index import EndpointIntent, IntentIndex, TenantIntent
from policyfabric.authority.opflex.params import Resolve, Unresolve, parse
from policyfabric.authority.opflex.peers import MAX_SUBSCRIPTIONS, MERGE, FanOut, Peer, refs, wire
from policyfabric.authority.opflex.policy_tree import global_tree
from policyfabric.authority.opflex.tenant_model import (
    Patch,
    TenantModel,
    compare,
    read_changes,
    read_tenant,
)
from policyfabric.authority.service import Authority
from policyfabric.model.objects import ExternalNetwork
from policyfabric.opflex.cache import ancestors
from policyfabric.opflex.client import BY_NEED, CARRIED
from policyfabric.opflex.gbp import Cls, Prop
from policyfabric.opflex.mo import MO, Tree
from policyfabric.opflex.rpc import RpcError
from policyfabric.opflex.uri import UNIVERSE, child, space, under, unescape
from policyfabric.opflex.wire import Code
from policyfabric.store.base import Change

log = logging.getLogger(__name__)

Trees = Mapping[str | None, Tree]  # tenant (None: the global tree) -> its tree
FRESH_WAIT = 10.0  # seconds a resolve waits for a rebuild before answering from the tree it has
CHANGES_AT_ONCE = 20_000  # changes since the last flush beyond which the tenants are read whole
CARRY_AT_MOST = 200  # objects a push may hold for what they refer to to be pushed with them


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


def revision_mo(tenant: str, revision: int) -> MO:
    """The tenant's ``PfRevision``: the store revision its tree reflects (sent with its subtree,
    not listed by the PolicySpace: the tree itself stays the model's)."""
    top = space(tenant)
    uri = child(top, Cls.PF_REVISION)
    return MO(Cls.PF_REVISION, uri, {Prop.REVISION: revision}, [], Cls.POLICY_SPACE, top, Cls.PF_REVISION)


def diff(old: Tree | None, new: Tree) -> tuple[list[MO], list[MO], list[MO]]:
    """(new or changed MOs, MOs whose only change is in their children, removed MOs) between two
    versions of a tree. An MO whose properties stayed goes out as ``merge_children`` listing only
    the children it gained (a lost child's URI is under the parent's, so its deletion says it),
    or not at all: adding or removing one member of a large set is a small update."""
    before = old.mos if old else {}
    changed: list[MO] = []
    merged: list[MO] = []
    for uri, mo in new.mos.items():
        found = compare(before.get(uri), mo)
        if found is not None:
            (changed if found[0] == "changed" else merged).append(found[1])
    removed = [mo for uri, mo in before.items() if uri not in new.mos]
    return changed, merged, removed


class Subscribers:
    """Who subscribed to what: subscribed URI -> the sessions' ``Peer`` (by identity). The sessions'
    own tables (``Peer.subs``) stay the truth, with the leases; this index only finds the
    candidates for a push, and forgets an entry whose session no longer holds the subscription
    (unresolved, expired) when it meets it."""

    def __init__(self) -> None:
        self._by_uri: dict[str, dict[int, Peer]] = {}

    def add(self, uri: str, peer: Peer) -> None:
        self._by_uri.setdefault(uri, {})[id(peer)] = peer

    def remove(self, uri: str, peer: Peer) -> None:
        peers = self._by_uri.get(uri)
        if peers is not None:
            peers.pop(id(peer), None)
            if not peers:
                del self._by_uri[uri]

    def __len__(self) -> int:
        return sum(len(p) for p in self._by_uri.values())

    def of(self, uris: Iterable[str], now: float) -> dict[int, dict[str, float]]:
        """For each session (by its ``Peer``'s identity) subscribed to one of ``uris`` or to an
        object above it: those of its live subscriptions (URI -> expiry) that cover one of them.
        Costs the URIs' depth each, not the number of sessions or subscriptions."""
        out: dict[int, dict[str, float]] = {}
        seen: set[str] = set()
        by_uri = self._by_uri
        for uri in uris:
            for prefix in ancestors(uri):
                if prefix in seen:
                    continue
                seen.add(prefix)
                peers = by_uri.get(prefix)
                if not peers:
                    continue
                for key, peer in list(peers.items()):
                    expiry = peer.subs.get(prefix)
                    if expiry is None or expiry <= now:
                        del peers[key]  # unresolved or expired since
                        continue
                    out.setdefault(key, {})[prefix] = expiry
                if not peers:
                    del by_uri[prefix]
        return out


class PolicyRepository:
    def __init__(
        self,
        authority: Authority,
        *,
        fan_out: FanOut,
        schedule: Callable[[], None],
        gateways: Callable[[], Mapping[RouterKey, tuple[str, str]]],
        rebuilt: Callable[[Trees], None],
        domain: str = "policyfabric",
        oversized: Callable[[Peer, list[Oversized]], None] = lambda peer, found: None,
    ) -> None:
        self.authority = authority
        self.domain = domain  # the OpFlex domain: names the PlatformConfig served
        self._oversized = oversized  # told of objects too large for any frame (never sent)
        self._fan_out, self._schedule = fan_out, schedule
        self._gateways, self._rebuilt = gateways, rebuilt
        self.trees: dict[str | None, Tree] = {}
        self.intent = IntentIndex()  # the endpoints of the trees: what declarations are checked against
        self._models: dict[str, TenantModel] = {}  # tenant -> its objects and their MOs (its tree's)
        self._intents: dict[str, TenantIntent] = {}  # tenant -> its endpoints' entries, as last read
        self._rebuilding = asyncio.Lock()
        self.subscribers = Subscribers()  # who to push a changed MO to
        self._dirty: set[str | None] = set()
        # revisions of commits that changed only endpoints' statuses or interfaces (no tree holds
        # them): the models skip them as the flush does (``status_only``); written by the REST
        # threads' commit listener, read and pruned by the build's thread
        self._status_only: set[int] = set()
        self._status_lock = threading.Lock()
        self._mark = 0  # numbers the calls to mark_dirty
        self._marked: dict[str | None, int] = {}  # tenant -> the number of its latest change
        self._built: dict[str | None, int] = {}  # tenant -> the latest change its tree holds
        self._taken = 0  # the number the dirty set was last taken at (what a running rebuild covers)
        self._progress = asyncio.Event()  # set (then replaced) whenever a rebuild completes
        self.stamps: dict[str, MO] = {}  # tenant -> its PfRevision, renewed by each rebuild of it

    # ---- requests
    async def resolve(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        if any(isinstance(p, dict) and "policy_ident" in p for p in params):
            raise RpcError(Code.EUNSUPPORTED, "Policy resolution by ident is not supported")
        policy: list[dict[str, Any]] = []
        entries = parse(Resolve, params)
        await self.fresh({tenant_of(e.policy_uri) for e in entries})
        stamped: set[str] = set()  # the tenants' revisions already in this answer
        for entry in entries:
            tree = self.trees.get(tenant_of(entry.policy_uri))
            mos = tree.subtree(entry.policy_uri) if tree else []
            if mos and mos[0].subject != entry.subject:
                raise RpcError(
                    Code.ERROR,
                    f"Unknown subject: {entry.subject} (the object at that URI is a {mos[0].subject})",
                )
            # the tenant's revision goes with any part of it (resolution by need: agents resolve
            # objects, not the tenant), so the agent can say which revision it rendered
            stamp = self.stamps.get(tenant_of(entry.policy_uri) or "")
            if mos and stamp is not None:  # (no subtree holds it: it is no child of the space)
                if stamp.uri not in stamped:
                    stamped.add(stamp.uri)
                    mos = [*mos, stamp]
                peer.owed = max(peer.owed, stamp.properties.get(Prop.REVISION, 0))
            peer.subscribe(peer.subs, entry.policy_uri, entry.prr)
            self.subscribers.add(entry.policy_uri, peer)
            policy += [mo.to_wire() for mo in mos]
        # a whole tenant may not fit one frame: all but the last part go first, as updates (and an MO
        # too large for a frame in pieces, as merge_children), paced by how fast the peer reads;
        # the reply waits for them, so that it still completes the answer
        if peer.post is None:
            return {"policy": policy}
        first, reply, oversized = resolve_parts({"policy": policy}, into=MERGE)
        await peer.send_all(
            "policy_update",
            ({"replace": m["policy"], "merge_children": m.get(MERGE, []), "delete": []} for m in first),
        )
        if oversized:
            self._oversized(peer, oversized)
        return reply

    async def unresolve(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        for entry in parse(Unresolve, params):
            peer.subs.pop(entry.policy_uri, None)
            self.subscribers.remove(entry.policy_uri, peer)
        return {}

    def forget(self, peer: Peer, uris: Iterable[str]) -> None:
        """Take ``uris`` (subscriptions ``peer`` no longer holds: expired, or all of them when its
        session closed) out of the index. The index drops such entries lazily, when a push meets
        their URI; a URI no push meets again (an agent restarted and its old session held ten
        thousand) would otherwise keep the entry, and the old session's ``Peer`` with it."""
        for uri in uris:
            self.subscribers.remove(uri, peer)

    # ---- changes
    def status_only(self, revisions: Iterable[int]) -> None:
        """Commits that changed only endpoints' statuses or interfaces: the flush rebuilds no tree
        for them, and the next rebuild of the tenant skips them too. Why: a host's start reports
        10,000 statuses, and the first real change after it caught the tenant's model up with
        all of them (read, parse and compare 10,000 endpoints: ~0.5 s on that change's way)."""
        with self._status_lock:
            self._status_only.update(revisions)

    def _skipped(self, since: int) -> frozenset[int]:
        """The status-only revisions after ``since`` (those at or before it are forgotten: every
        model is past them)."""
        with self._status_lock:
            self._status_only = {r for r in self._status_only if r > since}
            return frozenset(self._status_only)

    def mark_dirty(self, tenants: Iterable[str | None]) -> None:
        """Rebuild these trees at the next flush (None: the global tree)."""
        self._mark += 1
        for tenant in tenants:
            self._dirty.add(tenant)
            self._marked[tenant] = self._mark
        self._schedule()

    def take_dirty(self) -> set[str | None]:
        """The tenants to rebuild now; the rebuild that takes them covers every change marked so far
        (it reads the store after this, and each change was committed before it was marked)."""
        dirty, self._dirty = self._dirty, set()
        self._taken = self._mark
        return dirty

    def behind(self, tenants: Iterable[str | None]) -> set[str | None]:
        """Those of ``tenants`` whose tree misses a change marked before now."""
        return {t for t in tenants if self._built.get(t, 0) < self._marked.get(t, 0)}

    async def fresh(self, tenants: set[str | None]) -> None:
        """Wait until the trees of ``tenants`` hold every change marked before the call (the
        rebuild is already scheduled by ``mark_dirty``). Bounded: should rebuilds fail, the
        resolve answers from the tree it has after ``FRESH_WAIT`` seconds, and says so."""
        need = {t: self._marked[t] for t in self.behind(tenants)}
        if not need:
            return
        deadline = time.monotonic() + FRESH_WAIT
        while any(self._built.get(t, 0) < n for t, n in need.items()):
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("opflex: a resolve did not wait for the rebuild of %s", sorted(map(str, need)))
                return
            self._schedule()  # in case the flush it was waiting for found nothing to do
            try:
                await asyncio.wait_for(self._progress.wait(), left)
            except TimeoutError:
                continue

    def _built_up_to(self, tenants: Iterable[str | None], mark: int) -> None:
        for tenant in tenants:
            self._built[tenant] = max(self._built.get(tenant, 0), mark)
        self._progress.set()
        self._progress = asyncio.Event()

    async def rebuild(self, tenants: set[str | None], push: bool) -> None:
        """Rebuild ``tenants``' trees from the store; with ``push``, send what changed."""
        covers = self._taken  # what the flush that called this took (0 before any change)
        try:
            await self._rebuild(tenants, push)
        finally:  # even a failed build ends the wait of the resolves behind it: they answer from
            self._built_up_to(tenants, covers)  # what there is, as they did before they waited

    async def _rebuild(self, tenants: set[str | None], push: bool) -> None:
        async with self._rebuilding:  # one at a time: each takes the model where the last left it
            gateways = dict(self._gateways())
            built = await asyncio.to_thread(self._build, tenants, gateways)
            changed: list[MO] = []
            merged: list[MO] = []
            removed: list[MO] = []
            rebuilt: dict[str | None, Tree] = {}
            entries: dict[str, dict[str, EndpointIntent]] = {}
            for tenant, whole in built.whole.items():
                c, m, r = diff(self.trees.get(tenant), whole.tree)
                changed += c
                merged += m
                removed += r
                if tenant is not None:
                    entries[tenant] = whole.entries
                    rebuilt[tenant] = whole.tree
            patched = {}
            for tenant, patch in built.patches.items():
                model = self._models[tenant]
                try:
                    pushed = model.apply(patch)
                except Exception:  # the tree may be half patched: built whole at the next flush
                    log.exception("opflex: patching the tree of tenant %s failed; building it whole", tenant)
                    self._models.pop(tenant, None)
                    self.mark_dirty({tenant})
                    continue
                patched[tenant] = patch
                changed += pushed.changed
                merged += pushed.merged
                removed += pushed.removed
                if patch.routers:
                    rebuilt[tenant] = model.routers()
            self.intent.update(entries)  # before any push: an agent's next declaration meets this intent
            for tenant, patch in patched.items():
                model = self._models[tenant]
                self.intent.patch(
                    tenant,
                    self._intents[tenant].patch(
                        model.tree, patch.endpoints, patch.bds, patch.groups, model.users
                    ),
                )
            for tenant, whole in built.whole.items():
                if whole.tree.mos:
                    self.trees[tenant] = whole.tree
                else:
                    self.trees.pop(tenant, None)
            for tenant in tenants - {None}:  # every rebuild says which revision the tree now reflects
                assert tenant is not None
                held = self._models.get(tenant)
                if held is not None and tenant in self.trees:
                    self.stamps[tenant] = revision_mo(tenant, held.revision)
                    changed.append(self.stamps[tenant])
                elif tenant in self.stamps:
                    removed.append(self.stamps.pop(tenant))
            if rebuilt:
                self._rebuilt(rebuilt)  # routers may have gained or lost an external gateway
            if push and (changed or merged or removed):
                stamps = {t: self.stamps[t] for t in tenants if t is not None and t in self.stamps}
                self.push(changed, merged, removed, stamps)

    def push(
        self, changed: list[MO], merged: list[MO], removed: list[MO], stamps: Mapping[str, MO] | None = None
    ) -> None:
        """Send what a flush changed to the sessions subscribed to it (each gets the MOs under its
        subscriptions that cover one of them: ``fan_out`` filters by those alone).

        ``stamps`` (tenant -> its new ``PfRevision``, also in ``changed``): a session that gets any
        object of a tenant gets the tenant's stamp with it (and owes it: ``Peer.owed``); every
        session has then *settled* the flush's revision, since it needed nothing else from it."""
        stamps = stamps or {}
        uris = (mo.uri for part in (changed, merged, removed) for mo in part)
        covering = self.subscribers.of(uris, time.monotonic())
        newest = max((s.properties.get(Prop.REVISION, 0) for s in stamps.values()), default=0)
        links = self._carried([*changed, *merged]) if covering else []

        def table(peer: Peer) -> dict[str, float]:
            covers = covering.get(id(peer), {})
            if links and covers:
                self._carry(peer, covers, links)
            if stamps and covers:
                until = max(covers.values())
                for tenant in {tenant_of(uri) for uri in covers}:
                    stamp = stamps.get(tenant) if tenant is not None else None
                    if stamp is not None:
                        covers[stamp.uri] = until
                        peer.owed = max(peer.owed, stamp.properties.get(Prop.REVISION, 0))
            peer.settled = max(peer.settled, newest)
            return covers

        self._fan_out(
            "policy_update",
            table,
            {"replace": wire(changed), "merge_children": wire(merged), "delete": refs(removed)},
        )

    def _carried(self, pushed: list[MO]) -> list[tuple[str, str]]:
        """What a change refers to that is new with it: (referring URI, target) of each reference
        to a rule's classifier or action (``opflex.client.CARRIED``: leaves only rules reach, never
        followed by need) whose target is in the same push. A rule added to a contract refers to
        a new classifier: pushed with the rule to the sessions that receive the rule (``_carry``),
        the agent has it without resolving it (a round trip between the rule reaching it and its
        flows). Only for a change of at most ``CARRY_AT_MOST`` objects (what an operator's write
        is); a larger one goes as before, resolved by need."""
        if len(pushed) > CARRY_AT_MOST:
            return []
        pushed_uris = {mo.uri for mo in pushed}
        links: list[tuple[str, str]] = []
        for mo in pushed:
            if mo.subject in BY_NEED:
                continue
            for subject, target in mo.references():
                if subject in CARRIED and target in pushed_uris:
                    links.append((mo.uri, target))
        return links

    def _carry(self, peer: Peer, covers: dict[str, float], links: list[tuple[str, str]]) -> None:
        """Add to ``covers`` (what ``peer`` receives of this push) each target of ``links`` that a
        received object refers to and that none of the peer's subscriptions covers, and subscribe
        the peer to it (for as long as the subscription that brought the referring object): the
        agent is told of the target's changes as if it had resolved it, which it then need not."""
        now = time.monotonic()
        subs = peer.subs
        for referrer, target in links:
            if target in covers or any(subs.get(a, 0.0) > now for a in ancestors(target)):
                continue
            until = max((exp for uri, exp in covers.items() if under(referrer, uri)), default=0.0)
            if until <= now or (target not in subs and len(subs) >= MAX_SUBSCRIPTIONS):
                continue  # past the cap the agent resolves it by need, as before carrying
            subs[target] = until
            self.subscribers.add(target, peer)
            covers[target] = until

    def _build(self, tenants: set[str | None], gateways: Mapping[RouterKey, tuple[str, str]]) -> _Built:
        """Off the event loop: bring the models of ``tenants`` up to date with the store, by the
        changed objects where the tenant has a model, whole otherwise (and for the global tree)."""
        authority, out = self.authority, _Built()
        spec_of = authority.cache.spec

        def active(tenant: str) -> dict[str, tuple[str, str]]:
            return {r: v for (t, r), v in gateways.items() if t == tenant}

        known = [t for t in tenants if t is not None and t in self._models]
        since = min((self._models[t].revision for t in known), default=0)
        skip = self._skipped(min((m.revision for m in self._models.values()), default=0))
        news = read_changes(authority.store.read, since, CHANGES_AT_ONCE, skip) if known else None
        whole = {t for t in tenants if t not in known}
        for tenant in known:
            model = self._models[tenant]
            if news is None or tenant in news.tenants:
                whole.add(tenant)
                continue
            try:
                out.patches[tenant] = model.update(
                    news.revision, news.records.get(tenant, {}), spec_of, active(tenant)
                )
            except Exception:  # the model may be half updated: it is built again, whole
                log.exception(
                    "opflex: the incremental rebuild of tenant %s failed; building it whole", tenant
                )
                out.patches.pop(tenant, None)
                whole.add(tenant)
        names = set(authority.tenants()) if whole else set()
        for each in whole:
            if each is None:
                objects, _ = authority.snapshot(None)
                nets = [n for n in objects.get("external_network", []) if isinstance(n, ExternalNetwork)]
                out.whole[None] = _Whole(global_tree(sorted(names), nets, self.domain), {})
            elif each in names:
                revision, records = read_tenant(authority.store.read, each)
                model = TenantModel.load(each, revision, records, spec_of, active(each))
                intent = TenantIntent(each)
                entries = intent.full(model.tree, model.specs["bridge_domain"], model.specs["endpoint_group"])
                self._models[each], self._intents[each] = model, intent
                out.whole[each] = _Whole(model.tree, entries)
            else:  # the tenant is gone
                self._models.pop(each, None)
                self._intents.pop(each, None)
                out.whole[each] = _Whole(Tree(), {})
        return out


@dataclass
class _Whole:
    """A tree built whole, and its endpoints' entries."""

    tree: Tree
    entries: dict[str, EndpointIntent]


@dataclass
class _Built:
    """What ``_build`` made: trees built whole, and patches of the models of the other tenants."""

    whole: dict[str | None, _Whole] = field(default_factory=dict)
    patches: dict[str, Patch] = field(default_factory=dict)


__all__ = ["PolicyRepository", "Subscribers", "Trees", "affected_tenants", "diff", "tenant_of"]
