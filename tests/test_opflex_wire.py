"""OpFlex wire format: framing, message shapes from the draft, fuzzing. Pure, no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyfabric.agent.endpoints import declaration
from policyfabric.authority.opflex.policy_tree import tenant_tree
from policyfabric.model import scenario as sc
from policyfabric.opflex import wire
from policyfabric.opflex.mo import MO
from policyfabric.opflex.uri import escape, unescape
from tests.test_model_unit import EXAMPLE


def frames(chunks: list[bytes], max_size: int = 1 << 20) -> list[bytes]:
    decoder = wire.FrameDecoder(max_size)
    out = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out


@given(
    st.lists(
        st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=20), max_size=4), max_size=6
    ),
    st.data(),
)
def test_frames_survive_any_split(messages: list[dict[str, Any]], data: st.DataObject) -> None:
    stream = b"".join(wire.encode(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert [json.loads(f) for f in frames(chunks)] == messages


def test_whitespace_between_frames_is_tolerated() -> None:
    assert frames([b' {"a":1}\0\n\r\n {"b":2}\0  ']) == [b'{"a":1}', b'{"b":2}']


def test_oversized_frames_are_refused() -> None:
    with pytest.raises(wire.FrameTooLarge):
        frames([b"x" * 100], max_size=50)
    with pytest.raises(wire.FrameTooLarge):
        frames([b"y" * 60 + b"\0"], max_size=50)


@given(st.binary(max_size=200))
def test_parse_never_raises(frame: bytes) -> None:
    assert isinstance(wire.parse(frame), wire.Request | wire.Response | wire.Malformed)


@pytest.mark.parametrize(
    ("raw", "kind", "close"),
    [
        (b"{not json", wire.Malformed, False),
        (b"[1,2]", wire.Malformed, False),
        (b'{"method":"echo","params":[]}', wire.Malformed, True),  # notification
        (b'{"id":["echo",1],"method":"echo","params":{}}', wire.Malformed, False),  # params not an array
        (b'{"id":7,"result":{}}', wire.Malformed, True),  # reply id not [method, n]
        (b'{"id":["echo",1],"error":"bad"}', wire.Malformed, True),
        (b'{"id":["echo",1],"method":"echo","params":[1]}', wire.Request, False),
        (b'{"id":["echo",1],"result":[1],"error":null}', wire.Response, False),
        (b'{"id":["echo",1],"result":[1]}', wire.Response, False),
    ],
)
def test_message_classification(raw: bytes, kind: type, close: bool) -> None:
    msg = wire.parse(raw)
    assert isinstance(msg, kind)
    if isinstance(msg, wire.Malformed):
        assert msg.close == close


@given(st.text(max_size=30))
def test_uri_escaping_round_trips_and_keeps_only_safe_characters(text: str) -> None:
    escaped = escape(text)
    assert unescape(escaped) == text
    assert all(c.isascii() and (c.isalnum() or c in "-_.~%") for c in escaped)


def test_uri_escaping_matches_libopflex() -> None:
    assert escape("/PolicyUniverse/PolicySpace/common/") == "%2fPolicyUniverse%2fPolicySpace%2fcommon%2f"
    assert escape("0a:58:0a:02:00:cc") == "0a%3a58%3a0a%3a02%3a00%3acc"


# ---- golden shapes (draft-smith-opflex / libopflex) -------------------------


def test_request_and_reply_envelopes() -> None:
    assert wire.request(
        "policy_resolve", 3, [{"subject": "GbpEpGroup", "policy_uri": "/x/", "prr": 7200}]
    ) == {
        "id": ["policy_resolve", 3],
        "method": "policy_resolve",
        "params": [{"subject": "GbpEpGroup", "policy_uri": "/x/", "prr": 7200}],
    }
    assert wire.result(["echo", 9], [1]) == {"id": ["echo", 9], "result": [1]}
    assert wire.error(["x", 1], wire.Code.ESTATE, "m") == {
        "id": ["x", 1],
        "error": {"code": "ESTATE", "message": "m"},
    }
    assert wire.encode({"a": 1}).endswith(b"\0")


def demo_tree() -> Any:
    scenario = sc.load(EXAMPLE)
    assert not sc.check(scenario)
    objs: dict[str, list[Any]] = {}
    for e in scenario.entries:
        if e.spec is not None and e.spec.scope == "acme":
            spec = e.spec
            if e.kind.name == "endpoint":  # the server would generate these
                spec = spec.model_copy(update={"mac": f"02:00:00:00:00:{len(objs.get('endpoint', [])):02x}"})
            objs.setdefault(e.kind.name, []).append(spec)
    return tenant_tree(
        "acme", objs, {"vni": {"bridge_domain/bd-web": 65537}, "classid": {"endpoint_group/web": 16385}}
    )


def test_managed_object_shape() -> None:
    tree = demo_tree()
    epg = tree.mos["/PolicyUniverse/PolicySpace/acme/GbpEpGroup/web/"].to_wire()
    assert set(epg) == {
        "subject",
        "uri",
        "properties",
        "children",
        "parent_subject",
        "parent_uri",
        "parent_relation",
    }
    assert epg["parent_subject"] == "PolicySpace" and epg["parent_relation"] == "GbpEpGroup"
    assert {"name": "intraGroupPolicy", "data": "allow"} in epg["properties"]
    rel = tree.mos[epg["children"][0]].to_wire()
    assert rel["subject"] == "GbpEpGroupToNetworkRSrc"
    assert rel["properties"] == [
        {
            "name": "target",
            "data": {
                "subject": "GbpBridgeDomain",
                "reference_uri": "/PolicyUniverse/PolicySpace/acme/GbpBridgeDomain/bd-web/",
            },
        }
    ]
    inst = tree.mos["/PolicyUniverse/PolicySpace/acme/GbpEpGroup/web/GbpeInstContext/"].properties
    assert inst == {"encapId": 65537, "classid": 16385}
    clf = tree.mos["/PolicyUniverse/PolicySpace/acme/GbpeL24Classifier/http.web-in/"].properties
    assert (clf["prot"], clf["dFromPort"], clf["dToPort"], clf["connectionTracking"]) == (
        6,
        80,
        80,
        "reflexive",
    )
    # every child listed by a parent exists, and names its parent back (the client deletes unlisted children)
    for mo in tree.mos.values():
        for child in mo.children:
            assert tree.mos[child].parent_uri == mo.uri
    # round trip
    for mo in tree.mos.values():
        assert MO.from_wire(json.loads(json.dumps(mo.to_wire()))).to_wire() == mo.to_wire()


def test_endpoint_declaration_shape() -> None:
    tree = demo_tree()
    decl = declaration(tree.mos, "acme", "web1", interface="tap1")
    assert decl is not None
    l2 = decl.l2.to_wire()
    assert l2["subject"] == "EprL2Ep"
    bd = "%2fPolicyUniverse%2fPolicySpace%2facme%2fGbpBridgeDomain%2fbd-web%2f"
    assert l2["uri"].startswith(f"/EprL2Universe/EprL2Ep/{bd}/")
    assert l2["parent_uri"] == "/EprL2Universe/" and l2["parent_relation"] == "EprL2Ep"
    props = {p["name"]: p["data"] for p in l2["properties"]}
    assert props["uuid"] == "acme/web1" and props["interfaceName"] == "tap1"
    assert [m.uri for m in decl.l3] == [
        "/EprL3Universe/EprL3Ep/%2fPolicyUniverse%2fPolicySpace%2facme%2fGbpRoutingDomain%2fvrf1%2f/10.1.0.10/"
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(
        [
            "policy_resolve",
            "policy_unresolve",
            "endpoint_declare",
            "endpoint_undeclare",
            "endpoint_resolve",
            "endpoint_unresolve",
            "state_report",
            "send_identity",
            "nope",
        ]
    ),
    st.lists(
        st.none()
        | st.integers()
        | st.text(max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "subject",
                    "policy_uri",
                    "prr",
                    "endpoint",
                    "endpoint_uri",
                    "observable",
                    "name",
                    "domain",
                    "my_role",
                    "policy_ident",
                ]
            ),
            st.none()
            | st.integers()
            | st.text(max_size=10)
            | st.lists(st.text(max_size=5), max_size=2)
            | st.lists(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3), max_size=2),
            max_size=4,
        ),
        max_size=3,
    ),
)
def test_server_dispatch_answers_any_params_with_a_result_or_an_rpc_error(
    method: str, params: list[Any]
) -> None:
    """The dispatcher of a ready session: a result or an RpcError, never a crash."""
    import asyncio

    from policyfabric.opflex.rpc import RpcError
    from tests.opflex_harness import ready_server_session

    async def go() -> None:
        server, session = await ready_server_session()
        try:
            await server._handle(session, method, params)
        except RpcError as err:
            assert err.code in {c.value for c in wire.Code}
        finally:
            await server.stop()

    asyncio.run(go())


# ---- the protocol edge: depth, non-finite numbers, bounded params ------------------------------

NOT_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"]


def _invalid(text: str) -> Any:
    raise AssertionError(f"{text} is not JSON")


@pytest.mark.parametrize("depth", [wire.MAX_DEPTH, 1_000, 100_000])
def test_deep_nesting_is_refused_and_the_session_kept(depth: int) -> None:
    inner = b"[" * depth + b"]" * depth
    msg = wire.parse(b'{"id":["echo",1],"method":"echo","params":[' + inner + b"]}")
    assert isinstance(msg, wire.Malformed) and not msg.close
    assert "nesting deeper than" in msg.reason
    if depth < 1_000:  # decoded, then refused: the id is known, so the reply can name it
        assert msg.id == ["echo", 1]
    shallow = b"[" * (wire.MAX_DEPTH - 3) + b"]" * (wire.MAX_DEPTH - 3)
    assert isinstance(
        wire.parse(b'{"id":["echo",1],"method":"echo","params":[' + shallow + b"]}"), wire.Request
    )


@pytest.mark.parametrize("number", NOT_FINITE)
def test_non_finite_numbers_are_refused_with_the_request_id(number: bytes) -> None:
    msg = wire.parse(
        b'{"id":["policy_resolve",4],"method":"policy_resolve","params":[{"prr":' + number + b"}]}"
    )
    assert isinstance(msg, wire.Malformed) and not msg.close
    assert msg.id == ["policy_resolve", 4] and "not finite" in msg.reason
    assert isinstance(wire.parse(number), wire.Malformed)
    with pytest.raises(ValueError):
        wire.encode({"x": float(number.decode().replace("Infinity", "inf"))})  # nothing invalid leaves


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
        max_leaves=30,
    )
)
def test_whatever_parses_can_be_encoded_again(value: Any) -> None:
    """A frame either is refused or holds only values that re-encode as valid JSON (an echo of it,
    or a store holding it, is readable)."""
    raw = json.dumps({"id": ["echo", 1], "method": "echo", "params": [value]}).encode()
    msg = wire.parse(raw)
    if isinstance(msg, wire.Request):
        echoed = wire.encode(wire.result(msg.id, msg.params))[:-1]
        assert json.loads(echoed, parse_constant=_invalid) == {"id": ["echo", 1], "result": [value]}
    else:
        assert isinstance(msg, wire.Malformed) and not msg.close and "not finite" in msg.reason
