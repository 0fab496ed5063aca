#!/usr/bin/env python3
"""Resolution by need against whole-tenant resolution: who a contract change reaches, at what cost.

One authority process; A agents (real OpFlex clients over TCP, each driven by the agent's own
``Declarer`` with one plugged endpoint), each endpoint in its own EPG of one tenant: EPG ``gI``
provides contract ``cI``, which EPG ``clients`` (no endpoint) consumes, and every EPG consumes
contract ``shared``, which EPG ``server`` (no endpoint) provides. The same run measures two
fleets one after the other, against the same authority:

- **by need**: what agents do now: each resolves its endpoint and follows what it needs (its EPG,
  ``cI`` and ``shared``, the EPGs on their other side: ``clients``, ``server``);
- **whole tenant**: what agents did before: each also resolves the tenant's PolicySpace.

Then K changes to one agent's contract (``c7``'s port, "one") and K to the contract all use (``shared``),
each through REST, waited for until every agent that holds the contract has the new port (and a
short quiet time, so late messages are counted). Figures per fleet and change: ``policy_update``
messages the authority sent and their bytes (counted by the clients as they read them: each
message's JSON payload), agents reached, and the time from the REST acknowledgement until the
last agent reached applied it (p50, p99 over K); the authority's CPU seconds over the K changes
(from /proc, which the loaded machine disturbs less than wall time); objects in an agent's cache
and what its resolution received.

Then, in process and on the same store, the flush and fan-out alone (``bench/authority_flush.py``'s
way): two ``PolicyRepository``s over the authority's database, each with 100 sessions (``Peer``s
whose messages are recorded, not sent): one whose sessions hold the subscriptions the by-need
agents held, one whose sessions subscribe to the PolicySpace. K changes of ``c7``'s port, each
flushed by both (in alternating order): the time of ``rebuild(push=True)`` (read the change,
patch the tree, find the sessions, queue their messages), p50 and p99, and the messages queued.
The last line is one JSON object.

    .venv/bin/python bench/by_need.py [--agents 100] [--changes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from policyfabric.agent.declarer import Declarer
from policyfabric.authority.opflex import peers as pe
from policyfabric.authority.opflex.repository import PolicyRepository
from policyfabric.authority.service import Authority
from policyfabric.lab.authority import authority_in
from policyfabric.model.kinds import BY_NAME as K
from policyfabric.opflex import wire
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.gbp import Cls
from policyfabric.opflex.rpc import Session
from policyfabric.opflex.uri import space
from policyfabric.store.sqlite import SqliteStore

T = "bench"
console = Console(stderr=True, width=150)


def classifier(contract: str) -> str:
    return f"/PolicyUniverse/PolicySpace/{T}/GbpeL24Classifier/{contract}.r/"


def setup(url: str, agents: int) -> Callable[[str, int], float]:
    """The intent (see the module's docstring); returns ``set_port(contract, port)``, which writes
    through REST and returns the time (monotonic) of the acknowledgement."""
    http = httpx.Client(base_url=url, timeout=60)

    def post(collection: str, body: dict[str, Any]) -> dict[str, Any]:
        r = http.post(f"/v1/{collection}", json=body)
        r.raise_for_status()
        return dict(r.json())

    def rule(port: int) -> list[dict[str, Any]]:
        return [{"name": "r", "classifier": {"protocol": "tcp", "port": port}, "action": "allow"}]

    post("tenants", {"name": T})
    post("l3-contexts", {"name": "v", "tenant": T})
    post("bridge-domains", {"name": "bd", "tenant": T, "l3_context": "v"})
    post("subnets", {"name": "s", "tenant": T, "bridge_domain": "bd", "cidr": "10.0.0.0/16"})
    contracts = {"shared": post("contracts", {"name": "shared", "tenant": T, "rules": rule(80)})}
    for i in range(agents):
        contracts[f"c{i}"] = post("contracts", {"name": f"c{i}", "tenant": T, "rules": rule(80)})
    groups = [("server", ["shared"], []), ("clients", [], [f"c{i}" for i in range(agents)])]
    groups += [(f"g{i}", [f"c{i}"], ["shared"]) for i in range(agents)]
    for name, provides, consumes in groups:
        body = {"name": name, "tenant": T, "bridge_domain": "bd", "provides": provides, "consumes": consumes}
        post("endpoint-groups", body)
    for i in range(agents):
        post(
            "endpoints",
            {"name": f"e{i}", "tenant": T, "epg": f"g{i}", "ip": f"10.0.{i // 250}.{i % 250 + 2}"},
        )

    def set_port(contract: str, port: int) -> float:
        body = contracts[contract]
        body["rules"][0]["classifier"]["port"] = port
        r = http.put(f"/v1/contracts/{body['id']}", json=body)
        r.raise_for_status()
        contracts[contract] = dict(r.json())
        return time.monotonic()

    return set_port


class CountingClient(PolicyClient):
    """A policy client that counts the ``policy_update`` messages it reads, and their bytes."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.messages = 0
        self.bytes = 0
        self.resolved_bytes = 0

    async def _handle(self, session: Session, method: str, params: list[Any]) -> Any:
        if method == "policy_update":
            self.messages += 1
            self.bytes += len(json.dumps(params, separators=(",", ":")))
        return await super()._handle(session, method, params)

    async def _call(self, method: str, params: dict[str, Any], refused: bool = False) -> Any:
        result = await super()._call(method, params, refused)
        if method == "policy_resolve" and result is not None:
            self.resolved_bytes += len(json.dumps(result, separators=(",", ":")))
        return result


@dataclass(frozen=True)
class Port:
    iface_id: str
    name: str


class Agent:
    def __init__(self, n: int, peer: tuple[str, int], whole: bool) -> None:
        self.client = CountingClient(f"{'w' if whole else 'n'}{n}", [peer], keepalive=60, connect_timeout=30)
        self.declarer = Declarer(self.client, self.client.name, f"192.0.{n // 250}.{n % 250 + 1}")
        self.port = Port(f"{T}/e{n}", f"tap{n}")
        self.whole = whole
        self.client.on_change = self._changed
        self.task: asyncio.Task[None] | None = None

    def _changed(self, uris: set[str]) -> None:
        self.declarer.sync([self.port], uris)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.client.run())
        await asyncio.wait_for(self.client.ready.wait(), 60)
        if self.whole:  # what the declarer did before resolution by need
            self.client.resolve(Cls.POLICY_SPACE, space(T))
        self.declarer.sync([self.port])

    async def stop(self) -> None:
        await self.client.stop()
        if self.task is not None:
            self.task.cancel()

    def port_of(self, contract: str) -> Any:
        mo = self.client.policy.get(classifier(contract))
        return mo.properties.get("dFromPort") if mo is not None else None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def fleet(
    peer: tuple[str, int],
    pid: int,
    agents: int,
    changes: int,
    whole: bool,
    set_port: Callable[[str, int], float],
) -> dict[str, Any]:
    fleet = [Agent(n, peer, whole) for n in range(agents)]
    for a in fleet:
        await a.start()
    await asyncio.gather(*[a.client.settled(timeout=300, quiet=1.0) for a in fleet])
    missing = [a.client.name for a in fleet if a.port_of("shared") is None]
    assert not missing, f"agents without the shared contract: {missing[:5]}"
    out: dict[str, Any] = {
        "cache_objects_per_agent": round(sum(len(a.client.policy) for a in fleet) / agents, 1),
        "resolve_bytes_per_agent": round(sum(a.client.resolved_bytes for a in fleet) / agents),
        "subscriptions_per_agent": round(sum(len(a.client.wanted) for a in fleet) / agents, 1),
    }
    port = 1000 + (5000 if whole else 0)
    for contract in (f"c{7 % agents}", "shared"):
        holders = [a for a in fleet if a.port_of(contract) is not None]
        times: list[float] = []
        messages = sent = 0
        cpu0 = cpu_seconds(pid)
        for _ in range(changes):
            port += 1
            before = [(a.client.messages, a.client.bytes) for a in fleet]
            acked = set_port(contract, port)
            while not all(a.port_of(contract) == port for a in holders):
                await asyncio.sleep(0.0005)
            times.append(time.monotonic() - acked)
            await asyncio.sleep(0.2)  # anything else on its way is counted too
            messages += sum(a.client.messages - m for a, (m, _) in zip(fleet, before, strict=True))
            sent += sum(a.client.bytes - b for a, (_, b) in zip(fleet, before, strict=True))
        out["one" if contract != "shared" else contract] = {
            "agents_reached": len(holders),
            "updates_per_change": messages / changes,
            "bytes_per_change": round(sent / changes),
            "p50_ms": round(percentile(times, 50) * 1000, 1),
            "p99_ms": round(percentile(times, 99) * 1000, 1),
            # (includes the 0.2 s quiet times' idle, the same in both fleets)
            "authority_cpu_s": round(cpu_seconds(pid) - cpu0, 2),
        }
    out["subscriptions"] = [sorted(a.client.wanted) for a in fleet]
    for a in fleet:
        await a.stop()
    return out


