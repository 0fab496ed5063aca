"""Tiny probe programs run inside endpoint namespaces (``python -m policyfabric.lab.probe``).

``serve tcp|udp PORT``: accept TCP connections / echo UDP datagrams until killed.
``serve tcp-echo PORT``: echo on every TCP connection (long-lived connection tests).
``serve bulk PORT``: on every TCP connection, read 1 MiB, check it, send 1 MiB back (a peer that
closes without sending, a ``tcp`` probe, is fine too).
``tcp|udp|bulk ADDR PORT TIMEOUT``: exit 0 if a connection (an echo; 1 MiB each way, every byte
as sent) succeeds in time.
Servers listen on IPv6 and IPv4 at once (``::``, not v6-only), so one serves ``tcp/N`` and
``tcp6/N`` probes. Only the standard library: it starts in a fraction of a second.
"""

from __future__ import annotations

import socket
import sys
import threading
import time

# 1 MiB of a pattern whose every 256-byte block is the same: a byte lost, duplicated or out of
# place shows as a mismatch, not only as a short count
BULK = bytes(range(256)) * 4096
BULK_TIMEOUT = 8.0  # seconds for the whole exchange: a stalled transfer (an MTU black hole) fails


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def _read_exactly(conn: socket.socket, size: int, deadline: float) -> bytes:
    """Up to ``size`` bytes: fewer if the peer closed first; ``TimeoutError`` past ``deadline``."""
    chunks, got = [], 0
    while got < size:
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        data = conn.recv(min(size - got, 1 << 16))
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def answer_bulk(conn: socket.socket) -> None:
    with conn:
        try:
            got = _read_exactly(conn, len(BULK), time.monotonic() + BULK_TIMEOUT)
            if got == BULK:
                conn.settimeout(BULK_TIMEOUT)
                conn.sendall(BULK)
                conn.shutdown(socket.SHUT_WR)
                _read_exactly(conn, 1, time.monotonic() + BULK_TIMEOUT)  # until the client is done
        except OSError:
            pass  # the client sees the transfer fail


def serve(proto: str, port: int) -> None:
    family = socket.AF_INET6
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    s = socket.socket(family, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    if proto in ("tcp", "tcp-echo", "bulk"):
        s.listen(128)
        print("ready", flush=True)
        handler = {"tcp-echo": _echo, "bulk": answer_bulk}.get(proto)
        while True:
            conn, _ = s.accept()
            if handler is None:
                conn.close()
            else:
                threading.Thread(target=handler, args=(conn,), daemon=True).start()
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(data, addr)


def bulk(addr: str, port: int, timeout: float) -> bool:
    """1 MiB to the server and 1 MiB back, every byte as sent, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((addr, port), timeout=timeout) as s:
        s.settimeout(max(deadline - time.monotonic(), 0.001))
        s.sendall(BULK)
        back = _read_exactly(s, len(BULK), deadline)
        return back == BULK


def connect(proto: str, addr: str, port: int, timeout: float) -> bool:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        if proto == "bulk":
            return bulk(addr, port, timeout)
        if proto == "tcp":
            with socket.create_connection((addr, port), timeout=timeout):
                return True
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(b"policyfabric-probe", (addr, port))
            return s.recv(2048) == b"policyfabric-probe"
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "serve":
        serve(argv[1], int(argv[2]))
        return 0
    if len(argv) == 4 and argv[0] in ("tcp", "udp", "bulk"):
        return 0 if connect(argv[0], argv[1], int(argv[2]), float(argv[3])) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
