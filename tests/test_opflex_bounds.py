"""What an agent can make the authority hold or write is bounded: faults and counters per agent,
forgotten agents, per-session send backlogs (a stalled peer delays nobody), and the fields it
writes into endpoint records (the store stays readable whatever an agent sends). In process."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from policyfabric.agent.endpoints import declaration
from policyfabric.authority.opflex import OpflexServer
from policyfabric.authority.opflex.observer import MAX_COUNTERS, MAX_FAULTS
from policyfabric.authority.service import Authority, EndpointState
from policyfabric.model.kinds import BY_NAME as K
from policyfabric.opflex import wire
from policyfabric.opflex.gbp import Cls, Prop
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import RpcError
from policyfabric.opflex.uri import space
from policyfabric.store.sqlite import SqliteStore
from tests.opflex_harness import attach
from tests.test_opflex_roles import authority_with_a_router, report, web1


async def started(authority: Authority, **kw: Any) -> OpflexServer:
    server = OpflexServer(authority, **kw)
    server.loop = asyncio.get_running_loop()
    await server.policy.rebuild({None, *authority.tenants()}, push=False)
    return server


def fault(code: str, severity: str = "major", **extra: Any) -> MO:
    return MO(Cls.PF_FAULT, f"/PfFault/{code}/", {Prop.CODE: code, Prop.SEVERITY: severity, **extra})


# ---- what the observer keeps ---------------------------------------------------------------


def test_faults_are_capped_per_agent_oldest_first_and_the_drops_counted(tmp_path: Path) -> None:
    async def go() -> None:
        server = await started(authority_with_a_router(tmp_path))
        h1, _ = attach(server, "h1")
        h2, _ = attach(server, "h2")
        await report(server, h2, fault("h2-only"))
        for i in range(0, MAX_FAULTS + 50, 25):
            await report(server, h1, *(fault(f"f{j}") for j in range(i, i + 25)))
        mine = [f["code"] for f in server.faults_json() if f["agent"] == "h1"]
        assert mine == [f"f{j}" for j in range(50, MAX_FAULTS + 50)]  # the oldest 50 went
        assert [f["code"] for f in server.faults_json() if f["agent"] == "h2"] == ["h2-only"]
        views = {a["name"]: a for a in server.agents_json()}
        assert (views["h1"]["faults_dropped"], views["h2"]["faults_dropped"]) == (50, 0)
        # raising one again makes it the newest (not a new one), clearing removes it, and fields are cut
        await report(server, h1, fault("f50"), fault("f51", "cleared"), fault("big", description="x" * 10**5))
        mine = [f["code"] for f in server.faults_json() if f["agent"] == "h1"]
        assert len(mine) == MAX_FAULTS and mine[-2:] == ["f50", "big"] and "f51" not in mine
        assert max(len(f["message"]) for f in server.faults_json()) <= 1024

    asyncio.run(go())


def test_counters_are_capped_in_number_and_size(tmp_path: Path) -> None:
    async def go() -> None:
        server = await started(authority_with_a_router(tmp_path))
        h1, _ = attach(server, "h1")
        many = {f"c{i}": i for i in range(MAX_COUNTERS + 10)}
        await report(server, h1, MO(Cls.PF_AGENT_COUNTERS, "/c/", many))
        odd = {"c0": "y" * 10_000, "k" * 100: 1, "huge": 1 << 70, "flag": True, "c1": 7}
        await report(server, h1, MO(Cls.PF_AGENT_COUNTERS, "/c/", odd))
        [view] = server.agents_json()
        counters = view["counters"]
        assert len(counters) == MAX_COUNTERS and counters["c1"] == 7 and f"c{MAX_COUNTERS}" not in counters
        assert len(counters["c0"]) == 256
        assert view["counters_dropped"] == 10 + 3  # the 10 past the cap; the long key, the huge int, the bool

    asyncio.run(go())


def test_disconnected_agents_show_as_such_and_are_forgotten(tmp_path: Path) -> None:
    async def go() -> None:
        server = await started(authority_with_a_router(tmp_path), forget_agents_after=60)
        h1, _ = attach(server, "h1")
        attach(server, "h2")
        await report(server, h1, fault("x"))
        server._closed(h1)
        assert {a["name"]: a["connected"] for a in server.agents_json()} == {"h1": False, "h2": True}
        server.tick(time.monotonic())
        assert len(server.agents_json()) == 2  # not yet: it left less than a minute ago
        server.observer.agents["h1"].last_seen -= 61
        server.tick(time.monotonic())
        assert [a["name"] for a in server.agents_json()] == ["h2"] and server.faults_json() == []

    asyncio.run(go())


# ---- a stalled peer delays nobody ------------------------------------------------------------


def test_a_stalled_peer_never_delays_another_and_is_dropped_past_its_backlog(tmp_path: Path) -> None:
    """The peer that never reads has its pushes queued, not awaited: every flush completes at once
    and the others get each change; once its backlog passes ``send_queue`` it is dropped."""

    async def go() -> None:
        authority = authority_with_a_router(tmp_path)
        server = await started(authority, send_queue=20_000)
        stalled, stalled_seen = attach(server, "h1", stalled=True)
        good, good_seen = attach(server, "h2")
        whole = [{"subject": Cls.POLICY_SPACE, "policy_uri": space("acme"), "prr": 60}]
        for session in (stalled, good):
            await server._handle(session, "policy_resolve", whole)
        [record], _ = authority.list(K["endpoint"], "acme", "web1")
        for i in range(40):
            await asyncio.to_thread(
                authority.replace, K["endpoint"], record["id"], _web1(ip=f"10.1.0.{20 + i}")
            )
            server.policy.mark_dirty({"acme"})
            start = time.monotonic()
            await asyncio.wait_for(server.flush(), 2)
            assert time.monotonic() - start < 0.5
            assert len(good_seen.messages("policy_update")) == i + 1
        assert stalled.closed.is_set() and stalled_seen.transport.aborted
        assert not good.closed.is_set()
        assert 15_000 < len(stalled_seen.data) <= 20_000  # it held up to its limit, no more
        await asyncio.sleep(0.05)  # the flush the last mark_dirty scheduled (finds nothing to do)

    asyncio.run(go())


def test_a_peer_that_talks_but_never_reads_is_dropped_after_the_write_timeout(tmp_path: Path) -> None:
    """Its backlog stays under ``send_queue``, and it is never silent: what drops it is that its
    pushes stay unsent for ``write_timeout`` (1 s here), as a stalled reply would."""

    async def go() -> None:
        server = await started(authority_with_a_router(tmp_path), keepalive=0.1)
        stalled, _ = attach(server, "h1", stalled=True)
        reading, _ = attach(server, "h2")
        runs = [asyncio.create_task(s.run()) for s in (stalled, reading)]
        for session in (stalled, reading):
            session.post("policy_update", {"replace": [], "merge_children": [], "delete": []})
        start = time.monotonic()
        while time.monotonic() - start < 2 and not stalled.closed.is_set():
            for session in (stalled, reading):  # both keep talking (replies: nothing to answer)
                session.reader.feed_data(wire.encode(wire.result(["policy_update", 1], {})))
            await asyncio.sleep(0.05)
        assert stalled.closed.is_set() and "took none of its pushes" in stalled.close_reason
        assert 1.0 < time.monotonic() - start < 1.5
        assert not reading.closed.is_set()
        for task in runs:
            task.cancel()

    asyncio.run(go())


def test_a_peer_that_reads_slowly_is_not_dropped(tmp_path: Path) -> None:
    """A backlog that never empties is not a stalled peer if the peer keeps taking from it (an
    authority busy checking 10,000 declarations reads its agent's session slowly): only a peer
    that takes nothing for ``write_timeout`` is dropped."""

    async def go() -> None:
        server = await started(authority_with_a_router(tmp_path), keepalive=0.1)
        slow, slow_seen = attach(server, "h1", stalled=True)
        never, _ = attach(server, "h2", stalled=True)
        runs = [asyncio.create_task(s.run()) for s in (slow, never)]
        start = time.monotonic()
        while time.monotonic() - start < 2.5:
            for session in (slow, never):  # pushes keep coming: neither backlog ever empties
                session.post("policy_update", {"replace": [], "merge_children": [], "delete": []})
                session.reader.feed_data(wire.encode(wire.result(["policy_update", 1], {})))
            del slow_seen.data[: len(slow_seen.data) // 2]  # it takes half of what waits
            await asyncio.sleep(0.05)
        assert never.closed.is_set() and "took none of its pushes" in never.close_reason
        assert not slow.closed.is_set(), slow.close_reason
        for task in runs:
            task.cancel()

    asyncio.run(go())


def _web1(**change: Any) -> Any:
    from policyfabric.model import objects as o

    return o.Endpoint(name="web1", tenant="acme", subnet="s", **{"ip": ["10.1.0.10"], **change})


# ---- nothing an agent sends makes the store unreadable -----------------------------------------


def test_an_endpoint_bound_to_an_fqdn_host_loads_deletes_and_the_authority_restarts(tmp_path: Path) -> None:
    async def bind() -> None:
        server = await started(authority_with_a_router(tmp_path))
        host, _ = attach(server, "Compute-1.Example.com")
        decl = declaration(server.policy.trees["acme"].mos, "acme", "web1", "tap1", "192.0.2.1")
        assert decl is not None
        await server._handle(
            host, "endpoint_declare", [{"endpoint": [m.to_wire() for m in decl.all], "prr": 60}]
        )
        await web1(server.authority, host="compute-1.example.com", interface="tap1", status="BUILD")
        server.authority.store.close()

    asyncio.run(bind())

    async def restart(path: Path) -> OpflexServer:
        return await started(Authority(SqliteStore(path, sync="normal")))  # what start() does first

    server = asyncio.run(restart(tmp_path / "db"))
    assert server.policy.trees["acme"].mos  # the tenant loaded, with its endpoint
    authority = server.authority
    [record], _ = authority.list(K["endpoint"], "acme", "web1")
    assert record["host"] == "compute-1.example.com"
    authority.delete(K["endpoint"], record["id"])
    authority.store.close()
    server = asyncio.run(restart(tmp_path / "db"))
    assert server.authority.list(K["endpoint"], "acme", "web1")[0] == []


@pytest.mark.parametrize("interface", ["x" * 100_000, "tap 1", "tap/1", "..", "", 7])
def test_a_bad_interface_name_is_refused_before_anything_is_written(tmp_path: Path, interface: Any) -> None:
    async def go() -> None:
        server = await started(authority_with_a_router(tmp_path))
        h1, _ = attach(server, "h1")
        decl = declaration(server.policy.trees["acme"].mos, "acme", "web1", "tap1", "192.0.2.1")
        assert decl is not None
        mos = [m.to_wire() for m in decl.all]
        for prop in mos[0]["properties"]:
            if prop["name"] == Prop.INTERFACE_NAME:
                prop["data"] = interface
        with pytest.raises(RpcError) as err:
            await server._handle(h1, "endpoint_declare", [{"endpoint": mos, "prr": 60}])
        assert "interfaceName" in err.value.message
        await asyncio.sleep(0.05)
        [record], _ = server.authority.list(K["endpoint"], "acme", "web1")
        assert record.get("host") is None and server.registry.declarations == {}

    asyncio.run(go())


def test_the_store_refuses_an_agent_report_it_could_not_read_back(tmp_path: Path) -> None:
    """The guard behind the protocol edge: ``set_endpoint_states`` writes only what validates."""
    authority = authority_with_a_router(tmp_path)
    bad = EndpointState("acme", "web1", host="h1", interface="x" * 100_000, status="BUILD")
    good = EndpointState("acme", "web1", host="h1.example.com", interface="tap1", status="BUILD")
    assert authority.set_endpoint_states([bad]) == [True]
    [record], _ = authority.list(K["endpoint"], "acme", "web1")
    assert record.get("interface") is None and record["status"] == "DOWN"
    assert authority.set_endpoint_states([good]) == [True]
    [record], _ = authority.list(K["endpoint"], "acme", "web1")
    assert (record["host"], record["interface"], record["status"]) == ("h1.example.com", "tap1", "BUILD")
    Authority(SqliteStore(tmp_path / "db", sync="normal")).snapshot("acme")  # reads back


def test_a_binding_does_not_undo_an_operator_move_that_committed_first(tmp_path: Path) -> None:
    """A binding is written only while the stored host is the one its declaration was checked
    against: the operator's move to h2 that commits while h1's binding waits stays."""
    authority = authority_with_a_router(tmp_path)
    [record], _ = authority.list(K["endpoint"], "acme", "web1")
    assert record.get("host") is None
    binding = EndpointState("acme", "web1", host="h1", interface="tap1", status="BUILD", if_host=(None,))
    authority.replace(
        K["endpoint"], record["id"], K["endpoint"].spec.model_validate({**_spec(record), "host": "h2"})
    )
    assert authority.set_endpoint_states([binding]) == [True]
    [record], _ = authority.list(K["endpoint"], "acme", "web1")
    assert record["host"] == "h2" and record.get("interface") is None
    again = EndpointState("acme", "web1", host="h2", interface="tap2", status="BUILD", if_host=("h2",))
    assert authority.set_endpoint_states([again]) == [True]
    [record], _ = authority.list(K["endpoint"], "acme", "web1")
    assert (record["host"], record["interface"]) == ("h2", "tap2")


def _spec(record: dict[str, Any]) -> dict[str, Any]:
    """A record as a client would PUT it back (without what the server adds)."""
    return {k: v for k, v in record.items() if k not in ("id", "revision", "status", "interface")}


def test_connections_beyond_the_session_cap_are_closed_at_once_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two sessions allowed: the third and later connections are closed at once (one log line for
    the burst), while the first two are served; when one ends, a new connection is taken."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> Any:
        writer.write(wire.encode(wire.request("echo", n, [n])))
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\0"), 5)

    async def go() -> None:
        server = OpflexServer(authority_with_a_router(tmp_path), max_sessions=2)
        with socket.socket() as s:  # a free port
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        await server.start("127.0.0.1", port)
        try:
            kept = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.05)  # both accepted
            shed = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
            for reader, _ in shed:
                assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing sent
            for n, (reader, writer) in enumerate(kept):
                assert b'"result"' in await echo(reader, writer, n)
            kept[0][1].close()
            await asyncio.sleep(0.05)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert b'"result"' in await echo(reader, writer, 9)  # room again
            writer.close()
            kept[1][1].close()
        finally:
            await server.stop()

    with caplog.at_level("WARNING", logger="policyfabric.authority.opflex.server"):
        asyncio.run(go())
    refusals = [r for r in caplog.records if "the most allowed" in r.getMessage()]
    assert 1 <= len(refusals) <= 2  # the first at once, the rest summed a second later (or not yet)


def test_a_status_only_write_is_told_apart_so_no_tree_is_rebuilt_for_it(tmp_path: Path) -> None:
    """Agents report statuses by the thousand while a host starts; no policy tree holds a status
    (or an interface), so the OpFlex server does not rebuild the tenant's tree for such a write. A
    binding (the host) or an operator's change is not status-only."""
    authority = authority_with_a_router(tmp_path)
    seen: list[list[bool]] = []
    authority.listeners.append(lambda changes: seen.append([authority.status_only(c) for c in changes]))
    authority.set_endpoint_states([EndpointState("acme", "web1", status="BUILD")])
    authority.set_endpoint_states([EndpointState("acme", "web1", interface="tap1", status="ACTIVE")])
    authority.set_endpoint_states([EndpointState("acme", "web1", host="h1")])
    [record], _ = authority.list(K["endpoint"], "acme", "web1")
    authority.replace(
        K["endpoint"], record["id"], K["endpoint"].spec.model_validate({**_spec(record), "ip": ["10.1.0.11"]})
    )
    assert seen == [[True], [True], [False], [False]]
    assert authority._status_only == set()  # nothing kept past its commit's listeners
