"""OpFlex end to end: a real authority process, agents over real TCP (and TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trustme

from policyfabric.agent.dryrun import DryRunAgent
from policyfabric.lab.authority import AuthorityProcess, authority_in
from policyfabric.opflex import wire
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.gbp import endpoint_uri, members_uri, uri_of
from policyfabric.opflex.mo import MO
from policyfabric.opflex.tls import client_context
from policyfabric.opflex.uri import space
from tests.conftest import Api, apply_scenario

pytestmark = pytest.mark.integration  # a real authority process, agents over real TCP

CONTRACT = "/PolicyUniverse/PolicySpace/acme/GbpeL24Classifier/http.web-in/"
EPG_WEB = uri_of("acme", "GbpEpGroup", "web")
EPG_G = uri_of("other", "GbpEpGroup", "g")


class Agent:
    """A dry-run agent (OpFlex client without dataplane) for tests, with a change log."""

    def __init__(self, name: str, peers: list[tuple[str, int]], endpoints: list[str], **kw: Any) -> None:
        self.client = PolicyClient(name, peers, backoff=(0.05, 0.5), keepalive=0.5, **kw)
        self.dry = DryRunAgent(self.client, [tuple(e.split("/", 1)) for e in endpoints])  # type: ignore[misc]
        self.updates: list[tuple[float, set[str]]] = []
        self.client.on_change = self._changed
        self.task: asyncio.Task[None] | None = None
        self.endpoints = endpoints

    def _changed(self, uris: set[str]) -> None:
        self.updates.append((time.monotonic(), uris))
        self.dry.sync()

    async def start(self) -> Agent:
        self.task = asyncio.create_task(self.client.run())
        for item in self.endpoints:
            self.client.resolve("PfEndpoint", endpoint_uri(*item.split("/", 1)))
        assert await self.client.settled(10)
        self.dry.sync()
        assert await self.client.settled(10)
        return self

    async def stop(self) -> None:
        await self.client.stop()
        if self.task is not None:
            self.task.cancel()

    def prop(self, uri: str, name: str) -> Any:
        mo = self.client.policy.get(uri)
        return mo.properties.get(name) if mo else None

    def changed_since(self, mark: int) -> set[str]:
        """The URIs of every update applied after the first ``mark`` ones."""
        return {u for _, uris in self.updates[mark:] for u in uris}


async def until(check: Callable[[], bool], timeout: float = 5.0) -> float:
    """Wait for ``check``; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def set_http_port(api: Api, port: int) -> int:
    """Change contract http's only rule to ``port`` through REST; returns the HTTP status."""
    contract = api.find("contracts", "acme", "http")
    assert contract is not None
    contract["rules"][0]["classifier"]["port"] = port
    return api.put("contracts", contract["id"], contract).status_code


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro())


# ---- the protocol, end to end --------------------------------------------


