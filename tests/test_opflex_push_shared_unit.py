"""A push is encoded once for all the sessions that get the same entries (``peers.fan_out``).

Real ``Session`` objects write their frames to a recording writer (no socket): each session's
frames are decoded as a peer reads them, so the test checks what goes on the wire, and that the
sessions with the same subscriptions were handed one encoding (the same object).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from policyfabric.authority.opflex import peers as pe
from policyfabric.opflex import wire
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import Session
from tests.opflex_harness import RecordingWriter

SPACE = "/PolicyUniverse/PolicySpace/t/"
CONTRACT = SPACE + "GbpContract/http/"
RULE = CONTRACT + "GbpSubject/http/GbpRule/in/"
GROUP = SPACE + "GbpEpGroup/web/"


def _mo(uri: str, subject: str, **props: Any) -> MO:
    return MO(subject, uri, props, [], "PolicySpace", SPACE, subject)


async def _nothing(session: Session, method: str, params: list[Any]) -> Any:
    return {}


def test_sessions_getting_the_same_entries_share_one_encoding() -> None:
    async def go() -> None:
        handed: dict[str, list[Any]] = {}
        writers: dict[str, RecordingWriter] = {}
        sessions: dict[Session, pe.Peer] = {}
        until = time.monotonic() + 60
        for name, subs in (
            ("a", [CONTRACT]),
            ("b", [CONTRACT]),
            ("c", [CONTRACT, GROUP]),
            ("d", [SPACE + "GbpEpGroup/app/"]),
        ):
            writer = writers[name] = RecordingWriter()
            session = Session(asyncio.StreamReader(), writer, _nothing, label=name)  # type: ignore[arg-type]
            session.ready = True

            def post(method: str, params: Any, session: Session = session, name: str = name) -> bool:
                handed.setdefault(name, []).append(params)
                return session.post(method, params)

            peer = pe.Peer("127.0.0.1:8009", post=post)
            peer.subs = {uri: until for uri in subs}
            sessions[session] = peer

        changed = [_mo(RULE, "GbpRule", order=1), _mo(GROUP, "GbpEpGroup", name="web")]
        removed = [_mo(CONTRACT + "GbpSubject/http/GbpRule/old/", "GbpRule")]
        parts = {"replace": pe.wire(changed), "merge_children": [], "delete": pe.refs(removed)}
        pe.fan_out(sessions, "policy_update", lambda peer: peer.subs, parts)

        got = {n: w.messages("policy_update") for n, w in writers.items()}
        rule, group = changed[0].to_wire(), changed[1].to_wire()
        gone = {"subject": "GbpRule", "uri": removed[0].uri}
        for name in ("a", "b"):  # under the contract: the rule and the removed rule
            assert [m["params"] for m in got[name]] == [
                [{"replace": [rule], "merge_children": [], "delete": [gone]}]
            ]
        assert [m["params"] for m in got["c"]] == [
            [{"replace": [rule, group], "merge_children": [], "delete": [gone]}]
        ]
        assert got["d"] == [] and "d" not in handed
        # a and b were handed the same encoding (each frame still has its session's own id), c its own
        assert handed["a"][0] is handed["b"][0]
        assert isinstance(handed["a"][0], wire.Encoded) and handed["c"][0] is not handed["a"][0]

    asyncio.run(go())


def test_an_encoded_request_reads_as_the_request_encoded_whole() -> None:
    params = {"replace": [_mo(RULE, "GbpRule", order=1, name="ünïcode").to_wire()], "delete": []}
    shared = wire.encode_request("policy_update", 7, wire.encode_value(params))
    whole = wire.encode_request("policy_update", 7, params)
    assert wire.parse(shared.rstrip(wire.NUL)) == wire.parse(whole.rstrip(wire.NUL))
    parsed = wire.parse(shared.rstrip(wire.NUL))
    assert isinstance(parsed, wire.Request)
    assert parsed.params == [params] and parsed.id == ["policy_update", 7]
