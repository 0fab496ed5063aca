"""Putting compiled flows on the bridge: diff against what is there, apply atomically.

The first sync after start uses ``ovs-ofctl --bundle replace-flows``: OVS
compares every flow itself and changes only those that differ, in one
bundle, so a restarted agent with unchanged policy touches nothing and no
connection notices. After that the agent keeps a mirror of what it
installed and sends only the difference (``flow add`` / ``flow
delete_strict`` lines) as one bundle: all of a change or none of it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.sh import run

log = logging.getLogger(__name__)

TLV_MAP = "{class=0x5046,type=0x01,len=4}->tun_metadata0"


@dataclass(frozen=True)
class Applied:
    added: int
    removed: int
    seconds: float
    full: bool


# Flows name ports by number. Without --no-names, ovs-ofctl fetches every port's
# description before each command so that it could parse names: 136 ms instead
# of 41 ms per two-flow bundle on a bridge with 2,000 ports.
OFCTL = ("ovs-ofctl", "-O", "OpenFlow15", "--no-names")


class FlowApplier:
    def __init__(self, target: str, env: Mapping[str, str] | None = None) -> None:
        self.target, self.env = target, dict(env) if env is not None else None
        self.installed: dict[tuple[int, int, tuple[tuple[str, str], ...]], Flow] | None = None

    def _ofctl(self, *args: str, text: str) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".flows", delete=False) as f:
            f.write(text)
        try:
            run([*OFCTL, *args, f.name], env=self.env)
        finally:
            os.unlink(f.name)

    def ensure_tlv_map(self) -> None:
        """Map the Geneve option that carries the source group to ``tun_metadata0`` (once per bridge)."""
        have = run([*OFCTL, "dump-tlv-map", self.target], env=self.env)
        if any(line.split() == ["0x5046", "0x1", "4", "tun_metadata0"] for line in have.splitlines()):
            return
        run([*OFCTL, "add-tlv-map", self.target, TLV_MAP], env=self.env)

    def packet_out(self, spec: str) -> None:
        """Send one packet from the switch (``in_port=... packet=HEX actions=...``)."""
        run([*OFCTL, "packet-out", self.target, spec], env=self.env)

    def sync(self, flows: Iterable[Flow]) -> Applied:
        """Make the bridge hold exactly ``flows``."""
        start = time.monotonic()
        desired = {f.key: f for f in flows}
        if self.installed is None:
            self.ensure_tlv_map()
            self._ofctl(
                "--bundle",
                "replace-flows",
                self.target,
                text="".join(f.text() + "\n" for f in desired.values()),
            )
            self.installed = desired
            return Applied(len(desired), 0, time.monotonic() - start, True)
        lines, added, removed = [], 0, 0
        for key, gone in self.installed.items():
            if key not in desired:
                lines.append(f"flow delete_strict {gone.match_text()}")
                removed += 1
        for key, new in desired.items():
            old = self.installed.get(key)
            if old is not new and old != new:  # compiled flows are memoised: mostly the same object
                lines.append(f"flow add {new.text()}")  # add replaces a flow with the same match
                added += 1
        if lines:
            try:
                self._ofctl("bundle", self.target, text="\n".join(lines) + "\n")
            except Exception:
                self.installed = None  # unknown state: the next sync is a full one
                raise
            self.installed = desired
        return Applied(added, removed, time.monotonic() - start, False)
