"""The request parameters the authority accepts, and how a malformed one is refused.

Each OpFlex request carries a list of parameter objects. These models check
their shape (extra keys are allowed, as libopflex sends some we ignore);
``parse`` turns a failure into libopflex's ``ERROR`` "Malformed message" reply.
Shared by the session dispatcher and the three role components, so it sits
below all of them.

Everything a peer names is bounded here, where it enters: an agent's name is
a host name (it is written into endpoint records), a lease (``prr``) is a
whole number of seconds from 1 to ``MAX_PRR`` (a float, a huge integer or
``true`` is not a lease, and would overflow the clock it is added to), and
subjects and URIs have a length limit (they are kept as subscription keys).
The managed objects of a declaration or a report must have the shape of one
(``wire_mo``: the types of its fields), so that the roles reading them meet
no surprise; they stay dicts, read by ``MO.from_wire``.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, ValidationError

from policyfabric.model.types import Hostname
from policyfabric.opflex.rpc import RpcError
from policyfabric.opflex.wire import Code

MAX_PRR = 86400  # seconds: a day; agents renew at a third to a half of it (libopflex: 7200)
MAX_URI = 4096  # characters; a registry URI holds an escaped bridge domain URI
MAX_SUBJECT = 128

Prr = Annotated[StrictInt, Field(ge=1, le=MAX_PRR)]
Uri = Annotated[str, Field(max_length=MAX_URI)]
Subject = Annotated[str, Field(max_length=MAX_SUBJECT)]


def wire_mo(mo: dict[str, Any]) -> dict[str, Any]:
    """An MO as sent: string ``subject`` and ``uri``, ``properties`` a list of ``{name, data}``,
    ``children`` a list of URIs, the ``parent_*`` fields strings (any may be left out)."""
    for key in ("subject", "uri"):
        if not isinstance(mo.get(key), str):
            raise ValueError(f"an MO needs a string {key!r}")
    for key in ("parent_subject", "parent_uri", "parent_relation"):
        if not isinstance(mo.get(key), str | None):
            raise ValueError(f"{key!r} must be a string")
    props, children = mo.get("properties") or [], mo.get("children") or []
    if not isinstance(props, list) or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) for p in props
    ):
        raise ValueError("'properties' must be a list of {name, data}")
    if not isinstance(children, list) or not all(isinstance(c, str) for c in children):
        raise ValueError("'children' must be a list of URIs")
    return mo


WireMO = Annotated[dict[str, Any], AfterValidator(wire_mo)]


class _Params(BaseModel):
    model_config = ConfigDict(extra="allow")


class Identity(_Params):
    proto_version: str = "1.0"
    name: Hostname
    domain: str
    my_role: list[str]
    data: dict[str, Any] | None = None  # ours: {"agent": "policyfabric X"}; libopflex: {mac, features}

    @property
    def reports_status(self) -> bool:
        """Whether the agent reports its endpoints' status (ours, ``PfEndpointStatus``). The
        reference agent does not: it declares an endpoint once it is attached and its policy
        resolved, so its declaration is what says the endpoint is up."""
        agent = self.data.get("agent") if self.data else None
        return isinstance(agent, str) and agent.startswith("policyfabric ")


class Resolve(_Params):
    subject: Subject
    policy_uri: Uri
    prr: Prr


class Unresolve(_Params):
    subject: Subject
    policy_uri: Uri


class Declare(_Params):
    endpoint: list[WireMO]
    prr: Prr


class EndpointRef(_Params):
    subject: Subject
    endpoint_uri: Uri


class EndpointResolve(EndpointRef):
    prr: Prr


class Report(_Params):
    observable: list[WireMO]


P = TypeVar("P", bound=_Params)


def parse(model: type[P], params: list[Any]) -> list[P]:
    """Each entry of ``params`` as ``model``; a wrong shape is libopflex's ERROR 'Malformed message'."""
    if not params:
        raise RpcError(Code.ERROR, "Malformed message: params must hold at least one object")
    out = []
    for entry in params:
        try:
            out.append(model.model_validate(entry))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "params"
            raise RpcError(Code.ERROR, f"Malformed message: {where}: {first['msg']}") from None
    return out


__all__ = [
    "MAX_PRR",
    "Declare",
    "EndpointRef",
    "EndpointResolve",
    "Identity",
    "Report",
    "Resolve",
    "Unresolve",
    "parse",
]
