"""The code in CONTRIBUTING.md runs: a newcomer's first example must not be stale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "CONTRIBUTING.md").read_text(), re.S)


def test_contributing_has_examples() -> None:
    assert BLOCKS, "CONTRIBUTING.md lost its python examples"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_contributing_examples_run(code: str) -> None:
    exec(compile(code, "CONTRIBUTING.md", "exec"), {})
