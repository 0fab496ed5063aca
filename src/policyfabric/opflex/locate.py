"""``pf_locate``: an agent asks the authority which tenant holds an endpoint of a given name.

A policyfabric extension of the OpFlex dialect (agent → authority, answered by the authority).
Why it exists: the agent knows an endpoint by ``TENANT/NAME``, but under OpenStack Nova's os-vif
writes ``external_ids:iface-id`` as the bare Neutron port UUID, and the Neutron driver names the
endpoint by that UUID inside the project's tenant. The agent sends the bare names it sees
(``{"names": [NAME, ...]}``) and gets ``{"found": {NAME: TENANT}, "ambiguous": {NAME: [TENANT,
...]}}``: a name held by one tenant is found, one held by several is ambiguous (the agent declares
none of them: which tenant's policy it would get is not its to guess), and a name in neither is
not known yet (the agent asks again later). Only our authority is asked; a reference peer never
sees the request.

Both ends parse here, at their edge: a name is the model's ``Name`` (a DNS label), a request holds
at most ``MAX_NAMES`` of them, and an answer is read only for the names that were asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policyfabric.model.types import check_label

METHOD = "pf_locate"
MAX_NAMES = 1000  # names in one request: a host with more bare iface-ids asks in several


class BadLocate(ValueError):
    """A request or answer that does not parse."""


def is_name(value: object) -> bool:
    """Whether ``value`` is a name the model allows (an endpoint's, a tenant's)."""
    try:
        check_label(value)
    except ValueError:
        return False
    return True


def request(names: Iterable[str]) -> dict[str, Any]:
    """The params of one request (the caller keeps to ``MAX_NAMES``)."""
    return {"names": sorted(set(names))}


def parse_request(params: Any) -> list[str]:
    """The names of a request, each checked; ``BadLocate`` says what is wrong."""
    if isinstance(params, list) and len(params) == 1:
        params = params[0]
    names = params.get("names") if isinstance(params, Mapping) else None
    if not isinstance(names, list):
        raise BadLocate("params must be one object with a list 'names'")
    if len(names) > MAX_NAMES:
        raise BadLocate(f"at most {MAX_NAMES} names in one request, not {len(names)}")
    bad = [n for n in names if not is_name(n)]
    if bad:
        raise BadLocate(f"{bad[0]!r} is not an endpoint name")
    return list(dict.fromkeys(names))


def answer(names: Iterable[str], tenants_of: Callable[[str], Iterable[str]]) -> dict[str, Any]:
    """The answer to a request: ``tenants_of(name)`` is every tenant holding an endpoint of it."""
    found: dict[str, str] = {}
    ambiguous: dict[str, list[str]] = {}
    for name in names:
        tenants = sorted(tenants_of(name))
        if len(tenants) == 1:
            found[name] = tenants[0]
        elif tenants:
            ambiguous[name] = tenants
    return {"found": found, "ambiguous": ambiguous}


@dataclass(frozen=True)
class Answer:
    """An answer, parsed: only names that were asked, only valid tenant names."""

    found: dict[str, str] = field(default_factory=dict)
    ambiguous: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, result: Any, asked: Iterable[str]) -> Answer:
        if not isinstance(result, Mapping):
            raise BadLocate("the answer is not an object")
        found, ambiguous = result.get("found", {}), result.get("ambiguous", {})
        if not isinstance(found, Mapping) or not isinstance(ambiguous, Mapping):
            raise BadLocate("'found' and 'ambiguous' must be objects")
        wanted = set(asked)
        out = cls()
        for name, tenant in found.items():
            if name in wanted and is_name(tenant):
                out.found[name] = tenant
        for name, tenants in ambiguous.items():
            if name in wanted and name not in out.found and isinstance(tenants, list):
                valid = tuple(sorted({t for t in tenants if is_name(t)}))
                if len(valid) > 1:
                    out.ambiguous[name] = valid
        return out
