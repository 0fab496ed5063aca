"""`policyfabric demo`: intent to packets in one go, on the embedded default.

Start an authority on SQLite, check and apply a scenario (twice, to show
apply is idempotent), build its lab for real (a network namespace, Open
vSwitch and agent per host, an endpoint namespace per endpoint, Geneve
between hosts), probe every `expect` line with real packets and print the
intent/measured matrix, show what the authority knows, tear it all down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from policyfabric.cli.tables import objects_table, report
from policyfabric.client import Client
from policyfabric.lab.authority import authority_in
from policyfabric.lab.lab import Lab
from policyfabric.lab.plan import LabError
from policyfabric.model import kinds as k
from policyfabric.model import scenario as sc


def run_demo(file: Path, state_dir: Path | None, out: Console, err: Console) -> int:
    if os.geteuid() != 0:
        err.print("the demo builds network namespaces and Open vSwitch instances: run it as root")
        return 2
    with tempfile.TemporaryDirectory(prefix="policyfabric-demo-") as tmp:
        base = state_dir or Path(tmp)
        server = authority_in(base / "authority")
        out.rule("[bold]policyfabric demo")
        out.print(f"1. starting a Policy Authority on SQLite ({server.db}) at {server.url}")
        with server:
            env = {**os.environ, "POLICYFABRIC_URL": server.url}
            steps = (
                ("checking", ["check", "-f", str(file)]),
                ("applying", ["apply", "-f", str(file)]),
                ("applying again (must change nothing)", ["apply", "-f", str(file)]),
            )
            for number, (label, args) in enumerate(steps, start=2):
                out.print(f"{number}. {label} {file}")
                done = subprocess.run([sys.executable, "-m", "policyfabric", *args], env=env, check=False)
                if done.returncode != 0:
                    err.print(f"demo failed while {label}; authority log: {server.log}")
                    return done.returncode
            n = len(steps) + 2
            out.print(f"{n}. building the lab: a namespace, Open vSwitch and agent per host, real endpoints")
            lab = Lab.create(file, base / "lab", lambda s: out.print(f"   lab: {s}"))
            failed = True
            try:
                scenario = sc.load(file)
                plan = lab.up(scenario, authority=(server.url, "{}:{}".format(*server.opflex)))
                out.print(f"{n + 1}. probing {len(plan.expect)} expectation(s) with real packets")
                results = lab.probe(plan.expect)
                code = report(results, as_json=False)
                failed = code != 0
                out.print(f"{n + 2}. endpoints: bound to hosts, ACTIVE once their flows are on")
                with Client(server.url) as client:
                    out.print(objects_table(k.ENDPOINT, client.list(k.ENDPOINT)))
                    flows = lab.flow_counts()
                    out.print("   flows per host: " + ", ".join(f"{h} {c}" for h, c in flows.items()))
                    out.print(f"   revision {client.revision()}")
            except LabError as exc:
                err.print(f"demo: {exc}")
                code = 2
            finally:
                kept = f" (logs kept in {base / 'lab'})" if failed else ""
                out.print(f"{n + 3}. tearing the lab down{kept}")
                lab.down(keep_logs=failed)
            out.print(f"{n + 4}. stopping the authority")
        out.rule("[bold green]demo done" if code == 0 else "[bold red]demo: intent and measurement differ")
    return code
