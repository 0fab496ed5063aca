"""The authority's side of ``pf_locate`` (opflex/locate.py): which tenants hold an endpoint name.

Why an index kept from the intent index's changes: an agent asks for the bare names on its bridge
(Neutron port UUIDs) on every plug and while they stay unknown, and a scan of every tenant per
name would cost the size of the fabric. The intent index (``intent_index.py``) already tells its
listeners which endpoints appeared, changed or went, tenant by tenant as the repository rebuilds
them, so this keeps ``name → tenants`` from those changes: an answer is a dictionary lookup per
name, and it says what agents may declare (the same source the registry checks declarations
against).
"""

from __future__ import annotations

import logging
from typing import Any

from policyfabric.authority.opflex.intent_index import Changed, IntentIndex
from policyfabric.opflex.locate import BadLocate, answer, parse_request
from policyfabric.opflex.rpc import RpcError
from policyfabric.opflex.wire import Code

log = logging.getLogger(__name__)


class NameIndex:
    """``NAME → {TENANT}`` over the intent's endpoints; answers ``pf_locate``."""

    def __init__(self, intent: IntentIndex) -> None:
        self._tenants: dict[str, set[str]] = {}
        intent.listeners.append(self._changed)

    def _changed(self, changed: Changed) -> None:
        for key, was, now in changed:
            tenant, _, name = key.partition("/")
            if was is None and now is not None:
                self._tenants.setdefault(name, set()).add(tenant)
            elif was is not None and now is None:
                held = self._tenants.get(name)
                if held is not None:
                    held.discard(tenant)
                    if not held:
                        del self._tenants[name]

    def tenants_of(self, name: str) -> frozenset[str]:
        return frozenset(self._tenants.get(name, ()))

    async def locate(self, peer: object, params: list[Any]) -> dict[str, Any]:
        """The request handler (the server's dispatch signature: the peer, then the params)."""
        try:
            names = parse_request(params)
        except BadLocate as exc:
            raise RpcError(Code.ERROR, f"Malformed message: {exc}") from None
        return answer(names, self.tenants_of)
