"""Open vSwitch as a renderer: the same two steps as every plug-in.

``compile(net)`` is the pipeline's sections (pure: ``pipeline.SectionCompiler``,
which rebuilds only the sections whose inputs changed) plus the addresses this
host answers for on external networks; ``apply(desired)`` is the flow applier's
sync (one bundle against its mirror, comparing only the sections that changed)
followed by ARP announcements for the addresses that are new. The agent runs
it first in the same list, through the same code path, as the plug-ins
(``api.Renderer``), and logs its ``Applied`` the same way.

Its OVS-specific inputs, and why each arrives the way it does:

- the tunnel's OpenFlow port is on the view (``Network.tunnel_port``), as
  endpoints' and external networks' ports are (``Endpoint.ofport``,
  ``ExternalNet.ofport``): it is discovered from OVSDB on every reconcile and
  can change (a re-created port gets a new number), so it is input data, and
  ``compile`` stays a pure function of the view alone;
- ``enforce_policy`` is a construction argument: it is fixed for the agent's
  life by which plug-ins it loaded (one that ``TAKES_OVER_POLICY`` makes the
  bridge forward and check port security only);
- the ``FlowApplier`` is a construction argument: the device layer (which
  bridge, which ``ovs-ofctl`` target), injected so tests can pass their own.

The agent applies only when the compiled state differs from the last one
applied (``last == desired``, every reconcile): with nothing changed the
compiler hands back the very same ``Bridge``, and two bridges compare by
identity first, then only in the sections that either changed since a common
root (``Sections.__eq__``), never flow by flow over the whole bridge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from policyfabric.agent.renderers import api
from policyfabric.agent.renderers.ovs import external
from policyfabric.agent.renderers.ovs.announce import Announcer
from policyfabric.agent.renderers.ovs.applier import FlowApplier
from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.renderers.ovs.pipeline import SectionCompiler
from policyfabric.agent.renderers.ovs.sections import Sections
from policyfabric.agent.view import Network

NAME = "openvswitch"


@dataclass(frozen=True, eq=False)
class Bridge:
    """What the bridge should hold (its flows, in sections) and the addresses it answers for on
    external networks (announced when they appear)."""

    sections: Sections
    announcements: frozenset[external.Announcement]

    @property
    def flows(self) -> tuple[Flow, ...]:
        """Every flow, one per key (resolved once, then kept: for tests and tools, not the agent)."""
        return self.sections.flows

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Bridge):
            return NotImplemented
        return self.announcements == other.announcements and self.sections == other.sections

    __hash__ = None  # type: ignore[assignment]


class OvsRenderer(api.Renderer[Bridge]):
    def __init__(
        self, context: api.RendererContext, applier: FlowApplier, enforce_policy: bool = True
    ) -> None:
        super().__init__(context)
        self.applier, self.enforce_policy = applier, enforce_policy
        self.announcer = Announcer(applier.packet_out, context.host)
        self.applied: Bridge | None = None
        self._compiler = SectionCompiler(enforce_policy)
        self._compiled: Bridge | None = None
        self._count = 0

    def compile(self, net: Network) -> Bridge:
        """The bridge for ``net``; the very object of the last compile if nothing changed."""
        sections = self._compiler.compile(net, net.tunnel_port)
        announcements = self._compiler.announcements
        last = self._compiled
        if last is None or last.sections is not sections or last.announcements != announcements:
            last = self._compiled = Bridge(sections, announcements)
        return last

    def apply(self, desired: Bridge) -> api.Applied:
        """One bundle (the first a full ``replace-flows``, then deltas), then the announcements of
        addresses that appeared. Raises if the bundle fails (the applier's next sync is then full)."""
        synced = self.applier.sync(desired.sections)
        self.applied = desired
        self.announcer.update(desired.announcements)
        installed = self.applier.installed if isinstance(self.applier, FlowApplier) else None
        self._count = n = len(installed) if installed is not None else len(desired.flows)
        if synced.full:
            detail = f"full sync of {n} flows (OVS changes only those that differ)"
        else:
            detail = f"delta sync ({n} flows in all)"
        if isinstance(self.applier, FlowApplier) and synced.seconds >= 0.1:  # where a slow one went
            plan, send = self.applier.last_split
            detail += f"; planned in {plan * 1000:.0f} ms, sent in {send * 1000:.0f} ms"
        return api.Applied(synced.added, synced.removed, synced.seconds, detail, full=synced.full)

    def watch(self, drifted: Callable[[str], None]) -> bool:
        """A flow monitor on the bridge (``monitor.py``): flows changed by others are drift."""
        return self.applier.watch(drifted)

    def unwatch(self) -> None:
        self.applier.unwatch()

    def refresh_announcements(self) -> None:
        """Announce every address again (neighbours that missed it, expired caches). Blocking."""
        self.announcer.refresh()

    @property
    def flows(self) -> int:
        """How many flows the bridge holds (as last applied)."""
        return self._count
