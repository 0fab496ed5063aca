"""Run an authority as a child process, on loopback with its own database and log.

The lab, the demo, tests and benchmarks use it; it talks to the authority only
through the REST client (``policyfabric.client``), never by importing it.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from policyfabric.client import Client, Unreachable


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AuthorityProcess:
    """An authority on loopback with its own database file and log."""

    db: Path
    log: Path
    port: int
    sync: str = "full"
    opflex_port: int = 0
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""  # for an authority run with --tokens (in extra): a token it knows
    _answered: bool = field(default=False, repr=False)  # it started once: its ports are known

    @property
    def opflex(self) -> tuple[str, int]:
        return ("127.0.0.1", self.opflex_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> AuthorityProcess:
        """Start it and wait until it answers. Its first start on ports ``free_port`` chose may lose
        them to another process in between (tests start etcd clusters, labs and authorities side
        by side): that start is tried again on fresh ports, twice at most. A later start keeps its
        ports (agents and the lab's state know them)."""
        for attempt in range(3):
            offset = self.log.stat().st_size if self.log.exists() else 0
            try:
                return self._start(timeout)
            except RuntimeError:
                said = self.log.read_bytes()[offset:] if self.log.exists() else b""
                if self._answered or attempt == 2 or b"address already in use" not in said.lower():
                    raise
                self.port = free_port()
                self.opflex_port = free_port() if self.opflex_port else 0
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> AuthorityProcess:
        cmd = [
            sys.executable,
            "-m",
            "policyfabric",
            "authority",
            "--db",
            str(self.db),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--sync",
            self.sync,
            "--opflex-listen",
            f"127.0.0.1:{self.opflex_port}" if self.opflex_port else "off",
            *self.extra,
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        with Client(self.url, timeout=2, token=self.token) as client:
            while True:
                try:
                    client.revision()
                    self._answered = True
                    return self
                except Unreachable:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.kill()
                        raise RuntimeError(
                            f"the authority did not start; its log ({self.log}):\n"
                            + self.log.read_text()[-2000:]
                        ) from None
                    time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> AuthorityProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def authority_in(
    directory: Path, sync: str = "full", extra: list[str] | None = None, token: str = ""
) -> AuthorityProcess:
    """An (unstarted) authority whose database and log live in ``directory``, on free ports."""
    directory.mkdir(parents=True, exist_ok=True)
    return AuthorityProcess(
        directory / "policyfabric.db",
        directory / "authority.log",
        free_port(),
        sync,
        free_port(),
        extra or [],
        token=token,
    )
