"""ARP announcements on external networks: packets the bridge sends, not flows it holds.

Why this is its own module: when a floating IP or a router's gateway address
arrives on this host, the external side must hear of it (its switches and
neighbours still point at the old host) and the network's gateway must be
resolved. That is a packet-out per address, an OVS effect beside the flows,
so it lives on the OVS renderer's side; ``external.announcements(net)`` says
(pure) which addresses this host answers for, and this module sends for them:

- a gratuitous ARP for each address (``arp_frame(mac, ip, ip)``) and an ARP
  request from it for the network's gateway (the reply fills the neighbour
  table), when the address appears, and again every ``--announce-every``
  seconds (``refresh``) for neighbours that missed it;
- a failed send is logged and dropped: the next refresh sends it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from policyfabric.agent.renderers.ovs.external import Announcement, arp_frame

log = logging.getLogger(__name__)


def _order(a: Announcement) -> tuple[int, str]:
    return a.port, a.ip


def packet_outs(items: Iterable[Announcement]) -> list[str]:
    """The ``ovs-ofctl packet-out`` specs that announce ``items`` (pure)."""
    lines = []
    for a in items:
        for target in (a.ip, a.gateway_ip):
            frame = arp_frame(a.mac, a.ip, target).hex()
            lines.append(f"in_port=controller packet={frame} actions=output:{a.port}")
    return lines


class Announcer:
    """Announces addresses as they appear; remembers them for the periodic refresh. Blocking (it
    runs ``packet_out``): call it from a worker thread."""

    def __init__(self, packet_out: Callable[[str], None], host: str) -> None:
        self.packet_out, self.host = packet_out, host
        self.announced: frozenset[Announcement] = frozenset()

    def update(self, current: frozenset[Announcement]) -> None:
        """Announce what is new in ``current`` since the last update."""
        fresh = sorted(current - self.announced, key=_order)
        if fresh:
            log.info(
                "agent %s: now answering on external networks for %s",
                self.host,
                ", ".join(a.ip for a in fresh),
            )
            self.send(fresh)
        self.announced = current

    def refresh(self) -> None:
        """Announce everything again."""
        self.send(sorted(self.announced, key=_order))

    def send(self, items: Iterable[Announcement]) -> None:
        for line in packet_outs(items):
            try:
                self.packet_out(line)
            except Exception as exc:
                log.warning("agent %s: ARP announcement failed: %s", self.host, exc)
