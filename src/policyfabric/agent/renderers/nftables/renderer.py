"""The Linux renderer: the compiled ruleset into the kernel, one ``nft -f`` transaction per change.

It takes over policy from Open vSwitch on its host (``TAKES_OVER_POLICY``):
the OVS pipeline there forwards and checks port security, and this table
decides what may pass. Run it with ``policyfabric agent ... --renderer
nftables`` (add ``:netns=NAME`` when the agent runs outside the host's
network namespace, as in the lab).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import ClassVar

from policyfabric.agent.renderers.api import Applied, Renderer, RendererContext
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

    def compile(self, net: Network) -> Ruleset:
        return compile_ruleset(net)

    def apply(self, desired: Ruleset) -> Applied:
        """Set element updates when only membership changed (Felix's set updates: a join is one
        element), else the whole table; either way one ``nft -f`` transaction."""
        start = time.monotonic()
        if self.applied is None:
            run(["sysctl", "-q", "-w", *SYSCTLS], netns=self.netns)
        delta = desired.update_from(self.applied) if self.applied is not None else None
        try:
            if delta is not None:
                if delta:
                    run(["nft", "-f", "-"], netns=self.netns, input=delta)
                added = sum(line.startswith("add element") for line in delta.splitlines())
                removed = sum(line.startswith("delete element") for line in delta.splitlines())
                how = "set elements"
            else:
                text = desired.text()
                run(["nft", "-f", "-"], netns=self.netns, input=text)
                old = set(self.applied.text().splitlines()) if self.applied else set()
                new = set(text.splitlines())
                added, removed, how = len(new - old), len(old - new), "whole table"
        except Exception:
            self.applied = None  # unknown state: the next apply replaces the whole table
            raise
        self.applied = desired
        return Applied(added, removed, time.monotonic() - start, f"{how}; {desired.elements} set elements")
