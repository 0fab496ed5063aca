"""What the agent tells the authority's observer (OpFlex ``state_report``).

Why this is its own module: reports are the agent's outbound side, with their
own rules (which endpoints were already reported, when to retry, what a
gateway last said in this session), and the reconcile loop must never wait
for them. So ``Reporter`` sends in the background and, if the authority is
not there, asks the loop to wake again shortly (``wake``) instead of failing
the reconcile:

- ``PfEndpointStatus`` ACTIVE for each endpoint once its dataplane is
  rendered, with the agent's ``PfAgentCounters``;
- ``PfGatewayPorts``: the external networks a gateway has a working port on,
  once per session and on change (what the gateway election needs);
- ``PfFault``: raised and cleared by the loop (awaited, best effort);
- ``PfRenderedRevision``: after each reconcile that installed what the cache held, the highest
  authority revision (the tenants' ``PfRevision``) the flows now reflect, once per session and
  on change: what ``GET /v1/agents`` shows and ``apply --wait`` waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from policyfabric.opflex.gbp import Cls, Prop
from policyfabric.opflex.mo import MO
from policyfabric.opflex.uri import UNIVERSE, child

log = logging.getLogger(__name__)

RETRY_AFTER = 1.0  # seconds before a deferred report wakes the loop again


class ReportingClient(Protocol):
    """What reporting needs of the OpFlex client."""

    @property
    def session(self) -> object | None: ...

    async def report(self, observables: list[MO]) -> None: ...


def endpoint_status(keys: set[str], counters: Mapping[str, int]) -> list[MO]:
    """ACTIVE for each endpoint (``TENANT/NAME``), then the agent's counters."""
    reports = [
        MO(
            Cls.PF_ENDPOINT_STATUS,
            f"/{Cls.PF_ENDPOINT_STATUS}/{key.replace('/', '%2f')}/",
            {Prop.ENDPOINT: key, Prop.STATUS: "ACTIVE"},
        )
        for key in sorted(keys)
    ]
    reports.append(MO(Cls.PF_AGENT_COUNTERS, f"/{Cls.PF_AGENT_COUNTERS}/", dict(counters)))
    return reports


SPACES = f"{UNIVERSE}{Cls.POLICY_SPACE}/"


def tenant_space(uri: str) -> str | None:
    """The ``PolicySpace`` URI a policy URI lies in (None: not in a tenant's)."""
    if not uri.startswith(SPACES):
        return None
    name, slash, _ = uri[len(SPACES) :].partition("/")
    return f"{SPACES}{name}/" if name and slash else None


def cached_revision(policy: Mapping[str, MO], wanted: Mapping[str, str]) -> int | None:
    """The highest ``PfRevision`` of the tenants the agent resolved anything in (``wanted``: URI
    -> class; by need, objects of the tenant rather than the tenant: each answer and update
    carries the tenant's revision), in the cache ``policy``; None if it holds none. Costs the
    number of resolved URIs, and runs only when the changes are unknown."""
    found = None
    for space_uri in {tenant_space(uri) for uri in list(wanted)} - {None}:
        assert space_uri is not None
        mo = policy.get(child(space_uri, Cls.PF_REVISION))
        value = mo.properties.get(Prop.REVISION) if mo is not None else None
        if isinstance(value, int) and not isinstance(value, bool) and (found is None or value > found):
            found = value
    return found


class RevisionSeen:
    """The highest ``PfRevision`` in the cache, kept from the URIs each reconcile is told changed
    (a scan of ``wanted`` only when those are unknown): at 10,000 endpoints a scan costs ~5 ms,
    too much for every reconcile. A tenant's revision only grows, so the highest seen stays
    right (a deleted tenant's may linger: it is still a revision the agent rendered)."""

    SUFFIX = f"/{Cls.PF_REVISION}/"

    def __init__(self) -> None:
        self.value: int | None = None

    def update(
        self, policy: Mapping[str, MO], wanted: Mapping[str, str], changed: set[str] | None
    ) -> int | None:
        if changed is None:
            self.value = cached_revision(policy, wanted)
            return self.value
        for uri in changed:
            if uri.endswith(self.SUFFIX):
                mo = policy.get(uri)
                value = mo.properties.get(Prop.REVISION) if mo is not None else None
                if isinstance(value, int) and not isinstance(value, bool):
                    self.value = value if self.value is None else max(self.value, value)
        return self.value


def rendered_revision(revision: int) -> MO:
    return MO(Cls.PF_RENDERED_REVISION, f"/{Cls.PF_RENDERED_REVISION}/", {Prop.REVISION: revision})


