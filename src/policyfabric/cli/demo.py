"""`policyfabric demo`: the whole foundation in one go, on the embedded default.

Until the dataplane lands: start an authority on SQLite, check and apply a
scenario (twice, to show apply is idempotent), let a dry-run agent resolve
and declare the endpoints of one host over OpFlex, show what was stored, stop.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from policyfabric.authority.process import authority_in
from policyfabric.cli.client import Client
from policyfabric.model import kinds as k
from policyfabric.model import scenario as sc


def lab_endpoints(file: Path, host: str) -> list[str]:
    """TENANT/NAME of the scenario's endpoints placed on ``host``."""
    scenario = sc.load(file)
    return [
        f"{e.data.get('tenant')}/{e.data.get('name')}"
        for e in scenario.entries
        if e.kind is k.ENDPOINT and isinstance(e.data, dict) and e.data.get("host") == host
    ]


def run_demo(file: Path, state_dir: Path | None, out: Console, err: Console) -> int:
    with tempfile.TemporaryDirectory(prefix="policyfabric-demo-") as tmp:
        base = state_dir or Path(tmp)
        server = authority_in(base)
        out.rule("[bold]policyfabric demo")
        out.print(f"1. starting a Policy Authority on SQLite ({server.db}) at {server.url}")
        with server:
            env = {**os.environ, "POLICYFABRIC_URL": server.url}
            opflex = "{}:{}".format(*server.opflex)
            steps = (
                ("checking", ["check", "-f", str(file)]),
                ("applying", ["apply", "-f", str(file)]),
                ("applying again (must change nothing)", ["apply", "-f", str(file)]),
                (
                    "running a dry-run agent 'h1' over OpFlex for the endpoints on h1 in",
                    [
                        "agent",
                        "--dry-run",
                        "--once",
                        "--host",
                        "h1",
                        "--authority",
                        opflex,
                        *[arg for ep in lab_endpoints(file, "h1") for arg in ("--endpoint", ep)],
                        "--state-dir",
                        str(base / "h1"),
                    ],
                ),
            )
            for number, (label, args) in enumerate(steps, start=2):
                out.print(f"{number}. {label} {file}")
                cmd = [sys.executable, "-m", "policyfabric", *args]
                done = subprocess.run(cmd, env=env, check=False)
                if done.returncode != 0:
                    err.print(f"demo failed while {label}; authority log: {server.log}")
                    return done.returncode
            out.print(f"{len(steps) + 2}. what the authority stored (endpoints on h1 are now bound to it):")
            from policyfabric.cli.main import objects_table

            with Client(server.url) as client:
                for kind in k.ORDER:
                    items = client.list(kind)
                    if items:
                        out.print(objects_table(kind, items))
                out.print(f"revision {client.revision()}")
            out.print(f"{len(steps) + 3}. stopping the authority")
        out.rule("[bold green]demo done")
    return 0