def test_a_rest_change_reaches_the_agents_that_resolved_it_and_no_others(
    opflex_authority: AuthorityProcess,
) -> None:
    api = Api(opflex_authority.url)
    api.ok("tenants", {"name": "other"})
    api.ok("l3-contexts", {"name": "v", "tenant": "other"})
    api.ok("bridge-domains", {"name": "b", "tenant": "other", "l3_context": "v"})
    api.ok("subnets", {"name": "s", "tenant": "other", "bridge_domain": "b", "cidr": "10.9.0.0/24"})
    api.ok("endpoint-groups", {"name": "g", "tenant": "other", "bridge_domain": "b"})
    api.ok("endpoints", {"name": "x1", "tenant": "other", "epg": "g", "ip": "10.9.0.5"})

    async def barrier(agent: Agent, intra: str) -> None:
        """A change to tenant other's EPG g, once ``agent`` has it."""
        g = api.find("endpoint-groups", "other", "g")
        assert g is not None
        assert api.put("endpoint-groups", g["id"], {**g, "intra_group": intra}).status_code == 200
        await until(lambda: agent.prop(EPG_G, "intraGroupPolicy") == intra)

    async def go() -> None:
        peers = [opflex_authority.opflex]
        web = await Agent("h1", peers, ["acme/web1"]).start()  # provides http
        app = await Agent("h2", peers, ["acme/app1"]).start()  # consumes http
        other = await Agent("h3", peers, ["other/x1"]).start()
        try:
            assert web.prop(CONTRACT, "dFromPort") == 80 and app.prop(CONTRACT, "dFromPort") == 80
            seen = {a.client.name: len(a.updates) for a in (web, app, other)}
            assert set_http_port(api, 8080) == 200
            took = await until(
                lambda: web.prop(CONTRACT, "dFromPort") == 8080 and app.prop(CONTRACT, "dFromPort") == 8080
            )
            print(f"contract change reached both agents in {took * 1000:.0f} ms")
            # not concerned, nothing sent: a later change that does concern h3 arrives alone (each
            # session's pushes go in revision order, so an earlier one would have come first)
            await barrier(other, "deny")
            # (with the tenant's revision, which goes with every update: what it then reports)
            assert other.changed_since(seen["h3"]) == {EPG_G, f"{space('other')}PfRevision/"}
            # A change to EPG web reaches h1 (its endpoint is in web) and h2 (web is the other side
            # of the contract h2's group consumes: h2 resolved it by need), not h3.
            seen = {a.client.name: len(a.updates) for a in (web, app, other)}
            epg = api.find("endpoint-groups", "acme", "web")
            assert epg is not None
            assert api.put("endpoint-groups", epg["id"], {**epg, "intra_group": "deny"}).status_code == 200
            await until(lambda: web.prop(EPG_WEB, "intraGroupPolicy") == "deny")
            await until(lambda: app.prop(EPG_WEB, "intraGroupPolicy") == "deny")
            await barrier(other, "allow")
            # (with the tenant's revision, which goes with every update: what it then reports)
            assert other.changed_since(seen["h3"]) == {EPG_G, f"{space('other')}PfRevision/"}
        finally:
            for a in (web, app, other):
                await a.stop()

    run(go)


def test_a_security_group_member_joining_or_leaving_is_a_small_update(
    opflex_authority: AuthorityProcess,
) -> None:
    """The agent resolves a group's member set (one ``GbpSubnet`` per member address, and the
    placeholder) and hears of a join or a leave as a few objects, whatever the group's size:
    never the membership again."""
    api = Api(opflex_authority.url)
    sg = members_uri("acme", "ssh-from-app")

    def member(i: int) -> dict[str, Any]:
        return {
            "name": f"m{i}",
            "tenant": "acme",
            "subnet": "app4",
            "ip": f"10.2.0.{100 + i}",
            "security_groups": ["ssh-from-app"],
        }

    for i in range(60):
        api.ok("endpoints", member(i))

    async def go() -> None:
        h1 = await Agent("h1", [opflex_authority.opflex], ["acme/vm9"]).start()
        updates: list[int] = []
        apply_policy = h1.client._apply_policy

        def spy(replace: list[MO], merge: list[MO], delete: list[str]) -> None:
            updates.append(len(json.dumps([m.to_wire() for m in replace + merge])) + len(json.dumps(delete)))
            apply_policy(replace, merge, delete)

        h1.client._apply_policy = spy  # type: ignore[method-assign]

        def size() -> int:
            mo = h1.client.policy.get(sg)
            return sum(1 for c in mo.children if not c.endswith("/none/")) if mo else 0

        try:
            assert size() == 62  # app1, vm9 and the 60
            api.ok("endpoints", member(60))
            await until(lambda: size() == 63)
            await asyncio.sleep(0.2)
            joined = sum(updates)
            updates.clear()
            gone = api.find("endpoints", "acme", "m7")
            assert gone is not None and api.delete("endpoints", gone["id"]).status_code == 200
            await until(lambda: size() == 62)
            await asyncio.sleep(0.2)
            left = sum(updates)
            print(f"join: {joined} bytes, leave: {left} bytes, for a group of 63")
            member_uri = sg + "GbpSubnet/m60.10.2.0.160/"
            assert h1.client.policy[member_uri].properties["address"] == "10.2.0.160"
            # the whole membership's URIs alone would be about 63 * 75 bytes
            assert 0 < joined < 2500 and 0 < left < 600
        finally:
            await h1.stop()

    run(go)


