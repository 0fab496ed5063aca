"""How the CLI shows things: object listings and the intent-vs-measured matrix.

Shared by ``get``, ``lab`` and ``demo``; kept apart from the commands so that they can all
use it without importing each other.
"""

from __future__ import annotations

import json
import time
from typing import Any

import yaml
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


OUTPUTS = ("table", "wide", "json", "yaml", "name")  # -o: what get and list commands print


def _wide_columns(kind: k.Kind, items: list[dict[str, Any]]) -> tuple[str, ...]:
    """Every field any of ``items`` has, the usual ones first (``-o wide``)."""
    first = ("name", *(("tenant",) if kind.scoped else ()), *COLUMNS[kind.name])
    rest = sorted({f for item in items for f in item} - {*first, "id", "revision", "applied_by"})
    return (*first, *rest, "revision", "applied_by", "id")


def objects_table(kind: k.Kind, items: list[dict[str, Any]], wide: bool = False) -> Table:
    table = Table(title=kind.collection)
    columns = (
        _wide_columns(kind, items)
        if wide
        else ("name", *(("tenant",) if kind.scoped else ()), *COLUMNS[kind.name], "id")
    )
    for column in columns:
        table.add_column(column, no_wrap=column in ("id", "mac", "cidr", "ip", "gateway_ip"))
    for item in items:
        table.add_row(*(item["id"][:8] if c == "id" and not wide else _cell(item.get(c)) for c in columns))
    return table


def ago(when: float | None, now: float | None = None) -> str:
    """``3s ago``, ``5m ago``, ``2h ago``, ``4d ago`` (``-`` when unknown)."""
    if not when:
        return "-"
    seconds = max(0, int((now if now is not None else time.time()) - when))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def health(agent: dict[str, Any], faults: list[dict[str, Any]]) -> str:
    """What an operator needs at a glance: disconnected, faults reported, or healthy."""
    if not agent.get("connected"):
        return f"disconnected ({ago(agent.get('last_seen'))})"
    mine = [f for f in faults if f.get("agent") == agent.get("name")]
    if mine:
        worst = sorted({str(f.get("severity")) for f in mine})
        return f"{len(mine)} fault(s): {', '.join(worst)}"
    if agent.get("refused_declarations"):
        return f"{len(agent['refused_declarations'])} declaration(s) refused"
    return "healthy"


def _rendered(agent: dict[str, Any]) -> str:
    if agent.get("rendered_revision") is not None:
        return str(agent["rendered_revision"])
    return "does not report" if agent.get("reports_rendered") is False else "-"


def agents_table(agents: list[dict[str, Any]], faults: list[dict[str, Any]], wide: bool = False) -> Table:
    table = Table(title="agents")
    columns = ["name", "health", "address", "tunnel ip", "connected", "last seen", "endpoints", "rendered"]
    if wide:
        columns += ["subscriptions", "reports", "gateway for", "domain"]
    for column in columns:
        table.add_column(column, no_wrap=column in ("address", "tunnel ip"))
    now = time.time()
    for a in agents:
        row = [
            a["name"],
            health(a, faults),
            a.get("address", ""),
            a.get("tunnel_ip", ""),
            ago(a.get("connected_since"), now) if a.get("connected") else "no",
            ago(a.get("last_seen"), now),
            str(len(a.get("endpoints", []))),
            _rendered(a),
        ]
        if wide:
            row += [str(a.get("subscriptions", "")), str(a.get("reports", "")), _cell(a.get("gateway_for"))]
            row.append(str(a.get("domain", "")))
        table.add_row(*row)
    return table


def watch_line(event: Any, kind: k.Kind | None) -> str:
    """One line per event of ``get -w`` (table and wide output): revision, what happened, which
    object, and its usual columns."""
    data = event.data
    if event.name == "agent":
        rendered = data.get("rendered_revision")
        state = "connected" if data.get("connected") else "disconnected"
        shown = rendered if rendered is not None else "-"
        return f"{'-':>8}  {'agent':<8}  {data['name']}  {state}, rendered revision {shown}"
    who = f"{data['tenant']}/{data['name']}" if data.get("tenant") else data["name"]
    if event.name == "status":
        return (
            f"{data['revision']:>8}  {'status':<8}  {who}  {data.get('status')} on {data.get('host') or '-'}"
        )
    obj = data.get("object") or {}
    columns = COLUMNS[kind.name] if kind is not None else ()
    detail = "  ".join(f"{c}={_cell(obj.get(c))}" for c in columns if obj.get(c) not in (None, [], ""))
    return f"{data['revision']:>8}  {data['op']:<8}  {who}  {detail}".rstrip()


def faults_table(faults: list[dict[str, Any]]) -> Table:
    table = Table(title="faults (reported by agents)")
    for column in ("when", "agent", "severity", "code", "message", "object"):
        table.add_column(column)
    now = time.time()
    for f in faults:
        row = (ago(f.get("time"), now), f.get("agent"), f.get("severity"), f.get("code"), f.get("message"))
        table.add_row(*(str(x) for x in row), _cell(f.get("uri")))
    return table


def changes_table(changes: list[dict[str, Any]]) -> Table:
    table = Table(title="changes (oldest first)")
    for column in ("revision", "op", "kind", "tenant", "name"):
        table.add_column(column, justify="right" if column == "revision" else "left")
    for c in changes:
        kind = k.BY_NAME.get(c["kind"])
        row = (
            str(c["revision"]),
            c["op"],
            kind.collection if kind else c["kind"],
            c.get("tenant") or "",
            c["name"],
        )
        table.add_row(*row)
    return table


def dump(data: Any, output: str) -> str:
    """``-o json`` and ``-o yaml``."""
    if output == "yaml":
        return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False)).rstrip("\n")
    return json.dumps(data, indent=2)


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
