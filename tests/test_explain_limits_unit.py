"""``explain`` on a running fabric, bounded and scoped, in process: a trace does not hold the
agent's OpFlex reader (a push is applied while one runs), explains past the caps are refused
(503, Retry-After), the next hop is the registry's owner of the tunnel address (never what an
agent says of itself), and a tenant's token gets the verdict and its own rules, no hops."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from policyfabric.agent.view import Network
from policyfabric.authority import explain
from policyfabric.authority.access import Access
from policyfabric.authority.api import create_app, error_response
from policyfabric.authority.auth import parse_tokens
from policyfabric.authority.explain import CannotTrace, label_for
from policyfabric.authority.explain import trace as fabric_trace
from policyfabric.authority.service import Authority
from policyfabric.model.errors import PolicyError
from policyfabric.opflex.client import PolicyClient, parse_peers
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import RpcError, Session
from policyfabric.opflex.trace import Probe
from policyfabric.opflex.wire import Code
from policyfabric.store.sqlite import SqliteStore
from tests.conftest import TOKENS, Api


def test_a_push_is_applied_while_a_trace_runs(tmp_path: Path) -> None:
    """Over a real OpFlex session: the agent's trace waits until the push it must not block has
    been applied. Were the trace run inside the reader, the push would wait behind it: no answer."""

    async def go() -> tuple[Any, bool]:
        a, b = socket.socketpair()
        client = PolicyClient("h1", parse_peers("127.0.0.1:1"), state_dir=tmp_path)
        uri = "/PolicyUniverse/PolicySpace/acme/GbpContract/web/"
        pushed = asyncio.Event()

        async def slow_trace(params: list[Any]) -> dict[str, Any]:
            for _ in range(200):  # a slow trace: up to 2 s, until the push has been applied
                if uri in client.policy:
                    pushed.set()
                    break
                await asyncio.sleep(0.01)
            return {"host": "h1", "outcome": "output:1", "pushed": pushed.is_set()}

        client.on_trace = slow_trace
        ra, wa = await asyncio.open_connection(sock=a)
        rb, wb = await asyncio.open_connection(sock=b)
        asking = Session(ra, wa, _refuse_all, label="authority")
        agent = Session(rb, wb, client._handle, label="agent")
        asking.ready = agent.ready = True
        tasks = [asyncio.create_task(asking.run()), asyncio.create_task(agent.run())]
        try:
            call = asyncio.create_task(asking.call("pf_trace", [{}], timeout=5))
            await asyncio.sleep(0.05)  # the trace is running
            asking.post("policy_update", {"replace": [MO("GbpContract", uri).to_wire()]})
            answer = await call
            return answer, pushed.is_set()
        finally:
            await asking.close("done")
            await agent.close("done")
            for t in tasks:
                t.cancel()

    answer, pushed = asyncio.run(go())
    assert pushed and answer["pushed"] is True


async def _refuse_all(session: Session, method: str, params: list[Any]) -> Any:
    raise RpcError(Code.EUNSUPPORTED, method)


# ---- a fabric of fake sessions: each agent answers pf_trace with a canned hop ------------------


class FakeSession:
    """An agent's session as explain sees it: ``call`` answers its hop, after ``gate`` opens."""

    def __init__(self, name: str, hop: dict[str, Any], gate: asyncio.Event | None = None) -> None:
        self.name, self.hop, self.gate = name, hop, gate
        self.ready, self.closed, self.asked = True, asyncio.Event(), 0

    async def call(self, method: str, params: list[Any], timeout: float) -> Any:
        self.asked += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.hop


def fabric_of(
    sessions: list[FakeSession], holds: dict[str, str], tunnels: dict[str, Counter[str]], reported: Any = None
) -> Any:
    by_agent: dict[str, dict[tuple[str, str], int]] = {}
    for key, agent in holds.items():
        tenant, _, name = key.partition("/")
        by_agent.setdefault(agent, {})[(tenant, name)] = 1
    return SimpleNamespace(
        peers={s: SimpleNamespace(agent=s.name, current=True) for s in sessions},
        registry=SimpleNamespace(declarations=SimpleNamespace(by_agent=by_agent, by_tunnel=tunnels)),
        observer=SimpleNamespace(agents=reported or {}),
    )


TUNNEL_HOP: dict[str, Any] = {
    "host": "h1", "renderer": "ovs", "outcome": "tunnel", "drop": None, "allows": [], "flows": [],
    "next": {"tun_dst": "192.0.2.2", "arrival": {"protocol": "tcp", "tun_id": "0x5", "nw_dst": "10.7.0.11"}},
}  # fmt: skip


def out_hop(host: str) -> dict[str, Any]:
    return {"host": host, "renderer": "ovs", "outcome": "output:3", "drop": None,
            "allows": [f"contract acme/web rule in ({host})"], "flows": [], "next": None}  # fmt: skip


