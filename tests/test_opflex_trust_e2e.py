"""The OpFlex edge's trust boundary, end to end: a real authority process, agents and hand-driven
peers over TCP and mutual TLS. Each test replays a finding of the trust-boundary review (agent
names bound to certificates, one live session per name, the store kept readable whatever an
agent sends, protocol edge cases answered, a stalled peer delaying nobody, read-your-writes)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from policyfabric.lab.authority import AuthorityProcess, authority_in
from policyfabric.opflex import wire
from policyfabric.opflex.gbp import endpoint_uri
from policyfabric.opflex.tls import client_context
from tests.conftest import Api, apply_scenario
from tests.test_opflex_e2e import (
    CONTRACT,
    Agent,
    Raw,
    run,
    set_http_port,
    until,
)

pytestmark = pytest.mark.integration


class RawTls(Raw):
    """A hand-driven peer over TLS."""

    def __init__(self, addr: tuple[str, int], ctx: ssl.SSLContext) -> None:
        super().__init__(addr)
        self.sock = ctx.wrap_socket(self.sock)

    def recv(self) -> dict[str, Any] | None:
        try:
            return super().recv()
        except OSError:  # the TLS layer reports a close as an error
            return None


def identify(raw: Raw, name: str, xid: int = 1) -> dict[str, Any]:
    """Send ``send_identity`` as ``name``; the reply (a result or an error)."""
    ident = {"proto_version": "1.0", "name": name, "domain": "policyfabric", "my_role": ["policy_element"]}
    raw.send(wire.request("send_identity", xid, [ident]))
    reply = raw.reply_to("send_identity")
    assert reply is not None
    return reply


def alive(raw: Raw, xid: int) -> bool:
    """Whether the session still answers an echo."""
    raw.send(wire.request("echo", xid, [xid]))
    return raw.reply_to("echo") == {"id": ["echo", xid], "result": [xid]}


def agents(api: Api) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in api.get("/v1/agents").json()["items"]}


# ---- identity --------------------------------------------------------------------------------


def test_with_mutual_tls_a_name_is_bound_to_its_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    paths = {}
    server_cert = ca.issue_cert("127.0.0.1")
    for name, blob in (
        ("ca", ca.cert_pem),
        ("cert", server_cert.cert_chain_pems[0]),
        ("key", server_cert.private_key_pem),
    ):
        paths[name] = str(tmp_path / f"{name}.pem")
        blob.write_to_path(paths[name])
    extra = [
        "--tls-cert",
        paths["cert"],
        "--tls-key",
        paths["key"],
        "--tls-ca",
        paths["ca"],
        "--keepalive",
        "0.5",
    ]
    server = authority_in(tmp_path / "a", extra=extra)
    server.start()
    apply_scenario(server)
    api = Api(server.url)
    h1_cert, other_h1_cert = ca.issue_cert("h1"), ca.issue_cert("h1")

    def context(cert: trustme.LeafCert) -> ssl.SSLContext:
        ctx = client_context(None, None, None)
        ca.configure_trust(ctx)
        cert.configure_cert(ctx)
        return ctx

    async def go() -> None:
        h1 = await Agent("h1", [server.opflex], ["acme/web1"], tls=context(h1_cert)).start()
        try:
            impostor = RawTls(server.opflex, context(h1_cert))
            refused = identify(impostor, "h2")  # h1's certificate calling itself h2
            assert refused["error"]["code"] == "ERROR" and "not in the client certificate" in str(refused)
            assert alive(impostor, 2)  # refused, not dropped: it may say who it really is
            rival = RawTls(server.opflex, context(other_h1_cert))  # a valid h1 certificate, another key
            refused = identify(rival, "h1")
            assert "already has a live session" in refused["error"]["message"]
            await asyncio.sleep(1.5)  # h1 answered the probe: it keeps its session
            assert h1.client.connects == 1 and agents(api)["h1"]["connected"] and "h2" not in agents(api)
            assert await asyncio.to_thread(set_http_port, api, 8080) == 200
            await until(lambda: h1.prop(CONTRACT, "dFromPort") == 8080)
            # the same certificate is the agent itself, reconnected: it takes the name over
            again = RawTls(server.opflex, context(h1_cert))
            assert "result" in identify(again, "h1")
            await until(lambda: h1.client.connects == 2)  # h1 lost its session, came back, took it again
            assert await asyncio.to_thread(again.recv) is None
        finally:
            await h1.stop()

    try:
        run(go)
        log = server.log.read_text()
        assert "identity h2 refused" in log and "Traceback" not in log
    finally:
        server.kill()


def test_on_plain_tcp_a_live_agent_cannot_be_pushed_off(opflex_authority: AuthorityProcess) -> None:
    api = Api(opflex_authority.url)

    async def go() -> None:
        gw1 = await Agent("gw1", [opflex_authority.opflex], ["acme/web1"]).start()
        intruder = Raw(opflex_authority.opflex)
        try:
            assert "already has a live session" in identify(intruder, "GW1")["error"]["message"]
            await asyncio.sleep(1.0)  # two keepalive periods: the probe was answered
            assert gw1.client.connects == 1 and agents(api)["gw1"]["connected"]
        finally:
            await gw1.stop()
        # once the agent is gone, the name is free (on the same session: refusals keep it)
        await until(lambda: not agents(api)["gw1"]["connected"])
        assert "result" in identify(intruder, "gw1", 5)

    run(go)


def _resolve(raw: Raw, xid: int = 3) -> dict[str, Any] | None:
    raw.send(wire.request("policy_resolve", xid, [{"subject": "PolicySpace", "policy_uri": "/", "prr": 60}]))
    return raw.reply_to("policy_resolve")


# ---- nothing an agent sends breaks the authority ---------------------------------------------------


def test_an_fqdn_host_binds_endpoints_that_delete_and_survive_a_restart(
    opflex_authority: AuthorityProcess,
) -> None:
    api = Api(opflex_authority.url)
    # an endpoint the intent does not pin to a host (the example pins its own to h1 and h2)
    api.ok("endpoints", {"name": "fq1", "tenant": "acme", "epg": "web", "ip": "10.1.0.77"})

    async def go() -> None:
        host = await Agent("Compute-1.Example.com", [opflex_authority.opflex], ["acme/fq1"]).start()
        try:
            await until(
                lambda: (api.find("endpoints", "acme", "fq1") or {}).get("host") == "compute-1.example.com"
            )
        finally:
            await host.stop()

    run(go)
    fq1 = api.find("endpoints", "acme", "fq1")
    assert fq1 is not None and api.delete("endpoints", fq1["id"]).status_code == 200
    opflex_authority.kill()
    opflex_authority.start()  # raises if it does not start
    assert api.find("endpoints", "acme", "fq1") is None


def test_protocol_edge_cases_get_an_error_reply_and_the_session_lives(
    opflex_authority: AuthorityProcess,
) -> None:
    raw = Raw(opflex_authority.opflex)
    raw.hello("edge")
    deep = b"[" * 1000 + b"]" * 1000
    frames = [
        b'{"id":["echo",10],"method":"echo","params":[' + deep + b"]}",
        b'{"id":["echo",11],"method":"echo","params":[NaN]}',
        b'{"id":["policy_resolve",12],"method":"policy_resolve","params":[{"subject":"PolicySpace",'
        b'"policy_uri":"/PolicyUniverse/PolicySpace/acme/","prr":1e400}]}',
        b'{"id":["policy_resolve",13],"method":"policy_resolve","params":[{"subject":"PolicySpace",'
        b'"policy_uri":"/PolicyUniverse/PolicySpace/acme/","prr":1' + b"0" * 400 + b"}]}",
        wire.encode(wire.request("send_identity", 14, [{"name": "other", "domain": "policyfabric"}]))[:-1],
        wire.encode(
            wire.request(
                "endpoint_declare",
                15,
                [{"prr": 60, "endpoint": [_l2({"uuid": "acme/web1", "interfaceName": "x" * 100_000})]}],
            )
        )[:-1],
    ]
    for i, frame in enumerate(frames):
        raw.send(frame + b"\0")
        reply = raw.reply_to("?")
        assert reply is not None and "error" in reply, (i, reply)
        assert reply["error"]["code"] in ("ERROR", "ESTATE") and reply["error"]["message"] != "internal error"
        assert alive(raw, 100 + i), f"frame {i} dropped the session"
    api = Api(opflex_authority.url)
    web1 = api.find("endpoints", "acme", "web1")
    assert web1 is not None and web1.get("interface") is None
    assert "Traceback" not in opflex_authority.log.read_text()


def _l2(props: dict[str, Any]) -> dict[str, Any]:
    return {
        "subject": "EprL2Ep",
        "uri": "/EprL2Universe/EprL2Ep/%2fbd%2f/02%3a00%3a00%3a00%3a00%3a01/",
        "properties": [{"name": k, "data": v} for k, v in props.items()],
        "children": [],
        "parent_subject": "EprL2Universe",
        "parent_uri": "/EprL2Universe/",
        "parent_relation": "EprL2Ep",
    }


# ---- a stalled peer delays nobody ---------------------------------------------------------------


def test_a_peer_that_never_reads_does_not_delay_the_pushes_of_others(tmp_path: Path) -> None:
    """With a keepalive of 5 s the stalled peer is only dropped after its writes stall for 10 s:
    until then, the others' pushes must go at their normal pace, not wait for it."""
    server = authority_in(tmp_path / "a", extra=["--keepalive", "5"])
    server.start()
    apply_scenario(server)
    api = Api(server.url)
    space = "/PolicyUniverse/PolicySpace/acme/"

    async def push_times(agent: Agent, ports: range) -> list[float]:
        took = []
        for port in ports:
            start = time.monotonic()
            assert await asyncio.to_thread(set_http_port, api, port) == 200
            await until(lambda port=port: agent.prop(CONTRACT, "dFromPort") == port)  # type: ignore[misc]
            took.append(time.monotonic() - start)
        return took

    async def go() -> None:
        good = await Agent("good", [server.opflex], ["acme/web1"]).start()
        stalled = Raw(server.opflex)
        try:
            normal = await push_times(good, range(8000, 8005))
            stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.hello("stalled")
            subscribe = wire.request(
                "policy_resolve", 1, [{"subject": "PolicySpace", "policy_uri": space, "prr": 60}]
            )

            def flood() -> None:  # ~40 kB of answer each, never read: its buffers fill up
                with contextlib.suppress(OSError):
                    for _ in range(400):
                        stalled.send(subscribe)

            await asyncio.to_thread(flood)
            during = await push_times(good, range(8100, 8110))
            before, stalled_ms = statistics.median(normal) * 1000, statistics.median(during) * 1000
            print(
                f"push to a good agent: median {before:.0f} ms before, "
                f"{stalled_ms:.0f} ms (max {max(during) * 1000:.0f}) with a stalled peer"
            )
            assert max(during) < 1.0  # writes to the stalled peer stall for 10 s before it is dropped
            assert "stopped reading" not in server.log.read_text()  # it was still there all along
        finally:
            stalled.sock.close()
            await good.stop()

    try:
        run(go)
    finally:
        server.kill()


# ---- read-your-writes --------------------------------------------------------------------------------


def test_a_resolve_right_after_an_acknowledged_write_sees_it(opflex_authority: AuthorityProcess) -> None:
    api = Api(opflex_authority.url)
    raw = Raw(opflex_authority.opflex)
    raw.hello("reader")
    seen = 0
    for i in range(50):
        assert set_http_port(api, 9000 + i) == 200
        raw.send(
            wire.request(
                "policy_resolve",
                100 + i,
                [{"subject": "GbpeL24Classifier", "policy_uri": CONTRACT, "prr": 60}],
            )
        )
        reply = raw.reply_to("policy_resolve")
        assert reply is not None
        # the classifier, and the tenant's revision that goes with any part of it (PfRevision)
        [mo] = [m for m in reply["result"]["policy"] if m["subject"] != "PfRevision"]
        seen += {"name": "dFromPort", "data": 9000 + i} in mo["properties"]
    assert seen == 50
    assert endpoint_uri("acme", "web1")  # the tenant is the example's