def test_endpoint_registry_binds_endpoints_and_reports_state(
    opflex_authority: AuthorityProcess, tmp_path: Path
) -> None:
    api = Api(opflex_authority.url)

    async def go() -> None:
        peers = [opflex_authority.opflex]
        h1 = await Agent("h1", peers, ["acme/web1"], state_dir=tmp_path / "h1").start()
        h2 = await Agent("h2", peers, ["acme/web2"]).start()  # same bridge domain
        try:
            web1 = api.find("endpoints", "acme", "web1")
            assert web1 is not None and web1["host"] == "h1" and web1["status"] == "BUILD"
            # h2 learns web1 (same bridge domain) from the registry, and vice versa
            assert any(m.properties.get("uuid") == "acme/web1" for m in h2.client.endpoints.values())
            await until(
                lambda: any(m.properties.get("uuid") == "acme/web2" for m in h1.client.endpoints.values())
            )
            # state_report: endpoint status, a fault, counters
            await h1.client.report(
                [
                    MO(
                        "PfEndpointStatus",
                        "/PfEndpointStatus/acme%2fweb1/",
                        {"endpoint": "acme/web1", "status": "ACTIVE"},
                    ),
                    MO(
                        "PfFault",
                        "/PfFault/render/",
                        {
                            "code": "render-failed",
                            "severity": "major",
                            "description": "bridge br-int missing",
                            "uri": EPG_WEB,
                        },
                    ),
                    MO("PfAgentCounters", "/PfAgentCounters/", {"flows": 42}),
                ]
            )
            assert api.find("endpoints", "acme", "web1")["status"] == "ACTIVE"  # type: ignore[index]
            agents = {a["name"]: a for a in api.get("/v1/agents").json()["items"]}
            assert agents["h1"]["connected"] and agents["h1"]["endpoints"] == ["acme/web1"]
            assert agents["h1"]["counters"] == {"flows": 42}
            faults = api.get("/v1/faults").json()["items"]
            assert [(f["agent"], f["code"], f["message"]) for f in faults] == [
                ("h1", "render-failed", "bridge br-int missing")
            ]
            # undeclare -> DOWN, and h2 hears about it
            h1.dry.endpoints.clear()  # the interface is unplugged: the agent would not declare it again
            for uri in list(h1.client.declared):
                h1.client.undeclare(uri)
            await until(lambda: api.find("endpoints", "acme", "web1")["status"] == "DOWN")  # type: ignore[index]
            await until(
                lambda: not any(m.properties.get("uuid") == "acme/web1" for m in h2.client.endpoints.values())
            )
        finally:
            await h1.stop()
            await h2.stop()
        cache = json.loads((tmp_path / "h1" / "opflex-cache.json").read_text())
        # (its group was unresolved with the endpoint unplugged: what the agent follows is by need)
        assert cache["version"] > 0 and any(m["subject"] == "PfEndpoint" for m in cache["policy"])

    run(go)


def test_declarations_expire_with_their_lease(opflex_authority: AuthorityProcess) -> None:
    api = Api(opflex_authority.url)

    async def go() -> None:
        peers = [opflex_authority.opflex]
        h2 = await Agent("h2", peers, ["acme/web2"]).start()
        h1 = await Agent("h1", peers, ["acme/web1"], prr=2).start()
        try:
            assert api.find("endpoints", "acme", "web1")["status"] == "BUILD"  # type: ignore[index]
            h1.client._refresh = _never  # type: ignore[method-assign]  # a lost agent: never renews
            h1.client._stop = True
            assert h1.client.session is not None
            h1.client.session.writer.transport.abort()  # vanish without undeclaring
            took = await until(lambda: api.find("endpoints", "acme", "web1")["status"] == "DOWN", timeout=8)  # type: ignore[index]
            assert took >= 0.5  # it waited for the lease, it was not an undeclare
            await until(
                lambda: not any(m.properties.get("uuid") == "acme/web1" for m in h2.client.endpoints.values())
            )
        finally:
            await h2.stop()
            await h1.stop()

    run(go)


async def _never() -> None:
    await asyncio.sleep(3600)


