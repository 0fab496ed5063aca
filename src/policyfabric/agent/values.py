"""Values from the wire parsed into the view's types, and what the agent says when one does not.

Why its own module: these are the agent's only ways to turn a JSON value into something a renderer
may print (the reader, ``reader.py``, decides which property is which; this says what each type
accepts), and tests build their fabrics with the same parsers (``tests/fabric.py``). Every parser
takes ``object`` (JSON gives strings, numbers, lists, dicts, booleans or null) and raises
``ValueError`` unless the value is exactly one of its type: a string with the text of an address
and nothing else, an int (not a bool) within the field's range, one of a field's keywords.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache, wraps
from typing import Any, TypeVar

from policyfabric.agent.view import Invalid, IpAddress, Ipv4Address, Mac, Prefix
from policyfabric.model.types import check_label
from policyfabric.opflex.mo import REFERENCE_URI

log = logging.getLogger(__name__)

T = TypeVar("T")
URI = re.compile(r"(?:/(?:[A-Za-z0-9._~-]|%[0-9A-Fa-f]{2})+)+/")  # what uri.child() writes
MAX_LOGGED = 1000
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    return value


def _strings(what: str) -> Callable[[Callable[[str], T]], Callable[[object], T]]:
    """A parser of ``what`` (a string), memoised: the reader reads the whole cache again on every
    reconcile, and the same strings come back each time (10,000 remote endpoints: the parsing went
    from ~90 ms to a few ms per reconcile). Only what parses is remembered."""

    def wrap(parse: Callable[[str], T]) -> Callable[[object], T]:
        cached = lru_cache(maxsize=1 << 17)(parse)

        @wraps(parse)
        def parse_value(value: object) -> T:
            return cached(_text(value, what))

        return parse_value

    return wrap


@_strings("a MAC")
def parse_mac(value: str) -> Mac:
    """A unicast, non-zero MAC (upper-case hex digits are written lower-case)."""
    mac = value.lower()
    if not _MAC.fullmatch(mac) or int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        raise ValueError("not a unicast MAC")
    return Mac(mac)


@_strings("an address")
def parse_ip(value: str) -> IpAddress:
    """An IPv4 or IPv6 address, without an IPv6 zone (``fe80::1%eth0``: the zone is free text)."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("not an IP address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        raise ValueError("an IPv6 address with a zone")
    return IpAddress(str(ip))


@_strings("an IPv4 address")
def parse_ipv4(value: str) -> Ipv4Address:
    try:
        return Ipv4Address(str(ipaddress.IPv4Address(value)))
    except ValueError:
        raise ValueError("not an IPv4 address") from None


@_strings("a prefix")
def _network(text: str) -> tuple[Prefix, int]:
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        raise ValueError("not a network prefix") from None
    if "%" in text:
        raise ValueError("a prefix with a zone")
    return Prefix(str(net)), net.version


def parse_prefix(value: object, version: int | None = None) -> Prefix:
    """A network, ``10.1.0.0/24`` (host bits set, or a zone, are refused), of IP ``version``
    (4 or 6) if one is given."""
    prefix, found = _network(value)
    if version is not None and found != version:
        raise ValueError(f"not an IPv{version} prefix")
    return prefix


def parse_int(value: object, low: int, high: int) -> int:
    """An integer (not a bool, not a string of digits) in ``low``..``high``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"not an integer in {low}..{high}")
    return value


@_strings("a URI")
def parse_uri(value: str) -> str:
    """An escaped OpFlex URI (names percent-encoded): what records are keyed by."""
    if not URI.fullmatch(value):
        raise ValueError("not a URI")
    return value


@_strings("TENANT/NAME")
def parse_key(value: str) -> str:
    """``TENANT/NAME`` of an endpoint, both names as the model allows them (DNS labels)."""
    tenant, sep, name = value.partition("/")
    if not sep:
        raise ValueError("not TENANT/NAME")
    check_label(tenant)
    check_label(name)
    return f"{tenant}/{name}"


_UNPRINTABLE = re.compile(r"[^A-Za-z0-9._~/-]+")


def printable(name: str) -> str:
    """A name for a renderer to print (a comment, an ACL name): unchanged if it is made of
    ``A-Za-z0-9._~/-``, which every name the model allows is; any other character percent-encoded
    as in URIs. Local endpoint keys come from OVSDB, not through a parser: printed through this,
    no key can end a comment or a quoted word in a renderer's text."""
    return _UNPRINTABLE.sub(lambda m: "".join(f"%{b:02x}" for b in m.group().encode()), name)


