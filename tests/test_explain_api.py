"""``GET /v1/explain`` at its edge, in-process: the values parsed (a bad one is a 4xx naming its
field), the API's tenant scoping, and the intent's answer, marked as such, when no dataplane can
be asked (an authority without OpFlex). The dataplane's answers are in
test_explain_fabric_dataplane.py; ``pf_trace``'s own parsing is checked here too (what an agent
formats into its trace command)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from policyfabric.authority.explain import CannotTrace
from policyfabric.authority.explain import trace as fabric_trace
from policyfabric.opflex.client import PolicyClient, parse_peers
from policyfabric.opflex.rpc import RpcError, Session
from policyfabric.opflex.trace import BadTrace, Probe, Request, judge
from policyfabric.opflex.wire import Code
from tests.conftest import AsToken, error, unique


@pytest.fixture
def endpoints(as_: AsToken) -> dict[str, str]:
    """acme: a1, a2 (one group, intra_group allow); beta: b1. Returns name → TENANT/NAME."""
    ops, made = as_("ops"), {}
    for t, names in (("acme", ("a1", "a2")), ("beta", ("b1",))):
        if ops.find("tenants", None, t) is None:
            ops.ok("tenants", {"name": t})
        vrf, bd, epg = unique("vrf"), unique("bd"), unique("g")
        ops.ok("l3-contexts", {"name": vrf, "tenant": t})
        ops.ok("bridge-domains", {"name": bd, "tenant": t, "l3_context": vrf})
        ops.ok("subnets", {"name": unique("s"), "tenant": t, "bridge_domain": bd, "cidr": "10.7.0.0/24"})
        ops.ok("endpoint-groups", {"name": epg, "tenant": t, "bridge_domain": bd, "intra_group": "allow"})
        for i, n in enumerate(names):
            name = unique(n)
            ops.ok("endpoints", {"name": name, "tenant": t, "epg": epg, "ip": f"10.7.0.{10 + i}"})
            made[n] = f"{t}/{name}"
    return made


def test_a_member_cannot_explain_another_tenants_endpoints(as_: AsToken, endpoints: dict[str, str]) -> None:
    acme = as_("acme")
    for params, field in (
        ({"from": endpoints["b1"], "to": endpoints["a1"]}, "from"),
        ({"from": endpoints["a1"], "to": endpoints["b1"]}, "to"),
    ):
        r = acme.get("/v1/explain", **params, probe="tcp/80")
        assert r.status_code == 404, r.text
        assert (error(r)["code"], error(r)["field"]) == ("not_found", field)
    assert (
        as_("none")
        .get("/v1/explain", **{"from": endpoints["a1"], "to": "10.7.0.1", "probe": "icmp"})
        .status_code
        == 401
    )


def test_within_its_tenant_and_no_opflex_the_intent_answers_marked_as_such(
    as_: AsToken, endpoints: dict[str, str]
) -> None:
    query = {"from": endpoints["a1"], "to": endpoints["a2"], "probe": "tcp/80"}
    r = as_("ops").get("/v1/explain", **query)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["verdict"], doc["source"], doc["hops"]) == ("allow", "intent", [])
    assert "intra_group" in doc["by"] and "no OpFlex" in doc["reason"]
    # a member: the verdict and its own tenant's rule, no hops, no reason naming the fabric
    doc = as_("acme").get("/v1/explain", **query).json()
    assert (doc["verdict"], doc["source"], "hops" in doc) == ("allow", "intent", False)
    assert "intra_group" in doc["by"] and doc["reason"] == "the dataplane could not be asked"
    # an address has no intent answer: the dataplane alone could say
    r = as_("ops").get("/v1/explain", **{"from": endpoints["a1"], "to": "10.7.0.99", "probe": "icmp"})
    assert r.status_code == 503 and "between two endpoints" in error(r)["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"probe": "tcp/99999"}, "probe"),
        ({"probe": "sctp/9"}, "probe"),
        ({"probe": "icmp", "to": "fd00::1"}, "probe"),  # an IPv4 probe to an IPv6 address
        ({"from": "acme"}, "from"),
        ({"from": "acme/Not_A_Name"}, "from"),
        ({"to": "10.0.0.300"}, "to"),
        ({"to": "acme/a;b"}, "to"),
    ],
)
def test_a_bad_value_is_a_4xx_naming_its_field(
    as_: AsToken, endpoints: dict[str, str], params: dict[str, str], field: str
) -> None:
    query = {"from": endpoints["a1"], "to": endpoints["a2"], "probe": "tcp/80", **params}
    r = as_("ops").get("/v1/explain", **query)
    assert 400 <= r.status_code < 500 and r.status_code != 404, r.text
    assert error(r)["field"] == field, r.text


def test_missing_values_are_a_4xx() -> None:
    with pytest.raises(BadTrace) as exc:
        Request.parse([{"source": "acme/a1", "destination": "10.0.0.1"}])
    assert exc.value.field == "probe"


@pytest.mark.parametrize(
    ("text", "kind", "port", "v6"),
    [("tcp/80", "tcp", 80, False), ("udp6/53", "udp", 53, True), ("bulk/5001", "tcp", 5001, False),
     ("icmp", "icmp", None, False), ("ICMPv6", "icmp", None, True)],
)  # fmt: skip
def test_probes_parse_as_lab_md_writes_them(text: str, kind: str, port: int | None, v6: bool) -> None:
    assert Probe.parse(text) == Probe(kind, port, v6)


@pytest.mark.parametrize(
    "arrival",
    [
        {"protocol": "tcp", "dl_src": "02:00:00:00:00:01,actions=drop"},  # a value smuggling a field
        {"protocol": "tcp", "nw_src": "10.0.0.1 --ct-next x"},
        {"protocol": "tcp,in_port=1"},
        {"protocol": "tcp", "in_port": "1"},  # the port is the receiving agent's own
        {"protocol": "tcp", "tp_dst": "80,nw_dst=1.2.3.4"},
        {"protocol": "tcp", "tun_id": "0x1000000"},  # past 24 bits
    ],
)
def test_an_arriving_packet_takes_only_known_fields_with_checked_values(arrival: dict[str, str]) -> None:
    with pytest.raises(BadTrace):
        Request.parse([{"arrival": arrival}])


def test_an_arriving_packet_is_reprinted_from_its_parsed_values() -> None:
    req = Request.parse([{"arrival": {"protocol": "tcp", "tun_id": "65538", "dl_src": "02:AB:00:00:00:01",
                                      "nw_dst": "10.1.0.10", "tcp_flags": "syn"}}])  # fmt: skip
    assert req.fields == {
        "tun_id": "0x10002",
        "dl_src": "02:ab:00:00:00:01",
        "nw_dst": "10.1.0.10",
        "tcp_flags": "syn",
    }


def test_hops_are_judged_as_the_lab_judges_them() -> None:
    through = {"outcome": "tunnel", "drop": None, "allows": ["contract acme/http rule web-in"]}
    out = {"outcome": "output:1", "drop": None, "allows": ["contract acme/http rule web-in"]}
    assert judge([through, out]) == ("allow", "contract acme/http rule web-in")
    assert judge([through, {"outcome": "drop", "drop": "default deny", "allows": []}]) == (
        "deny",
        "default deny",
    )
    assert judge([through]) == ("deny", "no route")  # tunnelled to an address no agent has


def test_an_agent_that_does_not_know_pf_trace_is_a_host_that_cannot_trace(tmp_path: Path) -> None:
    """Over a real OpFlex session, a client without a trace service (as a reference agent: it
    answers an unknown method EUNSUPPORTED) makes the authority say the host cannot trace, which
    the route turns into the intent's answer marked as such."""

    async def go() -> str:
        a, b = socket.socketpair()
        client = PolicyClient("h9", parse_peers("127.0.0.1:1"), state_dir=tmp_path)  # no on_trace
        ra, wa = await asyncio.open_connection(sock=a)
        rb, wb = await asyncio.open_connection(sock=b)
        asking = Session(ra, wa, _refuse_all, label="authority")
        agent = Session(rb, wb, client._handle, label="agent")
        asking.ready = agent.ready = True
        tasks = [asyncio.create_task(asking.run()), asyncio.create_task(agent.run())]
        fabric = SimpleNamespace(
            peers={asking: SimpleNamespace(agent="h9", current=True)},
            registry=SimpleNamespace(declarations=SimpleNamespace(by_agent={"h9": {("acme", "a1"): None}})),
            observer=SimpleNamespace(agents={}),
        )
        try:
            await fabric_trace(fabric, "acme/a1", "10.0.0.2", Probe.parse("tcp/80"))
        except CannotTrace as exc:
            return str(exc)
        finally:
            await asking.close("done")
            await agent.close("done")
            for t in tasks:
                t.cancel()
        return "traced"

    assert asyncio.run(go()) == "host h9 cannot trace (its agent does not implement pf_trace)"


async def _refuse_all(session: Session, method: str, params: list[Any]) -> Any:
    raise RpcError(Code.EUNSUPPORTED, method)