def test_agents_resync_after_an_authority_restart(opflex_authority: AuthorityProcess) -> None:
    api = Api(opflex_authority.url)

    async def go() -> None:
        h1 = await Agent("h1", [opflex_authority.opflex], ["acme/web1"]).start()
        try:
            connects = h1.client.connects
            opflex_authority.kill()
            await until(lambda: h1.client.session is None)
            opflex_authority.start()
            # A change made as soon as the authority is back, maybe before the agent reconnects.
            assert set_http_port(api, 8443) == 200
            await until(lambda: h1.prop(CONTRACT, "dFromPort") == 8443, timeout=10)
            assert h1.client.connects == connects + 1
            await until(lambda: api.find("endpoints", "acme", "web1")["host"] == "h1")  # type: ignore[index]
        finally:
            await h1.stop()

    run(go)


def test_agents_fail_over_between_authority_addresses(tmp_path: Path) -> None:
    first = authority_in(tmp_path / "a", extra=["--keepalive", "0.5"])
    second = authority_in(tmp_path / "b", extra=["--keepalive", "0.5"])

    async def go() -> None:
        h1 = await Agent("h1", [first.opflex, second.opflex], ["acme/web1"]).start()
        try:
            assert h1.client.connected_to == first.opflex
            first.kill()
            await until(lambda: h1.client.connected_to == second.opflex, timeout=10)
            api = Api(second.url)
            await until(lambda: (api.find("endpoints", "acme", "web1") or {}).get("host") == "h1")
            set_http_port(api, 9090)
            await until(lambda: h1.prop(CONTRACT, "dFromPort") == 9090)
        finally:
            await h1.stop()

    try:
        for server in (first, second):
            server.start()
            apply_scenario(server)
        run(go)
    finally:  # also when starting either fails: nothing outlives the test
        first.kill()
        second.kill()


# ---- TLS -------------------------------------------------------------------


def test_tls_with_client_certificates(tmp_path: Path) -> None:
    ca, rogue = trustme.CA(), trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    paths = {}
    for name, blob in (
        ("ca", ca.cert_pem),
        ("cert", server_cert.cert_chain_pems[0]),
        ("key", server_cert.private_key_pem),
    ):
        paths[name] = tmp_path / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    server = authority_in(
        tmp_path / "a",
        extra=[
            "--tls-cert",
            str(paths["cert"]),
            "--tls-key",
            str(paths["key"]),
            "--tls-ca",
            str(paths["ca"]),
        ],
    )
    server.start()
    apply_scenario(server)

    def context(issuer: trustme.CA | None) -> ssl.SSLContext:
        ctx = client_context(None, None, None)
        ca.configure_trust(ctx)
        if issuer is not None:
            issuer.issue_cert("h1").configure_cert(ctx)  # the agent's name: see test_opflex_trust_e2e.py
        return ctx

    async def go() -> None:
        good = await Agent("h1", [server.opflex], ["acme/web1"], tls=context(ca)).start()
        assert EPG_WEB in good.client.policy
        await good.stop()
        for issuer in (rogue, None):  # a certificate from another CA, or none at all
            bad = PolicyClient("h9", [server.opflex], tls=context(issuer), backoff=(0.05, 0.1))
            task = asyncio.create_task(bad.run())
            await asyncio.sleep(1.0)
            assert bad.connects == 0 and not bad.ready.is_set()
            await bad.stop()
            task.cancel()

    try:
        run(go)
    finally:
        server.kill()


# ---- robustness, with raw sockets ---------------------------------------------


class Raw:
    """A hand-driven OpFlex peer."""

    def __init__(self, addr: tuple[str, int]) -> None:
        self.sock = socket.create_connection(addr, timeout=5)
        self.decoder = wire.FrameDecoder()
        self.queue: list[bytes] = []

    def send(self, data: bytes | dict[str, Any]) -> None:
        self.sock.sendall(data if isinstance(data, bytes) else wire.encode(data))

    def recv(self) -> dict[str, Any] | None:
        """The next message, or None at EOF."""
        while not self.queue:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:  # closed while our data was unread: still a close
                return None
            if not chunk:
                return None
            self.queue += self.decoder.feed(chunk)
        return dict(json.loads(self.queue.pop(0)))

    def reply_to(self, method: str) -> dict[str, Any] | None:
        """Skip the server's echo requests; return the next reply."""
        while True:
            msg = self.recv()
            if msg is None or "method" not in msg:
                return msg

    def hello(self, name: str = "raw") -> dict[str, Any]:
        self.send(
            wire.request(
                "send_identity",
                1,
                [
                    {
                        "proto_version": "1.0",
                        "name": name,
                        "domain": "policyfabric",
                        "my_role": ["policy_element"],
                    }
                ],
            )
        )
        reply = self.reply_to("send_identity")
        assert reply is not None and "result" in reply, reply
        return dict(reply["result"])


