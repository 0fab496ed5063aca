"""`policyfabric agent --dry-run`: the OpFlex side of an agent with no dataplane.

It resolves the policy of the endpoints it is told about, declares them,
learns the other endpoints of their bridge domains, and prints what it holds.
Useful to see what an agent on a host would receive.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from policyfabric.agent.endpoints import bd_members_prefix, declaration
from policyfabric.agent.subscriptions import follow_endpoints
from policyfabric.opflex.client import Peer, PolicyClient
from policyfabric.opflex.gbp import Cls, endpoint_uri


class DryRunAgent:
    def __init__(self, client: PolicyClient, endpoints: list[tuple[str, str]]) -> None:
        self.client, self.endpoints = client, endpoints
        self.needed: dict[str, str] = {}  # what its endpoints need beyond what the client follows

    def sync(self) -> None:
        """Declare every endpoint whose policy is known; learn its bridge domain's members."""
        self.needed = follow_endpoints(self.client, [endpoint_uri(*e) for e in self.endpoints], self.needed)
        for tenant, name in self.endpoints:
            decl = declaration(self.client.policy, tenant, name, interface=f"dry-{name}"[:15])
            if decl is None:
                continue
            for request in decl.requests:
                self.client.declare(request)
            self.client.resolve_endpoints(Cls.EPR_L2_EP, bd_members_prefix(decl.bridge_domain))

    def table(self) -> Table:
        table = Table(title=f"agent {self.client.name}: cache version {self.client.version}")
        table.add_column("class")
        table.add_column("objects", justify="right")
        counts = Counter(m.subject for m in self.client.policy.values())
        counts.update(m.subject for m in self.client.endpoints.values())
        for subject, n in sorted(counts.items()):
            table.add_row(subject, str(n))
        return table


async def run_dry(
    host: str,
    peers: list[Peer],
    endpoints: list[tuple[str, str]],
    state_dir: Path | None,
    once: bool,
    tls: ssl.SSLContext | None,
    domain: str,
    console: Console,
) -> int:
    client = PolicyClient(host, peers, state_dir=state_dir, tls=tls, domain=domain)
    agent = DryRunAgent(client, endpoints)
    client.on_change = lambda uris: agent.sync()
    runner = asyncio.create_task(client.run())
    for tenant, name in endpoints:
        client.resolve(Cls.PF_ENDPOINT, endpoint_uri(tenant, name))
    settled = await client.settled(timeout=15)
    agent.sync()
    settled = settled and await client.settled(timeout=15)
    console.print(agent.table())
    for tenant, name in endpoints:
        if endpoint_uri(tenant, name) not in client.policy:
            console.print(f"[yellow]endpoint {tenant}/{name} is not known to the authority (yet)[/]")
    if not settled:
        console.print("[red]could not reach an authority; showing the cached policy[/]")
    if once:
        await client.stop()
        runner.cancel()
        return 0 if settled else 1
    console.print("following updates (Ctrl-C to stop)")

    def follow(uris: set[str]) -> None:
        agent.sync()
        console.print(f"update: {len(uris)} object(s), cache version {client.version}")

    client.on_change = follow
    await runner
    return 0
