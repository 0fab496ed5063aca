"""``GET /v1/explain``: why the fabric passes or drops a probe, read from what the hosts installed.

``from`` is an endpoint (``TENANT/NAME``), ``to`` an endpoint or an IP address, ``probe`` LAB.md's
grammar (``tcp/80``, ``udp6/53``, ``icmp``...); each is parsed here, at the edge, and a bad one is
a 422 naming its field. A member token may explain only within its own tenant (another tenant's
endpoints do not exist for it: 404, as everywhere in the API).

The authority asks the agent holding the source endpoint's interface (the registry's live
declaration) over its OpFlex session (``pf_trace``, opflex/trace.py): the agent traces the
probe's first packet through its installed flows (or nftables table) and answers one hop. When
the packet leaves through the tunnel, the agent whose tunnel address it goes to is asked next,
with the packet as it arrives (VNI, source group, addresses), up to ``MAX_HOPS``. The hops are
judged as the lab's explain judges them: the answer is
``{"verdict", "by", "hops", "source": "dataplane"}``.

Bounds: one trace in flight per agent and ``MAX_EXPLAINS`` explains at once across every caller;
an explain past either is refused at once, 503 with ``Retry-After`` (a trace is refused, never
queued: the agent refuses a second one too). The next hop's agent is the one the registry says
owns the tunnel address (its live declarations, one live owner enforced when they are made), or
the gateway the authority elected there, never what an agent reports of itself; an address more
than one live agent claims is not traced.

A token scoped to one tenant (no global read) gets ``verdict`` and ``by`` alone: no hops (host
names, renderers, flows whose register loads carry underlay addresses), and a rule or object of
another tenant named only as "another tenant's rule".

When the source's host cannot trace (a reference OpFlex agent answers ``EUNSUPPORTED``; no
agent holds the endpoint; a hop's agent is not connected) the answer is the intent's
(console/matrix.py: two endpoints of one tenant), ``"source": "intent"``, with ``reason``
saying why the dataplane was not asked; for an address target there is no intent answer: 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Protocol

from fastapi import Depends, FastAPI, Query
from fastapi.responses import JSONResponse

from policyfabric.authority.access import Access
from policyfabric.authority.auth import Principal
from policyfabric.authority.console.matrix import Intent, family_of
from policyfabric.authority.console.matrix import Probe as IntentProbe
from policyfabric.authority.console.matrix import explain as intent_explain
from policyfabric.authority.service import Authority
from policyfabric.model import kinds as k
from policyfabric.model.errors import Invalid, NotFound, PolicyError
from policyfabric.opflex.rpc import RpcError, Session, SessionClosed
from policyfabric.opflex.trace import METHOD, BadTrace, Probe, Request, endpoint_key, ip_address, judge
from policyfabric.opflex.wire import Code

MAX_HOPS = 4
TIMEOUT = 8.0  # seconds one agent may take to answer (its own trace timeout is 5 s)
MAX_EXPLAINS = 4  # explains in flight at once, every caller together
OTHER_TENANT = "another tenant's rule"


class Unavailable(PolicyError):
    """Neither the dataplane nor the intent can answer."""

    status = 503
    code = "unavailable"


class Busy(Unavailable):
    """Too many explains in flight, or the agent to ask is tracing already: retry shortly."""

    code = "busy"
    headers: ClassVar[dict[str, str]] = {"Retry-After": "1"}


class Limits:
    """One trace in flight per agent, ``explains`` explains at once: past either, ``Busy`` at once
    (never a queue: a waiting explain would hold a request and an agent's time for nothing). Plain
    counters: everything here runs on the event loop."""

    def __init__(self, explains: int = MAX_EXPLAINS) -> None:
        self.explains, self.running = explains, 0
        self.tracing: set[str] = set()  # agents with a trace in flight

    @contextlib.contextmanager
    def explain(self) -> Iterator[None]:
        if self.running >= self.explains:
            raise Busy(f"{self.running} explains are running, the most at once: retry shortly")
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1

    @contextlib.contextmanager
    def agent(self, agent: str) -> Iterator[None]:
        if agent in self.tracing:
            raise Busy(f"agent {agent} is tracing another explain: retry shortly")
        self.tracing.add(agent)
        try:
            yield
        finally:
            self.tracing.discard(agent)


class Fabric(Protocol):
    """What explain needs of the OpFlex server: its sessions and the registry's declarations."""

    peers: Mapping[Session, Any]
    registry: Any
    observer: Any


class CannotTrace(Exception):
    """The dataplane cannot be asked (why: the message)."""


def _parse(
    source: str, target: str, probe: str
) -> tuple[str, str | ipaddress.IPv4Address | ipaddress.IPv6Address, Probe]:
    """The three values, each parsed or a 422 naming its field."""
    try:
        src = endpoint_key(source, "from")
        parsed = Probe.parse(probe)
        dst: str | ipaddress.IPv4Address | ipaddress.IPv6Address
        dst = ip_address(target, "to") if "/" not in target else endpoint_key(target, "to")
    except BadTrace as exc:
        raise Invalid(exc.message, exc.field) from None
    return src, dst, parsed


def _endpoint(authority: Authority, who: Principal, key: str, field: str) -> dict[str, Any]:
    tenant, _, name = key.partition("/")
    if not who.sees(k.ENDPOINT.name, tenant, name):
        raise NotFound(f"no endpoint {key!r}", field)
    found = authority.list(k.ENDPOINT, tenant, name)[0]
    if not found:
        raise NotFound(f"no endpoint {key!r}", field)
    return found[0]


def _address(ep: Mapping[str, Any], v6: bool, field: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ips = ep.get("ip") or []
    for raw in ips if isinstance(ips, list) else [ips]:
        try:
            ip = ipaddress.ip_address(str(raw).split("/")[0])
        except ValueError:
            continue  # "slaac" and the like: no address the authority knows
        if (ip.version == 6) == v6:
            return ip
    raise Invalid(f"endpoint {ep.get('tenant')}/{ep.get('name')} has no IPv{6 if v6 else 4} address", field)


def _session(fabric: Fabric, agent: str) -> Session | None:
    for session, peer in list(fabric.peers.items()):
        if peer.agent == agent and peer.current and session.ready and not session.closed.is_set():
            return session
    return None


def _holder(fabric: Fabric, key: str) -> str | None:
    """The agent holding a live declaration of the endpoint's interface."""
    tenant, _, name = key.partition("/")
    for agent, held in list(fabric.registry.declarations.by_agent.items()):
        if (tenant, name) in held:
            return str(agent)
    return None


def _by_tunnel(fabric: Fabric, address: str) -> str | None:
    """The agent the authority itself says owns tunnel address ``address``: the one live agent
    whose declarations give it (the registry enforces one live owner), else, for a host that
    declares nothing there, the router gateway the authority elected at that address (among the
    hosts the operator listed); an agent that ever declared it, if none is live (it is then not
    connected). Never an address an agent merely reports of itself (a rogue agent claiming
    another host's address would be handed that host's packets and could forge the verdict).
    Raises CannotTrace when more than one live agent claims it: which host receives the packet
    cannot be told."""
    claims = sorted(str(a) for a in fabric.registry.declarations.by_tunnel.get(address, ()))
    live = [a for a in claims if _session(fabric, a) is not None]
    if not live:
        election = getattr(fabric, "election", None)
        active = list(election.active.values()) if election is not None else []
        live = sorted({str(host) for host, tunnel in active if tunnel == address})
    if len(live) > 1:
        raise CannotTrace(f"tunnel address {address} is claimed by {len(live)} live agents: not traced")
    return live[0] if live else (claims[0] if len(claims) == 1 else None)


async def _ask(fabric: Fabric, agent: str, request: Request, limits: Limits) -> dict[str, Any]:
    session = _session(fabric, agent)
    if session is None:
        raise CannotTrace(f"agent {agent} is not connected")
    try:
        with limits.agent(agent):
            answer = await session.call(METHOD, [request.to_params()], timeout=TIMEOUT)
    except RpcError as exc:
        if exc.code == Code.EUNSUPPORTED:
            raise CannotTrace(f"host {agent} cannot trace (its agent does not implement {METHOD})") from None
        raise CannotTrace(f"host {agent}: {exc.message}") from None
    except (SessionClosed, TimeoutError):
        raise CannotTrace(f"host {agent} did not answer within {TIMEOUT:g} s") from None
    if not isinstance(answer, dict):
        raise CannotTrace(f"host {agent} answered something that is not a hop")
    return answer


async def trace(
    fabric: Fabric, source: str, destination: str, probe: Probe, limits: Limits | None = None
) -> dict[str, Any]:
    """Ask the agents hop by hop; the dataplane's answer, hops and all (``for_member`` cuts it for
    a tenant's token). Raises CannotTrace, or Busy when the agent to ask is tracing already."""
    limits = limits or Limits()
    agent = _holder(fabric, source)
    if agent is None:
        raise CannotTrace(f"no agent holds {source}'s interface (not plugged, or its host is down)")
    request = Request(source=source, destination=ipaddress.ip_address(destination), probe=probe)
    hops: list[dict[str, Any]] = []
    for _ in range(MAX_HOPS):
        answer = await _ask(fabric, agent, request, limits)
        hops.append(answer)
        nxt = answer.get("next")
        if not isinstance(nxt, dict):
            break
        following = _by_tunnel(fabric, str(nxt.get("tun_dst", "")))
        if following is None:
            break  # tunnelled to an address no agent has: judged as it is (no route)
        try:
            request = Request.parse([{"arrival": nxt.get("arrival")}])
        except BadTrace as exc:
            raise CannotTrace(f"host {agent} gave a packet that does not parse: {exc}") from None
        agent = following
    verdict, by = judge(hops)
    shown = [{key: h.get(key) for key in ("host", "renderer", "outcome", "flows")} for h in hops]
    return {"verdict": verdict, "by": by, "hops": shown, "source": "dataplane", "answers": hops}


# a tenant named in a label: "contract acme/http ...", "floating-ip 1.2.3.4 of beta/db", or a URI's
# PolicySpace (a name no catalog had); an address's prefix ("10.0.0.0/24") is not one
_TENANT_IN_LABEL = re.compile(
    r"(?<![\w.:/-])([a-z0-9](?:[a-z0-9-]*[a-z0-9])?)/[a-z0-9]|PolicySpace/([^/\s]+)/"
)


def label_for(label: str, tenant: str) -> str:
    """``label`` as a token of ``tenant`` may see it: whole when every tenant it names is
    ``tenant``, else ``OTHER_TENANT``."""
    named = {a or b for a, b in _TENANT_IN_LABEL.findall(label)}
    return label if named <= {tenant} else OTHER_TENANT


def for_member(answer: Mapping[str, Any], tenant: str) -> dict[str, Any]:
    """The answer for a token scoped to ``tenant``: ``verdict`` and ``by`` alone, judged again
    from the hops' labels each cut by ``label_for`` (so a rule of another tenant that let the
    packet on is "another tenant's rule", the tenant's own named). No hops: their host names,
    renderers and flows (register loads carry underlay addresses) are the operator's."""
    hops = [
        {
            "outcome": h.get("outcome"),
            "drop": label_for(str(h["drop"]), tenant) if h.get("drop") else None,
            "allows": [label_for(str(a), tenant) for a in h.get("allows") or ()],
        }
        for h in answer.get("answers") or ()
    ]
    if hops:
        verdict, by = judge(hops)
    else:  # the intent's (the tenant's own objects) or no hop at all
        verdict, by = answer["verdict"], label_for(str(answer["by"]), tenant)
    out = {"verdict": verdict, "by": by, "source": answer.get("source", "dataplane")}
    if "reason" in answer:
        out["reason"] = "the dataplane could not be asked"  # its reason names hosts
    return out


def _from_intent(
    authority: Authority, who: Principal, source: str, target: str, probe: Probe, why: str
) -> dict[str, Any]:
    """The intent's answer (console/matrix.py), marked as such, for two endpoints of one tenant."""
    tenant, _, src_name = source.partition("/")
    dst_tenant, slash, dst_name = target.partition("/")
    if not slash or dst_tenant != tenant:
        raise Unavailable(f"{why}; the intent answers only between two endpoints of one tenant")
    kinds = (k.ENDPOINT_GROUP, k.CONTRACT, k.SECURITY_GROUP, k.ENDPOINT)
    intent = Intent.of(tenant, {kind.name: authority.list(kind, tenant)[0] for kind in kinds})
    src, dst = intent.endpoints.get(src_name), intent.endpoints.get(dst_name)
    if src is None or dst is None:  # deleted since the route checked it
        missing = ("from", source) if src is None else ("to", target)
        raise NotFound(f"no endpoint {missing[1]!r}", missing[0])
    word = "icmpv6" if probe.kind == "icmp" and probe.v6 else probe.kind
    parsed = IntentProbe(word, probe.port, 6 if probe.v6 else family_of(src, dst))
    answer = intent_explain(intent, src_name, dst_name, parsed)
    by = "; ".join(answer.reasons) or ("no policy applies" if answer.verdict == "allow" else "default deny")
    return {"verdict": answer.verdict, "by": by, "hops": [], "source": "intent", "reason": why}


def mount(
    app: FastAPI, authority: Authority, access: Access, fabric: Any, explains: int = MAX_EXPLAINS
) -> None:
    """``GET /v1/explain`` (``fabric``: the OpFlex server; None: no OpFlex, the intent answers;
    ``explains``: how many may run at once)."""
    limits = Limits(explains)

    @app.get(
        "/v1/explain",
        tags=["opflex"],
        summary="Why a probe from an endpoint is allowed or denied, read from the hosts' installed dataplane",
    )
    async def explain_route(
        who: Principal = Depends(access.principal),  # noqa: B008  (FastAPI's way)
        source: str = Query(alias="from", description="the endpoint that opens the connection: TENANT/NAME"),
        target: str = Query(alias="to", description="an endpoint (TENANT/NAME) or an IP address"),
        probe: str = Query(description="icmp, icmpv6, tcp/N, udp/N, tcp6/N, udp6/N (LAB.md)"),
    ) -> JSONResponse:
        src, dst, parsed = _parse(source, target, probe)
        with limits.explain():
            answer = await _explain(who, src, dst, parsed, target)
        shown = answer if who.tenant is None else for_member(answer, who.tenant)
        shown.pop("answers", None)  # the agents' whole answers: for for_member's labels only
        return JSONResponse(shown)

    async def _explain(
        who: Principal,
        src: str,
        dst: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
        parsed: Probe,
        target: str,
    ) -> dict[str, Any]:
        await asyncio.to_thread(_endpoint, authority, who, src, "from")
        if isinstance(dst, str):
            ep = await asyncio.to_thread(_endpoint, authority, who, dst, "to")
            address = _address(ep, parsed.v6, "to")
        else:
            if (dst.version == 6) != parsed.v6:
                raise Invalid(f"{parsed} does not go to the IPv{dst.version} address {dst}", "probe")
            address = dst
        try:
            if fabric is None:
                raise CannotTrace("this authority runs no OpFlex server")
            answer = await trace(fabric, src, str(address), parsed, limits)
        except CannotTrace as exc:
            answer = await asyncio.to_thread(_from_intent, authority, who, src, target, parsed, str(exc))
        return answer
