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

When the source's host cannot trace (a reference OpFlex agent answers ``EUNSUPPORTED``; no
agent holds the endpoint; a hop's agent is not connected) the answer is the intent's
(console/matrix.py: two endpoints of one tenant), ``"source": "intent"``, with ``reason``
saying why the dataplane was not asked; for an address target there is no intent answer: 503.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping
from typing import Any, Protocol

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


class Unavailable(PolicyError):
    """Neither the dataplane nor the intent can answer."""

    status = 503
    code = "unavailable"


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
    """The agent whose tunnel address ``address`` is: as it reported it, or as its declarations give it."""
    for name, info in list(fabric.observer.agents.items()):
        if info.tunnel_ip == address and info.connected:
            return str(name)
    agents = fabric.registry.declarations.by_tunnel.get(address)
    return str(next(iter(agents))) if agents else None


async def _ask(fabric: Fabric, agent: str, request: Request) -> dict[str, Any]:
    session = _session(fabric, agent)
    if session is None:
        raise CannotTrace(f"agent {agent} is not connected")
    try:
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


async def trace(fabric: Fabric, source: str, destination: str, probe: Probe) -> dict[str, Any]:
    """Ask the agents hop by hop; the dataplane's answer. Raises CannotTrace."""
    agent = _holder(fabric, source)
    if agent is None:
        raise CannotTrace(f"no agent holds {source}'s interface (not plugged, or its host is down)")
    request = Request(source=source, destination=ipaddress.ip_address(destination), probe=probe)
    hops: list[dict[str, Any]] = []
    for _ in range(MAX_HOPS):
        answer = await _ask(fabric, agent, request)
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
    return {"verdict": verdict, "by": by, "hops": shown, "source": "dataplane"}


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
    src, dst = intent.endpoints[src_name], intent.endpoints[dst_name]
    word = "icmpv6" if probe.kind == "icmp" and probe.v6 else probe.kind
    parsed = IntentProbe(word, probe.port, 6 if probe.v6 else family_of(src, dst))
    answer = intent_explain(intent, src_name, dst_name, parsed)
    by = "; ".join(answer.reasons) or ("no policy applies" if answer.verdict == "allow" else "default deny")
    return {"verdict": answer.verdict, "by": by, "hops": [], "source": "intent", "reason": why}


def mount(app: FastAPI, authority: Authority, access: Access, fabric: Any) -> None:
    """``GET /v1/explain`` (``fabric``: the OpFlex server; None: no OpFlex, the intent answers)."""
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
            answer = await trace(fabric, src, str(address), parsed)
        except CannotTrace as exc:
            answer = await asyncio.to_thread(_from_intent, authority, who, src, target, parsed, str(exc))
        return JSONResponse(answer)
