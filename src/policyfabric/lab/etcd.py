"""A real etcd cluster on loopback, for the etcd store's tests and benchmark (and, later, the lab's
``--store etcd://``).

``scripts/install-etcd.sh`` installs Debian's ``etcd-server`` (the ``etcd`` binary) and keeps the
system's service stopped; :class:`EtcdCluster` then runs its own members, all under one private
directory (a temporary one unless given) and on free loopback ports, each member with its own data
directory and log, stopped by PID (and killed by the kernel if the process that started it dies),
the directory removed after if it made it. Members can be
stopped and started again one by one (:meth:`EtcdCluster.stop_member`, :meth:`start_member`) for
the failure tests: a restarted member keeps its data directory and rejoins.

The cluster's limits are raised from etcd's defaults (128 operations and 1.5 MiB per request) to
what ``policyfabric`` documents for bulk writes (docs/operations.md "Running on etcd"): one REST
``/v1/batch`` is one etcd transaction, and a batch of 50 endpoints is already ~200 operations.
"""

from __future__ import annotations

import base64
import ctypes
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from policyfabric.lab.authority import free_port

MiB = 1 << 20
PR_SET_PDEATHSIG = 1
# what the harness runs with (docs/operations.md recommends the same for bulk batches)
MAX_TXN_OPS = 2048
MAX_REQUEST_BYTES = 4 * MiB


class EtcdUnavailable(RuntimeError):
    """etcd is not installed here (scripts/install-etcd.sh installs it)."""


def etcd_binary() -> str | None:
    return shutil.which("etcd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin"]))


def missing() -> str | None:
    """What is missing to run etcd here, or None."""
    if etcd_binary() is None:
        return "etcd (Debian's etcd-server): run scripts/install-etcd.sh"
    return None


