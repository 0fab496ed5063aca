"""No OpFlex message depends on one frame holding a whole tenant (issue 14: at 10,000 endpoints the
answer to a PolicySpace resolve exceeded the 4 MiB frame limit and the agent reconnected forever).

``chunks.split`` cuts payloads into messages of about ``BUDGET`` bytes, in order; a resolve answers
with its last part and pushes the others first, as updates of the subscription it made; pushes are
cut the same way; an object no frame can carry is never sent and becomes a fault of the agent's.
The budget is shrunk here so that a few hundred endpoints need several messages.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from policyfabric.authority.opflex import OpflexServer, chunks
from policyfabric.authority.service import Authority
from policyfabric.model import objects as o
from policyfabric.model.kinds import BY_NAME as K
from policyfabric.opflex import wire
from policyfabric.opflex.gbp import Cls
from policyfabric.opflex.mo import MO
from policyfabric.opflex.uri import space
from policyfabric.store.sqlite import SqliteStore
from tests.opflex_harness import attach

BUDGET = 16 * 1024


def test_split_keeps_the_order_and_the_budget_and_sets_aside_what_cannot_fit() -> None:
    entries = [{"uri": f"/x/{i}/", "pad": "p" * (i % 50)} for i in range(1000)]
    giant = {"uri": "/giant/", "pad": "g" * 5000}
    messages, oversized = chunks.split(
        {"replace": [*entries[:600], giant, *entries[600:]], "delete": [{"uri": "/d/"}]},
        budget=4096,
        limit=4096,
    )
    assert len(messages) > 5
    assert all(set(m) == {"replace", "delete"} for m in messages)
    assert [e for m in messages for e in m["replace"]] == entries  # in order, the giant left out
    assert [e for m in messages for e in m["delete"]] == [{"uri": "/d/"}]
    assert messages[-1]["delete"] and not any(m["delete"] for m in messages[:-1])
    assert all(sum(chunks.size_of(e) for v in m.values() for e in v) <= 4096 for m in messages)
    assert [(x.part, x.uri) for x in oversized] == [("replace", "/giant/")]
    few, _ = chunks.split({"replace": entries[:10]})
    assert few == [{"replace": entries[:10]}]


def big_tenant(tmp_path: Path, n: int) -> Authority:
    authority = Authority(SqliteStore(tmp_path / "db", sync="normal"))
    items: list[tuple[Any, o.Spec]] = [
        (K["tenant"], o.Tenant(name="big")),
        (K["l3_context"], o.L3Context(name="vrf", tenant="big")),
        (K["bridge_domain"], o.BridgeDomain(name="bd", tenant="big", l3_context="vrf")),
        (K["subnet"], o.Subnet(name="s", tenant="big", bridge_domain="bd", cidr="10.0.0.0/16")),
        (K["endpoint_group"], o.EndpointGroup(name="g", tenant="big", bridge_domain="bd")),
    ]
    items += [
        (
            K["endpoint"],
            o.Endpoint(name=f"ep{i}", tenant="big", epg="g", ip=[f"10.0.{i // 250 + 1}.{i % 250 + 2}"]),
        )
        for i in range(n)
    ]
    authority.create_many(items)
    return authority


def test_a_tenant_larger_than_a_message_resolves_in_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply completes the answer; the parts before it are policy_updates; together they are
    the whole subtree, each within the budget."""
    monkeypatch.setattr(chunks, "BUDGET", BUDGET)
    authority = big_tenant(tmp_path, 400)

    async def go() -> None:
        server = OpflexServer(authority)
        server.loop = asyncio.get_running_loop()
        await server.policy.rebuild({None, "big"}, push=False)
        session, seen = attach(server, "h1")
        whole = {mo.uri for mo in server.policy.trees["big"].subtree(space("big"))}
        reply = await server._handle(
            session, "policy_resolve", [{"subject": Cls.POLICY_SPACE, "policy_uri": space("big"), "prr": 60}]
        )
        updates = seen.messages("policy_update")
        assert len(updates) >= 3
        got = [MO.from_wire(m).uri for u in updates for m in u["params"][0]["replace"]]
        got += [MO.from_wire(m).uri for m in reply["policy"]]
        assert sorted(got) == sorted(whole) and len(got) == len(whole)
        for u in updates:
            assert len(json.dumps(u["params"][0])) < BUDGET + chunks.ENVELOPE + 2048
        assert len(json.dumps(reply)) < BUDGET + chunks.ENVELOPE + 2048

    asyncio.run(go())


def test_a_large_push_goes_in_parts_and_an_object_no_frame_holds_is_a_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 new endpoints reach a subscribed agent as several policy_updates; an object beyond the
    frame limit is not sent, is logged, and shows as the agent's fault ``object-too-large``."""
    monkeypatch.setattr(chunks, "BUDGET", BUDGET)
    authority = big_tenant(tmp_path, 1)

    async def go() -> None:
        server = OpflexServer(authority)
        server.loop = asyncio.get_running_loop()
        await server.policy.rebuild({None, "big"}, push=False)
        session, seen = attach(server, "h1")
        await server._handle(
            session, "policy_resolve", [{"subject": Cls.POLICY_SPACE, "policy_uri": space("big"), "prr": 60}]
        )
        authority.create_many(
            [
                (K["endpoint"], o.Endpoint(name=f"n{i}", tenant="big", epg="g", ip=[f"10.0.9.{i % 250 + 2}"]))
                for i in range(240)
            ]
        )
        await server.policy.rebuild({"big"}, push=True)
        updates = seen.messages("policy_update")
        added = {MO.from_wire(m).uri for u in updates for m in u["params"][0]["replace"]}
        assert len(updates) >= 2 and sum(1 for u in added if "/PfEndpoint/n" in u) == 240
        monkeypatch.setattr(chunks, "LIMIT", 100)  # now the PolicySpace itself fits no frame
        authority.create_many(
            [(K["endpoint"], o.Endpoint(name="late", tenant="big", epg="g", ip=["10.0.9.253"]))]
        )
        await server.policy.rebuild({"big"}, push=True)
        faults = server.observer.faults_json()
        assert faults and {f["code"] for f in faults} == {"object-too-large"}
        assert all(f["agent"] == "h1" for f in faults)

    asyncio.run(go())


def test_the_frame_limit_the_budget_serves() -> None:
    assert chunks.BUDGET * 4 <= wire.DEFAULT_MAX_FRAME and chunks.LIMIT < wire.DEFAULT_MAX_FRAME
