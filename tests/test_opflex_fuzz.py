"""Fuzzing the OpFlex server through a real ``Session`` (in process, no sockets): whatever the
params of ``send_identity``, ``endpoint_declare`` or ``state_report``, the peer gets a result or a
JSON-RPC error, never an internal error or a dropped session. The frame-level edge (depth,
non-finite numbers) and the dispatcher fuzz are in test_opflex_wire.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyfabric.opflex import wire
from tests.opflex_harness import attach, connect, ready_server_session


def _json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(10**30), 10**30)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=12)
        | st.sampled_from(["h1", "acme/web1", "EprL2Ep", "x" * 300, "a.b.c", "-x", "policyfabric"]),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=12,
    )


def _mo() -> st.SearchStrategy[Any]:
    prop = st.fixed_dictionaries(
        {
            "name": st.sampled_from(["uuid", "interfaceName", "mac", "ip", "tunnelIp", "x"]),
            "data": _json_values(),
        }
    )
    return st.fixed_dictionaries(
        {
            "subject": st.sampled_from(["EprL2Ep", "EprL3Ep", "GbpEpGroup", ""]),
            "uri": st.sampled_from(["/EprL2Universe/EprL2Ep/a/b/", "/EprL3Universe/EprL3Ep/c/d/", "/", "x"]),
            "properties": st.lists(prop, max_size=4),
        },
        optional={"children": st.lists(st.text(max_size=5), max_size=2), "parent_uri": _json_values()},
    )


IDENTITY = st.fixed_dictionaries(
    {},
    optional={
        "proto_version": _json_values(),
        "name": st.sampled_from(["h1", "H1.Example.COM", "h1\n", "", "a" * 300, "gw1", "x_y"])
        | _json_values(),
        "domain": st.sampled_from(["policyfabric", "elsewhere"]) | _json_values(),
        "my_role": st.sampled_from([["policy_element"], ["observer"]]) | _json_values(),
        "data": _json_values(),
    },
)
DECLARE = st.fixed_dictionaries(
    {},
    optional={
        "endpoint": st.lists(_mo(), max_size=3) | _json_values(),
        "prr": st.integers(-(10**30), 10**30)
        | st.sampled_from([10**400, -(10**400), 7200, 1])
        | st.floats(allow_nan=False)
        | _json_values(),
    },
)


def _answer_through_a_session(method: str, params: list[Any], identified: bool) -> dict[str, Any]:
    """Send one request through a real ``Session`` of an in-process server; its reply."""

    async def go() -> dict[str, Any]:
        server, _ = await ready_server_session()
        session, seen = attach(server, "h9") if identified else connect(server)
        frame = json.dumps(wire.request(method, 7, params)).encode()
        await session._handle(wire.parse(frame))
        await asyncio.sleep(0)
        [reply] = [m for m in seen.messages() if m.get("id") == [method, 7]]
        assert not session.closed.is_set(), "the session was dropped"
        await server.stop()
        return reply

    return asyncio.run(go())


@settings(max_examples=150, deadline=None)
@given(st.lists(IDENTITY | _json_values(), max_size=2))
def test_any_identity_gets_a_result_or_an_rpc_error_and_keeps_the_session(params: list[Any]) -> None:
    reply = _answer_through_a_session("send_identity", params, identified=False)
    if "error" in reply:
        assert reply["error"]["code"] in {c.value for c in wire.Code}
        assert reply["error"]["message"] != "internal error"
    else:
        assert reply["result"]["domain"] == "policyfabric"


@settings(max_examples=150, deadline=None)
@given(st.lists(DECLARE | _json_values(), max_size=2))
def test_any_declaration_gets_a_result_or_an_rpc_error_and_keeps_the_session(params: list[Any]) -> None:
    reply = _answer_through_a_session("endpoint_declare", params, identified=True)
    if "error" in reply:
        assert reply["error"]["code"] in {c.value for c in wire.Code}
        assert reply["error"]["message"] != "internal error"
    else:
        assert reply["result"] == {}


REPORT = st.fixed_dictionaries(
    {},
    optional={
        "observable": st.lists(
            st.fixed_dictionaries(
                {
                    "subject": st.sampled_from(
                        ["PfEndpointStatus", "PfFault", "PfAgentCounters", "PfGatewayPorts", "x"]
                    ),
                    "uri": st.sampled_from(["/PfFault/f/", "/x/"]),
                    "properties": st.lists(
                        st.fixed_dictionaries(
                            {
                                "name": st.sampled_from(
                                    [
                                        "endpoint",
                                        "status",
                                        "code",
                                        "severity",
                                        "uri",
                                        "tunnelIp",
                                        "externalNetworks",
                                    ]
                                ),
                                "data": _json_values() | st.sampled_from(["acme/web1", "ACTIVE", "cleared"]),
                            }
                        ),
                        max_size=4,
                    ),
                }
            ),
            max_size=3,
        )
        | _json_values()
    },
)


@settings(max_examples=150, deadline=None)
@given(st.lists(REPORT | _json_values(), max_size=2))
def test_any_state_report_gets_a_result_or_an_rpc_error_and_keeps_the_session(params: list[Any]) -> None:
    reply = _answer_through_a_session("state_report", params, identified=True)
    if "error" in reply:
        assert reply["error"]["code"] in {c.value for c in wire.Code}
        assert reply["error"]["message"] != "internal error"
    else:
        assert reply["result"] == {}


@pytest.mark.parametrize("prr", [0, -1, 10**400, True, 7200.0, "7200", 86401])
def test_a_lease_is_a_bounded_positive_integer(prr: Any) -> None:
    params = [
        {"subject": "GbpEpGroup", "policy_uri": "/PolicyUniverse/PolicySpace/t/GbpEpGroup/g/", "prr": prr}
    ]
    reply = _answer_through_a_session("policy_resolve", params, identified=True)
    assert reply["error"]["code"] == "ERROR" and "Malformed message: prr" in reply["error"]["message"]
