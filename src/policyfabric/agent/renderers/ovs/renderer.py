"""Open vSwitch as a renderer: the same two steps as every plug-in.

``compile(net)`` is ``compile_pipeline`` (pure) plus the addresses this host
answers for on external networks; ``apply(desired)`` is the flow applier's
sync (one bundle against its mirror) followed by ARP announcements for the
addresses that are new. The agent runs it first in the same list, through the
same code path, as the plug-ins (``api.Renderer``), and logs its ``Applied``
the same way.

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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from policyfabric.agent.renderers import api
from policyfabric.agent.renderers.ovs import external
from policyfabric.agent.renderers.ovs.announce import Announcer
from policyfabric.agent.renderers.ovs.applier import FlowApplier
from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.view import Network

NAME = "openvswitch"


@dataclass(frozen=True)
class Bridge:
    """What the bridge should hold (its flows) and the addresses it answers for on external
    networks (announced when they appear)."""

    flows: tuple[Flow, ...]
    announcements: frozenset[external.Announcement]


class OvsRenderer(api.Renderer[Bridge]):
    def __init__(
        self, context: api.RendererContext, applier: FlowApplier, enforce_policy: bool = True
    ) -> None:
        super().__init__(context)
        self.applier, self.enforce_policy = applier, enforce_policy
        self.announcer = Announcer(applier.packet_out, context.host)
        self.applied: Bridge | None = None

    def compile(self, net: Network) -> Bridge:
        flows = compile_pipeline(net, net.tunnel_port, enforce_policy=self.enforce_policy)
        return Bridge(tuple(flows), frozenset(external.announcements(net)))

    def apply(self, desired: Bridge) -> api.Applied:
        """One bundle (the first a full ``replace-flows``, then deltas), then the announcements of
        addresses that appeared. Raises if the bundle fails (the applier's next sync is then full)."""
        synced = self.applier.sync(desired.flows)
        self.applied = desired
        self.announcer.update(desired.announcements)
        n = len(desired.flows)
        if synced.full:
            detail = f"full sync of {n} flows (OVS changes only those that differ)"
        else:
            detail = f"delta sync ({n} flows in all)"
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
        return len(self.applied.flows) if self.applied is not None else 0
