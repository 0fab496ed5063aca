"""The request parameters the authority accepts, and how a malformed one is refused.

Each OpFlex request carries a list of parameter objects. These models check
their shape (extra keys are allowed, as libopflex sends some we ignore);
``parse`` turns a failure into libopflex's ``ERROR`` "Malformed message" reply.
Shared by the session dispatcher and the three role components, so it sits
below all of them.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from policyfabric.opflex.rpc import RpcError
from policyfabric.opflex.wire import Code


class _Params(BaseModel):
    model_config = ConfigDict(extra="allow")


class Identity(_Params):
    proto_version: str = "1.0"
    name: str
    domain: str
    my_role: list[str]


class Resolve(_Params):
    subject: str
    policy_uri: str
    prr: int


class Unresolve(_Params):
    subject: str
    policy_uri: str


class Declare(_Params):
    endpoint: list[dict[str, Any]]
    prr: int


class EndpointRef(_Params):
    subject: str
    endpoint_uri: str


class EndpointResolve(EndpointRef):
    prr: int


class Report(_Params):
    observable: list[dict[str, Any]]


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
    "Declare",
    "EndpointRef",
    "EndpointResolve",
    "Identity",
    "Report",
    "Resolve",
    "Unresolve",
    "parse",
]
