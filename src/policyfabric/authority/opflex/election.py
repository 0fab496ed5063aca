"""Gateway HA wiring: the state around the pure election of ``authority/gateways.py``.

The candidates come from the policy (each rebuilt tenant tree's
``PfExternalGateway`` objects, read once per rebuild, not once per
election); the live gateway hosts come from the observer (connected agents
that reported their ``PfGatewayPorts``). The server re-runs ``run`` whenever
either side changes and marks the tenants whose routers changed hands dirty,
so the repository rebuilds them with the new ``activeHost`` and pushes them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from policyfabric.authority import gateways as gw
from policyfabric.opflex.gbp import Cls, Prop
from policyfabric.opflex.mo import REFERENCE_URI, Tree

log = logging.getLogger(__name__)


def candidates(tenant: str, tree: Tree) -> list[gw.Candidate]:
    """The tenant's routers with an SNAT gateway, as election candidates."""
    out = []
    for mo in tree.mos.values():
        if mo.subject != Cls.PF_EXTERNAL_GATEWAY:
            continue
        router = tree.mos.get(mo.parent_uri or "")
        net = mo.properties.get(Prop.NETWORK)
        if router is None or not isinstance(net, dict) or not int(mo.properties.get(Prop.SNAT, 1)):
            continue
        hosts = tuple(h for h in mo.properties.get(Prop.HOSTS, []) if isinstance(h, str))
        out.append(gw.Candidate((tenant, str(router.properties.get(Prop.NAME))), net[REFERENCE_URI], hosts))
    return out


class GatewayElection:
    """The current result of the election (``active``) and what it is run over."""

    def __init__(self) -> None:
        self.active: dict[gw.RouterKey, tuple[str, str]] = {}  # router -> active (host, tunnel IP)
        self._candidates: dict[str, list[gw.Candidate]] = {}  # tenant -> its routers with SNAT gateways

    def consider(self, tenant: str, tree: Tree) -> None:
        """Take the candidates of a freshly built tenant tree (an empty tree: the tenant is gone)."""
        self._candidates[tenant] = candidates(tenant, tree)

    def snapshot(self) -> dict[gw.RouterKey, tuple[str, str]]:
        """A copy of the result, for a tree rebuild off the event loop."""
        return dict(self.active)

    def run(self, alive: Mapping[str, gw.GatewayHost]) -> set[str]:
        """Re-run the election over the hosts ``alive``; the tenants whose routers changed."""
        fresh = gw.elect([c for found in self._candidates.values() for c in found], alive, self.active)
        if fresh == self.active:
            return set()
        for key in sorted(set(fresh) | set(self.active)):
            old, new = self.active.get(key, ("", ""))[0], fresh.get(key, ("", ""))[0]
            if old != new:
                log.warning(
                    "opflex: router %s/%s: active gateway %s -> %s", *key, old or "none", new or "none"
                )
        changed = {key[0] for key, _ in set(fresh.items()) ^ set(self.active.items())}
        self.active = fresh
        return changed

    def adopt(self, active: Mapping[gw.RouterKey, tuple[str, str]]) -> set[str]:
        """Take the result another replica's election came to (it leads); the tenants whose routers
        changed hands."""
        changed = {key[0] for key, _ in set(active.items()) ^ set(self.active.items())}
        self.active = dict(active)
        return changed

    def routers_of(self, host: str) -> list[str]:
        """``TENANT/ROUTER`` of every router ``host`` is the active gateway of, sorted."""
        return sorted(f"{t}/{r}" for (t, r), (h, _) in self.active.items() if h == host)


__all__ = ["GatewayElection", "candidates"]
