"""Naming interfaces whose ``iface-id`` is a bare endpoint name (a Neutron port UUID).

Why: the agent knows an endpoint by ``TENANT/NAME``, but Nova's os-vif writes the bare Neutron
port UUID into ``external_ids:iface-id``, and the Neutron driver names the endpoint by that UUID
inside the project's tenant. ``Locator.located`` turns each plugged interface with a bare name
into the same interface named ``TENANT/NAME`` once the authority has said which tenant holds that
name (``pf_locate``, opflex/locate.py), so everything after it (the declarer, the view, the
status reports) sees the form it always did. Until then the interface is left out, as an
interface with no usable iface-id always was.

When to ask: a bare name is asked as soon as it is plugged (one request for all names then due,
at most ``MAX_NAMES`` each), and, while the authority does not know it (Nova plugs the port as
soon as Neutron binds it, which may be before the driver's endpoint reaches the authority) or
knows it in several tenants, again after a back-off that doubles from ``RETRY_FIRST`` up to
``RETRY_MOST`` seconds. That polling is the whole of "re-resolve when the endpoint appears": an
endpoint created in the meantime is found within ``RETRY_MOST`` seconds, at the cost of one small
request per host every few seconds while something plugged stays unknown. A found name keeps its
tenant until its interface is unplugged, or until its endpoint, once seen in the agent's cache
(``present``), leaves it (deleted, or moved to another tenant): then it is asked about again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from policyfabric.agent.renderers.ovs.ovsdb import Plugged
from policyfabric.opflex.locate import MAX_NAMES, Answer, BadLocate, is_name
from policyfabric.opflex.rpc import RpcError

log = logging.getLogger(__name__)
RETRY_FIRST, RETRY_MOST = 0.5, 5.0  # seconds before asking again about a name not found


class LocatingClient(Protocol):
    """What the locator needs of the OpFlex client (``PolicyClient.locate``)."""

    async def locate(self, names: list[str]) -> Any: ...


@dataclass
class _Waiting:
    due: float  # when to ask (again)
    delay: float  # the back-off after the next unanswered ask


class Locator:
    """Bare iface-ids → ``TENANT/NAME``, as the authority answers them (see module doc)."""

    def __init__(
        self,
        client: LocatingClient,
        host: str,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.host, self.wake, self.clock = client, host, wake, clock
        self.found: dict[str, str] = {}  # name -> the tenant holding it
        self.ambiguous: dict[str, tuple[str, ...]] = {}  # name -> the tenants holding it (logged)
        self.waiting: dict[str, _Waiting] = {}  # plugged names not found yet
        self.seen: set[str] = set()  # found names whose endpoint the cache has held
        self._bad: set[str] = set()  # iface-ids that are no name (logged once)
        self._refused = False  # the authority refused the request (logged once)
        self._asking: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def located(
        self, plugged: Iterable[Plugged], present: Callable[[str, str], bool] = lambda t, n: True
    ) -> list[Plugged]:
        """The interfaces, a bare name replaced by ``TENANT/NAME`` where found; those not found
        (yet) are left out, and asked about. Names no longer plugged are forgotten. ``present(tenant,
        name)``: whether the agent's cache holds that endpoint now (one it held and lost is asked
        about again)."""
        now = self.clock()
        out: list[Plugged] = []
        bare: set[str] = set()
        bad: set[str] = set()
        for p in plugged:
            name = p.iface_id
            if "/" in name:
                out.append(p)
                continue
            if not is_name(name):
                bad.add(name)
                if name not in self._bad:
                    self._bad.add(name)
                    log.warning(
                        "agent %s: interface %s: iface-id %r is neither TENANT/NAME nor an endpoint name",
                        self.host, p.name, name,
                    )  # fmt: skip
                continue
            bare.add(name)
            tenant = self.found.get(name)
            if tenant is not None and present(tenant, name):
                self.seen.add(name)
            elif tenant is not None and name in self.seen:  # it was there and went
                log.info("agent %s: endpoint %s/%s went: locating %s again", self.host, tenant, name, name)
                del self.found[name]
                self.seen.discard(name)
                tenant = None
            if tenant is not None:
                out.append(replace(p, iface_id=f"{tenant}/{name}"))
            elif name not in self.waiting:
                self.waiting[name] = _Waiting(now, RETRY_FIRST)
        for table in (self.found, self.ambiguous, self.waiting):
            for name in [n for n in table if n not in bare]:
                del table[name]
        self.seen &= bare
        self._bad = bad  # an unplugged one is logged again if it comes back
        self._schedule()
        return out

    def _schedule(self) -> None:
        """One timer, at the earliest due name (none while a request is out: it reschedules)."""
        if self._asking is not None or not self.waiting:
            return
        due = min(w.due for w in self.waiting.values())
        if self._timer is not None:
            if self._timer_at <= due:
                return
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_at = due
        self._timer = loop.call_later(max(0.0, due - self.clock()), self._start)

    def _start(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        if self._asking is None:
            self._asking = asyncio.get_running_loop().create_task(self.ask())

    async def ask(self) -> None:
        """Ask about every name due; apply the answers; wake the agent if one was found."""
        try:
            now = self.clock()
            due = sorted(n for n, w in self.waiting.items() if w.due <= now)
            news = False
            for i in range(0, len(due), MAX_NAMES):
                batch = due[i : i + MAX_NAMES]
                news |= self._apply(batch, await self._ask(batch))
        finally:
            self._asking = None
        if news:
            self.wake()
        self._schedule()

    async def _ask(self, names: list[str]) -> Answer:
        try:
            result = await self.client.locate(names)
        except RpcError as exc:
            if not self._refused:
                self._refused = True
                log.warning("agent %s: the authority cannot locate bare iface-ids: %s", self.host, exc)
            return Answer()
        if result is None:  # no session: asked again after the back-off
            return Answer()
        try:
            return Answer.parse(result, names)
        except BadLocate as exc:
            log.warning("agent %s: a pf_locate answer that does not parse: %s", self.host, exc)
            return Answer()

    def _apply(self, names: list[str], answer: Answer) -> bool:
        """Record the answer for the names still plugged; True if any was found."""
        news = False
        now = self.clock()
        for name in names:
            waiting = self.waiting.get(name)
            if waiting is None:
                continue  # unplugged while it was asked about
            tenant = answer.found.get(name)
            if tenant is not None:
                del self.waiting[name]
                self.ambiguous.pop(name, None)
                self.found[name] = tenant
                log.info("agent %s: iface-id %s is endpoint %s/%s", self.host, name, tenant, name)
                news = True
                continue
            tenants = answer.ambiguous.get(name)
            if tenants is not None and self.ambiguous.get(name) != tenants:
                self.ambiguous[name] = tenants
                log.warning(
                    "agent %s: iface-id %s names an endpoint in several tenants (%s): not declared",
                    self.host, name, ", ".join(tenants),
                )  # fmt: skip
            waiting.due = now + waiting.delay
            waiting.delay = min(2 * waiting.delay, RETRY_MOST)
        return news
