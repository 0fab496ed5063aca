"""`policyfabric demo`: the whole foundation in one go, on the embedded default."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from policyfabric.cli.client import Client, Unreachable
from policyfabric.model import kinds as k


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_authority(db: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """An authority in its own process, logging to ``log``; waits until it answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "policyfabric", "authority", "--db", str(db), "--listen", f"127.0.0.1:{port}"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    with Client(f"http://127.0.0.1:{port}", timeout=2) as client:
        while True:
            try:
                client.revision()
                return proc
            except Unreachable:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"the authority did not start; its log: {log}") from None
                time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(file: Path, state_dir: Path | None, out: Console, err: Console) -> int:
    with tempfile.TemporaryDirectory(prefix="policyfabric-demo-") as tmp:
        base = state_dir or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        db, log, port = base / "policyfabric.db", base / "authority.log", free_port()
        url = f"http://127.0.0.1:{port}"
        out.rule("[bold]policyfabric demo")
        out.print(f"1. starting a Policy Authority on SQLite ({db}) at {url}")
        proc = start_authority(db, port, log)
        try:
            env = {**os.environ, "POLICYFABRIC_URL": url}
            for step, args in ((2, ["check", "-f", str(file)]), (3, ["apply", "-f", str(file)]), (4, ["apply", "-f", str(file)])):
                label = {2: "checking", 3: "applying", 4: "applying again (must change nothing)"}[step]
                out.print(f"{step}. {label} {file}")
                done = subprocess.run([sys.executable, "-m", "policyfabric", *args], env=env, check=False)
                if done.returncode != 0:
                    err.print(f"demo failed at step {step}; authority log: {log}")
                    return done.returncode
            out.print("5. what the authority stored:")
            from policyfabric.cli.main import objects_table

            with Client(url) as client:
                for kind in k.ORDER:
                    items = client.list(kind)
                    if items:
                        out.print(objects_table(kind, items))
                out.print(f"revision {client.revision()}")
        finally:
            out.print("6. stopping the authority")
            stop(proc)
        out.rule("[bold green]demo done")
    return 0