def test_handshake_lists_the_dialed_address(opflex_authority: AuthorityProcess) -> None:
    raw = Raw(opflex_authority.opflex)
    result = raw.hello()
    assert result["peers"][0]["connectivity_info"] == f"127.0.0.1:{opflex_authority.opflex_port}"
    assert {"policy_repository", "endpoint_registry", "observer"} <= set(result["my_role"])
    other = Raw(opflex_authority.opflex)
    other.send(
        wire.request(
            "send_identity", 2, [{"name": "x", "domain": "elsewhere", "my_role": ["policy_element"]}]
        )
    )
    assert other.reply_to("send_identity")["error"]["code"] == "EDOMAIN"  # type: ignore[index]


def test_bad_input_gets_an_error_or_a_clean_close_and_other_sessions_live_on(
    opflex_authority: AuthorityProcess,
) -> None:
    addr = opflex_authority.opflex
    api = Api(opflex_authority.url)

    async def go() -> None:
        good = await Agent("good", [addr], ["acme/web1"]).start()
        try:
            raw = Raw(addr)
            raw.send(
                wire.request(
                    "policy_resolve", 1, [{"subject": "GbpEpGroup", "policy_uri": EPG_WEB, "prr": 10}]
                )
            )
            first = raw.reply_to("policy_resolve")
            assert first is not None and first["error"]["code"] == "ESTATE"
            assert raw.recv() is None  # closed after ESTATE

            raw = Raw(addr)
            raw.hello()
            raw.send(b"{this is not json\0")
            assert raw.reply_to("?")["error"]["code"] == "ERROR"  # type: ignore[index]
            raw.send(wire.request("frobnicate", 2, [{}]))
            assert raw.reply_to("frobnicate")["error"]["code"] == "EUNSUPPORTED"  # type: ignore[index]
            raw.send(wire.request("policy_resolve", 3, [{"subject": 5, "policy_uri": [], "prr": "soon"}]))
            err = raw.reply_to("policy_resolve")["error"]  # type: ignore[index]
            assert err["code"] == "ERROR" and "Malformed message" in err["message"]
            raw.send(
                wire.request("policy_resolve", 4, [{"policy_ident": {"name": "x"}, "subject": "GbpEpGroup"}])
            )
            assert raw.reply_to("policy_resolve")["error"]["code"] == "EUNSUPPORTED"  # type: ignore[index]
            raw.send({"id": ["policy_update", 999], "result": {}})  # a reply nobody asked for: ignored
            raw.send(wire.request("echo", 5, [17]))
            assert raw.reply_to("echo") == {"id": ["echo", 5], "result": [17]}  # the session lives
            raw.send(
                wire.request(
                    "policy_resolve", 6, [{"subject": "GbpEpGroup", "policy_uri": EPG_WEB, "prr": 10}]
                )
            )
            resolved = raw.reply_to("policy_resolve")
            assert resolved is not None and resolved["result"]["policy"][0]["uri"] == EPG_WEB

            raw = Raw(addr)
            raw.hello()
            raw.send({"method": "echo", "params": []})  # a notification: refused, closed
            assert raw.reply_to("?")["error"]["code"] == "ERROR"  # type: ignore[index]
            assert raw.recv() is None

            raw = Raw(addr)
            raw.hello()
            with contextlib.suppress(OSError):  # the server may close before we finish sending
                raw.send(b"x" * (5 * 1024 * 1024))  # over the 4 MiB frame limit
            reply = raw.reply_to("?")
            assert reply is None or (reply["error"]["code"] == "ERROR" and raw.recv() is None)

            # A half-open peer (says nothing, answers no echo) is dropped after 4 x keepalive.
            raw = Raw(addr)
            raw.hello()
            start = time.monotonic()
            while raw.recv() is not None:
                pass
            assert 1.0 < time.monotonic() - start < 5

            # Through all of it, the well-behaved agent is served.
            set_http_port(api, 81)
            await until(lambda: good.prop(CONTRACT, "dFromPort") == 81)
        finally:
            await good.stop()

    run(go)
    assert "Traceback" not in opflex_authority.log.read_text()