def gateway_ports(tunnel_ip: str, networks: frozenset[str]) -> MO:
    props = {Prop.TUNNEL_IP: tunnel_ip, Prop.EXTERNAL_NETWORKS: sorted(networks)}
    return MO(Cls.PF_GATEWAY_PORTS, f"/{Cls.PF_GATEWAY_PORTS}/", props)


def fault(code: str, severity: str, description: str) -> MO:
    props = {Prop.CODE: code, Prop.SEVERITY: severity, Prop.DESCRIPTION: description[:500]}
    return MO(Cls.PF_FAULT, f"/{Cls.PF_FAULT}/{code}/", props)


class Reporter:
    def __init__(
        self, client: ReportingClient, host: str, wake: Callable[[], None], retry_after: float = RETRY_AFTER
    ) -> None:
        self.client, self.host, self.wake, self.retry_after = client, host, wake, retry_after
        self.active: set[str] = set()  # endpoints reported ACTIVE
        self._reporting: set[str] = set()  # endpoints whose ACTIVE report is in flight
        self._gateway: tuple[object, frozenset[str]] | None = None  # (session, networks) told
        self._session: object | None = None  # the session ``active`` was reported in
        self._revision: tuple[object, int] | None = None  # (session, rendered revision) told
        self._tasks: set[asyncio.Task[None]] = set()

    def _retry(self) -> None:
        asyncio.get_running_loop().call_later(self.retry_after, self.wake)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settled(self) -> None:
        """Wait for the reports in flight (tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks)

    def forget(self, key: str) -> None:
        """The endpoint is gone (unplugged): report it ACTIVE again when it is back."""
        self.active.discard(key)

    def endpoints_active(self, rendered: set[str], counters: Mapping[str, int]) -> None:
        """Tell the authority which endpoints now have their dataplane (ACTIVE), in the background:
        the reconcile loop never waits for the authority."""
        session = self.client.session
        if session is not self._session:  # a new session: the client declared everything again,
            self._session = session  # which the registry holds as BUILD until told again
            self.active.clear()
        new = rendered - self.active - self._reporting
        if not new:
            return
        if session is None:
            self._retry()  # report once connected
            return
        self._reporting |= new
        self._spawn(self._send_status(new, endpoint_status(new, counters), session))

    async def _send_status(self, new: set[str], reports: list[MO], session: object) -> None:
        try:
            await self.client.report(reports)
        except Exception as exc:  # not connected: try again shortly
            log.info("agent %s: status report deferred: %s", self.host, exc)
            self._retry()
        else:
            if self._session is session:
                self.active |= new
            else:  # a new session began while this was sent: it holds them as BUILD, tell it
                self._retry()
        finally:
            self._reporting -= new

    def rendered(self, revision: int | None) -> None:
        """Tell the authority (once per session, and on change) the revision the flows just
        installed reflect, in the background."""
        session = self.client.session
        if revision is None or session is None or self._revision == (session, revision):
            return
        self._revision = (session, revision)
        self._spawn(self._send_revision(revision))

    async def _send_revision(self, revision: int) -> None:
        try:
            await self.client.report([rendered_revision(revision)])
        except Exception as exc:  # not connected: told again after the next reconcile
            self._revision = None
            log.info("agent %s: rendered-revision report deferred: %s", self.host, exc)
            self._retry()

    def gateway_ports(self, tunnel_ip: str, networks: frozenset[str]) -> None:
        """Tell the authority (once per session, and on change) which external networks this
        gateway has a working port on."""
        session = self.client.session
        if session is None or self._gateway == (session, networks):
            return
        self._gateway = (session, networks)
        self._spawn(self._send_gateway(gateway_ports(tunnel_ip, networks), networks))

    async def _send_gateway(self, mo: MO, networks: frozenset[str]) -> None:
        try:
            await self.client.report([mo])
            log.info("agent %s: gateway ports reported: %s", self.host, ", ".join(sorted(networks)))
        except Exception as exc:
            self._gateway = None
            log.info("agent %s: gateway report deferred: %s", self.host, exc)
            self._retry()

    def fault_soon(self, code: str, severity: str, description: str) -> None:
        """``fault`` in the background: for what is raised from outside a reconcile (drift)."""
        self._spawn(self.fault(code, severity, description))

    async def fault(self, code: str, severity: str, description: str) -> None:
        """Raise or clear (``severity="cleared"``) a fault; best effort, never raises."""
        with contextlib.suppress(Exception):
            await self.client.report([fault(code, severity, description)])
