"""The Linux renderer: the compiled ruleset into the kernel, one ``nft -f`` transaction per change.

It takes over policy from Open vSwitch on its host (``TAKES_OVER_POLICY``):
the OVS pipeline there forwards and checks port security, and this table
decides what may pass. Run it with ``policyfabric agent ... --renderer
nftables`` (add ``:netns=NAME`` when the agent runs outside the host's
network namespace, as in the lab). It watches the table for changes made by anyone else
(``monitor.py``): on one, the next apply rewrites the whole table.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import ClassVar

from policyfabric.agent.renderers.api import Applied, Renderer, RendererContext
from policyfabric.agent.renderers.nftables.monitor import NftMonitor
from policyfabric.agent.renderers.nftables.ruleset import Ruleset, compile_ruleset
from policyfabric.agent.view import Network
from policyfabric.sh import run

# bridged IP traffic must cross the inet hooks (per network namespace; the default is on)
SYSCTLS = ("net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1")


class NftablesRenderer(Renderer[Ruleset]):
    OPTIONS: ClassVar[Mapping[str, str]] = {
        "netns": "network namespace whose nftables to program (default: the agent's own)"
    }
    TAKES_OVER_POLICY: ClassVar[bool] = True

    def __init__(self, context: RendererContext) -> None:
        super().__init__(context)
        self.netns = context.options.get("netns") or None
        self.applied: Ruleset | None = None
        self.monitor: NftMonitor | None = None
        self._drifted = threading.Event()  # someone else changed the table: rewrite it whole

    def watch(self, drifted: Callable[[str], None]) -> bool:
        """``nft monitor`` in the namespace: a change to the table by any other process is drift."""

        def on_drift(what: str) -> None:
            self._drifted.set()
            drifted(what)

        if self.monitor is None:
            self.monitor = NftMonitor(self.netns, on_drift)
            self.monitor.start()
        return True

    def unwatch(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None

    def compile(self, net: Network) -> Ruleset:
        return compile_ruleset(net)

    def apply(self, desired: Ruleset) -> Applied:
        """Set element updates when only membership changed (Felix's set updates: a join is one
        element), else the whole table; either way one ``nft -f`` transaction."""
        start = time.monotonic()
        if self._drifted.is_set():
            self._drifted.clear()
            self.applied = None
        own = self.monitor.own if self.monitor is not None else None
        if self.applied is None:
            run(["sysctl", "-q", "-w", *SYSCTLS], netns=self.netns)
        delta = desired.update_from(self.applied) if self.applied is not None else None
        try:
            if delta is not None:
                if delta:
                    run(["nft", "-f", "-"], netns=self.netns, input=delta, started=own)
                added = sum(line.startswith("add element") for line in delta.splitlines())
                removed = sum(line.startswith("delete element") for line in delta.splitlines())
                how = "set elements"
            else:
                text = desired.text()
                run(["nft", "-f", "-"], netns=self.netns, input=text, started=own)
                old = set(self.applied.text().splitlines()) if self.applied else set()
                new = set(text.splitlines())
                added, removed, how = len(new - old), len(old - new), "whole table"
        except Exception:
            self.applied = None  # unknown state: the next apply replaces the whole table
            raise
        self.applied = desired
        return Applied(added, removed, time.monotonic() - start, f"{how}; {desired.elements} set elements")
