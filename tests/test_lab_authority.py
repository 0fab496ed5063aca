"""The lab's authority process: a first start whose ports were taken in between is tried again."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from policyfabric.lab.authority import authority_in

pytestmark = pytest.mark.integration


def test_a_first_start_on_a_taken_port_moves_to_free_ones(tmp_path: Path) -> None:
    server = authority_in(tmp_path / "authority")
    with socket.socket() as squatter:  # someone took the REST port after free_port chose it
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        taken = server.port
        server.start()
        try:
            assert server.port != taken
            assert "address already in use" in server.log.read_text()
            moved = server.port
            server.stop()
            server.start()  # a later start keeps its ports
            assert server.port == moved
        finally:
            server.stop()
