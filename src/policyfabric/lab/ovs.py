"""A private Open vSwitch: its own ovsdb-server and ovs-vswitchd (userspace datapath).

One instance per lab host, each in its own network namespace and run
directory: ``ovs-vswitchd`` with ``datapath_type=netdev`` creates a tap named
``ovs-netdev``, so two instances cannot share a namespace. Daemons are
started detached with pidfiles and stopped by PID, never by name.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from policyfabric.lab import processes
from policyfabric.sh import run

SCHEMA_PATHS = (Path("/usr/share/openvswitch/vswitch.ovsschema"),)


def schema() -> Path:
    for path in SCHEMA_PATHS:
        if path.exists():
            return path
    raise FileNotFoundError(
        "Open vSwitch is not installed (no vswitch.ovsschema); run scripts/bootstrap.sh as root"
    )


class OvsInstance:
    """ovsdb-server + ovs-vswitchd under ``rundir``, optionally inside ``netns``."""

    def __init__(self, rundir: Path, netns: str | None = None) -> None:
        self.rundir, self.netns = rundir, netns

    @property
    def db_sock(self) -> Path:
        return self.rundir / "db.sock"

    @property
    def ovsdb(self) -> str:
        return f"unix:{self.db_sock}"

    def mgmt(self, bridge: str) -> str:
        """The bridge's OpenFlow management socket (what ovs-ofctl talks to)."""
        return f"unix:{self.rundir / (bridge + '.mgmt')}"

    @property
    def env(self) -> dict[str, str]:
        r = str(self.rundir)
        return {**os.environ, "OVS_RUNDIR": r, "OVS_LOGDIR": r, "OVS_DBDIR": r, "OVS_SYSCONFDIR": r}

    def start(self) -> None:
        self.rundir.mkdir(parents=True, exist_ok=True)
        conf = self.rundir / "conf.db"
        if not conf.exists():
            run(["ovsdb-tool", "create", str(conf), str(schema())], env=self.env)
        r = self.rundir
        run(
            [
                "ovsdb-server",
                str(conf),
                f"--remote=punix:{self.db_sock}",
                f"--pidfile={r / 'ovsdb-server.pid'}",
                f"--unixctl={r / 'ovsdb-server.ctl'}",
                f"--log-file={r / 'ovsdb-server.log'}",
                "--detach",
            ],
            netns=self.netns,
            env=self.env,
        )
        self.vsctl("--no-wait", "init")
        run(
            [
                "ovs-vswitchd",
                self.ovsdb,
                f"--pidfile={r / 'ovs-vswitchd.pid'}",
                f"--unixctl={r / 'ovs-vswitchd.ctl'}",
                f"--log-file={r / 'ovs-vswitchd.log'}",
                "--detach",
            ],
            netns=self.netns,
            env=self.env,
        )

    def vsctl(self, *args: str, timeout: float = 30.0) -> str:
        return run(["ovs-vsctl", f"--db={self.ovsdb}", "--timeout=20", *args], env=self.env, timeout=timeout)

    def ofctl(self, *args: str, input: str | None = None, timeout: float = 60.0) -> str:
        return run(["ovs-ofctl", "-O", "OpenFlow15", *args], env=self.env, input=input, timeout=timeout)

    def appctl(self, *args: str) -> str:
        return run(["ovs-appctl", "-t", str(self.rundir / "ovs-vswitchd.ctl"), *args], env=self.env)

    def add_bridge(self, name: str, *extra: str) -> None:
        self.vsctl(
            "--may-exist",
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            "datapath_type=netdev",
            "protocols=OpenFlow10,OpenFlow13,OpenFlow14,OpenFlow15",
            "fail_mode=secure",
            *extra,
        )

    def pids(self) -> list[int]:
        out = []
        for name in ("ovs-vswitchd.pid", "ovsdb-server.pid"):
            with contextlib.suppress(OSError, ValueError):
                out.append(int((self.rundir / name).read_text().strip()))
        return out

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both daemons by PID (vswitchd first, so it removes its ports cleanly)."""
        for pid in self.pids():
            processes.stop(pid, timeout)

    def kill(self) -> None:
        for pid in self.pids():
            processes.kill(pid)
