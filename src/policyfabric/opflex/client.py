"""The agent's side of OpFlex: a policy element that keeps a local MO cache.

- Connects to one of several authorities (configured peers plus the peers a
  server lists in its ``send_identity`` reply), with jittered exponential
  back-off, and fails over when a session drops.
- After every handshake it re-declares its endpoints and re-resolves
  everything it holds (libopflex's behaviour), so a restarted authority or a
  failover loses nothing.
- Applies ``policy_update`` (replace / merge_children / delete) and
  ``endpoint_update`` to the cache, follows references to resolve what is
  missing (all but the relations in ``BY_NEED``, which the agent follows
  itself, only from its own endpoints' objects: ``agent/subscriptions.py``),
  and refreshes subscriptions every prr/3..prr/2 seconds.
- Persists the cache (versioned) under ``state_dir``, so a restarted agent
  can enforce its last policy while the authority is away.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from policyfabric import __version__
from policyfabric.opflex.cache import (
    CacheContents,
    CacheFile,
    apply_policy_update,
    covered,
    drop_subtree,
    held,
)
from policyfabric.opflex.gbp import Cls
from policyfabric.opflex.locate import METHOD as LOCATE
from policyfabric.opflex.locate import request
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import Later, RpcError, Session, SessionClosed
from policyfabric.opflex.trace import METHOD as TRACE
from policyfabric.opflex.wire import DEFAULT_MAX_FRAME, Code

log = logging.getLogger(__name__)
DECLARE_RETRY_MAX = 30.0  # seconds between attempts of a refused declaration, at most
SAVE_SHARE = 0.05  # of the time, at most, spent writing the cache
RESOLVE_BATCH = 100  # URIs asked in one policy_resolve request, at most
CALL_TIMEOUT = 30.0  # seconds a request waits for its reply
UNANSWERED_RETRY = 2.0  # seconds before a request that timed out on a live session is sent again


def unanswered_wait(count: int) -> float:
    """Seconds before the ``count``-th request left unanswered is sent again: ``UNANSWERED_RETRY``,
    doubling with the client's timeouts so far up to 16 times that, and spread by up to half
    again (hundreds of agents timed out by one busy authority must not all come back at once)."""
    return float(UNANSWERED_RETRY * min(2 ** min(count - 1, 4), 16) * (1 + random.random() / 2))


EPR_SUBJECTS = frozenset({Cls.EPR_L2_EP, Cls.EPR_L3_EP})
# Relations whose targets are not resolved just because an object holding them was: each leads
# from an object to others that only some of its readers need (a group to its contracts, a
# contract or a bridge domain back to the groups or routers pointing at it, a security group rule
# to its remote group, whose members come through the rule's remote-address set). Followed from
# everything, they would reach most of a tenant from any endpoint; the agent follows them from
# its own endpoints' groups and bridge domains alone (``agent/subscriptions.follow_needs``).
BY_NEED = frozenset(
    {
        Cls.GBP_EP_GROUP_TO_PROV_CONTRACT_RSRC,
        Cls.GBP_EP_GROUP_TO_CONS_CONTRACT_RSRC,
        Cls.PF_EP_GROUP_TO_PROV_CONTRACT_RTGT,
        Cls.PF_EP_GROUP_TO_CONS_CONTRACT_RTGT,
        Cls.PF_ROUTER_TO_BRIDGE_DOMAIN_RTGT,
        Cls.PF_SEC_GROUP_RULE_TO_REMOTE_GROUP_RSRC,
    }
)
# What a rule refers to, leaves of the policy that only rules reach (never managed by need): an
# authority may push a new one with the rule that uses it, subscribing the session to it. Nothing
# else is taken unasked: an object the agent follows by need (a group, a contract) must come
# through its own resolve, or the bookkeeping of what it follows would let go of it.
CARRIED = frozenset({Cls.GBPE_L24_CLASSIFIER, Cls.GBP_ALLOW_DENY_ACTION})
Peer = tuple[str, int]


def parse_peers(text: str, default_port: int = 8009) -> list[Peer]:
    """``host:port[,host:port...]``."""
    peers = []
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = port, str(default_port)
        if not host or not port.isdigit():
            raise ValueError(f"{item!r} is not HOST:PORT")
        peers.append((host.strip("[]"), int(port)))
    return peers


class PolicyClient:
    """A policy element. Use ``resolve``/``declare``/``report``; run ``run()`` as a task."""

    def __init__(
        self,
        name: str,
        peers: list[Peer],
        *,
        domain: str = "policyfabric",
        state_dir: Path | None = None,
        tls: ssl.SSLContext | None = None,
        prr: int = 7200,
        keepalive: float = 10.0,
        backoff: tuple[float, float] = (0.2, 10.0),
        connect_timeout: float = 5.0,
        on_change: Callable[[set[str]], None] | None = None,
    ) -> None:
        if not peers:
            raise ValueError("at least one authority address is needed")
        self.name, self.domain, self.tls = name, domain, tls
        self.configured = list(peers)
        self.learned: list[Peer] = []
        self.prr, self.keepalive = prr, keepalive
        self.backoff, self.connect_timeout = backoff, connect_timeout
        self.on_change = on_change
        self.cache_file = CacheFile(state_dir / "opflex-cache.json", name) if state_dir else None
        self.policy: dict[str, MO] = {}
        self.endpoints: dict[str, MO] = {}
        self.wanted: dict[str, str] = {}  # policy uri -> subject
        self.ep_wanted: dict[str, str] = {}  # endpoint uri or prefix -> subject
        # local endpoint uri -> its declaration's MOs: kept as MOs and put in wire form only to be
        # sent (at 10,000 endpoints the wire dicts were ~40 MB held for the lease refreshes)
        self.declared: dict[str, tuple[MO, ...]] = {}
        self._refused: set[str] = set()  # declarations refused and being retried (logged once)
        self.version = 0
        self.session: Session | None = None
        self.connected_to: Peer | None = None
        self.ready = asyncio.Event()
        self.outstanding = 0
        self.call_timeout = CALL_TIMEOUT
        self.unanswered = 0  # resolves and declarations that timed out on a live session (sent again)
        self.in_flight: collections.Counter[str] = collections.Counter()  # outstanding, by method
        self.requests = 0  # requests answered by an authority (for benches and status)
        self.answered: collections.Counter[str] = collections.Counter()  # ... by method
        self.connects = 0
        self._stop = False
        self.save_interval = 0.5
        self._save_handle: asyncio.TimerHandle | None = None
        self._save_cost = 0.0  # seconds the last write of the cache took
        self._saving: asyncio.Task[None] | None = None
        self._push_seq = 0  # policy_update messages applied so far
        self._pushed: dict[str, int] = {}  # uri -> the push that last changed it (while resolving)
        self._resolving = 0  # resolve batches awaiting their replies
        self._starting = 0  # resolve batches spawned, not started yet
        self.followed: set[str] = set()  # wanted URIs resolved by following a reference, not asked for
        self._collecting: asyncio.Handle | None = None  # a pending ``_collect``
        self.on_trace: Callable[[list[Any]], Awaitable[Any]] | None = None  # answers pf_trace (trace.py)
        self._asking: list[tuple[str, str]] = []  # wanted in this turn of the loop, not asked yet
        self._ask_handle: asyncio.Handle | None = None
        self._load()

    # ---- cache persistence (opflex/cache.py)
    def _load(self) -> None:
        found = self.cache_file.load() if self.cache_file is not None else None
        if found is not None:
            self.version, self.policy, self.endpoints = found.version, found.policy, found.endpoints
            self.wanted, self.ep_wanted = found.wanted, found.ep_wanted
            self.followed = {u for u in found.followed if u in self.wanted}

    def _save(self) -> None:
        if self.cache_file is not None:
            contents = CacheContents(
                self.version, self.policy, self.endpoints, self.wanted, self.ep_wanted, sorted(self.followed)
            )
            self.cache_file.save(contents)

    def _changed(self, uris: set[str]) -> None:
        if not uris:
            return
        self.version += 1
        self._save_soon()
        if self.on_change is not None:
            self.on_change(uris)

    def _save_soon(self) -> None:
        """Persist at most every ``save_interval`` seconds, and no more than ``SAVE_SHARE`` of the
        time: the whole cache is written each time (at 5,000 endpoints ~0.5 s), so the interval
        grows with what the last write cost. The write runs in a thread, on a copy of the cache's
        maps taken on the loop (entries are replaced, never mutated), so the loop keeps serving."""
        if self.cache_file is None or self._save_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (tests poking at the cache): write now
            self._save()
            return

        def save() -> None:
            self._save_handle = None
            if self._saving is not None and not self._saving.done():
                self._save_soon()  # the last write is still going: after it
                return
            contents = CacheContents(
                self.version,
                dict(self.policy),
                dict(self.endpoints),
                dict(self.wanted),
                dict(self.ep_wanted),
                sorted(self.followed),
            )
            self._saving = loop.create_task(self._save_in_thread(contents))

        self._save_handle = loop.call_later(max(self.save_interval, self._save_cost / SAVE_SHARE), save)

    async def _save_in_thread(self, contents: CacheContents) -> None:
        assert self.cache_file is not None
        start = time.perf_counter()
        try:
            await asyncio.to_thread(self.cache_file.save, contents)
        except OSError as exc:
            log.warning("opflex client %s: cannot write its cache: %s", self.name, exc)
        self._save_cost = time.perf_counter() - start

    def flush_cache(self) -> None:
        """Write the cache now if a write is pending (on stop)."""
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None
            self._save()

    # ---- what the agent asks for
    def resolve(self, subject: str, uri: str) -> None:
        """Follow ``uri`` (asked for: kept until ``unresolve``d, whatever refers to it)."""
        self.followed.discard(uri)
        self._want(subject, uri)

    def _want(self, subject: str, uri: str) -> None:
        if uri not in self.wanted:
            self.wanted[uri] = subject
            self._asking.append((subject, uri))
            if self._ask_handle is None:  # what is wanted in this turn of the loop goes in one request
                self._ask_handle = asyncio.get_running_loop().call_soon(self._ask_wanted)

    @property
    def resolving(self) -> int:
        """Resolutions wanted and not answered yet, counted from the moment they are wanted (the
        request goes out a few turns of the loop later: batched, then sent by a task)."""
        return len(self._asking) + self._resolving + self._starting

    def _ask_wanted(self) -> None:
        self._ask_handle = None
        items, self._asking = self._asking, []
        # not unresolved meanwhile, each once (unresolved and wanted again in one turn: twice)
        items = list({u: (s, u) for s, u in items if self.wanted.get(u) == s}.values())
        if items:
            self._starting += 1
            self._spawn(self._resolve(items, starting=True))

    def unresolve(self, uri: str) -> None:
        """Stop following ``uri``: unsubscribe, and forget its objects unless another subscription
        holds them (one above it); then what was followed only because it referred to it
        (``_collect``)."""
        self._unresolve(uri)
        if self._collecting is None:
            try:
                self._collecting = asyncio.get_running_loop().call_soon(self._collect)
            except RuntimeError:  # no loop (tests poking at the client): now
                self._collect()

    def _unresolve(self, uri: str) -> None:
        self.followed.discard(uri)
        subject = self.wanted.pop(uri, None)
        if subject is None:
            return
        if self.session is not None:
            self._spawn(self._call("policy_unresolve", {"subject": subject, "policy_uri": uri}))
        if not covered(uri, self.wanted):
            self._changed(drop_subtree(self.policy, uri))

    def _collect(self) -> None:
        """Unresolve every URI resolved by following a reference (``followed``) that no object
        still cached refers to, directly or through others, from what was asked for: the objects
        of a contract let go of, say (its classifiers, its actions). Costs the cache's size; runs
        once after a batch of unresolves."""
        self._collecting = None
        roots = [u for u in self.wanted if u not in self.followed]
        reached: set[str] = set()
        todo = list(roots)
        while todo:
            top = self.policy.get(todo.pop())
            below = [top] if top is not None else []
            while below:
                mo = below.pop()
                below.extend(self.policy[c] for c in mo.children if c in self.policy)
                if mo.subject in BY_NEED:
                    continue
                for _, target in mo.references():
                    if target in self.followed and target not in reached:
                        reached.add(target)
                        todo.append(target)
        for uri in [u for u in self.followed if u not in reached]:
            self._unresolve(uri)

    def resolve_endpoints(self, subject: str, uri: str) -> None:
        if uri not in self.ep_wanted:
            self.ep_wanted[uri] = subject
            self._spawn(
                self._call("endpoint_resolve", {"subject": subject, "endpoint_uri": uri, "prr": self.prr})
            )

    def declare(self, mos: list[MO]) -> None:
        top, held = mos[0], tuple(mos)
        if self.declared.get(top.uri) != held:
            self.declared[top.uri] = held
            self._spawn(self._declare(top.uri, held))

    async def _declare(self, uri: str, mos: tuple[MO, ...]) -> None:
        """Declare; a refused declaration (another live agent holds the endpoint, say, until it
        lets go) is tried again after 1, 2, 4 ... up to ``DECLARE_RETRY_MAX`` seconds, not only at
        the next lease refresh, for as long as it is still what this client declares. The refusal
        is logged once, its end too. One left unanswered on a session still up (a busy authority
        answering after the call timeout) is sent again ``UNANSWERED_RETRY`` later: without this it
        waited for the next lease refresh."""
        delay = 1.0
        while True:
            session = self.session
            try:
                answer = await self._call(
                    "endpoint_declare", {"endpoint": _wire(mos), "prr": self.prr}, refused=True
                )
            except RpcError as err:
                if uri not in self._refused:
                    self._refused.add(uri)
                    log.warning(
                        "opflex client %s: declaration of %s refused (retrying): %s", self.name, uri, err
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, DECLARE_RETRY_MAX)
                if self.declared.get(uri) is not mos:
                    return  # changed or undeclared since: that has its own attempt
                continue
            if answer is None and session is not None and self.session is session and session.ready:
                self.unanswered += 1  # no reply in time ({} is the answer): the session is still up
                await asyncio.sleep(unanswered_wait(self.unanswered))
                if self.declared.get(uri) is not mos or self.session is not session:
                    return  # changed, undeclared, or a new session (its handshake declares it)
                continue
            if uri in self._refused:
                self._refused.discard(uri)
                log.info("opflex client %s: declaration of %s accepted", self.name, uri)
            return

    def undeclare(self, uri: str) -> None:
        mos = self.declared.pop(uri, None)
        if mos:
            self._spawn(self._call("endpoint_undeclare", {"subject": mos[0].subject, "endpoint_uri": uri}))

    async def locate(self, names: list[str]) -> Any:
        """``pf_locate`` (opflex/locate.py): None if no session; an error reply is raised."""
        return await self._call(LOCATE, request(names), refused=True)

    async def report(self, observables: list[MO]) -> None:
        """Send a state report; raises SessionClosed if it did not reach a live session (the
        reporter then tells it again, in the next session: the registry holds what a new session
        re-declares as BUILD until told)."""
        session = self.session
        if session is None or not session.ready:
            raise SessionClosed("not connected")
        answer = await self._call("state_report", {"observable": [m.to_wire() for m in observables]})
        if answer is None and (self.session is not session or session.closed.is_set()):
            raise SessionClosed(session.close_reason or "the session closed")

    # ---- the connection loop
    async def run(self) -> None:
        delay = self.backoff[0]
        attempt = 0
        while not self._stop:
            peers = self.configured + [p for p in self.learned if p not in self.configured]
            peer = peers[attempt % len(peers)]
            attempt += 1
            try:
                await self._session(peer)
                delay = self.backoff[0]  # it worked for a while: start over quickly
            except (OSError, TimeoutError, RpcError, SessionClosed) as exc:
                log.info("opflex client %s: %s:%d: %s", self.name, *peer, exc)
            if self._stop:
                break
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            if attempt % len(peers) == 0:
                delay = min(delay * 2, self.backoff[1])

    async def stop(self) -> None:
        self._stop = True
        if self._saving is not None:  # a write in its thread finishes first: the last one wins
            with contextlib.suppress(Exception):
                await self._saving
        self.flush_cache()
        if self.session is not None:
            await self.session.close("agent stopping")

    async def _session(self, peer: Peer) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(peer[0], peer[1], ssl=self.tls, limit=1 << 20), self.connect_timeout
        )
        session = Session(
            reader,
            writer,
            self._handle,
            label=f"{self.name}->{peer[0]}:{peer[1]}",
            max_frame=DEFAULT_MAX_FRAME,
            keepalive=self.keepalive,
        )
        runner = asyncio.create_task(session.run())
        try:
            reply = await session.call(
                "send_identity",
                {
                    "proto_version": "1.0",
                    "name": self.name,
                    "domain": self.domain,
                    "my_role": ["policy_element"],
                    "data": {"agent": f"policyfabric {__version__}"},
                },
                timeout=self.connect_timeout,
            )
            self._learn(reply, peer)
            session.ready = True
            self.session, self.connected_to = session, peer
            self.connects += 1
            log.info("opflex client %s: connected to %s:%d", self.name, *peer)
            await self._resync()
            self.ready.set()
            refresher = asyncio.create_task(self._refresh())
            try:
                await session.closed.wait()
            finally:
                refresher.cancel()
            raise SessionClosed(session.close_reason)
        finally:
            self.ready.clear()
            if self.session is session:
                self.session, self.connected_to = None, None
            await session.close("client done")
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner

    def _learn(self, reply: Any, dialed: Peer) -> None:
        peers = []
        for item in (reply or {}).get("peers", []):
            info = item.get("connectivity_info", "") if isinstance(item, dict) else ""
            with contextlib.suppress(ValueError):
                peers += parse_peers(info)
        self.learned = [p for p in peers if p != dialed]

    async def _resync(self) -> None:
        """After each handshake: declare everything, resolve everything (in parallel)."""
        jobs = [
            self._call("endpoint_declare", {"endpoint": _wire(mos), "prr": self.prr})
            for mos in self.declared.values()
        ]
        jobs += [
            self._call("endpoint_resolve", {"subject": s, "endpoint_uri": u, "prr": self.prr})
            for u, s in self.ep_wanted.items()
        ]
        await asyncio.gather(*jobs, self._resolve(list((s, u) for u, s in self.wanted.items()), full=True))

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(random.uniform(self.prr / 3, self.prr / 2))
            await self._resolve([(s, u) for u, s in self.wanted.items()])
            for mos in list(self.declared.values()):
                await self._call("endpoint_declare", {"endpoint": _wire(mos), "prr": self.prr})

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _call(self, method: str, params: dict[str, Any] | list[Any], refused: bool = False) -> Any:
        """The result of a request, or None if the session is not up or went away (what is
        declared and resolved is sent again after the next handshake). An error reply is logged
        and None, or raised with ``refused``."""
        session = self.session
        if session is None or not session.ready:
            return None  # sent again by _resync after the next handshake
        self.outstanding += 1
        self.in_flight[method] += 1
        try:
            result = await session.call(method, params, timeout=self.call_timeout)
        except TimeoutError:
            if method == "policy_resolve":
                self._ask_again(session, params)
            return None
        except SessionClosed:
            return None
        except RpcError as err:
            if refused:
                raise
            log.warning("opflex client %s: %s refused: %s", self.name, method, err)
            return None
        finally:
            self.outstanding -= 1
            self.in_flight[method] -= 1
        self.requests += 1
        self.answered[method] += 1
        if method == "endpoint_resolve" and isinstance(result, dict):
            self._apply_endpoints([held(m) for m in result.get("endpoint", []) if isinstance(m, dict)], [])
        return result

    def _ask_again(self, session: Session, params: dict[str, Any] | list[Any]) -> None:
        """A resolve the authority did not answer in time, on a session still up (a busy authority:
        hundreds of agents resolving at once): its URIs are asked again shortly, those still
        wanted. Without this they waited for the next refresh, tens of minutes. A session that
        ends meanwhile asks for everything after the next handshake anyway."""
        batch = params if isinstance(params, list) else [params]
        items = [(p["subject"], p["policy_uri"]) for p in batch]
        self.unanswered += 1
        wait = unanswered_wait(self.unanswered)
        log.warning(
            "opflex client %s: policy_resolve of %d URI(s) unanswered after %gs: asking again in %.1fs",
            self.name, len(items), self.call_timeout, wait,
        )  # fmt: skip

        def again() -> None:
            if self.session is not session or not session.ready:
                return
            still = [(s, u) for s, u in items if self.wanted.get(u) == s]
            if still:  # full: what the authority no longer has under them goes (the handshake's
                self._spawn(self._resolve(still, full=True))  # resolve may be what went unanswered)

        asyncio.get_running_loop().call_later(wait, again)

    async def _resolve(
        self, items: list[tuple[str, str]], full: bool = False, starting: bool = False
    ) -> None:
        """Resolve URIs in parallel; on a full resync, drop what the authority no longer has."""
        asked = self._push_seq
        if starting:
            self._starting -= 1
        self._resolving += 1
        try:
            batches = await asyncio.gather(
                *[self._ask(items[i : i + RESOLVE_BATCH]) for i in range(0, len(items), RESOLVE_BATCH)]
            )
        finally:
            self._resolving -= 1

        def newer(u: str) -> bool:
            """A push about ``u`` was applied after the request left: the reply is older than it.
            (Pushes are applied as they are read, before this coroutine resumes with the replies.)"""
            return self._pushed.get(u, 0) > asked

        changed: set[str] = set()
        answered: set[str] = set()  # the URIs whose subtree came back
        replies: list[list[MO]] = []
        for uris, result in (answer for batch in batches for answer in batch):
            if isinstance(result, dict):
                answered.update(uris)
                replies.append([held(m) for m in result.get("policy", []) if isinstance(m, dict)])
        if full:  # the subtrees as the authority has them now: remove what vanished while away (one
            # pass over the cache, each object looked up by its ancestors: an agent resolving by need
            # holds thousands of subscriptions)
            fresh = {mo.uri for mos in replies for mo in mos}
            for gone in [u for u in self.policy if u not in fresh and covered(u, answered) and not newer(u)]:
                del self.policy[gone]
                changed.add(gone)
        for mos in replies:
            for mo in mos:
                if newer(mo.uri):
                    continue
                if self.policy.get(mo.uri) != mo:
                    self.policy[mo.uri] = mo
                    changed.add(mo.uri)
        if not self._resolving:
            self._pushed.clear()  # only replies still in flight could be older than a push
        self._follow(changed)
        self._changed(changed)

    async def _ask(self, items: list[tuple[str, str]]) -> list[tuple[list[str], Any]]:
        """One ``policy_resolve`` for all of ``items`` (OpFlex's resolve takes a list): [(the URIs
        it answers, its result)]. Why one: an agent resolves each of its endpoints' objects, and
        a request each cost the agent and the authority more than the objects themselves (900
        agents of 100 endpoints reconnecting at once made 98,000 requests; some waited out the
        call timeout). A refused batch (one URI of another class than asked, say) is asked again
        URI by URI, so that only what was refused is not answered."""
        params = [{"subject": s, "policy_uri": u, "prr": self.prr} for s, u in items]
        if len(items) == 1:
            return [([items[0][1]], await self._call("policy_resolve", params[0]))]
        try:
            return [([u for _, u in items], await self._call("policy_resolve", params, refused=True))]
        except RpcError:
            results = await asyncio.gather(*[self._call("policy_resolve", p) for p in params])
            return [([u], r) for (_, u), r in zip(items, results, strict=True)]

    def _follow(self, uris: set[str]) -> None:
        """Resolve what the new objects refer to and the cache lacks ("programming by side effect").
        A rule's classifier or action (``CARRIED``) that the cache holds though no subscription of
        ours covers it came with the rule that refers to it (our authority pushes a new one with
        the rule, and subscribes the session to it): it is followed as if resolved, without
        asking again."""
        for uri in uris:
            mo = self.policy.get(uri)
            if mo is None or mo.subject in BY_NEED:
                continue
            for subject, target in mo.references():
                if subject in EPR_SUBJECTS or target in self.wanted:
                    continue
                if target not in self.policy:
                    self.followed.add(target)
                    self._want(subject, target)
                elif subject in CARRIED and not covered(target, self.wanted):
                    self.followed.add(target)
                    self.wanted[target] = subject  # renewed by the next refresh, like any other

    # ---- requests from the authority
    async def _handle(self, session: Session, method: str, params: list[Any]) -> Any:
        if method == TRACE and self.on_trace is not None:
            return Later(self.on_trace(params))  # traced in its own task: pushes are read meanwhile
        if method not in ("policy_update", "endpoint_update"):
            raise RpcError(Code.EUNSUPPORTED, f"Unsupported request: {method}")
        for entry in params:
            if not isinstance(entry, dict):
                raise RpcError(Code.ERROR, "Malformed message: payload entry must be an object")
            try:
                replace = [held(m) for m in entry.get("replace", [])]
                merge = [held(m) for m in entry.get("merge_children", [])]
                delete = [str(d["uri"]) for d in entry.get("delete", [])]
            except (ValueError, KeyError, TypeError) as exc:
                raise RpcError(Code.ERROR, f"Malformed message: {exc}") from None
            if method == "policy_update":
                self._apply_policy(replace, merge, delete)
            else:
                self._apply_endpoints(replace, delete)
        return Session.NO_REPLY

    def _apply_policy(self, replace: list[MO], merge: list[MO], delete: list[str]) -> None:
        self._push_seq += 1
        if self._resolving:  # only a reply still in flight can be older than this push
            for uri in (*(m.uri for m in replace), *(m.uri for m in merge), *delete):
                self._pushed[uri] = self._push_seq
        changed = apply_policy_update(self.policy, replace, merge, delete)
        self._follow(changed)
        self._changed(changed)

    def _apply_endpoints(self, replace: list[MO], delete: list[str]) -> None:
        """Registry entries are kept flat by URI; an entry's children (an ``EprL2Ep``'s addresses
        and tunnel) go with it: a replaced entry drops the children it no longer lists, a deleted
        one all of them."""
        changed = set()
        for mo in replace:
            old = self.endpoints.get(mo.uri)
            if old is not None and old.children != mo.children:
                keep = set(mo.children)
                for gone in old.children:
                    if gone not in keep:
                        changed |= self._drop_entry(gone)
            self.endpoints[mo.uri] = mo
            changed.add(mo.uri)
        for uri in delete:
            changed |= self._drop_entry(uri)
        self._changed(changed)

    def _drop_entry(self, uri: str) -> set[str]:
        """Remove a registry entry and its children; the URIs removed."""
        mo = self.endpoints.pop(uri, None)
        if mo is None:
            return set()
        gone = {uri}
        for kid in mo.children:
            gone |= self._drop_entry(kid)
        return gone

    # ---- for tests and the dry run
    async def settled(self, timeout: float = 10.0, quiet: float = 0.3) -> bool:
        """Wait until connected with nothing outstanding for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        calm_since = None
        while time.monotonic() < deadline:
            if self.ready.is_set() and self.outstanding == 0:
                calm_since = calm_since or time.monotonic()
                if time.monotonic() - calm_since >= quiet:
                    return True
            else:
                calm_since = None
            await asyncio.sleep(0.02)
        return False


def _wire(mos: tuple[MO, ...]) -> list[dict[str, Any]]:
    """A declaration's MOs in wire form, made when sent (never held)."""
    return [m.to_wire() for m in mos]
