"""Resolution by need, with real sessions: an agent follows what its endpoints need (their groups,
the contracts those provide or consume, the groups on the other side), so a change reaches the
agents that need it and no others; an endpoint moving to another group takes its agent along.

Two agents (a real ``PolicyClient`` each, over TCP to a real authority process, each driven by the
agent's own ``Declarer``) with an endpoint each, in groups ``a`` and ``b`` of one tenant::

    a provides ca, both        b provides cb, consumes both        c consumes ca, cb
    d provides cd              (no endpoint in c or d at first)

Each ``policy_update`` message a session receives is counted, with the URIs it carries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from policyfabric.agent.declarer import Declarer
from policyfabric.lab.authority import AuthorityProcess
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.gbp import Cls, uri_of
from policyfabric.opflex.rpc import Session
from tests.conftest import Api

pytestmark = pytest.mark.integration  # a real authority process, agents over real TCP

T = "need"
CLASSIFIER = "/PolicyUniverse/PolicySpace/need/GbpeL24Classifier/{}.r/"  # a contract's one rule's


@dataclass(frozen=True)
class Port:
    """A plugged interface, as the declarer sees one."""

    iface_id: str
    name: str


class CountingClient(PolicyClient):
    """A policy client that counts the ``policy_update`` messages its session receives."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.messages: list[set[str]] = []  # the URIs each policy_update carried

    async def _handle(self, session: Session, method: str, params: list[Any]) -> Any:
        if method == "policy_update":
            uris = set()
            for entry in params:
                for part in ("replace", "merge_children", "delete"):
                    uris |= {m["uri"] for m in entry.get(part, []) if isinstance(m, dict) and "uri" in m}
            self.messages.append(uris)
        return await super()._handle(session, method, params)


class Agent:
    """A client and the agent's declarer for one plugged endpoint (no dataplane)."""

    def __init__(self, name: str, peer: tuple[str, int], endpoint: str, vtep: str) -> None:
        self.client = CountingClient(name, [peer], backoff=(0.05, 0.5), keepalive=0.5)
        self.declarer = Declarer(self.client, name, vtep)
        self.port = Port(f"{T}/{endpoint}", f"tap-{endpoint}")
        self.client.on_change = self._changed
        self.task: asyncio.Task[None] | None = None

    def _changed(self, uris: set[str]) -> None:
        self.declarer.sync([self.port], uris)

    async def start(self) -> Agent:
        self.task = asyncio.create_task(self.client.run())
        await asyncio.wait_for(self.client.ready.wait(), 10)
        self.declarer.sync([self.port])
        assert await self.client.settled(10)
        return self

    async def stop(self) -> None:
        await self.client.stop()
        if self.task is not None:
            self.task.cancel()

    def prop(self, uri: str, name: str) -> Any:
        mo = self.client.policy.get(uri)
        return mo.properties.get(name) if mo else None

    def since(self, mark: int) -> list[set[str]]:
        return self.client.messages[mark:]


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_change_reaches_the_agents_whose_endpoints_need_it(opflex_authority: AuthorityProcess) -> None:
    api = Api(opflex_authority.url)
    api.ok("tenants", {"name": T})
    api.ok("l3-contexts", {"name": "v", "tenant": T})
    api.ok("bridge-domains", {"name": "bd", "tenant": T, "l3_context": "v"})
    api.ok("subnets", {"name": "s", "tenant": T, "bridge_domain": "bd", "cidr": "10.7.0.0/24"})
    for name in ("ca", "cb", "cd", "both"):
        rule = {"name": "r", "classifier": {"protocol": "tcp", "port": 80}, "action": "allow"}
        api.ok("contracts", {"name": name, "tenant": T, "rules": [rule]})
    for name, provides, consumes in (
        ("a", ["ca", "both"], []),
        ("b", ["cb"], ["both"]),
        ("c", [], ["ca", "cb"]),
        ("d", ["cd"], []),
    ):
        body = {"name": name, "tenant": T, "bridge_domain": "bd", "provides": provides, "consumes": consumes}
        api.ok("endpoint-groups", body)
    api.ok("endpoints", {"name": "e1", "tenant": T, "epg": "a", "ip": "10.7.0.11"})
    api.ok("endpoints", {"name": "e2", "tenant": T, "epg": "b", "ip": "10.7.0.12"})

    def set_port(contract: str, port: int) -> None:
        found = api.find("contracts", T, contract)
        assert found is not None
        found["rules"][0]["classifier"]["port"] = port
        assert api.put("contracts", found["id"], found).status_code == 200

    def port_of(agent: Agent, contract: str) -> Any:
        return agent.prop(CLASSIFIER.format(contract), "dFromPort")

    async def go() -> None:
        peer = opflex_authority.opflex
        one = await Agent("h1", peer, "e1", "192.0.2.1").start()
        two = await Agent("h2", peer, "e2", "192.0.2.2").start()
        try:
            group = {g: uri_of(T, Cls.GBP_EP_GROUP, g) for g in "abcd"}
            contract = {c: uri_of(T, Cls.GBP_CONTRACT, c) for c in ("ca", "cb", "cd", "both")}
            await until(lambda: all(u in one.client.policy for u in (group["c"], group["b"], contract["ca"])))
            await until(lambda: all(u in two.client.policy for u in (group["c"], group["a"], contract["cb"])))
            # what each resolved: its group, its contracts, the other side of each; nothing else
            assert group["d"] not in one.client.policy and group["d"] not in two.client.policy
            assert contract["cb"] not in one.client.policy and contract["ca"] not in two.client.policy
            assert not any(u.endswith("/PfEndpoint/e2/") for u in one.client.policy)
            assert set(one.declarer.needed) == {*group.values(), contract["ca"], contract["both"]} - {
                group["d"]
            }

            # a contract only h1's group uses: h1 hears of it, h2 does not
            marks = (len(one.client.messages), len(two.client.messages))
            set_port("ca", 8080)
            await until(lambda: port_of(one, "ca") == 8080)
            set_port("cb", 8081)  # h2's barrier: pushes to one session go in order
            await until(lambda: port_of(two, "cb") == 8081)
            await until(lambda: port_of(one, "ca") == 8080)
            got_one, got_two = one.since(marks[0]), two.since(marks[1])
            assert any(CLASSIFIER.format("ca") in m for m in got_one)
            assert not any(CLASSIFIER.format("cb") in m for m in got_one)
            assert len(got_two) == 1 and CLASSIFIER.format("cb") in got_two[0]
            assert not any("/ca" in u for m in got_two for u in m)

            # a contract both use: both hear of it
            marks = (len(one.client.messages), len(two.client.messages))
            set_port("both", 443)
            await until(lambda: port_of(one, "both") == 443 and port_of(two, "both") == 443)
            assert len(one.since(marks[0])) == 1 and len(two.since(marks[1])) == 1

            # e2 moves to group d: h2 follows d and its contract cd, and lets go of b, cb and the
            # other side of what b used
            e2 = api.find("endpoints", T, "e2")
            assert e2 is not None
            body = {k: v for k, v in e2.items() if k not in ("id", "revision", "status", "host", "interface")}
            assert api.put("endpoints", e2["id"], {**body, "epg": "d"}).status_code == 200
            await until(
                lambda: contract["cd"] in two.client.policy and contract["cb"] not in two.client.policy
            )
            assert set(two.declarer.needed) == {group["d"], contract["cd"]}
            marks = (len(one.client.messages), len(two.client.messages))
            set_port("cd", 9000)
            await until(lambda: port_of(two, "cd") == 9000)
            set_port("cb", 9001)  # h2 no longer needs it: the next change h2 hears of is cd's again
            set_port("ca", 9002)  # h1's barrier
            await until(lambda: port_of(one, "ca") == 9002)
            set_port("cd", 9003)
            await until(lambda: port_of(two, "cd") == 9003)
            got_two = two.since(marks[1])
            assert len(got_two) == 2 and all(CLASSIFIER.format("cd") in m for m in got_two)
            assert not any(CLASSIFIER.format("cd") in m for m in one.since(marks[0]))
        finally:
            await one.stop()
            await two.stop()

    asyncio.run(go())


