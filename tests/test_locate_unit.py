"""Bare iface-ids (a Neutron port UUID, as os-vif writes it): ``pf_locate``'s parsing both ways, the
authority's name index kept from the intent index, and the agent's declarer declaring such a port
as ``TENANT/NAME`` once the authority has located it (the agent side talks to a real ``NameIndex``
over JSON, so both edges' parsing is in the path)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from policyfabric.agent import locate as agent_locate
from policyfabric.agent.declarer import Declarer
from policyfabric.agent.locate import Locator
from policyfabric.agent.renderers.ovs.ovsdb import Plugged
from policyfabric.authority.opflex.intent_index import EndpointIntent, IntentIndex
from policyfabric.authority.opflex.locate import NameIndex
from policyfabric.opflex.gbp import endpoint_uri
from policyfabric.opflex.locate import MAX_NAMES, Answer, BadLocate, parse_request, request
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import RpcError
from tests.test_agent_unit import FakeClient, endpoint, policy

UUID = "3f1c9a52-7d4e-4b8a-9e61-0c2d5b7a8f10"
OTHER = "9b0e4c1d-2a3f-4e5b-8c6d-7e8f9a0b1c2d"


def entry(tenant: str, name: str) -> EndpointIntent:
    return EndpointIntent(
        f"{tenant}/{name}", "02:50:46:00:00:01", None, None, None, None, None, frozenset(), False
    )


# ---- the request and the answer, parsed at each edge


def test_a_request_holds_names_only_and_a_bounded_number() -> None:
    assert parse_request([request([UUID, "web1", UUID])]) == [UUID, "web1"]  # once each
    for bad in ([{"names": ["acme/web1"]}], [{"names": ["UPPER"]}], [{"names": "web1"}], [["web1"]]):
        with pytest.raises(BadLocate):
            parse_request(bad)
    with pytest.raises(BadLocate, match="at most"):
        parse_request([{"names": [f"n{i}" for i in range(MAX_NAMES + 1)]}])


def test_an_answer_is_read_only_for_names_asked_and_valid_tenants() -> None:
    got = Answer.parse(
        {
            "found": {UUID: "acme", OTHER: "acme", "x": "Not A Tenant"},
            "ambiguous": {"y": ["t1", "t2"], "z": ["t1"]},
        },
        [UUID, "x", "y", "z"],
    )
    assert got.found == {UUID: "acme"}  # OTHER was not asked; x's tenant is no name
    assert got.ambiguous == {"y": ("t1", "t2")}  # one valid tenant is no ambiguity
    with pytest.raises(BadLocate):
        Answer.parse(["acme"], [UUID])


# ---- the authority's index


def test_the_name_index_follows_the_intent_index() -> None:
    intent = IntentIndex()
    names = NameIndex(intent)
    intent.update(
        {"acme": {f"acme/{UUID}": entry("acme", UUID)}, "beta": {f"beta/{OTHER}": entry("beta", OTHER)}}
    )
    intent.patch("beta", {f"beta/{UUID}": entry("beta", UUID)})

    def ask(*asked: str) -> Any:
        return asyncio.run(names.locate(None, [request(asked)]))

    assert ask(UUID, OTHER, "nobody") == {"found": {OTHER: "beta"}, "ambiguous": {UUID: ["acme", "beta"]}}
    intent.update({"acme": {}})  # the tenant went
    assert ask(UUID) == {"found": {UUID: "beta"}, "ambiguous": {}}
    with pytest.raises(RpcError, match="Malformed"):
        asyncio.run(names.locate(None, [{"names": ["a/b"]}]))


# ---- the agent: the declarer with a locator


@dataclass
class LocatingClient(FakeClient):
    """A FakeClient whose ``locate`` is answered by a real NameIndex, through JSON."""

    intent: IntentIndex = field(default_factory=IntentIndex)
    asked: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.names = NameIndex(self.intent)

    def holds(self, tenant: str, name: str) -> None:
        self.intent.patch(tenant, {f"{tenant}/{name}": entry(tenant, name)})

    async def locate(self, names: list[str]) -> Any:
        self.asked.append(names)
        wire = json.loads(json.dumps([request(names)]))
        return json.loads(json.dumps(await self.names.locate(None, wire)))


def uuid_policy(name: str) -> dict[str, MO]:
    """The test policy with its endpoint named ``name`` (so ``acme/name`` resolves)."""
    out = policy()
    ep = endpoint()
    uri = endpoint_uri("acme", name)
    out[uri] = MO("PfEndpoint", uri, ep.properties)
    return out


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_locate, "RETRY_FIRST", 0.01)
    monkeypatch.setattr(agent_locate, "RETRY_MOST", 0.04)


class Woken:
    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.event.set()

    async def wait(self, timeout: float = 2.0) -> None:
        await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()


def test_a_bare_iface_id_is_declared_as_tenant_slash_name_once_located(fast: None) -> None:
    async def go() -> None:
        client = LocatingClient(uuid_policy(UUID))
        client.holds("acme", UUID)
        woken = Woken()
        declarer = Declarer(client, "h1", None, Locator(client, "h1", woken))
        port, named = Plugged(UUID, "tap-uuid", 9), Plugged("acme/web1", "tap-web1", 5)
        assert declarer.located([port, named]) == [named]  # TENANT/NAME passes as it always did
        await woken.wait()
        [located, again] = declarer.located([port, named])
        assert located == Plugged(f"acme/{UUID}", "tap-uuid", 9) and again == named
        declarer.sync([located])
        [(l2, *_)] = client.registry.values()
        assert l2.properties["interfaceName"] == "tap-uuid"
        assert ("PfEndpoint", endpoint_uri("acme", UUID)) in client.resolved
        assert client.asked == [[UUID]]  # found: not asked again
        declarer.located([named])
        assert declarer.sync([]) == [f"acme/{UUID}"] and client.registry == {}  # unplugged
        assert declarer.locator is not None and declarer.locator.found == {}

    asyncio.run(go())


def test_an_unknown_name_is_asked_again_until_its_endpoint_appears(fast: None) -> None:
    async def go() -> None:
        client = LocatingClient(uuid_policy(UUID))
        woken = Woken()
        declarer = Declarer(client, "h1", None, Locator(client, "h1", woken))
        port = Plugged(UUID, "tap-uuid", 9)
        assert declarer.located([port]) == []
        await asyncio.sleep(0.1)
        assert len(client.asked) >= 2 and not woken.event.is_set()  # asked, again, not found
        client.holds("acme", UUID)  # Neutron's endpoint reaches the authority
        await woken.wait()
        assert declarer.located([port]) == [Plugged(f"acme/{UUID}", "tap-uuid", 9)]

    asyncio.run(go())


def test_a_name_in_two_tenants_is_not_declared_and_both_are_named(
    fast: None, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        client = LocatingClient(uuid_policy(UUID))
        client.holds("acme", UUID)
        client.holds("beta", UUID)
        woken = Woken()
        declarer = Declarer(client, "h1", None, Locator(client, "h1", woken))
        port = Plugged(UUID, "tap-uuid", 9)
        with caplog.at_level(logging.WARNING, logger="policyfabric.agent.locate"):
            declarer.located([port])
            await asyncio.sleep(0.15)
            assert declarer.located([port]) == []
        [warning] = [r.getMessage() for r in caplog.records if UUID in r.getMessage()]  # logged once
        assert "acme, beta" in warning and "not declared" in warning
        client.intent.update({"beta": {}})  # one of them went: the name is acme's
        await woken.wait()
        assert declarer.located([port]) == [Plugged(f"acme/{UUID}", "tap-uuid", 9)]

    asyncio.run(go())


def test_an_iface_id_that_is_no_name_is_left_out_and_never_asked(fast: None) -> None:
    async def go() -> None:
        client = LocatingClient()
        declarer = Declarer(client, "h1", None, Locator(client, "h1", Woken()))
        assert declarer.located([Plugged("Not a Name", "tap-x", 7), Plugged("a/b", "tap-y", 8)]) == [
            Plugged("a/b", "tap-y", 8)
        ]
        await asyncio.sleep(0.05)
        assert client.asked == []

    asyncio.run(go())


def test_many_bare_names_are_asked_in_bounded_requests(fast: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_locate, "MAX_NAMES", 3)

    async def go() -> None:
        client = LocatingClient()
        names = [f"port-{i}" for i in range(7)]
        for n in names:
            client.holds("acme", n)
        woken = Woken()
        locator = Locator(client, "h1", woken)
        ports = [Plugged(n, f"tap{i}", i + 1) for i, n in enumerate(names)]
        locator.located(ports)
        await woken.wait()
        assert [len(a) for a in client.asked] == [3, 3, 1]
        assert {p.iface_id for p in locator.located(ports)} == {f"acme/{n}" for n in names}

    asyncio.run(go())


def test_a_located_endpoint_that_goes_is_located_again(fast: None) -> None:
    """Deleted in one tenant and made in another (the port stays plugged): once the cache has held
    the endpoint and lost it, the name is asked about again and the port follows it."""

    async def go() -> None:
        client = LocatingClient(uuid_policy(UUID))
        client.holds("acme", UUID)
        woken = Woken()
        declarer = Declarer(client, "h1", None, Locator(client, "h1", woken))
        port = Plugged(UUID, "tap-uuid", 9)
        declarer.located([port])
        await woken.wait()
        assert declarer.located([port]) == [Plugged(f"acme/{UUID}", "tap-uuid", 9)]
        assert declarer.located([port]) == [Plugged(f"acme/{UUID}", "tap-uuid", 9)]  # still there
        client.intent.update({"acme": {}})
        client.holds("beta", UUID)
        del client.policy[endpoint_uri("acme", UUID)]  # the authority deleted it: the cache lost it
        assert declarer.located([port]) == []
        await woken.wait()
        assert declarer.located([port]) == [Plugged(f"beta/{UUID}", "tap-uuid", 9)]

    asyncio.run(go())


def test_a_located_endpoint_not_yet_in_the_cache_is_not_located_again(fast: None) -> None:
    """Found, but its policy not resolved yet: the normal moment after locating, not a loss."""

    async def go() -> None:
        client = LocatingClient()  # the cache holds nothing
        client.holds("acme", UUID)
        woken = Woken()
        declarer = Declarer(client, "h1", None, Locator(client, "h1", woken))
        port = Plugged(UUID, "tap-uuid", 9)
        declarer.located([port])
        await woken.wait()
        for _ in range(3):
            assert declarer.located([port]) == [Plugged(f"acme/{UUID}", "tap-uuid", 9)]
        await asyncio.sleep(0.05)
        assert client.asked == [[UUID]]

    asyncio.run(go())