def test_the_next_hop_is_the_registrys_owner_of_the_tunnel_address_not_a_self_report() -> None:
    async def go() -> list[str]:
        h1, h2, rogue = (
            FakeSession("h1", TUNNEL_HOP),
            FakeSession("h2", out_hop("h2")),
            FakeSession("h3", out_hop("h3")),
        )
        claims = {"h3": SimpleNamespace(tunnel_ip="192.0.2.2", connected=True)}  # h3 says it is h2's address
        fabric = fabric_of([h1, h2, rogue], {"acme/a1": "h1"}, {"192.0.2.2": Counter({"h2": 1})}, claims)
        answer = await fabric_trace(fabric, "acme/a1", "10.7.0.11", Probe.parse("tcp/80"))
        assert rogue.asked == 0
        return [h["host"] for h in answer["hops"]]

    assert asyncio.run(go()) == ["h1", "h2"]


def test_a_gateway_host_is_found_by_the_election_not_by_its_report() -> None:
    """A router's gateway host declares no endpoint there: the hop is the host the authority
    elected at that tunnel address (among the hosts the operator listed)."""

    async def go() -> list[str]:
        h1, gw, rogue = (
            FakeSession("h1", TUNNEL_HOP),
            FakeSession("gw", out_hop("gw")),
            FakeSession("h3", out_hop("h3")),
        )
        claims = {"h3": SimpleNamespace(tunnel_ip="192.0.2.2", connected=True)}
        fabric = fabric_of([h1, gw, rogue], {"acme/a1": "h1"}, {}, claims)
        fabric.election = SimpleNamespace(active={("acme", "r1"): ("gw", "192.0.2.2")})
        answer = await fabric_trace(fabric, "acme/a1", "10.7.0.11", Probe.parse("tcp/80"))
        assert rogue.asked == 0
        return [h["host"] for h in answer["hops"]]

    assert asyncio.run(go()) == ["h1", "gw"]


def test_a_tunnel_address_two_live_agents_claim_is_not_traced() -> None:
    async def go() -> str:
        h1, h2, h3 = (
            FakeSession("h1", TUNNEL_HOP),
            FakeSession("h2", out_hop("h2")),
            FakeSession("h3", out_hop("h3")),
        )
        fabric = fabric_of([h1, h2, h3], {"acme/a1": "h1"}, {"192.0.2.2": Counter({"h2": 1, "h3": 1})})
        try:
            await fabric_trace(fabric, "acme/a1", "10.7.0.11", Probe.parse("tcp/80"))
        except CannotTrace as exc:
            assert h2.asked == h3.asked == 0
            return str(exc)
        return "traced"

    assert "claimed by 2 live agents" in asyncio.run(go())


# ---- the route: caps and a tenant's view -------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Authority, Any, dict[str, str]]]:
    """An authority with acme endpoints a1 a2 a3 a4 (10.7.0.10-13) and the tokens of conftest."""
    tokens = parse_tokens(
        {"tokens": [{"token": t, "role": r, "name": n, **({"tenant": x} if x else {})}
                    for n, (t, r, x) in TOKENS.items()]},
        "tokens",
    )  # fmt: skip
    store = SqliteStore(tmp_path / "db")
    authority = Authority(store)
    with TestClient(create_app(authority, tokens=tokens), raise_server_exceptions=False) as client:
        ops = Api(str(client.base_url), client, token=TOKENS["ops"][0])
        ops.ok("tenants", {"name": "acme"})
        ops.ok("l3-contexts", {"name": "vrf", "tenant": "acme"})
        ops.ok("bridge-domains", {"name": "bd", "tenant": "acme", "l3_context": "vrf"})
        ops.ok("subnets", {"name": "s", "tenant": "acme", "bridge_domain": "bd", "cidr": "10.7.0.0/24"})
        ops.ok(
            "endpoint-groups", {"name": "g", "tenant": "acme", "bridge_domain": "bd", "intra_group": "allow"}
        )
        for i in range(4):
            ops.ok("endpoints", {"name": f"a{i + 1}", "tenant": "acme", "epg": "g", "ip": f"10.7.0.{10 + i}"})
        yield authority, tokens, {f"a{i + 1}": f"10.7.0.{10 + i}" for i in range(4)}
    store.close()


def explain_app(authority: Authority, tokens: Any, fabric: Any, explains: int) -> FastAPI:
    app = FastAPI()

    @app.exception_handler(PolicyError)
    async def policy_error(_: Any, exc: PolicyError) -> Any:
        return error_response(exc)  # the API's error shape

    explain.mount(app, authority, Access(tokens, None), fabric, explains=explains)
    return app


