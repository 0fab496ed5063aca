"""Who an agent is: names bound to client certificates, one live session per name, a host
reporting only its own endpoints. In process (the certificate part over a real loopback TLS
connection, to read what ``ssl`` reports); the same rules end to end: test_opflex_e2e.py."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from policyfabric.agent.endpoints import declaration
from policyfabric.authority.opflex import OpflexServer
from policyfabric.authority.opflex.identity import Credentials, credentials
from policyfabric.model.kinds import BY_NAME as K
from policyfabric.opflex import wire
from policyfabric.opflex.gbp import Cls, Prop
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import RpcError
from policyfabric.opflex.tls import certificate_names, client_context
from tests.opflex_harness import attach, connect, identity
from tests.test_opflex_roles import authority_with_a_router, report, web1


def server_for(tmp_path: Path, **kw: Any) -> OpflexServer:
    server = OpflexServer(authority_with_a_router(tmp_path), **kw)
    server.loop = asyncio.get_running_loop()
    return server


def cert(fingerprint: str, *names: str) -> Credentials:
    return Credentials(fingerprint, frozenset(names))


# ---- what a certificate names --------------------------------------------------------------


def test_certificate_names_are_the_common_name_and_dns_sans_lower_cased() -> None:
    peer = {
        "subject": ((("countryName", "FR"),), (("commonName", "Compute-1.Example.com"),)),
        "subjectAltName": (("DNS", "h1"), ("IP Address", "192.0.2.1"), ("email", "a@b"), ("DNS", "H2")),
    }
    assert certificate_names(peer) == {"compute-1.example.com", "h1", "h2"}
    assert certificate_names({"subject": ((("organizationName", "x"),),)}) == frozenset()
    assert certificate_names(None) == certificate_names({}) == frozenset()


def test_a_verified_client_certificate_gives_its_names_and_fingerprint(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert, h1 = ca.issue_cert("127.0.0.1"), ca.issue_cert("h1", "h1.example.com")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_cert.configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    seen: list[Credentials] = []

    async def go() -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(credentials(writer, ctx))
            writer.close()

        server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        client = client_context(None, None, None)
        ca.configure_trust(client)
        h1.configure_cert(client)
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()

    asyncio.run(go())
    [got] = seen
    assert got.names == frozenset({"h1", "h1.example.com"})
    assert got.fingerprint is not None and len(got.fingerprint) == 64


# ---- the handshake -------------------------------------------------------------------------


def test_with_a_ca_the_name_must_be_in_the_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        server = server_for(tmp_path)
        impostor, _ = connect(server, cert("aa", "h1"))
        with pytest.raises(RpcError) as err:
            server._identity(impostor, identity("h2"))
        assert err.value.code == "ERROR" and "not in the client certificate" in err.value.message
        assert not impostor.ready and server.observer.agents == {}
        assert "identity h2 refused" in caplog.text
        server._identity(impostor, identity("H1"))  # the same session may still say who it is
        assert impostor.ready and list(server.observer.agents) == ["h1"]  # names are lower-cased

    asyncio.run(go())


@pytest.mark.parametrize(
    "name", ["h1\n", "a..b", "-h1", "x" * 64, "compute_1", "\u212a8s", "", "h1.example.com."]
)
def test_the_name_must_be_a_host_name_and_the_session_may_try_again(tmp_path: Path, name: str) -> None:
    async def go() -> None:
        server = server_for(tmp_path)
        session, _ = connect(server)
        with pytest.raises(RpcError) as err:
            server._identity(session, identity(name))
        assert err.value.code == "ERROR" and "Malformed message: name" in err.value.message
        assert not session.closed.is_set() and not session.ready
        server._identity(session, identity("compute-1.example.com"))
        assert session.ready

    asyncio.run(go())


def test_identity_is_accepted_once_per_session_and_nothing_grows(tmp_path: Path) -> None:
    async def go() -> None:
        server = server_for(tmp_path)
        session, _ = attach(server, "h1")
        label = session.label
        for name in ("h2", "h1", "h3"):
            with pytest.raises(RpcError) as err:
                server._identity(session, identity(name))
            assert err.value.code == "ESTATE"
        assert session.label == label == "h1@test"
        assert list(server.observer.agents) == ["h1"] and server.peers[session].agent == "h1"
        server._closed(session)
        assert [a["connected"] for a in server.agents_json()] == [False]  # no ghost stays connected

    asyncio.run(go())


def test_on_plain_tcp_a_live_name_cannot_be_taken_and_a_dead_one_can(tmp_path: Path) -> None:
    async def go() -> None:
        server = server_for(tmp_path, keepalive=0.2)
        gw1, gw1_seen = attach(server, "gw1")
        intruder, _ = connect(server)
        with pytest.raises(RpcError) as err:
            server._identity(intruder, identity("gw1"))
        assert "already has a live session" in err.value.message
        assert server.peers[gw1].current and not gw1.closed.is_set() and not intruder.ready
        # the live session was asked whether it is there; answering keeps it
        await asyncio.sleep(0)
        [probe] = gw1_seen.messages("echo")
        gw1._settle(wire.Response(probe["id"], probe["params"], None))
        await asyncio.sleep(0.4)
        assert not gw1.closed.is_set()
        with pytest.raises(RpcError):
            server._identity(intruder, identity("gw1"))
        # this time it does not answer (its connection is dead): closed, and the name is free
        await asyncio.sleep(0.4)
        assert gw1.closed.is_set()
        server._closed(gw1)
        server._identity(intruder, identity("gw1"))
        assert intruder.ready

    asyncio.run(go())


def test_with_a_ca_the_same_certificate_takes_over_and_another_is_refused(tmp_path: Path) -> None:
    async def go() -> None:
        server = server_for(tmp_path)
        old, _ = attach(server, "h1", cert("aa", "h1"))
        renewed, _ = connect(server, cert("bb", "h1"))  # a valid certificate for h1, but not the same
        with pytest.raises(RpcError):
            server._identity(renewed, identity("h1"))
        assert server.peers[old].current and not old.closed.is_set()
        again, _ = connect(server, cert("aa", "h1"))  # the agent itself, reconnected
        server._identity(again, identity("h1"))
        await asyncio.sleep(0)
        assert old.closed.is_set() and not server.peers[old].current and again.ready
        server._closed(old)  # the replaced session ending does not disconnect the agent
        assert [a["connected"] for a in server.agents_json()] == [True]

    asyncio.run(go())


# ---- a host speaks for its own endpoints ----------------------------------------------------


def status(endpoint: str, value: str = "ACTIVE") -> MO:
    return MO(Cls.PF_ENDPOINT_STATUS, "/s/", {Prop.ENDPOINT: endpoint, Prop.STATUS: value})


def test_an_agent_reports_the_status_of_the_endpoints_it_declared_only(tmp_path: Path) -> None:
    async def go() -> None:
        server = server_for(tmp_path)
        authority = server.authority
        await server.policy.rebuild({None, "acme"}, push=False)
        h1, _ = attach(server, "h1")
        h2, _ = attach(server, "h2")
        await report(server, h1, status("acme/web1"))  # not declared by anyone yet
        decl = declaration(server.policy.trees["acme"].mos, "acme", "web1", "tap1", "192.0.2.1")
        assert decl is not None
        await server._handle(
            h1, "endpoint_declare", [{"endpoint": [m.to_wire() for m in decl.all], "prr": 60}]
        )
        await web1(authority, status="BUILD", host="h1")
        await report(server, h2, status("acme/web1"), status("acme/web1", "ERROR"))
        [record], _ = authority.list(K["endpoint"], "acme", "web1")
        assert record["status"] == "BUILD"
        agents = {a["name"]: a for a in server.agents_json()}
        assert (agents["h1"]["reports_refused"], agents["h2"]["reports_refused"]) == (1, 2)
        await report(server, h1, status("acme/web1"))
        [record], _ = authority.list(K["endpoint"], "acme", "web1")
        assert record["status"] == "ACTIVE"
        # h2 cannot undeclare h1's endpoint either
        await server._handle(h2, "endpoint_undeclare", [{"subject": "EprL2Ep", "endpoint_uri": decl.l2.uri}])
        assert server.registry.declares("h1", ("acme", "web1"))

    asyncio.run(go())


def test_faults_counters_and_gateway_ports_are_filed_under_the_session_agent(tmp_path: Path) -> None:
    async def go() -> None:
        server = server_for(tmp_path)
        h1, _ = attach(server, "h1")
        await report(
            server,
            h1,
            MO(Cls.PF_FAULT, "/f/", {Prop.CODE: "x", "agent": "gw1", "name": "gw1"}),
            MO(Cls.PF_AGENT_COUNTERS, "/c/", {"agent": "gw1", "name": "gw1", "flows": 3}),
        )
        assert [f["agent"] for f in server.faults_json()] == ["h1"]
        [h1_view] = server.agents_json()
        assert h1_view["name"] == "h1" and h1_view["counters"]["flows"] == 3

    asyncio.run(go())


def test_a_session_that_never_identifies_is_closed(tmp_path: Path) -> None:
    async def go() -> None:
        server = server_for(tmp_path, keepalive=0.1)
        lurker, _ = connect(server)
        named, _ = attach(server, "h1")
        server.tick(server.peers[lurker].accepted + 0.5)
        await asyncio.sleep(0)
        assert lurker.closed.is_set() and not named.closed.is_set()

    asyncio.run(go())
