"""No OpFlex message depends on one frame holding a whole tenant (at 10,000 endpoints the
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
        whole.add(server.policy.stamps["big"].uri)  # the tenant's PfRevision goes with its subtree
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


def test_an_mo_larger_than_a_frame_is_cut_into_merge_children_pieces() -> None:
    """With ``into``, an MO over the limit goes as pieces of itself, each listing some of its
    children, in that field, each within the budget: together they list every child, in order."""
    giant = {
        "subject": "PolicySpace",
        "uri": "/space/",
        "properties": [],
        "children": [f"/space/c{i}/" for i in range(2000)],
    }
    small = [{"uri": f"/x/{i}/", "children": []} for i in range(50)]
    messages, oversized = chunks.split(
        {"replace": [*small[:25], giant, *small[25:]], "merge_children": [], "delete": []},
        budget=4096,
        limit=4096,
        into="merge_children",
    )
    assert oversized == []
    pieces = [e for m in messages for e in m["merge_children"]]
    assert len(pieces) > 5 and all(p["uri"] == "/space/" for p in pieces)
    assert [c for p in pieces for c in p["children"]] == giant["children"]
    assert [e for m in messages for e in m["replace"]] == small
    assert all(sum(chunks.size_of(e) for v in m.values() for e in v) <= 4096 for m in messages)
    # one that cannot be cut (no children) is still left out, and said
    bare = {"uri": "/bare/", "properties": [{"name": "pad", "data": "p" * 5000}], "children": []}
    _, oversized = chunks.split({"replace": [bare], "merge_children": []}, 4096, 4096, into="merge_children")
    assert [o.uri for o in oversized] == ["/bare/"]


def test_a_policy_space_larger_than_a_frame_resolves_whole_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit shrunk so that the PolicySpace of 400 endpoints (its children list) fits no frame:
    the resolve sends it in merge_children pieces before its reply, and a client cache that applies
    the updates, then the reply, holds the whole subtree, the PolicySpace listing every child; a
    push that adds endpoints to it is cut the same way."""
    from policyfabric.opflex.cache import apply_policy_update

    monkeypatch.setattr(chunks, "BUDGET", BUDGET)
    monkeypatch.setattr(chunks, "LIMIT", BUDGET)
    authority = big_tenant(tmp_path, 400)

    def apply(cache: dict[str, MO], updates: list[dict[str, Any]]) -> None:
        for u in updates:
            p = u["params"][0]
            apply_policy_update(
                cache,
                [MO.from_wire(m) for m in p["replace"]],
                [MO.from_wire(m) for m in p["merge_children"]],
                [d["uri"] for d in p["delete"]],
            )

    async def go() -> None:
        server = OpflexServer(authority)
        server.loop = asyncio.get_running_loop()
        await server.policy.rebuild({None, "big"}, push=False)
        tree = server.policy.trees["big"]
        assert chunks.size_of(tree.mos[space("big")].to_wire()) > BUDGET
        session, seen = attach(server, "h1")
        reply = await server._handle(
            session, "policy_resolve", [{"subject": Cls.POLICY_SPACE, "policy_uri": space("big"), "prr": 60}]
        )
        updates = seen.messages("policy_update")
        assert any(u["params"][0]["merge_children"] for u in updates)
        assert space("big") not in {m["uri"] for m in reply["policy"]}  # a reply only replaces
        cache: dict[str, MO] = {}
        apply(cache, updates)
        for m in reply["policy"]:
            cache[m["uri"]] = MO.from_wire(m)
        whole = {mo.uri: mo for mo in tree.subtree(space("big"))}
        stamp = server.policy.stamps["big"].uri  # the tenant's PfRevision goes with its subtree
        assert set(cache) == set(whole) | {stamp}
        assert sorted(cache[space("big")].children) == sorted(whole[space("big")].children)
        assert server.observer.faults_json() == []

        address = "10.0.{}.{}".format
        authority.create_many(
            [
                (
                    K["endpoint"],
                    o.Endpoint(name=f"n{i}", tenant="big", epg="g", ip=[address(10 + i // 250, i % 250 + 2)]),
                )
                for i in range(600)  # the PolicySpace gains more children than a frame holds
            ]
        )
        before = len(seen.messages("policy_update"))
        await server.policy.rebuild({"big"}, push=True)
        apply(cache, seen.messages("policy_update")[before:])
        tree = server.policy.trees["big"]
        assert set(cache) == set(tree.mos) | {stamp}
        assert sorted(cache[space("big")].children) == sorted(tree.mos[space("big")].children)

    asyncio.run(go())


def test_a_peer_behind_gets_its_messages_from_the_outbox_in_order() -> None:
    """While a session's transport holds more than ``PACE`` bytes unsent, messages wait in the
    peer's outbox and go, in order, as it drains; ``sent`` waits for them; a peer that does not
    drain in time loses what waits (its session is closed by ``drained``)."""
    from policyfabric.authority.opflex.peers import PACE, Peer

    async def go() -> None:
        posted: list[int] = []

        def post(method: str, params: dict[str, Any]) -> bool:
            posted.append(params["n"])
            return True

        backlog = [PACE]  # behind to begin with
        drains = asyncio.Event()

        async def drained() -> bool:
            await drains.wait()
            backlog[0] = 0
            return True

        peer = Peer("x", post=post, backlog=lambda: backlog[0], drained=drained)
        for n in range(5):
            assert peer.send("policy_update", {"n": n})
        assert posted == []
        waiter = asyncio.create_task(peer.sent())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        backlog[0] = PACE
        drains.set()
        await asyncio.wait_for(waiter, 1)
        assert posted == [0, 1, 2, 3, 4]
        assert peer.send("policy_update", {"n": 5}) and posted[-1] == 5  # caught up: straight through

        async def stalled() -> bool:
            return False

        late = Peer("y", post=post, backlog=lambda: PACE, drained=stalled)
        assert late.send("policy_update", {"n": 6})
        await asyncio.wait_for(late.sent(), 1)
        assert 6 not in posted

    asyncio.run(go())
