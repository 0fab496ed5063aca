"""A rogue OpFlex peer against a real lab of examples/demo.yaml: nothing it declares reaches a flow.

The finding, replayed: a peer with no credentials (plain TCP, any name) declares (a) an endpoint
that is not in the intent, whose address carries flow text that, rendered, allowed everything
on both hosts, and (b) the real web1 with the peer's own tunnel address. Both must be refused
with an RPC error, and afterwards the demo matrix holds (every expectation, probed with real
packets), no host's bridge holds a flow with the injected text or the peer's tunnel address,
REST still has web1 on h1, and the refusals are counted in ``GET /v1/agents`` (per declared
object: the ghost, and web1's EprL2Ep and EprL3Ep).

Checks are collected rather than stopping at the first, so a regression reports everything the
peer achieved (run it against a tree without the registry's checks to see that list).
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from policyfabric.agent.endpoints import declaration
from policyfabric.client import Client
from policyfabric.lab.lab import Lab, checked_plan
from policyfabric.model import scenario as sc
from policyfabric.opflex.client import PolicyClient, parse_peers
from policyfabric.opflex.gbp import Cls, Prop, uri_of
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import RpcError
from policyfabric.opflex.uri import EPR_L2, child, space
from tests.lab_harness import endpoint, flows_with_age, lab_fixture

pytestmark = pytest.mark.dataplane

DEMO = Path(__file__).parent.parent / "examples" / "demo.yaml"
INJECTION = "10.1.0.77 actions=drop\ncookie=0x0,table=0,priority=65535,actions=NORMAL #"
EVIL_TUNNEL = "192.0.2.66"
BD = uri_of("acme", Cls.GBP_BRIDGE_DOMAIN, "bd1")

lab = lab_fixture(DEMO)


def ghost() -> MO:
    """(a) An endpoint the intent does not have, with flow text in its address."""
    mac = "02:00:00:00:00:77"
    props = {
        Prop.UUID: "acme/ghost",
        Prop.MAC: mac,
        Prop.CONTEXT: BD,
        Prop.IP: [INJECTION],
        Prop.TUNNEL_IP: EVIL_TUNNEL,
    }
    return MO(Cls.EPR_L2_EP, child(EPR_L2, Cls.EPR_L2_EP, BD, mac), props, [], Cls.EPR_L2_UNIVERSE, EPR_L2)


async def rogue(lab: Lab) -> list[Any]:
    """Connect as ``evil``, declare (a) and (b); what each declaration got back."""
    client = PolicyClient("evil", parse_peers(lab.state.opflex), backoff=(0.05, 0.5))
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.ready.wait(), 10)
        client.resolve(Cls.POLICY_SPACE, space("acme"))  # what an agent resolves, to build (b)
        assert await client.settled(10)
        web1 = declaration(client.policy, "acme", "web1", "evil0", EVIL_TUNNEL)  # (b): web1, "here"
        assert web1 is not None
        answers: list[Any] = []
        for mos in ([ghost()], web1.all):
            assert client.session is not None
            try:
                params = {"endpoint": [m.to_wire() for m in mos], "prr": 600}
                answers.append(await client.session.call("endpoint_declare", params))
            except RpcError as err:
                answers.append(err)
        return answers
    finally:
        await client.stop()
        task.cancel()


def mismatches(lab: Lab) -> list[tuple[str, str, str, str]]:
    results = lab.probe(checked_plan(sc.load(DEMO)).expect)
    return [(r.expect.source, r.expect.target, r.expect.probe, r.measured) for r in results if not r.ok]


def test_a_rogue_peer_cannot_put_anything_into_the_flows(lab: Lab) -> None:
    assert mismatches(lab) == []  # the control: the demo matrix holds before
    answers = asyncio.run(rogue(lab))
    lab.settle()

    problems: list[str] = []
    for what, answer in zip(("the ghost", "web1 from evil"), answers, strict=True):
        if not (isinstance(answer, RpcError) and answer.code == "ERROR"):
            problems.append(f"{what}: the declaration got {answer!r}, not an ERROR")
    web1 = endpoint(lab, "web1")
    if (web1["host"], web1["status"]) != ("h1", "ACTIVE"):
        problems.append(f"web1 is {web1['host']}/{web1['status']} in REST, not h1/ACTIVE")
    with Client(lab.state.url) as client:
        agents = {a["name"]: a for a in client.request("GET", "/v1/agents")["items"]}
    refused = agents.get("evil", {}).get("refused_declarations")
    if refused != 3:  # counted per object: the ghost, web1's EprL2Ep and its EprL3Ep
        problems.append(f"evil's refused_declarations is {refused!r}, not 3")
    if agents.get("evil", {}).get("endpoints"):
        problems.append(f"evil holds endpoints: {agents['evil']['endpoints']}")
    problems += [f"the matrix changed: {m}" for m in mismatches(lab)]
    evil_hex = f"{int(ipaddress.IPv4Address(EVIL_TUNNEL)):#x}"
    for host in lab.state.hosts:
        for flow in flows_with_age(lab, host):  # after the probes: time enough for any push to render
            if any(mark in flow for mark in ("NORMAL", "10.1.0.77", "priority=65535", EVIL_TUNNEL, evil_hex)):
                problems.append(f"{host} holds {flow}")
    assert problems == [], "\n".join(problems)
