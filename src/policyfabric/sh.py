"""Running the machine's networking tools, optionally inside a network namespace.

The one door to subprocesses: everything the agent's renderers (ovs-ofctl, nft) and
the lab (ip, ovs-vsctl, ethtool) run goes through here, so a failure always says which
command failed and what it printed. It sits at the bottom of the package: any layer may use it.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger(__name__)


class CommandFailed(RuntimeError):
    def __init__(self, argv: Sequence[str], code: int, output: str) -> None:
        self.argv, self.code, self.output = list(argv), code, output
        super().__init__(f"`{' '.join(argv)}` exited {code}: {output.strip()[-2000:]}")


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60.0,
    started: Callable[[int], None] | None = None,
) -> str:
    """Run a command to completion and return its stdout; raise CommandFailed on error.
    ``started(pid)`` is called once the process exists, before it is given its input (the
    nftables renderer tells its own changes apart from others' by the PID that made them)."""
    full = in_netns(netns, argv)
    log.debug("run: %s", " ".join(full))
    if started is None:
        proc = subprocess.run(
            full,
            input=input,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            timeout=timeout,
        )
    else:
        with subprocess.Popen(
            full,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env) if env is not None else None,
        ) as popen:
            started(popen.pid)
            try:
                out, err = popen.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                raise
        proc = subprocess.CompletedProcess(full, popen.returncode, out, err)
    if check and proc.returncode != 0:
        raise CommandFailed(full, proc.returncode, proc.stderr + proc.stdout)
    return proc.stdout
