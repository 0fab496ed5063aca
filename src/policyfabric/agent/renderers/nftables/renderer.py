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
from policyfabric.agent.renderers.nftables.ruleset import compile_ruleset, set_elements
from policyfabric.agent.view import Network
from policyfabric.lab.sh import run

# bridged IP traffic must cross the inet hooks (per network namespace; the default is on)
SYSCTLS = ("net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1")


class NftablesRenderer(Renderer[str]):
    OPTIONS: ClassVar[Mapping[str, str]] = {
        "netns": "network namespace whose nftables to program (default: the agent's own)"
    }
    TAKES_OVER_POLICY: ClassVar[bool] = True

    def __init__(self, context: RendererContext) -> None:
        super().__init__(context)
        self.netns = context.options.get("netns") or None
        self.applied: str | None = None

    def compile(self, net: Network) -> str:
        return compile_ruleset(net)

    def apply(self, desired: str) -> Applied:
        start = time.monotonic()
        if self.applied is None:
            run(["sysctl", "-q", "-w", *SYSCTLS], netns=self.netns)
        run(["nft", "-f", "-"], netns=self.netns, input=desired)
        old = set((self.applied or "").splitlines())
        new = set(desired.splitlines())
        self.applied = desired
        return Applied(
            len(new - old), len(old - new), time.monotonic() - start, f"{set_elements(desired)} set elements"
        )
