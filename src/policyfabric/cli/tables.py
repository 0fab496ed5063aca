"""How the CLI shows things: object listings and the intent-vs-measured matrix.

Shared by ``get``, ``lab`` and ``demo``; kept apart from the commands so that they can all
use it without importing each other.
"""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from policyfabric.cli.console import out
from policyfabric.lab.probing import ProbeResult
from policyfabric.model import kinds as k

COLUMNS: dict[str, tuple[str, ...]] = {
    "tenant": (),
    "external_network": ("cidr", "gateway_ip"),
    "l3_context": (),
    "bridge_domain": ("l3_context", "mtu"),
    "subnet": ("bridge_domain", "cidr", "gateway_ip", "ipv6_ra_mode"),
    "contract": ("rules",),
    "security_group": ("rules",),
    "endpoint_group": ("bridge_domain", "provides", "consumes", "intra_group"),
    "endpoint": ("epg", "subnet", "ip", "mac", "host", "status"),
    "router": ("l3_context", "interfaces", "external_gateway"),
    "floating_ip": ("network", "ip", "endpoint"),
}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            return f"{len(value)} rule(s)"
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return " ".join(f"{a}={_cell(b)}" for a, b in value.items())
    return str(value)


def objects_table(kind: k.Kind, items: list[dict[str, Any]]) -> Table:
    table = Table(title=kind.collection)
    columns = ("name", *(("tenant",) if kind.scoped else ()), *COLUMNS[kind.name], "id")
    for column in columns:
        table.add_column(column, no_wrap=column in ("id", "mac", "cidr", "ip", "gateway_ip"))
    for item in items:
        table.add_row(*(_cell(item.get(c)) if c != "id" else item["id"][:8] for c in columns))
    return table


def results_table(results: list[ProbeResult]) -> Table:
    table = Table(title="intent vs measured (real packets)")
    for col in ("from", "to", "probe", "expected", "measured", ""):
        table.add_column(col)
    for r in results:
        e = r.expect
        mark = "[green]ok[/]" if r.ok else "[red]MISMATCH[/]"
        table.add_row(e.source, e.target, e.probe, e.result, r.measured, mark)
    return table


def report(results: list[ProbeResult], as_json: bool) -> int:
    passed = sum(r.ok for r in results)
    failed = len(results) - passed
    if as_json:
        print(json.dumps({"results": [r.to_json() for r in results], "passed": passed, "failed": failed}))
    else:
        out.print(results_table(results))
        colour = "green" if not failed else "red"
        out.print(f"[{colour}]{passed} passed, {failed} failed[/]")
    return 0 if failed == 0 else 1
