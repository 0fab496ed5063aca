"""The REST edge of a real authority process under abusive clients: slow headers, idle and surplus
connections, huge bodies, an exhausted file descriptor table. Raw sockets, so nothing in between
is polite on the server's behalf."""

from __future__ import annotations

import contextlib
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyfabric.client import Client, Unreachable
from policyfabric.lab.authority import AuthorityProcess, authority_in, free_port

pytestmark = pytest.mark.integration  # starts authority processes


@contextlib.contextmanager
def authority(tmp_path: Path, *options: str) -> Iterator[AuthorityProcess]:
    server = authority_in(tmp_path / "authority", extra=list(options))
    with server:
        yield server


def raw(server: AuthorityProcess, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (reading and discarding what it sends)."""
    start = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - start < limit:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
    return float("inf")


def response(sock: socket.socket) -> bytes:
    out = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            out += chunk
    return out


def test_headers_sent_byte_by_byte_forever_are_cut_off(tmp_path: Path) -> None:
    with authority(tmp_path, "--header-timeout", "1") as server:
        slow = raw(server)
        slow.sendall(b"GET /v1/revision HTTP/1.1\r\nHost: x\r\n")
        start, dropped = time.monotonic(), None
        for byte in b"X-Slow: " + b"a" * 200:  # 20 s worth, if the server let it
            try:
                slow.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                dropped = time.monotonic() - start
                break
            if closed_after(slow, 0.1) != float("inf"):
                dropped = time.monotonic() - start
                break
        assert dropped is not None and 0.8 < dropped < 3.0, dropped
        idle = raw(server)  # a connection that never sends a byte
        assert 0.8 < closed_after(idle, 5.0) < 3.0
        with Client(server.url) as client:  # others are served all along
            assert client.revision() == 0
        assert "Traceback" not in server.log.read_text()


def test_a_huge_body_is_refused_unread_declared_or_chunked(tmp_path: Path) -> None:
    with authority(tmp_path, "--max-body", "4096") as server:
        assert server.proc is not None
        rss = rss_kib(server.proc.pid)
        sock = raw(server)
        sock.sendall(b"POST /v1/tenants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 100000000\r\n\r\n" + b" " * 65536)
        refused = response(sock).decode()
        assert refused.startswith("HTTP/1.1 413 ") and '"code":"too_large"' in refused
        sent = 0
        with contextlib.suppress(OSError):  # the server closed the connection: the rest is never read
            for _ in range(1600):  # 100 MB
                sock.sendall(b" " * 65536)
                sent += 65536
        assert sent < 50_000_000
        chunked = raw(server)
        chunked.sendall(b"POST /v1/tenants HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            chunked.sendall(b"800\r\n" + b"a" * 2048 + b"\r\n")
        chunked.sendall(b"0\r\n\r\n")
        text = response(chunked).decode()
        assert text.startswith("HTTP/1.1 413 ") and "4096 bytes" in text
        assert rss_kib(server.proc.pid) - rss < 20_000  # KiB: nothing of the 100 MB was kept
        endless = raw(server)  # headers that never end, sent as fast as it can
        endless.sendall(b"GET /v1/revision HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with contextlib.suppress(OSError):
            for _ in range(1000):  # 8 MB
                endless.sendall(b"a" * 8192)
        assert response(endless).startswith(b"HTTP/1.1 431 ")


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def test_connections_beyond_the_cap_get_503_and_one_log_line(tmp_path: Path) -> None:
    with authority(tmp_path, "--max-connections", "16", "--header-timeout", "30") as server:
        time.sleep(0.2)  # the readiness probe's connection is gone
        held = [raw(server, timeout=1.0) for _ in range(40)]
        time.sleep(0.5)
        answers = []
        for sock in held:
            sock.setblocking(False)
            try:
                answers.append(sock.recv(4096))
            except BlockingIOError:
                answers.append(b"")  # held open, waiting for a request
        shed = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
        assert 22 <= len(shed) <= 24 and answers.count(b"") == 40 - len(shed)
        assert b'"code":"unavailable"' in shed[0] and b"retry-after: 1" in shed[0]
        for sock in held:
            sock.close()
        time.sleep(1.2)
        with Client(server.url) as client:
            assert client.revision() == 0
        log = server.log.read_text()
        assert 1 <= log.count("refused new ones with 503") <= 3 and "Traceback" not in log


def spawn(
    tmp_path: Path, nofile: tuple[int, int], *options: str
) -> tuple[subprocess.Popen[bytes], Path, int]:
    """An authority under ``prlimit --nofile=SOFT:HARD`` (below the test's own hard limit)."""
    rest, log = free_port(), tmp_path / "authority.log"
    cmd = ["prlimit", f"--nofile={nofile[0]}:{nofile[1]}", sys.executable, "-m", "policyfabric", "authority"]
    cmd += ["--db", str(tmp_path / "pf.db"), "--listen", f"127.0.0.1:{rest}", *options]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(Unreachable), Client(f"http://127.0.0.1:{rest}", timeout=2) as client:
            client.revision()
            return proc, log, rest
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(log.read_text())


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_the_open_file_limit_is_raised_to_the_hard_one(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard < 600:
        pytest.skip(f"needs a finite hard RLIMIT_NOFILE of 600 or more (it is {hard})")
    proc, log, _ = spawn(tmp_path, (256, 600), "--opflex-listen", "off")
    try:
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        assert re.search(r"Max open files\s+600\s+600", limits), limits
        assert "at most 300 connections" in log.read_text()  # half the raised limit
    finally:
        stop(proc)


def test_running_out_of_file_descriptors_logs_a_line_a_second_not_a_traceback_per_accept(
    tmp_path: Path,
) -> None:
    opflex = free_port()
    proc, log, rest = spawn(
        tmp_path,
        (128, 128),
        *("--opflex-listen", f"127.0.0.1:{opflex}", "--keepalive", "30"),
        "--opflex-max-sessions",
        "1000",  # past what the descriptors allow (a warning): the table fills up
    )
    flood = []
    try:
        for _ in range(300):
            flood.append(socket.create_connection(("127.0.0.1", opflex), timeout=5))
        time.sleep(2.5)
        text = log.read_text()
        assert "Traceback" not in text and "out of system resource" not in text, text[-3000:]
        assert 1 <= text.count("cannot accept connections") <= 4, text[-3000:]
    finally:
        for sock in flood:
            sock.close()
    time.sleep(1.5)
    with Client(f"http://127.0.0.1:{rest}", timeout=5) as client:
        assert client.revision() == 0  # it recovers once the descriptors are back
    stop(proc)


def test_sigterm_stops_it_cleanly_with_status_0_and_a_stopped_line(tmp_path: Path) -> None:
    proc, log, _ = spawn(tmp_path, resource.getrlimit(resource.RLIMIT_NOFILE))
    proc.terminate()
    assert proc.wait(15) == 0, log.read_text()
    text = log.read_text()
    assert "policyfabric authority stopped" in text and "Traceback" not in text
