"""Tiny probe programs run inside endpoint namespaces (``python -m policyfabric.lab.probe``).

``serve tcp|udp PORT``: accept TCP connections / echo UDP datagrams until killed.
``serve tcp-echo PORT``: echo on every TCP connection (long-lived connection tests).
``tcp|udp ADDR PORT TIMEOUT``: exit 0 if a connection (an echo) succeeds in time.
Only the standard library: it starts in a fraction of a second.
"""

from __future__ import annotations

import socket
import sys
import threading


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def serve(proto: str, port: int) -> None:
    family = socket.AF_INET6
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    s = socket.socket(family, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    if proto in ("tcp", "tcp-echo"):
        s.listen(128)
        print("ready", flush=True)
        while True:
            conn, _ = s.accept()
            if proto == "tcp":
                conn.close()
            else:
                threading.Thread(target=_echo, args=(conn,), daemon=True).start()
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(data, addr)


def connect(proto: str, addr: str, port: int, timeout: float) -> bool:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
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
    if len(argv) == 4 and argv[0] in ("tcp", "udp"):
        return 0 if connect(argv[0], argv[1], int(argv[2]), float(argv[3])) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