def show(value: object, limit: int = 60) -> str:
    """A value for a log line or a fault: repr'd (quotes, escaped newlines), shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Refused(ValueError):
    """A property that does not parse: ``field`` and ``value`` say which, ``str()`` why."""

    def __init__(self, field: str, value: object, why: str) -> None:
        super().__init__(why)
        self.field, self.value = field, value


def get(props: Mapping[str, Any], name: str, parse: Callable[[object], T]) -> T:
    """Property ``name`` of ``props`` parsed; ``Refused`` names it if it does not parse."""
    value = props.get(name)
    try:
        return parse(value)
    except ValueError as exc:
        raise Refused(name, value, str(exc)) from None


def choice(*choices: T) -> Callable[[object], T]:
    """A parser for one of ``choices`` (of their type: ``True`` is not 1 here)."""

    def parse(value: object) -> T:
        for c in choices:
            if type(value) is type(c) and value == c:
                return c
        raise ValueError(f"not one of {', '.join(map(repr, choices))}")

    return parse


def ranged(low: int, high: int) -> Callable[[object], int]:
    return lambda value: parse_int(value, low, high)


def optional(props: Mapping[str, Any], name: str, parse: Callable[[object], T], default: T) -> T:
    return get(props, name, parse) if props.get(name) is not None else default


def addresses(value: object) -> tuple[IpAddress, ...]:
    """A list of addresses (``slaac`` entries are left out: ``endpoints`` resolves them, as they
    need the endpoint's MAC and its bridge domain's SLAAC prefixes)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("not a list of addresses")
    return tuple(parse_ip(ip) for ip in value if ip != "slaac")


def refs(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("not a list of references")
    if not all(isinstance(v, dict) for v in value):
        raise ValueError("not a list of references")
    return [parse_uri(v.get(REFERENCE_URI)) for v in value]


def uri(value: object, field: str) -> str:
    try:
        return parse_uri(value)
    except ValueError:
        raise Refused(field, value, "not a URI") from None


def ref(value: Any, field: str) -> str | None:
    """A reference's target URI; None when there is no reference (``value`` is None)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Refused(field, value, "not a reference")
    return uri(value.get(REFERENCE_URI), field)


Problems = list[Invalid] | None  # where refusals go (None: nowhere, e.g. in tests of valid input)


def refuse(problems: Problems, uri: str, bad: Refused) -> None:
    """Add ``bad``, a value of the object at ``uri``, to ``problems``."""
    if problems is not None:
        where = uri if URI.fullmatch(uri) else show(uri)
        problems.append(Invalid(where, bad.field, show(bad.value), str(bad)))


class InvalidPolicy:
    """What the agent says about refused values: each logged once; one fault ``invalid-policy``
    while any remain (naming them), said again to a new session, cleared when none remain."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._logged: set[Invalid] = set()
        self._told: tuple[object, frozenset[Invalid]] = (None, frozenset())

    def update(self, invalid: Iterable[Invalid], session: object) -> tuple[str, str] | None:
        """(severity, description) of the fault to raise or clear now, or None if nothing to say."""
        now = frozenset(invalid)
        for item in sorted(now - self._logged, key=str):
            if len(self._logged) < MAX_LOGGED:
                self._logged.add(item)
                log.warning("agent %s: invalid policy refused: %s", self.host, item)
        told_session, told = self._told
        if now == told and (session is told_session or not now):
            return None
        if session is None:
            return None  # said once connected
        self._told = (session, now)
        if not now:
            return "cleared", "no invalid policy"
        shown = "; ".join(sorted(map(str, now))[:5])
        return "major", f"{len(now)} object(s) refused, left out of the dataplane: {shown}"
