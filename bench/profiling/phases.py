#!/usr/bin/env python3
"""Where the time of a profiled bench/converge.py run went, by phase.

    .venv/bin/python bench/profiling/phases.py DIR [DIR ...] [--top 15]

DIR: one run's profiles (``--profile P`` writes ``P/<N>-<run>/{authority,agent}-<pid>.prof``).
For each phase, the cumulative seconds of the functions that are that phase (summed over every
call and every thread, as cProfile counts them: a coroutine's time only while it runs, not while
it awaits; a function run in a worker thread counts wall time, so also the time its thread waited
for the GIL), then the functions with the most time of their own, in each process. The last line
is one JSON object. cProfile slows pure Python down by about 1.5-2x: compare phases with each
other and across N, and take absolute figures from unprofiled runs.
"""

from __future__ import annotations

import argparse
import json
import pstats
import sys
from pathlib import Path
from typing import Any

# phase -> (process, [(file suffix, function name)]); a phase's time is the sum of its functions'
# cumulative times, which must not call each other (or the time would count twice)
PHASES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "REST writes (batch, PUTs)": ("authority", [("authority/service.py", "create_many"),
                                                ("authority/service.py", "replace")]),
    "declarations (endpoint_declare)": ("authority", [("opflex/registry.py", "declare")]),
    "status reports (state_report + store writes, thread)": ("authority", [
        ("opflex/observer.py", "state_report"), ("authority/service.py", "set_endpoint_states")]),
    "REST lists (the bench's ACTIVE poll)": ("authority", [("authority/service.py", "list")]),
    "tree rebuild (snapshot + tree + intent, thread)": ("authority", [("opflex/repository.py", "build")]),
    "tree diff + intent update + push": ("authority", [("opflex/repository.py", "diff"),
                                                       ("opflex/intent_index.py", "update"),
                                                       ("authority/opflex/server.py", "_fan_out")]),
    "resolve answers (policy + endpoint)": ("authority", [("opflex/repository.py", "resolve"),
                                                          ("opflex/registry.py", "resolve")]),
    "OpFlex encode (authority)": ("authority", [("opflex/wire.py", "encode")]),
    "OpFlex parse (authority)": ("authority", [("opflex/wire.py", "parse")]),
    "agent: OVSDB read": ("agent", [("ovs/ovsdb.py", "interfaces")]),
    "agent: declare": ("agent", [("agent/declarer.py", "sync")]),
    "agent: view build": ("agent", [("agent/ovs_agent.py", "network")]),
    "agent: compile": ("agent", [("ovs/renderer.py", "compile")]),
    "agent: plan (index + diff)": ("agent", [("ovs/flowmods.py", "index"), ("ovs/flowmods.py", "plan")]),
    "agent: apply (bundle)": ("agent", [("ovs/applier.py", "execute")]),
    "agent: status reports": ("agent", [("agent/reports.py", "endpoints_active"),
                                        ("agent/reports.py", "_send_status")]),
    "agent: OpFlex receive (policy, endpoints)": ("agent", [("opflex/client.py", "_apply_policy"),
                                                            ("opflex/client.py", "_apply_endpoints")]),
    "agent: cache save": ("agent", [("opflex/client.py", "_save")]),
    "agent: OpFlex parse": ("agent", [("opflex/wire.py", "parse")]),
    "agent: OpFlex encode": ("agent", [("opflex/wire.py", "encode")]),
}  # fmt: skip

Key = tuple[str, int, str]
# blocking waits (idle threads, the event loop's poll) and start-up (imports): not work
IDLE = ("'get' of '_queue.SimpleQueue'", "'poll' of 'select.", "select.select", "'acquire' of '_thread.",
        "time.sleep", "builtins.compile", "marshal.loads", "builtins.exec", "__build_class__",
        "'control' of 'select.epoll'", "posix.read", "_imp.", "'wait' of ")  # fmt: skip


def load(directory: Path, role: str) -> pstats.Stats | None:
    files = sorted(directory.glob(f"{role}-*.prof"))
    if not files:
        return None
    stats = pstats.Stats(str(files[0]))
    for extra in files[1:]:
        stats.add(str(extra))
    return stats


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> tuple[float, int]:
    table: dict[Key, tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    seconds, calls = 0.0, 0
    for (path, _line, func), (_cc, nc, _tt, ct, _callers) in table.items():
        if func == name and path.endswith(suffix):
            seconds, calls = seconds + ct, calls + nc
    return seconds, calls


def top(stats: pstats.Stats, count: int) -> list[tuple[str, float, float, int]]:
    """(function, own seconds, cumulative seconds, calls), most own time first."""
    table: dict[Key, tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (path, line, func), (_cc, nc, tt, ct, _callers) in table.items():
        if path == "~" and any(idle in func for idle in IDLE):
            continue
        short = path.split("site-packages/")[-1].split("src/")[-1] if path != "~" else ""
        rows.append((f"{short}:{line}({func})" if short else func, tt, ct, nc))
    rows.sort(key=lambda r: -r[1])
    return rows[:count]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dirs", type=Path, nargs="+", help="profile directories (one run each)")
    parser.add_argument("--top", type=int, default=15, help="functions listed by own time per process")
    args = parser.parse_args()
    summary: dict[str, Any] = {}
    for directory in args.dirs:
        procs = {role: load(directory, role) for role in ("authority", "agent")}
        phases: dict[str, dict[str, float | int]] = {}
        print(f"== {directory}")
        for phase, (role, funcs) in PHASES.items():
            stats = procs[role]
            if stats is None:
                continue
            seconds, calls = 0.0, 0
            for suffix, name in funcs:
                s, c = cumulative(stats, suffix, name)
                seconds, calls = seconds + s, calls + c
            phases[phase] = {"s": round(seconds, 3), "calls": calls}
            print(f"  {phase:<50} {seconds:8.3f} s  {calls:8d} calls")
        hot: dict[str, list[list[Any]]] = {}
        for role, stats in procs.items():
            if stats is None:
                continue
            total = stats.total_tt  # type: ignore[attr-defined]
            print(f"  -- {role}: {total:.2f} s profiled (all threads); most own time:")
            hot[role] = []
            for name, own, cum, calls in top(stats, args.top):
                print(f"     {own:7.3f} s own {cum:8.3f} s cum {calls:9d}  {name}")
                hot[role].append([name, round(own, 3), round(cum, 3), calls])
        summary[str(directory)] = {"phases": phases, "top": hot}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
