"""What the authority says an agent has rendered when agents resolve only what they need.

An agent reports the highest tenant revision (``PfRevision``) it rendered. Under resolution by
need most writes reach few agents, so the others never see the write's revision; the authority
counts them as having rendered it (``Peer.rendered``) once the flush went out without them, and
only once they have rendered everything they were sent. Real repository, real store, the
session side reduced to ``Peer`` objects and a fan-out that records what each would receive.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from policyfabric.authority.opflex.peers import Peer
from policyfabric.authority.opflex.repository import PolicyRepository, revision_mo
from policyfabric.model import objects as o
from policyfabric.model.kinds import BY_NAME as K
from policyfabric.opflex.gbp import Cls
from policyfabric.opflex.uri import space
from tests.test_authority_incremental_unit import T, seeded


def group_uri(name: str) -> str:
    return f"{space(T)}{Cls.GBP_EP_GROUP}/{name}/"


def test_an_agent_the_write_did_not_concern_has_rendered_it_once_it_rendered_what_it_was_sent(
    tmp_path: Path,
) -> None:
    authority = seeded(tmp_path)  # has group e1
    e1 = authority.list(K["endpoint_group"], tenant=T)[0][0]["id"]
    authority.create(K["endpoint_group"], o.EndpointGroup(name="e2", tenant=T, bridge_domain="b1"))
    stamp_uri = revision_mo(T, 0).uri
    a, b = Peer(dialed="a"), Peer(dialed="b")
    received: dict[str, list[str]] = {"a": [], "b": []}

    def fan_out(method: str, table: Any, parts: dict[str, Any]) -> None:
        for name, peer in (("a", a), ("b", b)):
            subs = table(peer)
            received[name] += [
                uri
                for entries in parts.values()
                for uri, _ in entries
                if any(uri.startswith(s) for s in subs)
            ]

    async def go() -> None:
        repo = PolicyRepository(
            authority, fan_out=fan_out, schedule=lambda: None, gateways=lambda: {}, rebuilt=lambda t: None
        )
        await repo.rebuild({None, T}, push=False)
        first = authority.revision()
        for peer, group in ((a, "e1"), (b, "e2")):
            answer = await repo.resolve(
                peer, [{"subject": Cls.GBP_EP_GROUP, "policy_uri": group_uri(group), "prr": 3600}]
            )
            # the answer to a resolve of one object carries the tenant's revision
            assert stamp_uri in {mo["uri"] for mo in answer["policy"]}
            assert peer.owed == first
        assert a.rendered(first) == first and b.rendered(first) == first

        authority.replace(
            K["endpoint_group"],
            e1,
            o.EndpointGroup(name="e1", tenant=T, bridge_domain="b1", intra_group="deny"),
        )
        written = authority.revision()
        assert written > first
        await repo.rebuild({T}, push=True)

        # a gets e1's change and the revision with it; b gets nothing at all
        assert group_uri("e1") in received["a"] and stamp_uri in received["a"]
        assert received["b"] == []
        assert a.owed == written and b.owed == first
        # b needed nothing: having rendered what it was sent, it has rendered the write
        assert b.rendered(first) == written
        # a has not, until it reports the write's revision
        assert a.rendered(first) == first
        assert a.rendered(written) == written
        # an agent that never reports (a reference agent) is claimed nothing
        assert b.rendered(None) is None

    asyncio.run(go())