def test_explains_past_the_caps_are_refused_with_retry_after(
    world: tuple[Authority, Any, dict[str, str]],
) -> None:
    authority, tokens, _ = world

    async def go() -> list[tuple[int, str | None, str]]:
        gate = asyncio.Event()
        sessions = [FakeSession(h, out_hop(h), gate) for h in ("h1", "h2", "h3")]
        fabric = fabric_of(sessions, {"acme/a1": "h1", "acme/a2": "h1", "acme/a3": "h2", "acme/a4": "h3"}, {})
        app = explain_app(authority, tokens, fabric, explains=2)
        headers = {"Authorization": f"Bearer {TOKENS['ops'][0]}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
        ) as c:

            def ask(src: str) -> Any:
                return asyncio.create_task(
                    c.get("/v1/explain", params={"from": f"acme/{src}", "to": "10.7.0.99", "probe": "tcp/80"})
                )

            first = ask("a1")
            await _until(lambda: sessions[0].asked == 1)
            busy_agent = await asyncio.wait_for(ask("a2"), 5)  # h1 is tracing a1's explain: no wait
            second = ask("a3")
            await _until(lambda: sessions[1].asked == 1)
            over_cap = await asyncio.wait_for(ask("a4"), 5)  # two explains run: the most at once
            gate.set()
            done = [await first, await second]
        return [
            (
                r.status_code,
                r.headers.get("retry-after"),
                r.json().get("error", {}).get("code", r.json().get("verdict")),
            )
            for r in (busy_agent, over_cap, *done)
        ]

    assert asyncio.run(go()) == [
        (503, "1", "busy"),
        (503, "1", "busy"),
        (200, None, "allow"),
        (200, None, "allow"),
    ]


async def _until(check: Any) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


def test_a_tenants_token_gets_the_verdict_and_its_own_rules_no_hops(
    world: tuple[Authority, Any, dict[str, str]],
) -> None:
    authority, tokens, _ = world
    hop = {"host": "compute-7", "renderer": "ovs", "outcome": "output:3", "drop": None, "next": None,
           "allows": ["contract acme/web rule in", "security-group beta/db rule 0",
                      "floating-ip 203.0.113.5 of beta/db", "security-group acme/ssh rule 1 (10.0.0.0/24)"],
           "flows": [{"table": "0", "match": "in_port=1", "priority": 100, "from": "fixed flows",
                      "actions": ["load:0xc0000202->NXM_NX_TUN_IPV4_DST[]"]}]}  # fmt: skip

    async def go(token: str) -> dict[str, Any]:
        app = explain_app(
            authority, tokens, fabric_of([FakeSession("compute-7", hop)], {"acme/a1": "compute-7"}, {}), 4
        )
        headers = {"Authorization": f"Bearer {TOKENS[token][0]}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
        ) as c:
            r = await c.get("/v1/explain", params={"from": "acme/a1", "to": "203.0.113.5", "probe": "tcp/80"})
            assert r.status_code == 200, r.text
            return dict(r.json())

    member = asyncio.run(go("acme"))
    assert member == {
        "verdict": "allow",
        "by": "contract acme/web rule in + another tenant's rule"
        " + security-group acme/ssh rule 1 (10.0.0.0/24)",
        "source": "dataplane",
    }
    ops = asyncio.run(go("ops"))
    assert [h["host"] for h in ops["hops"]] == ["compute-7"] and "beta/db" in ops["by"]
    assert "answers" not in ops


@pytest.mark.parametrize(
    ("label", "shown"),
    [
        ("contract acme/web rule in", "contract acme/web rule in"),
        ("endpoint beta/db (remote)", "another tenant's rule"),
        ("rule with conj_id 7 of /PolicyUniverse/PolicySpace/beta/GbpSecGroup/x/", "another tenant's rule"),
        (
            "no route (no endpoint of acme/a1's bridge domain has fd00::/64)",
            "no route (no endpoint of acme/a1's bridge domain has fd00::/64)",
        ),
        ("default deny", "default deny"),
    ],
)
def test_labels_naming_another_tenant_are_not_shown_to_a_tenant(label: str, shown: str) -> None:
    assert label_for(label, "acme") == shown


def test_an_agent_refuses_a_second_trace_at_once_and_keeps_its_loop() -> None:
    """The agent's side: while one trace runs (its command in a thread, here a 0.5 s one), a second
    is refused at once ("busy tracing") and the event loop keeps ticking."""
    from policyfabric.agent.trace_rpc import TraceService
    from tests.test_secgroups_unit import VM2, VM3

    net = Network(local=(VM2, VM3), host="h1")
    slow = TraceService("h1", "br-int", ["sh", "-c", "sleep 0.5", "x"], lambda: net, None)
    ask = [{"source": VM2.key, "destination": "10.0.0.3", "probe": "tcp/80"}]

    async def go() -> tuple[str, int]:
        first = asyncio.create_task(slow(ask))
        await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(slow(ask), 1)
            second = "traced"
        except RpcError as exc:
            second = exc.message
        ticks = 0
        while not first.done():
            ticks += 1
            await asyncio.sleep(0.01)
        await first
        return second, ticks

    second, ticks = asyncio.run(go())
    assert second == "host h1 is busy tracing" and ticks > 10


def test_an_endpoint_deleted_before_the_intent_answers_is_a_404(
    world: tuple[Authority, Any, dict[str, str]],
) -> None:
    from policyfabric.authority.auth import ANONYMOUS
    from policyfabric.model.errors import NotFound

    authority, _, _ = world
    with pytest.raises(NotFound) as exc:
        explain._from_intent(authority, ANONYMOUS, "acme/a1", "acme/gone", Probe.parse("tcp/80"), "no agent")
    assert exc.value.field == "to"
