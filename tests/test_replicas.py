"""Authority replicas on one etcd cluster (a real 3-member one): a write acknowledged by one
replica is read at once on another and pushed by every replica to its own agents; the
follower that feeds other replicas' commits to a replica catches up after a broken stream.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policyfabric.authority.opflex import OpflexServer
from policyfabric.authority.opflex.registry import EndpointStateWriter
from policyfabric.authority.service import Authority, EndpointState
from policyfabric.lab.authority import AuthorityProcess, authority_in
from policyfabric.lab.etcd import EtcdCluster
from policyfabric.lab.etcd import missing as etcd_missing
from policyfabric.model import kinds as k
from policyfabric.model import objects as o
from policyfabric.opflex import wire
from policyfabric.opflex.gbp import endpoint_uri
from policyfabric.opflex.mo import MO
from policyfabric.store.base import Change
from policyfabric.store.etcd import EtcdStore
from policyfabric.store.etcd_follow import LogFollower
from policyfabric.store.etcd_shared import EtcdShared
from tests.conftest import Api, apply_scenario, etcd_prefix
from tests.test_etcd_store import endpoint, setup_tenant
from tests.test_opflex_e2e import CONTRACT, Agent, Raw, run, set_http_port, until
from tests.test_opflex_trust_e2e import alive

pytestmark = [
    pytest.mark.integration,  # etcd members and authorities are processes
    pytest.mark.xdist_group("etcd"),
    pytest.mark.skipif(etcd_missing() is not None, reason=str(etcd_missing())),
]


def replica(directory: Path, url: str, *extra: str) -> AuthorityProcess:
    return authority_in(directory, extra=["--store", url, "--keepalive", "0.5", *extra])


@pytest.fixture
def two_replicas(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> Iterator[tuple[AuthorityProcess, AuthorityProcess]]:
    """Replicas A and B on one prefix of the cluster, the example scenario applied through A."""
    url = etcd_cluster.url + etcd_prefix()
    a, b = replica(tmp_path / "a", url), replica(tmp_path / "b", url)
    try:
        a.start()
        b.start()
        apply_scenario(a)
        yield a, b
    finally:
        a.kill()
        b.kill()


def test_a_write_on_one_replica_is_read_at_once_and_pushed_by_the_other(
    two_replicas: tuple[AuthorityProcess, AuthorityProcess],
) -> None:
    a, b = two_replicas
    api_a, api_b = Api(a.url), Api(b.url)

    async def go() -> None:
        # subscribed on B only; the change is written on A
        web = await Agent("h1", [b.opflex], ["acme/web1"]).start()
        try:
            assert web.prop(CONTRACT, "dFromPort") == 80
            for port in (8080, 8081, 8082):
                assert set_http_port(api_a, port) == 200
                contract = api_b.find("contracts", "acme", "http")  # read at once on B, no wait
                assert contract is not None and contract["rules"][0]["classifier"]["port"] == port
                took = await until(lambda: web.prop(CONTRACT, "dFromPort") == port, timeout=5)  # noqa: B023
                print(f"a write on A reached an agent of B in {took * 1000:.0f} ms")
            # and a write on B still reaches B's agent (its own commit, not the follower's)
            assert set_http_port(api_b, 9090) == 200
            await until(lambda: web.prop(CONTRACT, "dFromPort") == 9090, timeout=5)
        finally:
            await web.stop()

    run(go)


def knows(agent: Agent, endpoint: str) -> bool:
    """Whether ``agent`` holds a registry entry of ``endpoint`` (TENANT/NAME)."""
    return any(m.properties.get("uuid") == endpoint for m in agent.client.endpoints.values())


def test_declarations_made_through_one_replica_reach_agents_of_the_other_and_outlive_it(
    two_replicas: tuple[AuthorityProcess, AuthorityProcess],
) -> None:
    a, b = two_replicas

    async def go() -> None:
        h1 = await Agent("h1", [a.opflex], ["acme/web1"]).start()  # through A
        h2 = await Agent("h2", [b.opflex], ["acme/web2"]).start()  # through B, same bridge domain
        h3: Agent | None = None
        try:
            await until(lambda: knows(h2, "acme/web1"), timeout=15)  # B's registry has A's declaration
            await until(lambda: knows(h1, "acme/web2"), timeout=15)  # and A's has B's, pushed to h1
            # an undeclare through A reaches B's agents
            h1.dry.endpoints.clear()
            for uri in list(h1.client.declared):
                h1.client.undeclare(uri)
            await until(lambda: not knows(h2, "acme/web1"), timeout=15)
            h1.dry.endpoints.append(("acme", "web1"))
            h1.dry.sync()
            await until(lambda: knows(h2, "acme/web1"), timeout=15)
            # A dies: its declarations stay (their lease is their prr, not A's life); a newcomer
            # on B is answered with them before h1 has declared anything again
            h1.client._stop = True  # h1 does not fail over here: what B has is what A shared
            a.kill()
            h3 = await Agent("h3", [b.opflex], ["acme/web2"]).start()  # (its claim of web2 is refused)
            assert knows(h3, "acme/web1") and knows(h3, "acme/web2")
        finally:
            for agent in (h1, h2, h3):
                if agent is not None:
                    await agent.stop()

    run(go)


async def _servers(stores: list[EtcdStore]) -> list[OpflexServer]:
    """In-process OpFlex servers on ``stores`` (one prefix), sharing through etcd, on free ports.
    No change-log follower: a replica learns only what the shared keys tell it."""
    servers = [OpflexServer(Authority(s), shared=EtcdShared(s, ttl=2), keepalive=0.5) for s in stores]
    for server in servers:
        await server.start("127.0.0.1", 0)
    return servers


def _address(server: OpflexServer) -> tuple[str, int]:
    assert isinstance(server._server, asyncio.Server)
    host, port = server._server.sockets[0].getsockname()[:2]
    return str(host), int(port)


def test_a_withdrawal_learnt_from_another_replica_is_pushed_by_itself(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """h1 declares web1 through A, h2 (same bridge domain) is served by B. When h1 undeclares it,
    B learns it from the shared keys alone and must push the delete to h2 by itself: here nothing
    else (no change-log follower, no other write) would make B flush. A withdrawal that merely
    waits for some other flush is what made the two-process test above flaky under load."""
    prefix = etcd_prefix()
    with replica(tmp_path / "w", etcd_cluster.url + prefix, "--opflex-listen", "off") as writer:
        apply_scenario(writer)

    async def go() -> None:
        stores = [EtcdStore(etcd_cluster.endpoints, prefix=prefix) for _ in range(2)]
        a, b = await _servers(stores)
        h1 = h2 = None
        try:
            h1 = await Agent("h1", [_address(a)], ["acme/web1"]).start()
            h2 = await Agent("h2", [_address(b)], ["acme/web2"]).start()
            await until(lambda: knows(h2, "acme/web1"), timeout=10)
            for _ in range(3):  # withdrawn and declared again, each reaching h2
                h1.dry.endpoints.clear()
                for uri in list(h1.client.declared):
                    h1.client.undeclare(uri)
                await until(lambda: not knows(h2, "acme/web1"), timeout=5)
                h1.dry.endpoints.append(("acme", "web1"))
                h1.dry.sync()
                await until(lambda: knows(h2, "acme/web1"), timeout=5)
        finally:
            for agent in (h1, h2):
                if agent is not None:
                    await agent.stop()
            await a.stop()
            await b.stop()
            for store in stores:
                store.close()

    asyncio.run(go())


def test_an_agent_lost_with_its_replica_has_its_endpoints_set_down_when_its_lease_ends(
    two_replicas: tuple[AuthorityProcess, AuthorityProcess],
) -> None:
    """h1 (prr 2 s) declared web1 through A; A and h1 die together. Nobody renews the declaration:
    when its lease ends, B (which holds it too) undeclares it and sets web1 DOWN, as A would have."""
    a, b = two_replicas
    api = Api(b.url)

    def status() -> str | None:
        return (api.find("endpoints", "acme", "web1") or {}).get("status")

    async def go() -> None:
        h1 = await Agent("h1", [a.opflex], ["acme/web1"], prr=2).start()
        try:
            assert status() == "BUILD"
            h1.client._stop = True  # it dies with A: no failover, no renewal
            h1.client._refresh = _never  # type: ignore[method-assign]
            a.kill()
            took = await until(lambda: status() == "DOWN", timeout=30)
            print(f"web1 DOWN {took:.1f} s after A and h1 died")
        finally:
            await h1.stop()

    run(go)


async def _never() -> None:
    await asyncio.sleep(3600)


def test_an_agent_live_on_one_replica_keeps_its_endpoints_against_a_claim_through_another(
    two_replicas: tuple[AuthorityProcess, AuthorityProcess],
) -> None:
    """h1 holds web1 through A; h2 declares web1 through B, where h1 has no session. Only the
    liveness the replicas share tells B that h1 is alive: the claim is refused."""
    a, b = two_replicas
    api = Api(b.url)

    def host() -> str | None:
        return (api.find("endpoints", "acme", "web1") or {}).get("host")

    async def go() -> None:
        h1 = await Agent("h1", [a.opflex], ["acme/web1"]).start()
        h2 = await Agent("h2", [b.opflex], ["acme/web2"]).start()
        try:
            await until(lambda: knows(h2, "acme/web1"), timeout=15)
            assert not h2.client._refused and host() == "h1"
            h2.client.resolve("PfEndpoint", endpoint_uri("acme", "web1"))  # what its declaration needs
            assert await h2.client.settled(10)
            h2.dry.endpoints.append(("acme", "web1"))
            h2.dry.sync()
            await until(lambda: bool(h2.client._refused) or host() != "h1", timeout=5)
            assert host() == "h1" and h2.client._refused
        finally:
            await h1.stop()
            await h2.stop()

    run(go)


def identify_live(raw: Raw, name: str, xid: int = 1) -> dict[str, Any]:
    """``send_identity`` as ``name``, answering the server's echoes meanwhile, as a live peer
    does (the answer may take a replica's lease: a silent peer would be dropped first)."""
    ident = {"proto_version": "1.0", "name": name, "domain": "policyfabric", "my_role": ["policy_element"]}
    raw.send(wire.request("send_identity", xid, [ident]))
    while True:
        msg = raw.recv()
        assert msg is not None, "the server closed the session"
        if msg.get("method") == "echo":
            raw.send(wire.result(msg["id"], msg.get("params", [])))
            continue
        return msg


def test_one_session_per_agent_name_across_replicas(
    two_replicas: tuple[AuthorityProcess, AuthorityProcess],
) -> None:
    """gw1 holds a session on A; another peer calling itself gw1 on B is refused as it would be on
    A (the claim is in etcd, not in A's memory; refused once the claim outlived A's lease, since
    A is alive), and keeps its session to say who it is; once gw1's
    session on A ends, the name is free on B, and then taken there: A refuses it in turn."""
    a, b = two_replicas

    async def go() -> None:
        gw1 = await Agent("gw1", [a.opflex], ["acme/web1"]).start()
        intruder = await asyncio.to_thread(Raw, b.opflex)
        intruder.sock.settimeout(15)  # a claim held elsewhere is refused after its holder's lease
        try:
            refused = await asyncio.to_thread(identify_live, intruder, "gw1")
            assert "already has a live session" in refused["error"]["message"], refused
            assert await asyncio.to_thread(alive, intruder, 2)  # refused, not dropped
            assert gw1.client.connects == 1
        finally:
            await gw1.stop()
        xid, reply = 3, refused
        deadline = time.monotonic() + 10  # the release travels through etcd to B
        while "result" not in reply and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            reply = await asyncio.to_thread(identify_live, intruder, "gw1", xid)
            xid += 1
        assert "result" in reply, reply
        late = await asyncio.to_thread(Raw, a.opflex)
        late.sock.settimeout(15)
        try:
            refused = await asyncio.to_thread(identify_live, late, "gw1")
            assert "already has a live session" in refused["error"]["message"], refused
        finally:
            late.sock.close()
            intruder.sock.close()

    run(go)


def test_agents_and_faults_are_listed_cluster_wide_by_every_replica(
    two_replicas: tuple[AuthorityProcess, AuthorityProcess],
) -> None:
    """h1 on A reports a fault, h2 is on B: each replica's GET /v1/agents lists both, connected,
    with the replica that holds each, and GET /v1/faults on B has h1's fault. When h1 goes, B
    stops listing it (its liveness key is deleted)."""
    a, b = two_replicas
    api_a, api_b = Api(a.url), Api(b.url)

    def agents(api: Api) -> dict[str, dict[str, Any]]:
        return {x["name"]: x for x in api.get("/v1/agents").json()["items"]}

    async def go() -> None:
        h1 = await Agent("h1", [a.opflex], ["acme/web1"]).start()
        h2 = await Agent("h2", [b.opflex], ["acme/web2"]).start()
        try:
            fault = {"code": "render-failed", "severity": "major", "description": "bridge br-int missing"}
            await h1.client.report([MO("PfFault", "/PfFault/render/", fault)])

            def listed() -> bool:
                found = [agents(api_a), agents(api_b)]
                return all({"h1", "h2"} <= set(x) for x in found) and any(
                    f["agent"] == "h1" for f in api_b.get("/v1/faults").json()["items"]
                )

            await until(listed, timeout=10)  # published on the lease clock (1 s)
            seen_a, seen_b = agents(api_a), agents(api_b)
            assert seen_a["h1"]["connected"] and seen_b["h1"]["connected"]
            assert seen_a["h2"]["connected"] and seen_b["h2"]["connected"]
            assert seen_a["h1"]["replica"] == seen_b["h1"]["replica"] != seen_b["h2"]["replica"]
            assert seen_b["h1"]["endpoints"] == ["acme/web1"]
            faults = api_b.get("/v1/faults").json()["items"]
            assert [(f["agent"], f["code"], f["message"]) for f in faults] == [
                ("h1", "render-failed", "bridge br-int missing")
            ]
        finally:
            await h1.stop()
        await until(lambda: "h1" not in agents(api_b), timeout=10)
        assert api_b.get("/v1/faults").json()["items"] == []
        await h2.stop()

    run(go)


def test_the_handshake_lists_every_live_replica_and_an_agent_fails_over_to_one_it_learnt(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    url = etcd_cluster.url + etcd_prefix()
    a, b, c = (replica(tmp_path / n, url) for n in "abc")

    def peers_of(server: AuthorityProcess) -> set[str]:
        raw = Raw(server.opflex)
        try:
            hello = raw.hello(f"probe{time.monotonic_ns()}")
        finally:
            raw.sock.close()
        return {p["connectivity_info"] for p in hello["peers"]}

    async def go() -> None:
        h1 = await Agent("h1", [a.opflex], ["acme/web1"]).start()  # given A only
        try:
            assert {f"127.0.0.1:{s.opflex_port}" for s in (b, c)} <= {
                f"{h}:{p}" for h, p in h1.client.learned
            }
            c.kill()  # C dies: its lease ends, A stops listing it
            deadline = time.monotonic() + 10
            while f"127.0.0.1:{c.opflex_port}" in peers_of(a) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert peers_of(a) == {f"127.0.0.1:{s.opflex_port}" for s in (a, b)}
            a.kill()
            took = await until(lambda: h1.client.connected_to == b.opflex, timeout=5)
            print(f"agent failed over from A to B in {took:.2f} s")
            assert set_http_port(Api(b.url), 7070) == 200  # resynced and following B
            await until(lambda: h1.prop(CONTRACT, "dFromPort") == 7070)
        finally:
            await h1.stop()

    try:
        for server in (a, b, c):
            server.start()
        apply_scenario(a)
        assert peers_of(a) == peers_of(b) == {f"127.0.0.1:{s.opflex_port}" for s in (a, b, c)}
        run(go)
    finally:
        for server in (a, b, c):
            server.kill()


def test_the_follower_delivers_other_writers_commits_once_and_not_its_own(etcd_cluster: EtcdCluster) -> None:
    prefix = etcd_prefix()
    mine, other = (
        EtcdStore(etcd_cluster.endpoints, prefix=prefix),
        EtcdStore(etcd_cluster.endpoints, prefix=prefix),
    )
    here, there = Authority(mine), Authority(other)
    got: list[Change] = []
    arrived = threading.Event()

    def deliver(changes: list[Change]) -> None:
        got.extend(changes)
        arrived.set()

    follower = LogFollower(mine, deliver, idle=1.0)
    follower.start(here.revision())
    try:
        here.create(k.TENANT, o.Tenant(name="mine"))  # its own: not delivered
        made = there.create(k.TENANT, o.Tenant(name="theirs"))
        assert arrived.wait(5)
        time.sleep(0.3)
        assert [(c.op, c.name, c.revision) for c in got] == [("create", "theirs", made["revision"])]
        # the member it watches through dies: it follows through another, losing and doubling nothing
        streams = follower.streams
        watched = mine.client.endpoints.index(mine.client.endpoints[mine.client._current])
        etcd_cluster.stop_member(watched)
        try:
            later = [there.create(k.TENANT, o.Tenant(name=f"t{i}"))["revision"] for i in range(5)]
            deadline = time.monotonic() + 10
            while len(got) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            etcd_cluster.start_member(watched)
        assert [c.revision for c in got[1:]] == later
        assert follower.streams > streams
    finally:
        follower.stop()
        mine.close()
        other.close()


def test_a_burst_of_endpoint_statuses_is_split_under_etcds_default_operations_limit() -> None:
    """Agents report statuses by the thousand while hosts start; on a cluster with etcd's default
    of 128 operations per transaction the registry's batch writer must split them, not fail."""
    with EtcdCluster(size=1, max_txn_ops=128) as cluster:
        store = EtcdStore(cluster.endpoints, prefix=etcd_prefix())
        authority = Authority(store)
        setup_tenant(authority)
        for i in range(200):
            authority.create(k.ENDPOINT, endpoint(f"e{i}", f"10.0.1.{i + 1}"))
        states = EndpointStateWriter(authority)

        async def report() -> list[bool]:
            done = [
                states.queue(EndpointState("acme", f"e{i}", host="h1", status="ACTIVE")) for i in range(200)
            ]
            await states.idle()
            return [f.result() for f in done]

        assert asyncio.run(report()) == [True] * 200
        found, _ = authority.list(k.ENDPOINT, "acme")
        assert {(e["host"], e["status"]) for e in found} == {("h1", "ACTIVE")}
        store.close()


def test_the_gateway_election_is_decided_once_for_all_replicas(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """Router r1's gateway hosts are gw1 then gw2. gw1's agent is connected to replica B, gw2's to
    A, which leads the election: A must learn of gw1 through B and choose it, and B must take A's
    result (alone, each would choose the gateway it sees: split brain). When A goes, B takes the
    lead and keeps gw1 (no preemption, no change)."""
    prefix = etcd_prefix()
    writer = replica(tmp_path / "w", etcd_cluster.url + prefix, "--opflex-listen", "off")  # REST only
    with writer:
        apply_scenario(writer, Path(__file__).parent.parent / "bench" / "failover.yaml")

    async def go() -> None:
        stores = [EtcdStore(etcd_cluster.endpoints, prefix=prefix) for _ in range(2)]
        a, b = (OpflexServer(Authority(s), shared=EtcdShared(s, ttl=2)) for s in stores)
        await a.start("127.0.0.1", 0)
        await b.start("127.0.0.1", 0)
        try:
            assert a.replicas.leading and not b.replicas.leading
            (candidate,) = a.election._candidates["acme"]

            def gateway(server: OpflexServer, name: str, ip: str) -> None:
                server.observer.connected(name, "policyfabric", "test")
                info = server.observer.agents[name]
                info.tunnel_ip, info.external = ip, frozenset({candidate.network})
                server._elect()

            gateway(b, "gw1", "192.0.2.1")  # reported to B: A, which decides, must learn of it
            chosen = {("acme", "r1"): ("gw1", "192.0.2.1")}
            await until(lambda: a.election.active == chosen and b.election.active == chosen, timeout=5)
            gateway(a, "gw2", "192.0.2.2")  # alone, A would see only gw2 and B only gw1
            await until(lambda: "gw2" in b.replicas.hosts, timeout=5)
            b._elect()  # a follower's election changes nothing: it takes the leader's result
            assert a.election.active == chosen and b.election.active == chosen
            await a.stop()  # A leaves: its lease is revoked, B campaigns and leads
            await until(lambda: b.replicas.leading, timeout=5)
            assert b.election.active == chosen
        finally:
            await a.stop()
            await b.stop()
            for store in stores:
                store.close()

    asyncio.run(go())
