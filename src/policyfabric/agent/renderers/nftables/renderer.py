"""The Linux renderer: the compiled ruleset into the kernel, one nftables transaction per change.

``compile`` keeps a ``RulesetCompiler`` (compiler.py): the parts of the table whose inputs did
not change are reused, not rebuilt from the whole view. ``apply`` sends only what changed
(delta.py): set elements, map elements, the chains whose rules changed, in one transaction,
through libnftables in this process (kernel.py; ``nft -f`` processes where it is missing). The
whole table is written (add, delete, define: one transaction, so traffic sees the old table or
the new, never none; established connections stay in conntrack) on the first apply of this
process (after a restart the kernel's table is not read back: it is replaced whole, as before),
after drift, and after a failed transaction (the kernel's state is then unknown).

It takes over policy from Open vSwitch on its host (``TAKES_OVER_POLICY``):
the OVS pipeline there forwards and checks port security, and this table
decides what may pass. Run it with ``policyfabric agent ... --renderer
nftables`` (add ``:netns=NAME`` when the agent runs outside the host's
network namespace, as in the lab). It watches the table for changes made by anyone else
(``monitor.py``): on one, the next apply rewrites the whole table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import ClassVar

from policyfabric.agent.renderers.api import Applied, DriftLatch, Renderer, RendererContext
from policyfabric.agent.renderers.nftables.compiler import RulesetCompiler
from policyfabric.agent.renderers.nftables.delta import changes
from policyfabric.agent.renderers.nftables.kernel import Nft
from policyfabric.agent.renderers.nftables.monitor import NftMonitor
from policyfabric.agent.renderers.nftables.nflog import NflogReader
from policyfabric.agent.renderers.nftables.ruleset import Ruleset
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
        self._drifted = DriftLatch()  # someone else changed the table: rewrite it whole
        self._compiler = RulesetCompiler()
        self.nft = Nft(self.netns)  # libnftables in process (kernel.py), else nft -f processes
        # the logging rules' packets, to the agent's rule log (started by ``watch``)
        self.nflog = NflogReader(self.netns, context.rule_log) if context.rule_log is not None else None

    def watch(self, drifted: Callable[[str], None]) -> bool:
        """``nft monitor`` in the namespace: a change to the table by any other process is drift."""

        if self.monitor is None:
            self.monitor = NftMonitor(self.netns, self._drifted.wrap(drifted))
            self.monitor.start()
            if self.nflog is not None:
                self.nflog.start()
        return True

    def unwatch(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
            if self.nflog is not None:
                self.nflog.stop()

    def compile(self, net: Network) -> Ruleset:
        return self._compiler(net)

    def apply(self, desired: Ruleset) -> Applied:
        """What changed since the last apply (a join: one set element), or the whole table when
        the kernel's table is not known to hold the last one; either way one ``nft -f`` transaction."""
        start = time.monotonic()
        if self._drifted.take():
            self.applied = None
        own = self.monitor.own if self.monitor is not None else None
        if self.applied is None:
            run(["sysctl", "-q", "-w", *SYSCTLS], netns=self.netns)
        try:
            if self.applied is not None:
                delta = changes(self.applied, desired)
                if delta.text:
                    self.nft.run(delta.text, own)
                added, removed, how, full = delta.added, delta.removed, delta.describe(), False
            else:
                self.nft.run(desired.text(), own)
                added, removed, how, full = desired.elements + desired.rules, 0, "whole table", True
        except Exception:
            self.applied = None  # unknown state: the next apply replaces the whole table
            raise
        self.applied = desired
        seconds = time.monotonic() - start
        return Applied(added, removed, seconds, f"{how}; {desired.elements} set elements", full=full)
