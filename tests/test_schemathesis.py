"""Fuzz the REST API from its own OpenAPI spec: no input may cause a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from policyfabric.lab.authority import AuthorityProcess

pytestmark = pytest.mark.integration  # starts authority processes and the CLI


def test_no_server_errors_from_openapi_fuzzing(fresh_authority: AuthorityProcess, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    done = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{fresh_authority.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--seed",
            "20261124",
            "--request-timeout",
            "10",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = done.stdout[-3000:]
    assert done.returncode == 0, summary + done.stderr[-2000:]
    assert "generated" in summary and "passed" in summary
    log = fresh_authority.log.read_text()
    assert "internal error" not in log, log[-3000:]