class AskingClient(CountingClient):
    """A counting client that also records the URIs it resolves."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.asked: list[str] = []

    async def _call(self, method: str, params: dict[str, Any] | list[Any], refused: bool = False) -> Any:
        if method == "policy_resolve":  # one URI, or a batch of them (PolicyClient._ask)
            batch = params if isinstance(params, list) else [params]
            self.asked += [str(p.get("policy_uri")) for p in batch]
        return await super()._call(method, params, refused)


def test_a_rule_added_to_a_contract_comes_with_its_classifier(opflex_authority: AuthorityProcess) -> None:
    """The new rule refers to a new classifier: the authority pushes it with the rule and
    subscribes the session to it, so the agent has it without resolving it (a round trip between
    the rule and its flows); the classifier's later changes reach the agent like any other."""
    api = Api(opflex_authority.url)
    api.ok("tenants", {"name": T})
    api.ok("l3-contexts", {"name": "v", "tenant": T})
    api.ok("bridge-domains", {"name": "bd", "tenant": T, "l3_context": "v"})
    api.ok("subnets", {"name": "s", "tenant": T, "bridge_domain": "bd", "cidr": "10.7.0.0/24"})
    http = {"name": "r", "classifier": {"protocol": "tcp", "port": 80}, "action": "allow"}
    api.ok("contracts", {"name": "ca", "tenant": T, "rules": [http]})
    api.ok("endpoint-groups", {"name": "a", "tenant": T, "bridge_domain": "bd", "provides": ["ca"]})
    api.ok("endpoints", {"name": "e1", "tenant": T, "epg": "a", "ip": "10.7.0.11"})
    new = "/PolicyUniverse/PolicySpace/need/GbpeL24Classifier/ca.alt/"

    def rules(port: int | None) -> None:
        found = api.find("contracts", T, "ca")
        assert found is not None
        extra = [{"name": "alt", "classifier": {"protocol": "tcp", "port": port}, "action": "allow"}]
        found["rules"] = [http, *(extra if port else [])]
        assert api.put("contracts", found["id"], found).status_code == 200

    async def go() -> None:
        agent = Agent("h1", opflex_authority.opflex, "e1", "192.0.2.1")
        agent.client = AskingClient("h1", [opflex_authority.opflex], backoff=(0.05, 0.5), keepalive=0.5)
        agent.declarer = Declarer(agent.client, "h1", "192.0.2.1")
        agent.client.on_change = agent._changed
        await agent.start()
        try:
            contract = uri_of(T, Cls.GBP_CONTRACT, "ca")
            await until(lambda: contract in agent.client.policy)
            rules(8443)
            await until(lambda: agent.prop(new, "dFromPort") == 8443)
            assert new not in agent.client.asked  # it came with the rule
            assert new in agent.client.wanted and new in agent.client.followed  # renewed, let go with it
            rules(8444)  # the classifier itself changes: the session is subscribed to it
            await until(lambda: agent.prop(new, "dFromPort") == 8444)
            rules(None)  # the rule goes, and its classifier with it
            await until(lambda: new not in agent.client.policy)
        finally:
            await agent.stop()

    asyncio.run(go())
