"""The benchmarks still run: each in-process one at a tiny size (the others start OVS and labs, and
`make bench` runs them), and every one answers --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
pytestmark = pytest.mark.integration  # subprocesses


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py") if p.name != "common.py"))
def test_every_benchmark_explains_itself(script: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr


def test_the_declarations_benchmark_runs_and_prints_its_figures() -> None:
    tiny = ["--endpoints", "20", "--hosts", "2", "--rounds", "1"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "declarations.py"), *tiny],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["stored"] == 40 and figures["declare_per_s"] > 0