@dataclass(frozen=True)
class EtcdTls:
    """Client-side TLS of the members: their certificate, and the CA a client certificate must be
    signed by (``client_cert_auth``: etcd then refuses clients without one)."""

    ca: Path
    cert: Path
    key: Path
    client_cert_auth: bool = True


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class EtcdCluster:
    """``size`` etcd members on loopback under ``directory`` (a new temporary one if None)."""

    directory: Path | None = None
    size: int = 3
    max_txn_ops: int = MAX_TXN_OPS
    max_request_bytes: int = MAX_REQUEST_BYTES
    tls: EtcdTls | None = None
    # killed by the kernel when the process that started it dies (tests, benchmarks, `lab verify`);
    # False for a cluster that outlives its starter (`lab up`: `lab down` stops it by PID)
    die_with_parent: bool = True
    members: list[EtcdMember] = field(default_factory=list)
    _owned: bool = False

    def __post_init__(self) -> None:
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="policyfabric-etcd-"))
            self._owned = True
        self.directory.mkdir(parents=True, exist_ok=True)
        self.token = f"policyfabric-{uuid.uuid4().hex[:12]}"  # no two test clusters ever merge
        self.members = [
            EtcdMember(
                f"m{i}",
                free_port(),
                free_port(),
                self.directory / f"m{i}.data",
                self.directory / f"m{i}.log",
            )
            for i in range(self.size)
        ]

    # ---- what clients need
    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        """What ``policyfabric authority --store`` takes."""
        return "etcd://" + ",".join(self.endpoints)

    # ---- running it
    def _command(self, member: EtcdMember) -> list[str]:
        binary = etcd_binary()
        if binary is None:
            raise EtcdUnavailable(missing() or "etcd")
        peers = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        client_url = f"{self.scheme}://{member.endpoint}"
        cmd = [
            binary,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", f"http://127.0.0.1:{member.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{member.peer_port}",
            "--initial-cluster", peers,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",  # ignored by a member that already has data
            "--max-txn-ops", str(self.max_txn_ops),
            "--max-request-bytes", str(self.max_request_bytes),
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "warn",
        ]  # fmt: skip
        if self.tls is not None:
            cmd += ["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key)]
            cmd += ["--trusted-ca-file", str(self.tls.ca)]
            if self.tls.client_cert_auth:
                cmd.append("--client-cert-auth")
        return cmd

    def _launch(self, member: EtcdMember) -> None:
        with member.log.open("ab") as log:
            member.proc = subprocess.Popen(
                self._command(member),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a ^C of the test run reaches it only through stop()
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )

    def launch(self) -> list[int]:
        """Start every member without waiting (``wait_healthy`` then); their PIDs, for a caller
        that records them before it waits (the lab's state, so that a failed start is cleaned)."""
        for member in self.members:
            self._launch(member)
        return [m.proc.pid for m in self.members if m.proc is not None]

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        """Start every member and wait until each answers as part of a cluster with a leader."""
        try:
            for member in self.members:
                self._launch(member)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop_member(self, index: int, kill: bool = True) -> None:
        """Stop one member (SIGKILL: a crash; else SIGTERM); its data directory stays."""
        _stop(self.members[index], kill)

    def start_member(self, index: int, timeout: float = 30.0) -> None:
        """Start a stopped member again on its data directory; returns once it is healthy."""
        self.start_members([index], timeout)

    def start_members(self, indices: list[int] | None = None, timeout: float = 30.0) -> None:
        """Start stopped members (all by default) together, then wait until each is healthy (a
        member alone cannot be: a cluster with every member down needs a quorum back first)."""
        members = [self.members[i] for i in indices] if indices is not None else self.members
        for member in members:
            if not member.running:
                self._launch(member)
        self.wait_healthy(timeout, members)

    def wait_healthy(self, timeout: float = 30.0, members: list[EtcdMember] | None = None) -> None:
        """Until each of ``members`` (all by default) says it is healthy: it has a leader and a
        linearizable read through it succeeds (etcd's ``/health``)."""
        deadline = time.monotonic() + timeout
        pending = list(members if members is not None else self.members)
        with self.http_client(timeout=2.0) as http:
            while pending:
                member = pending[0]
                if not member.running:
                    raise RuntimeError(f"etcd member {member.name} exited; its log:\n{_tail(member.log)}")
                try:
                    r = http.get(f"{self.scheme}://{member.endpoint}/health")
                    if r.status_code == 200 and r.json().get("health") == "true":
                        pending.pop(0)
                        continue
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"etcd member {member.name} not healthy after {timeout:.0f} s; its log:\n"
                        + _tail(member.log)
                    )
                time.sleep(0.1)

    def http_client(self, timeout: float = 5.0) -> httpx.Client:
        """An HTTP client that the members accept (their CA; a client certificate when they ask)."""
        if self.tls is None:
            return httpx.Client(timeout=timeout)
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        if self.tls.client_cert_auth:  # the members' own certificate, which trustme makes for both ends
            context.load_cert_chain(self.tls.cert, self.tls.key)
        return httpx.Client(timeout=timeout, verify=context)

    def stop(self) -> None:
        """Stop every member (SIGTERM, then SIGKILL); remove the directory if this made it."""
        for member in self.members:
            _stop(member, kill=False)
        if self._owned and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def delete_prefix(endpoints: list[str], prefix: str, timeout: float = 10.0) -> None:
    """Delete every key under ``prefix`` (``/NAME/``) through the first member that answers (etcd's
    JSON gateway, as ``wait_healthy`` uses it: the lab does not use the authority's store code)."""
    start = prefix.encode()
    end = bytearray(start)
    end[-1] += 1  # the prefix ends with "/": the first key after all of it
    body = {"key": base64.b64encode(start).decode(), "range_end": base64.b64encode(bytes(end)).decode()}
    failures = []
    with httpx.Client(timeout=timeout) as http:
        for endpoint in endpoints:
            try:
                http.post(f"http://{endpoint}/v3/kv/deleterange", json=body).raise_for_status()
                return
            except httpx.HTTPError as exc:
                failures.append(f"{endpoint}: {exc}")
    raise RuntimeError("no etcd member deleted the prefix: " + "; ".join(failures))


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it


def _die_with_parent() -> None:
    """In the child, before etcd runs: SIGKILL it when the process that started it dies, so that
    a test run or benchmark killed outright leaves no etcd behind (Linux's PR_SET_PDEATHSIG)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stop(member: EtcdMember, kill: bool, timeout: float = 10.0) -> None:
    proc = member.proc
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    member.proc = None


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return "(no log)"
