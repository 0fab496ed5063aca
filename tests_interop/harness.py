"""Run the reference OpFlex stack (built by scripts/build-opflex-ref.sh) next to policyfabric.

Why a harness of its own: the reference daemons are C++ programs with their
own habits (``mock_server`` listens on 0.0.0.0 and dies only on SIGKILL; the
agent reads a JSON config and a directory of endpoint files), and each test
must leave nothing behind. Every process started here is a ``Daemon`` that
knows its PID and is killed by it; everything lives in the test's tmp dir and
on loopback ports.

``FrameTap`` sits between the reference agent and the authority and records
every OpFlex frame in both directions: the evidence of what the reference
sends (its identity, resolves, declarations, state reports) and what it got.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policyfabric.lab.authority import free_port
from policyfabric.opflex.mo import MO

REPO = Path(__file__).resolve().parent.parent
PREFIX = Path(os.environ.get("OPFLEX_REF_PREFIX", REPO / ".cache" / "opflex-ref"))
BIN = PREFIX / "bin"
LIB = PREFIX / "lib"
FRAMES = Path(__file__).resolve().parent / "frames"


def ref_env() -> dict[str, str]:
    """The reference programs find libopflex, libmodelgbp and libopflex_agent under PREFIX/lib."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(LIB) + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def wait_for(what: str, ok: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """``ok()`` once it is truthy; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = ok()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


@dataclass
class Daemon:
    """A child process with its log file; stopped by PID (SIGTERM, then SIGKILL)."""

    name: str
    cmd: list[str]
    log: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    sigkill_only: bool = False  # mock_server ignores SIGTERM
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        if not self.sigkill_only:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# ---- the reference agent


def agent_config(
    run: Path, name: str, domain: str, peer: tuple[str, int], endpoints: Path, inspector: Path
) -> dict[str, Any]:
    """An opflex_agent configuration: no TLS, no renderer (the OVS one needs OVS 2.12 internals),
    an inspector socket for gbp_inspect, endpoints from files in ``endpoints``."""
    return {
        "log": {"level": "debug"},
        "opflex": {
            "domain": domain,
            "name": name,
            "peers": [{"hostname": peer[0], "port": peer[1]}],
            "ssl": {"mode": "disabled"},
            "inspector": {"enabled": True, "socket-name": str(inspector)},
            "notif": {"enabled": False},
            "timers": {"prr": 60},
        },
        "endpoint-sources": {"filesystem": [str(endpoints)]},
        "host-agent-fault-sources": {"filesystem": [str(run / "faults")]},
        "service-sources": {"filesystem": [str(run / "services")]},
        "plugins": {"renderer": []},
        "prometheus": {"enabled": False},
    }


def endpoint_file(
    uuid: str, tenant: str, epg: str, iface: str, mac: str, ips: list[str], sgs: list[str]
) -> dict[str, Any]:
    """An endpoint as the reference agent's filesystem source reads it (``NAME.ep``)."""
    out: dict[str, Any] = {
        "uuid": uuid,
        "policy-space-name": tenant,
        "endpoint-group-name": epg,
        "interface-name": iface,
        "mac": mac,
        "ip": ips,
    }
    if sgs:
        out["security-group"] = [{"policy-space": tenant, "name": g} for g in sgs]
    return out


def fault_file(uuid: str, code: int, description: str, ep: dict[str, Any] | None = None) -> dict[str, Any]:
    """A host-agent fault as the reference agent's fault source reads it (``NAME.fs``); with ``ep``
    (an endpoint file's body) it is an endpoint's fault. The agent reports it as a ``FaultInstance``
    in a ``state_report``."""
    out: dict[str, Any] = {
        "fault_uuid": uuid,
        "severity": "major",
        "description": description,
        "faultCode": code,
    }
    if ep is not None:
        out.update(
            {
                "ep_uuid": ep["uuid"],
                "mac": ep["mac"],
                "policy-space-name": ep["policy-space-name"],
                "endpoint-group-name": ep["endpoint-group-name"],
            }
        )
    return out


def gbp_inspect(socket_path: Path, *queries: str, timeout_ms: int = 3000) -> list[MO]:
    """The agent's resolved objects for ``queries`` (``Class`` or ``Class,uri``), whole subtrees,
    through gbp_inspect's scriptable output (``-t dump``: the MODB as a JSON array of MOs)."""
    args = [str(BIN / "gbp_inspect"), "--socket", str(socket_path), "-r", "-p", "-t", "dump"]
    args += ["-i", str(timeout_ms)]
    for q in queries:
        args += ["-q", q]
    out = subprocess.run(args, env=ref_env(), capture_output=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"gbp_inspect failed ({out.returncode}): {out.stderr.decode(errors='replace')}")
    text = out.stdout.decode(errors="replace").strip()
    data = json.loads(text) if text else []
    return [MO.from_wire(item) for item in data]


# ---- a recording TCP proxy


@dataclass
class Frame:
    """One OpFlex frame seen by the tap: who sent it, when, and its JSON."""

    t: float
    direction: str  # "agent->authority" or "authority->agent"
    message: Any


@dataclass
class FrameTap:
    """A loopback TCP proxy that records every NUL-terminated frame in both directions."""

    upstream: tuple[str, int]
    port: int = field(default_factory=free_port)
    frames: list[Frame] = field(default_factory=list)
    _server: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _socks: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def start(self) -> FrameTap:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(8)
        self._server = srv
        self._spawn(self._accept)
        return self

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        assert self._server is not None
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            up.settimeout(None)
            self._socks += [client, up]
            self._spawn(self._pump, client, up, "agent->authority")
            self._spawn(self._pump, up, client, "authority->agent")

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        """Forward ``src`` to ``dst``, recording each frame before it is forwarded, so that a
        reply is never recorded ahead of the request it answers."""
        buf = bytearray()
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                return
            buf += data
            while (end := buf.find(b"\0")) >= 0:
                raw, buf = bytes(buf[:end]).strip(), buf[end + 1 :]
                if not raw:
                    continue
                try:
                    msg: Any = json.loads(raw)
                except ValueError:
                    msg = {"unparsed": raw.decode(errors="replace")}
                with self._lock:
                    self.frames.append(Frame(time.time(), direction, msg))
            try:
                dst.sendall(data)
            except OSError:
                return

    def snapshot(self) -> list[Frame]:
        with self._lock:
            return list(self.frames)

    def close(self) -> None:
        self._closed = True
        for s in [*self._socks, *([self._server] if self._server else [])]:
            with contextlib.suppress(OSError):
                s.close()


def method_of(frame: Frame) -> str | None:
    msg = frame.message
    return msg.get("method") if isinstance(msg, dict) else None


def save_frames(frames: list[Frame], path: Path) -> None:
    """Frames as JSON lines ({t, direction, message}), times relative to the first."""
    t0 = frames[0].t if frames else 0.0
    with path.open("w") as out:
        for f in frames:
            out.write(json.dumps({"t": round(f.t - t0, 3), "direction": f.direction, "message": f.message}))
            out.write("\n")
