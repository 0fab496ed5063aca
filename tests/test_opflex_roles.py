"""The OpFlex server's roles wired together, in process (no sockets, no agents): what one role
hears reaches the others. Gateway ports reported to the observer drive the election, whose
result the repository writes into the policy and pushes to subscribed sessions only; the
registry's declarations show in the agents' view and set endpoint statuses.
The same behaviour with real agents and packets: test_external_dataplane.py, test_opflex_e2e.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from policyfabric.agent.endpoints import bd_members_prefix, declaration
from policyfabric.authority.opflex import OpflexServer
from policyfabric.authority.service import Authority
from policyfabric.model import objects as o
from policyfabric.model.kinds import BY_NAME as K
from policyfabric.opflex.gbp import Cls, Prop, external_network_uri, uri_of
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import Session
from policyfabric.opflex.uri import space
from policyfabric.store.sqlite import SqliteStore
from tests.opflex_harness import attach

GATEWAY = uri_of("acme", Cls.PF_ROUTER, "r1") + Cls.PF_EXTERNAL_GATEWAY + "/"


def authority_with_a_router(path: Path) -> Authority:
    authority = Authority(SqliteStore(path / "db", sync="normal"))
    authority.create_many(
        [
            (K["tenant"], o.Tenant(name="acme")),
            (K["l3_context"], o.L3Context(name="vrf1", tenant="acme")),
            (K["bridge_domain"], o.BridgeDomain(name="bd", tenant="acme", l3_context="vrf1")),
            (K["subnet"], o.Subnet(name="s", tenant="acme", bridge_domain="bd", cidr="10.1.0.0/24")),
            (K["endpoint"], o.Endpoint(name="web1", tenant="acme", subnet="s", ip=["10.1.0.10"])),
            (K["external_network"], o.ExternalNetwork(name="public", cidr="203.0.113.0/24")),
            (
                K["router"],
                o.Router(
                    name="r1",
                    tenant="acme",
                    l3_context="vrf1",
                    interfaces=["s"],
                    external_gateway=o.ExternalGateway(network="public", hosts=["gw1", "gw2"]),
                ),
            ),
        ]
    )
    return authority


async def report(server: OpflexServer, session: Session, *observables: MO) -> None:
    await server._handle(session, "state_report", [{"observable": [m.to_wire() for m in observables]}])


def gateway_ports(tunnel_ip: str) -> MO:
    return MO(
        Cls.PF_GATEWAY_PORTS,
        "/PfGatewayPorts/",
        {Prop.TUNNEL_IP: tunnel_ip, Prop.EXTERNAL_NETWORKS: [external_network_uri("public")]},
    )


def active(server: OpflexServer) -> tuple[Any, Any]:
    props = server.policy.trees["acme"].mos[GATEWAY].properties
    return props[Prop.ACTIVE_HOST], props[Prop.ACTIVE_TUNNEL_IP]


def gateway_for(server: OpflexServer) -> dict[str, list[str]]:
    return {a["name"]: a["gateway_for"] for a in server.agents_json()}


async def web1(authority: Authority, **want: Any) -> dict[str, Any]:
    """The stored endpoint web1, once it has the fields ``want`` (statuses are written in batches,
    after the request that caused them has been answered)."""
    for _ in range(200):
        [record], _ = authority.list(K["endpoint"], "acme", "web1")
        if all(record.get(k) == v for k, v in want.items()):
            return dict(record)
        await asyncio.sleep(0.01)
    raise AssertionError(f"web1 is {record}, not {want}")


def test_the_election_follows_gateway_reports_and_sessions_into_the_policy(tmp_path: Path) -> None:
    async def go() -> None:
        server = OpflexServer(authority_with_a_router(tmp_path))
        server.loop = asyncio.get_running_loop()
        await server.policy.rebuild({None, "acme"}, push=False)  # what start() does first
        compute, seen = attach(server, "h1")
        gw1, gw1_seen = attach(server, "gw1")
        gw2, _ = attach(server, "gw2")
        tenant = [{"subject": Cls.POLICY_SPACE, "policy_uri": space("acme"), "prr": 60}]
        await server._handle(compute, "policy_resolve", tenant)
        assert active(server) == ("", "")  # no gateway host has reported yet

        await report(server, gw2, gateway_ports("192.0.2.4"))
        await server.flush()
        assert active(server) == ("gw2", "192.0.2.4")
        assert gateway_for(server) == {"gw1": [], "gw2": ["acme/r1"], "h1": []}
        [update] = seen.messages("policy_update")
        # the gateway, beside the tenant's PfRevision (which every rebuild renews)
        [pushed] = [m for m in update["params"][0]["replace"] if m["subject"] != Cls.PF_REVISION]
        assert pushed["uri"] == GATEWAY
        assert {"name": Prop.ACTIVE_HOST, "data": "gw2"} in pushed["properties"]
        assert gw1_seen.messages("policy_update") == []  # not subscribed: nothing

        await report(server, gw1, gateway_ports("192.0.2.3"))  # first in the list, but no preemption
        await server.flush()
        assert active(server) == ("gw2", "192.0.2.4") and len(seen.messages("policy_update")) == 1

        server._closed(gw2)  # its session ends
        await server.flush()
        assert active(server) == ("gw1", "192.0.2.3")
        assert gateway_for(server) == {"gw1": ["acme/r1"], "gw2": [], "h1": []}
        assert [a["connected"] for a in server.agents_json()] == [True, False, True]
        assert len(seen.messages("policy_update")) == 2

    asyncio.run(go())


def test_declarations_and_reports_reach_the_rest_views(tmp_path: Path) -> None:
    async def go() -> None:
        authority = authority_with_a_router(tmp_path)
        server = OpflexServer(authority)
        server.loop = asyncio.get_running_loop()
        await server.policy.rebuild({None, "acme"}, push=False)
        h1, _ = attach(server, "h1")
        h2, h2_seen = attach(server, "h2")
        decl = declaration(server.policy.trees["acme"].mos, "acme", "web1", "tap1", "192.0.2.1")
        assert decl is not None
        members = [{"subject": "EprL2Ep", "endpoint_uri": bd_members_prefix(decl.bridge_domain), "prr": 60}]
        await server._handle(h2, "endpoint_resolve", members)

        await server._handle(
            h1, "endpoint_declare", [{"endpoint": [m.to_wire() for m in decl.all], "prr": 60}]
        )
        await server.flush()
        [h1_view, _] = server.agents_json()
        assert h1_view["endpoints"] == ["acme/web1"] and h1_view["subscriptions"] == 0
        [update] = h2_seen.messages("endpoint_update")
        assert [m["uri"] for m in update["params"][0]["replace"]] == [m.uri for m in decl.requests[0]]
        await web1(authority, status="BUILD", host="h1", interface="tap1")

        status = MO(Cls.PF_ENDPOINT_STATUS, "/x/", {Prop.ENDPOINT: "acme/web1", Prop.STATUS: "ACTIVE"})
        fault = MO(
            Cls.PF_FAULT, "/PfFault/f/", {Prop.CODE: "render", Prop.DESCRIPTION: "no port", Prop.URI: "/u/"}
        )
        counters = MO(Cls.PF_AGENT_COUNTERS, "/PfAgentCounters/", {"flows": 12})
        await report(server, h1, status, fault, counters)
        [record], _ = authority.list(K["endpoint"], "acme", "web1")
        assert record["status"] == "ACTIVE"  # the reply to a report means its statuses are stored
        assert [(f["agent"], f["code"], f["severity"], f["message"]) for f in server.faults_json()] == [
            ("h1", "render", "major", "no port")
        ]
        assert server.agents_json()[0]["counters"] == {"flows": 12}
        cleared = MO(
            Cls.PF_FAULT, "/PfFault/f/", {Prop.CODE: "render", Prop.SEVERITY: "cleared", Prop.URI: "/u/"}
        )
        await report(server, h1, cleared)
        assert server.faults_json() == []

        await server._handle(h1, "endpoint_undeclare", [{"subject": "EprL2Ep", "endpoint_uri": decl.l2.uri}])
        await server.flush()
        await web1(authority, status="DOWN")
        assert server.agents_json()[0]["endpoints"] == []
        assert len(h2_seen.messages("endpoint_update")) == 2

    asyncio.run(go())