def test_a_peer_that_stops_reading_is_dropped_and_others_are_served(
    opflex_authority: AuthorityProcess,
) -> None:
    api = Api(opflex_authority.url)
    space = "/PolicyUniverse/PolicySpace/acme/"

    async def go() -> None:
        good = await Agent("good", [opflex_authority.opflex], ["acme/web1"]).start()
        try:
            raw = Raw(opflex_authority.opflex)
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.hello()
            request = wire.request(
                "policy_resolve", 1, [{"subject": "PolicySpace", "policy_uri": space, "prr": 60}]
            )

            def flood() -> None:
                with contextlib.suppress(OSError):
                    for _ in range(2000):  # ~40 kB of answer each, never read
                        raw.send(request)

            start = time.monotonic()
            flooding = asyncio.create_task(asyncio.to_thread(flood))
            # Meanwhile the authority keeps serving the others.
            await asyncio.sleep(0.5)
            await asyncio.to_thread(set_http_port, api, 82)
            await until(lambda: good.prop(CONTRACT, "dFromPort") == 82)
            # ... and drops the one that does not read (after 2 x keepalive of stalled writes).
            await flooding
            log = opflex_authority.log
            await until(lambda: "stopped reading" in log.read_text(), timeout=10)
            assert time.monotonic() - start < 15
            raw.sock.close()
        finally:
            await good.stop()

    run(go)


def test_dry_run_agent_prints_what_it_resolved_and_uses_its_cache_when_alone(
    opflex_authority: AuthorityProcess, tmp_path: Path
) -> None:
    host, port = opflex_authority.opflex
    cmd = [
        sys.executable,
        "-m",
        "policyfabric",
        "agent",
        "--host",
        "h1",
        "--dry-run",
        "--once",
        "--opflex",
        f"{host}:{port}",
        "--endpoint",
        "acme/web1",
        "--state-dir",
        str(tmp_path / "h1"),
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    )
    assert done.returncode == 0, done.stderr
    assert "GbpEpGroup" in done.stdout and "GbpeL24Classifier" in done.stdout
    opflex_authority.kill()
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    )
    assert done.returncode == 1 and "cached policy" in done.stdout and "GbpEpGroup" in done.stdout


def test_a_refused_declaration_is_tried_again_and_taken_once_the_holder_is_gone(
    opflex_authority: AuthorityProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """h2 declares an endpoint h1 holds: refused (h1's session is live). Once h1 is gone, h2's
    client tries again on its own within seconds (not at its lease refresh, prr/3 away: minutes
    by default) and takes it; each refused declaration is logged once, however often retried."""
    api = Api(opflex_authority.url)
    api.ok("endpoints", {"name": "roamer", "tenant": "acme", "subnet": "app4", "ip": "10.2.0.222"})

    async def go() -> None:
        h1 = await Agent("h1", [opflex_authority.opflex], ["acme/roamer"]).start()
        await until(lambda: (api.find("endpoints", "acme", "roamer") or {}).get("host") == "h1")
        h2 = await Agent("h2", [opflex_authority.opflex], ["acme/roamer"]).start()
        try:
            await asyncio.sleep(1.5)  # refused at least once, and tried again
            assert (api.find("endpoints", "acme", "roamer") or {}).get("host") == "h1"
            await h1.stop()
            took = await until(
                lambda: (api.find("endpoints", "acme", "roamer") or {}).get("host") == "h2", 40
            )
            print(f"taken over {took:.1f} s after the holder left")
        finally:
            await h2.stop()
        refusals = [r.getMessage() for r in caplog.records if "(retrying)" in r.getMessage()]
        assert len(refusals) == len(set(refusals)) == 2, refusals  # its L2 and its L3: once each

    with caplog.at_level("INFO"):
        run(go)
