"""``policyfabric logs``: the rule log's verdicts, one line per new connection a logging rule
decided, read from where the agents write them (``rulelog.jsonl`` in an agent's ``--state-dir``;
``agent/rulelog.py``). Like ``journalctl`` it reads the host it runs on: an agent's state
directory, or a lab's directory (every host's agent). The agents also write each line to their
own log (``--log-format json`` gives the fields)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from policyfabric.agent.rulelog import FILE, read_lines
from policyfabric.cli.console import fail, out
from policyfabric.lab.lab import DEFAULT_STATE


def log_files(directory: Path) -> list[Path]:
    """The rule log files under ``directory``: its own (an agent's state directory), or its hosts'
    agents' (a lab's: ``HOST/agent/rulelog.jsonl``), existing or rotated."""
    own = directory / FILE
    if own.exists() or own.with_name(FILE + ".1").exists():
        return [own]
    found = sorted({p.with_name(FILE) for p in directory.glob(f"*/agent/{FILE}*")})
    return found


def _text(item: dict[str, Any]) -> str:
    from policyfabric.agent.rulelog import Verdict

    try:
        return f"{item['time']} {item['host']} " + Verdict(**item).text()
    except TypeError:  # a line of another version: shown as it is
        return json.dumps(item)


def _show(item: dict[str, Any], as_json: bool) -> None:
    """Print one line as it is: markup off, since ``[fe80::1]:40000`` would read as a rich tag."""
    out.print(json.dumps(item) if as_json else _text(item), markup=False, highlight=False, soft_wrap=True)


def _selected(items: list[dict[str, Any]], verdict: str | None, endpoint: str | None) -> list[dict[str, Any]]:
    return [
        v
        for v in items
        if (verdict is None or v.get("verdict") == verdict)
        and (endpoint is None or endpoint in (v.get("src_endpoint"), v.get("dst_endpoint")))
    ]


def logs(
    directory: Annotated[
        Path,
        typer.Argument(help="an agent's --state-dir, or a lab's directory (default: the lab's)"),
    ] = DEFAULT_STATE,
    verdict: Annotated[str | None, typer.Option(help="only 'allowed' or only 'dropped'")] = None,
    endpoint: Annotated[str | None, typer.Option(help="only connections from or to TENANT/NAME")] = None,
    tail: Annotated[int, typer.Option("--tail", "-n", help="the last N lines (0: all)")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Rule log verdicts: a line per new connection that a logging rule (contract rule with
    `action: log` or `log: true`, security group with `log: true`) allowed or dropped, naming
    the rule that decided, rate-limited by the agents."""
    if verdict not in (None, "allowed", "dropped"):
        raise fail(f"--verdict {verdict}: give allowed or dropped")
    files = log_files(directory)
    if not files:
        raise fail(
            f"no rule log under {directory}: agents write {FILE} in their --state-dir once a logging "
            "rule decides a connection"
        )
    shown = 0
    items = _selected(read_lines(files), verdict, endpoint)
    for item in items[-tail:] if tail else items:
        _show(item, as_json)
    shown = len(items)
    while follow:
        time.sleep(0.5)
        items = _selected(read_lines(files), verdict, endpoint)
        for item in items[shown:]:
            _show(item, as_json)
        shown = len(items)
