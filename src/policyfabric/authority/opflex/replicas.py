"""What this authority shares with the other replicas of its store, and learns from them.

The state that is not intent (``store.base.Shared``: etcd with leases; nothing on SQLite, where
an authority is alone and every method below reduces to what it does by itself):

- ``replica/ID`` -> the OpFlex addresses a replica advertises, under its lease: ``send_identity``
  lists every live replica as a peer (``addresses``), so an agent given one address learns the
  others and fails over to them;
- ``agent/NAME/ID`` -> what ``GET /v1/agents`` shows of agent NAME (and its faults), under the
  lease of replica ID while it holds a session of it: an agent connected to another live replica
  is live here too (``live_elsewhere``: the registry refuses a takeover of its endpoints), and
  listed here (``agents_elsewhere``, ``faults_elsewhere``), until that replica dies;
- ``decl/URI`` -> a declaration (its agent, MOs, endpoint, tunnel, the replica it came through)
  under a lease of its ``prr``: the registry of every replica holds every declaration, answers
  ``endpoint_resolve`` with it and pushes it to its subscribers; a replica's death loses none
  (the lease is the declaration's, not the replica's);
- ``session/NAME`` -> the replica holding agent NAME's one session (created if absent, under that
  replica's lease: ``claim_session``), so a second agent of the same name is refused on any
  replica, as on one;
- ``gwhost/NAME`` -> a gateway host's tunnel address and external networks (what its agent
  reported to its replica), under that replica's lease; ``leader`` -> the replica that runs the
  gateway election for all (an etcd create-if-absent under its lease: the next one takes over
  when it dies); ``gateways`` -> the election's result, written by the leader, read by every
  replica: one decision for the cluster, not one per replica.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from policyfabric.authority import gateways as gw
from policyfabric.authority.opflex.registry import Declaration, EndpointRegistry
from policyfabric.store.base import Shared, SharedEvent, StoreError

log = logging.getLogger(__name__)

LEADER, RESULT, SESSION = "leader", "gateways", "session"
CLAIM_WAIT = 3.5  # seconds a handshake waits for a session claim held elsewhere (lease: 3 s)
Active = dict[gw.RouterKey, tuple[str, str]]


class Replicas:
    """This replica's view of the others; ``on_gateways`` is told the cluster's election result
    (when another replica leads), ``elect`` asks this replica to run the election (it leads, and
    just took the lead or the gateway hosts changed)."""

    def __init__(
        self,
        shared: Shared,
        registry: EndpointRegistry,
        *,
        on_gateways: Callable[[Active], None],
        elect: Callable[[], None],
    ) -> None:
        self.shared, self.registry = shared, registry
        self.me = shared.replica
        self._on_gateways, self._elect = on_gateways, elect
        self.others: dict[str, list[str]] = {}  # replica id -> its OpFlex addresses
        self.agents: dict[str, set[str]] = {}  # agent -> the other replicas holding a session of it
        self.hosts: dict[str, gw.GatewayHost] = {}  # gateway hosts reported to other replicas
        self.views: dict[tuple[str, str], dict[str, Any]] = {}  # (agent, replica) -> what it shows
        self._published_views: dict[str, dict[str, Any]] = {}  # agent -> what this replica published
        self._published_hosts: dict[str, gw.GatewayHost] = {}
        self.leading = shared.alone  # alone, it leads from the start (no campaign to wait for)
        self.advertise: list[str] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self, advertise: list[str]) -> None:
        self.loop = asyncio.get_running_loop()
        self.advertise = list(advertise)
        await asyncio.to_thread(self.shared.start, self._from_thread)
        self.shared.put(f"replica/{self.me}", {"opflex": self.advertise})
        await self.campaign()

    def stop(self) -> None:
        self.shared.stop()

    # ---- what the others did
    def _from_thread(self, events: list[SharedEvent]) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._apply, events)

    def _apply(self, events: list[SharedEvent]) -> None:
        for event in events:
            kind, _, rest = event.key.partition("/")
            value = event.value
            if kind == "replica":
                if value is None:
                    self.others.pop(rest, None)
                elif rest != self.me:
                    self.others[rest] = [str(a) for a in value.get("opflex", [])]
            elif kind == "agent":
                name, _, replica = rest.rpartition("/")
                if replica == self.me:
                    continue
                holders = self.agents.setdefault(name, set())
                if value is None:
                    holders.discard(replica)
                    if not holders:
                        del self.agents[name]
                    self.views.pop((name, replica), None)
                else:
                    holders.add(replica)
                    self.views[(name, replica)] = value
            elif kind == "decl":
                prev = event.prev if isinstance(event.prev, dict) else None
                origin = prev.get("replica") if prev is not None else None
                orphaned = value is None and origin not in (None, self.me) and origin not in self.others
                self.registry.apply_shared(rest, value, prev, self.me, orphaned)
            elif kind == "gwhost":
                if value is None:
                    self.hosts.pop(rest, None)
                else:
                    self.hosts[rest] = gw.GatewayHost(rest, value["tunnel_ip"], frozenset(value["networks"]))
                if self.leading:
                    self._elect()  # the leader elects again over the new set of hosts
            elif kind == LEADER and value is None:
                task = asyncio.ensure_future(self.campaign())  # the leader died or left: one of us takes over
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif kind == RESULT and value is not None and not self.leading:
                self._on_gateways({(t, r): (h, ip) for t, r, h, ip in value["active"]})

    async def campaign(self) -> None:
        """Take the lead of the gateway election if nobody has it."""
        try:
            won = await asyncio.to_thread(self.shared.campaign, LEADER)
        except StoreError as exc:  # etcd away: tried again when the leader key changes
            log.warning("replicas: campaigning for the gateway election failed: %s", exc)
            return
        if won and not self.leading:
            log.info("replicas: %s now runs the gateway election", self.me)
            self.leading = True
            self._elect()

    # ---- what this replica tells them
    def addresses(self) -> list[str]:
        """Every live replica's OpFlex addresses, this one's first (``send_identity``'s peers)."""
        out = list(self.advertise)
        for replica in sorted(self.others):
            out += [a for a in self.others[replica] if a not in out]
        return out

    async def claim_session(self, name: str, within: float = CLAIM_WAIT) -> bool:
        """Whether this replica may hold a session of agent ``name``: no other replica holds one.
        The claim is ``session/NAME``, created under this replica's lease in one etcd transaction
        (create if absent, else read who has it), so two replicas never both win it, and a dead
        replica's claims end with its lease. Put again once won: a release of an earlier session
        here still queued behind it (a quick reconnection) must not delete the new claim. If etcd
        cannot be reached, this replica's own check stands (agents keep reconnecting while etcd is
        away; what is refused then is a second session on this replica only).

        A claim held elsewhere is asked again for ``CLAIM_WAIT`` (a replica's lease and a margin),
        or ``within`` if less (the session reads nothing meanwhile: its peer must not be taken
        for silent), before the refusal: an agent failing over from a replica killed a moment ago finds that
        replica's claim still there until its lease ends, and is then accepted within the same
        handshake, instead of being refused and backing off (measured: 4.5 s from the kill to
        both agents on the other replica when refused, against the 5 s the failover promises)."""
        key = f"{SESSION}/{name}"
        deadline = time.monotonic() + min(CLAIM_WAIT, within)
        while True:
            try:
                won = await asyncio.to_thread(self.shared.campaign, key)
            except StoreError as exc:
                log.warning("replicas: could not claim agent %s's session (%s): accepted here", name, exc)
                won = True
            if won:
                self.shared.put(key, self.me)
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)  # its holder may be dead: its claim ends with its lease

    def agent_connected(self, name: str) -> None:
        self.shared.put(f"agent/{name}/{self.me}", {})

    def agent_disconnected(self, name: str) -> None:
        self.shared.delete(f"agent/{name}/{self.me}")
        self._published_views.pop(name, None)
        self.release_session(name)

    def publish_agents(self, views: Mapping[str, dict[str, Any]]) -> None:
        """What ``GET /v1/agents`` and ``/v1/faults`` show of this replica's connected agents
        (``views``: agent -> its item, with its ``faults``), for the other replicas: put in the
        agent's liveness key, only when it changed, so an idle cluster writes nothing. Called
        on the lease clock: the others see an agent at most a tick late."""
        for name, view in views.items():
            if self._published_views.get(name) != view:
                self._published_views[name] = view
                self.shared.put(f"agent/{name}/{self.me}", view)

    def agents_elsewhere(self, here: set[str]) -> list[dict[str, Any]]:
        """The items of the agents connected to other replicas and not to this one (``here``:
        the names connected here), each with the replica that holds it. From the REST thread."""
        out: dict[str, dict[str, Any]] = {}
        for (name, replica), view in sorted(list(self.views.items())):
            if name in here or name in out or not view:
                continue
            item = {k: v for k, v in view.items() if k != "faults"}
            out[name] = {**item, "replica": replica}
        return list(out.values())

    def faults_elsewhere(self, here: set[str]) -> list[dict[str, Any]]:
        """The faults of the agents connected to other replicas and not to this one."""
        return [
            dict(fault)
            for (name, _), view in sorted(list(self.views.items()))
            if name not in here and view
            for fault in view.get("faults", [])
        ]

    def release_session(self, name: str) -> None:
        """This replica holds no session of agent ``name`` any more: another replica may."""
        self.shared.resign(f"{SESSION}/{name}")  # only if still ours (a partition may have moved it)

    def live_elsewhere(self, name: str) -> bool:
        return bool(self.agents.get(name))

    def declared(self, uri: str, decl: Declaration | None) -> None:
        """The registry's publish hook: a declaration made or withdrawn here."""
        if decl is None:
            self.shared.delete(f"decl/{uri}")
            return
        doc = {
            "agent": decl.agent,
            "mos": decl.mos,
            "endpoint": list(decl.endpoint),
            "tunnel": decl.tunnel,
            "replica": self.me,
        }
        self.shared.put(f"decl/{uri}", doc, lease=float(max(1, math.ceil(decl.expires - time.monotonic()))))

    def gateway_hosts(self, local: Mapping[str, gw.GatewayHost]) -> dict[str, gw.GatewayHost]:
        """Publish this replica's gateway hosts (what changed); every replica's, for the leader."""
        for name, host in local.items():
            if self._published_hosts.get(name) != host:
                self.shared.put(
                    f"gwhost/{name}", {"tunnel_ip": host.tunnel_ip, "networks": sorted(host.networks)}
                )
        for name in [n for n in self._published_hosts if n not in local]:
            self.shared.delete(f"gwhost/{name}")
        self._published_hosts = dict(local)
        return {**self.hosts, **local}

    def publish_result(self, active: Active) -> None:
        """The leader's result, for the others."""
        rows = sorted([t, r, h, ip] for (t, r), (h, ip) in active.items())
        self.shared.put(RESULT, {"active": rows})  # gone with the leader; the next one writes its own


__all__ = ["Replicas"]
