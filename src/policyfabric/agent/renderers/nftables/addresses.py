"""Which addresses an endpoint's own chain sends to its ``out`` and ``in`` chains: its addresses
and its allowed address pairs' (Neutron's), as the elements of an anonymous nftables set.

A pair's prefix may contain the endpoint's own address (``10.1.0.0/24`` beside ``10.1.0.10``):
an interval set refuses overlapping elements ("conflicting intervals"), so the sources are
collapsed to the fewest prefixes covering them, host prefixes written as bare addresses (what
``nft list`` writes back).
"""

from __future__ import annotations

import ipaddress

from policyfabric.agent.view import Endpoint, bare


def _collapse(items: list[str]) -> list[str]:
    nets = [ipaddress.ip_network(i) for i in items]
    return [bare(str(n)) for n in ipaddress.collapse_addresses(nets)]  # type: ignore[type-var]


def sources(ep: Endpoint, v6: bool) -> list[str]:
    """What the endpoint may send from, in one family: its addresses and its pairs' prefixes."""
    found = [a for a in ep.source_prefixes if (":" in a) == v6]
    return _collapse(found) if ep.allowed_pairs else found


def destinations(ep: Endpoint, v6: bool) -> list[str]:
    """What is delivered to the endpoint, in one family: its addresses and its pairs' single
    addresses (a pair's prefix is a range it may send from, not one it is reached at)."""
    return [a for a in (*ep.ips, *ep.pair_hosts) if (":" in a) == v6]