class Recorded:
    """A session as ``peers.fan_out`` sees one (ready), whose messages are encoded as a session
    encodes them (``Session.post``) and kept, not sent."""

    ready = True

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def post(self, method: str, params: dict[str, Any]) -> bool:
        self.messages.append(wire.encode(wire.request(method, len(self.messages), [params])))
        return True


def repository(
    authority: Authority, subscriptions: list[list[str]]
) -> tuple[PolicyRepository, list[Recorded]]:
    """A repository whose sessions hold ``subscriptions`` (one list per session)."""
    sessions: dict[Recorded, pe.Peer] = {}
    repo = PolicyRepository(
        authority,
        fan_out=lambda method, table, parts: pe.fan_out(sessions, method, table, parts),  # type: ignore[arg-type]
        schedule=lambda: None,
        gateways=dict,
        rebuilt=lambda trees: None,
    )
    for uris in subscriptions:
        session = Recorded()
        peer = pe.Peer("bench", post=session.post)
        for uri in uris:
            peer.subs[uri] = time.monotonic() + 86400
            repo.subscribers.add(uri, peer)
        sessions[session] = peer
    return repo, list(sessions)


async def in_process(db: Path, need: list[list[str]], changes: int) -> dict[str, Any]:
    authority = Authority(SqliteStore(db, sync="normal"))
    repos = {
        "by_need": repository(authority, need),
        "whole_tenant": repository(authority, [[space(T)]] * len(need)),
    }
    for repo, _ in repos.values():
        await repo.rebuild({None, T}, push=False)
    times: dict[str, list[float]] = {name: [] for name in repos}
    queued = {name: 0 for name in repos}
    for i in range(changes):
        current = authority.list(K["contract"], T, f"c{7 % len(need)}")[0][0]
        body = {k: v for k, v in current.items() if k not in ("id", "revision")}
        body["rules"][0]["classifier"]["port"] = 20000 + i
        authority.replace(K["contract"], current["id"], K["contract"].spec.model_validate(body))
        for name in sorted(repos, reverse=i % 2 == 1):
            repo, sessions = repos[name]
            before = sum(len(s.messages) for s in sessions)
            began = time.perf_counter()
            await repo.rebuild({T}, push=True)
            times[name].append(time.perf_counter() - began)
            queued[name] += sum(len(s.messages) for s in sessions) - before
    written = {
        name: sum(len(m) for s in sessions for m in s.messages) for name, (_, sessions) in repos.items()
    }
    authority.store.close()
    return {
        name: {
            "flush_fanout_p50_ms": round(percentile(times[name], 50) * 1000, 3),
            "flush_fanout_p99_ms": round(percentile(times[name], 99) * 1000, 3),
            "messages_per_change": queued[name] / changes,
            "bytes_per_change": round(written[name] / changes),
        }
        for name in repos
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = authority_in(Path(tmp), sync="normal", extra=["--keepalive", "60", "--log-level", "warning"])
        server.start()
        try:
            set_port = setup(server.url, args.agents)
            assert server.proc is not None
            results = {}
            for name, whole in (("whole_tenant", True), ("by_need", False)):
                console.print(f"fleet: {name} ({args.agents} agents)")
                results[name] = asyncio.run(
                    fleet(server.opflex, server.proc.pid, args.agents, args.changes, whole, set_port)
                )
        finally:
            server.kill()
        need = results["by_need"].pop("subscriptions")
        results["whole_tenant"].pop("subscriptions")
        console.print("in process: flush and fan-out")
        flushes = asyncio.run(in_process(server.db, need, args.changes))
    table = Table(title=f"a contract change, {args.agents} agents, {args.changes} changes each (same run)")
    for column in ("fleet", "change", "agents reached", "updates", "bytes", "p50", "p99", "authority CPU"):
        table.add_column(column, justify="right")
    for name, r in results.items():
        for contract, label in (("one", "one agent's contract"), ("shared", "a contract all use")):
            c = r[contract]
            table.add_row(
                name,
                label,
                str(c["agents_reached"]),
                f"{c['updates_per_change']:.0f}",
                f"{c['bytes_per_change']:,}",
                f"{c['p50_ms']:.1f} ms",
                f"{c['p99_ms']:.1f} ms",
                f"{c['authority_cpu_s']:.2f} s",
            )
    console.print(table)
    for name, r in results.items():
        console.print(
            f"{name}: {r['cache_objects_per_agent']} objects per agent, {r['subscriptions_per_agent']} "
            f"subscriptions, {r['resolve_bytes_per_agent']:,} bytes resolved"
        )
    whole, need = results["whole_tenant"]["one"], results["by_need"]["one"]
    ratios = {
        "updates": round(whole["updates_per_change"] / max(need["updates_per_change"], 1e-9), 1),
        "bytes": round(whole["bytes_per_change"] / max(need["bytes_per_change"], 1), 1),
        "p50": round(whole["p50_ms"] / max(need["p50_ms"], 1e-9), 2),
        "p99": round(whole["p99_ms"] / max(need["p99_ms"], 1e-9), 2),
    }
    for name, f in flushes.items():
        console.print(
            f"flush + fan-out in process, {name}: p50 {f['flush_fanout_p50_ms']} ms, "
            f"p99 {f['flush_fanout_p99_ms']} ms, {f['messages_per_change']:.0f} messages "
            f"({f['bytes_per_change']:,} bytes) per change"
        )
    ratios["flush_fanout_p50"] = round(
        flushes["whole_tenant"]["flush_fanout_p50_ms"] / max(flushes["by_need"]["flush_fanout_p50_ms"], 1e-6),
        2,
    )
    results["flush_fanout"] = flushes
    console.print(f"one agent's contract, whole tenant / by need: {ratios}")
    print(
        json.dumps(
            {"bench": "by_need", "agents": args.agents, "results": results, "ratio_whole_vs_need": ratios}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
