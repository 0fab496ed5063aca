"""Golden shapes: every OpFlex method as policyfabric's client sends it, against
the draft / libopflex shapes (docs/opflex.md), captured by a recording peer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from policyfabric.opflex import wire
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.mo import MO

EP = MO(
    "EprL2Ep",
    "/EprL2Universe/EprL2Ep/%2fbd%2f/02%3a00%3a00%3a00%3a00%3a01/",
    {"mac": "02:00:00:00:00:01"},
    [],
    "EprL2Universe",
    "/EprL2Universe/",
    "EprL2Ep",
)


def test_every_method_has_the_draft_shape() -> None:
    frames: list[dict[str, Any]] = []
    replies: list[dict[str, Any]] = []

    async def go() -> None:
        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            decoder = wire.FrameDecoder()
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    msg = json.loads(frame)
                    if "method" not in msg:
                        replies.append(msg)
                        continue
                    frames.append(msg)
                    result: Any = {}
                    if msg["method"] == "send_identity":
                        result = {
                            "name": "rec",
                            "domain": "policyfabric",
                            "my_role": ["policy_repository"],
                            "peers": [
                                {"role": ["policy_repository"], "connectivity_info": f"127.0.0.1:{port}"}
                            ],
                        }
                    elif msg["method"] == "policy_resolve":
                        result = {"policy": []}
                    elif msg["method"] == "endpoint_resolve":
                        result = {"endpoint": []}
                    writer.write(wire.encode(wire.result(msg["id"], result)))
                    if msg["method"] == "state_report":  # now push both updates and an echo to the client
                        writer.write(
                            wire.encode(
                                wire.request(
                                    "policy_update",
                                    1,
                                    [
                                        {
                                            "replace": [],
                                            "merge_children": [],
                                            "delete": [{"subject": "GbpEpGroup", "uri": "/x/"}],
                                        }
                                    ],
                                )
                            )
                        )
                        writer.write(
                            wire.encode(
                                wire.request(
                                    "endpoint_update", 2, [{"replace": [EP.to_wire()], "delete": []}]
                                )
                            )
                        )
                        writer.write(wire.encode(wire.request("echo", 3, [123])))
                    await writer.drain()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = PolicyClient("h1", [("127.0.0.1", port)])
        task = asyncio.create_task(client.run())
        await client.ready.wait()
        client.resolve("GbpEpGroup", "/PolicyUniverse/PolicySpace/t/GbpEpGroup/g/")
        client.resolve_endpoints("EprL2Ep", EP.uri)
        client.declare([EP])
        await client.settled(5, quiet=0.1)
        client.undeclare(EP.uri)
        session = client.session
        assert session is not None
        await session.call("policy_unresolve", {"subject": "GbpEpGroup", "policy_uri": "/x/"})
        await session.call("endpoint_unresolve", {"subject": "EprL2Ep", "endpoint_uri": EP.uri})
        await client.report([MO("PfAgentCounters", "/PfAgentCounters/", {"flows": 1})])
        for _ in range(100):
            if (
                len(replies) >= 1
                and "/EprL2Universe/EprL2Ep/%2fbd%2f/02%3a00%3a00%3a00%3a00%3a01/" in client.endpoints
            ):
                break
            await asyncio.sleep(0.02)
        await client.stop()
        task.cancel()
        server.close()

    asyncio.run(go())
    by_method: dict[str, dict[str, Any]] = {}
    for frame in frames:
        assert frame["id"][0] == frame["method"] and isinstance(frame["id"][1], int)  # ["method", n]
        assert isinstance(frame["params"], list) and len(frame["params"]) == 1
        by_method.setdefault(frame["method"], frame["params"][0])
    p = by_method
    assert set(p["send_identity"]) >= {"proto_version", "name", "domain", "my_role"}
    assert p["send_identity"]["proto_version"] == "1.0" and p["send_identity"]["my_role"] == [
        "policy_element"
    ]
    assert set(p["policy_resolve"]) == {"subject", "policy_uri", "prr"}
    assert set(p["policy_unresolve"]) == {"subject", "policy_uri"}
    assert (
        set(p["endpoint_declare"]) == {"endpoint", "prr"}
        and p["endpoint_declare"]["endpoint"][0]["subject"] == "EprL2Ep"
    )
    assert set(p["endpoint_undeclare"]) == {"subject", "endpoint_uri"}
    assert set(p["endpoint_resolve"]) == {"subject", "endpoint_uri", "prr"}
    assert set(p["endpoint_unresolve"]) == {"subject", "endpoint_uri"}
    assert set(p["state_report"]) == {"observable"}
    mo = p["state_report"]["observable"][0]
    assert mo["properties"] == [{"name": "flows", "data": 1}] and mo["children"] == []
    # policy_update and endpoint_update get no success reply (libopflex); echo is echoed.
    assert [r for r in replies if r["id"][0] in ("policy_update", "endpoint_update")] == []
    assert {"id": ["echo", 3], "result": [123]} in replies
