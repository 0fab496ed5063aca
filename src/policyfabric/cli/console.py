"""The CLI's consoles and its one way to fail: a red ``error:`` line and an exit code."""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console

# Not a terminal: $COLUMNS if set (``-o wide`` into a file), else 160 (rich's 80 cuts tables).
PIPE_WIDTH = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 160
out = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
err = Console(stderr=True, width=None if sys.stderr.isatty() else PIPE_WIDTH)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line, never cut
    return typer.Exit(code)


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def setup_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level``, as text or one JSON object a line (``logformat``); an unknown
    level or format is a one-line error naming the valid ones."""
    if level.lower() not in LOG_LEVELS:
        raise fail(f"--log-level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    if log_format not in LOG_FORMATS:
        raise fail(f"--log-format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from policyfabric.cli.logformat import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
