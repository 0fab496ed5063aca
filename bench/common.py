"""What the benchmarks share: a private Open vSwitch in a network namespace of its own, and the
report (a table for people, then one JSON line for machines)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from policyfabric.lab.ovs import OvsInstance
from policyfabric.sh import run


@contextlib.contextmanager
def netns(name: str) -> Iterator[str]:
    """A network namespace for the duration (removed also on failure)."""
    run(["ip", "netns", "add", name])
    try:
        yield name
    finally:
        run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def private_ovs(rundir: Path, name: str) -> Iterator[OvsInstance]:
    """ovsdb-server + ovs-vswitchd with an empty ``br-int``, in namespace ``name``, stopped by PID after."""
    with netns(name):
        ovs = OvsInstance(rundir, name)
        try:
            ovs.start()
            ovs.add_bridge("br-int")
            yield ovs
        finally:
            ovs.stop()


# the REST benches' tenant (bench/api.py, bench/replicas.py): one BD, one subnet, one group
SETUP: list[tuple[str, dict[str, Any]]] = [
    ("tenants", {"name": "bench"}),
    ("l3-contexts", {"name": "vrf", "tenant": "bench"}),
    ("bridge-domains", {"name": "bd", "tenant": "bench", "l3_context": "vrf"}),
    ("subnets", {"name": "s", "tenant": "bench", "bridge_domain": "bd", "cidr": "10.0.0.0/12"}),
    ("endpoint-groups", {"name": "web", "tenant": "bench", "bridge_domain": "bd"}),
]


def addresses(n: int) -> list[dict[str, Any]]:
    """n endpoints of SETUP's group with distinct addresses (skipping .0 and .255)."""
    out: list[dict[str, Any]] = []
    i = 2
    while len(out) < n:
        if i & 255 not in (0, 255):
            ip = f"10.{(i >> 16) & 15}.{(i >> 8) & 255}.{i & 255}"
            out.append({"name": f"ep{i}", "tenant": "bench", "epg": "web", "ip": ip, "host": "h1"})
        i += 1
    return out


def flow_count(ovs: OvsInstance) -> int:
    """Flows on the instance's br-int."""
    text = ovs.ofctl("dump-aggregate", ovs.mgmt("br-int"))
    return int(text.split("flow_count=")[1].split()[0])


def report(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], summary: dict[str, Any]
) -> None:
    """The figures as a table, then ``summary`` as the last line: one JSON object."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console(width=None if sys.stdout.isatty() else 250).print(table)  # a file gets every column
    print(json.dumps(summary))
