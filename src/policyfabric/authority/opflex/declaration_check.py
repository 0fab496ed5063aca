"""Whether one declared registry object says what the intent says (pure): the content check.

Why it exists: what an agent declares is pushed to every other agent of the bridge domain, which
renders it into flows. A declaration is therefore accepted only if every property is the value the
intent gives that endpoint (``intent_index.py``), or, for the values only the agent knows, a
well-formed one: ``tunnelIp`` (in the ``PfEpTunnel`` child) a unicast IPv4 address,
``interfaceName`` and the reference agent's ``vmName`` an interface name. The addresses of an
``EprL2Ep`` are ``EprL3Net`` children, as the model lists a MAC's addresses. Anything
else (an endpoint not in the intent, another MAC, an address it does not have, another bridge
domain, a group or class id not its own, a property nobody reads, a child of another class) is
refused, so nothing the registry stores or pushes was chosen by the declaring agent beyond those
values.

What is stored is rebuilt from the checked values, not the agent's object as sent: the parent
fields are the registry's layout, and the children only those checked here. Who may declare (the
pinned host, the agent holding the endpoint) is the registry's state, checked there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from policyfabric.authority.opflex.intent_index import EndpointIntent, IntentIndex
from policyfabric.model.types import is_interface
from policyfabric.opflex.gbp import Cls, Prop
from policyfabric.opflex.mo import MO
from policyfabric.opflex.uri import EPR_L2, EPR_L3, child

# Linux's rules (at most 15 bytes; no "/", ":", whitespace), narrowed to what OVS and the
# orchestrators use, so the name is also safe wherever it is printed.
L3_PROPERTIES = frozenset({Prop.UUID, Prop.MAC, Prop.GROUP, Prop.CONTEXT, Prop.IP})
L2_PROPERTIES = frozenset({Prop.UUID, Prop.MAC, Prop.GROUP, Prop.CONTEXT, Prop.INTERFACE_NAME, Prop.VM_NAME})
TUNNEL_PROPERTIES = frozenset({Prop.TUNNEL_IP, Prop.CLASSID})
# What the reference agent declares under its endpoints besides: the security groups it was told
# (the intent's are what count), its endpoint file's attributes. Accepted, checked for their
# class only, and neither stored nor pushed (what is stored is rebuilt from checked values).
IGNORED_CHILDREN = frozenset(
    {Cls.EPR_SECURITY_GROUP_CONTEXT, Cls.GBPE_REPORTED_EP_ATTRIBUTE_SET, Cls.GBPE_REPORTED_EP_ATTRIBUTE}
)


class Refused(Exception):
    """A declaration the registry does not accept; the message says why (no newlines)."""


@dataclass(frozen=True)
class Checked:
    """A declared object that says what the intent says, as the registry stores and pushes it,
    with its children (an ``EprL2Ep``'s ``EprL3Net`` addresses and ``PfEpTunnel``)."""

    mo: MO
    intent: EndpointIntent
    children: tuple[MO, ...] = ()

    @property
    def all(self) -> list[MO]:
        return [self.mo, *self.children]

    @property
    def is_l2(self) -> bool:
        return self.mo.subject == Cls.EPR_L2_EP


def show(value: object, limit: int = 60) -> str:
    """A value for an error or a log line: repr'd (quotes, escaped newlines), shortened."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@lru_cache(maxsize=4096)
def _unicast_v4(value: str) -> bool:
    """Memoised: a host's declarations all carry its one tunnel address."""
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return str(ip) == value and not (ip.is_multicast or ip.is_unspecified or value == "255.255.255.255")


def tunnel_ip(value: object) -> str:
    """A unicast IPv4 address in dotted-quad form (other hosts write it into their flows)."""
    if isinstance(value, str) and _unicast_v4(value):
        return value
    raise Refused(f"tunnelIp {show(value)} is not a unicast IPv4 address")


def _must(ok: bool, what: str, value: object, why: str) -> None:
    """Refuse unless ``ok``, saying ``what`` (a property) was ``value`` and ``why`` that is wrong
    (the message is only built for a refusal: declarations come by the thousand)."""
    if not ok:
        raise Refused(f"{what} {show(value)} {why}")


def _group(p: dict[str, Any], intent: EndpointIntent) -> None:
    """``group``, if given, is the endpoint's group."""
    if Prop.GROUP in p:
        _must(p[Prop.GROUP] == intent.group, "group", p[Prop.GROUP], "is not the group the intent gives it")


def _l2(mo: MO, intent: EndpointIntent) -> None:
    p = mo.properties
    if intent.bd is None:
        raise Refused("the intent gives it no bridge domain")
    _must(mo.uri == intent.l2_uri, "URI", mo.uri, "is not its bridge domain and MAC")
    context = p.get(Prop.CONTEXT)
    _must(context == intent.bd, "context", context, "is not its bridge domain")
    if Prop.INTERFACE_NAME in p:
        name = p[Prop.INTERFACE_NAME]
        _must(is_interface(name), "interfaceName", name, "is not an interface name")


def _l2_children(mo: MO, children: Sequence[MO], intent: EndpointIntent) -> tuple[MO, ...]:
    """Its ``EprL3Net`` children (one per address: the model's way of listing a MAC's addresses)
    and its ``PfEpTunnel`` (``tunnelIp``, ``classid``), as stored: rebuilt from checked values."""
    kept = []
    for c in children:
        if c.subject in IGNORED_CHILDREN:
            continue
        p = c.properties
        if c.subject == Cls.EPR_L3_NET:
            ip = p.get(Prop.IP)
            _must(p.keys() <= {Prop.IP}, "EprL3Net properties", sorted(p), "are not accepted")
            _must(isinstance(ip, str) and ip in intent.addresses, "ip", ip, "is not one of its addresses")
            _must(c.uri == child(mo.uri, Cls.EPR_L3_NET, str(ip)), "URI", c.uri, "is not its address")
            kept.append(MO(c.subject, c.uri, {Prop.IP: ip}, [], mo.subject, mo.uri, c.subject))
        elif c.subject == Cls.PF_EP_TUNNEL:
            extra = p.keys() - TUNNEL_PROPERTIES
            _must(not extra, "PfEpTunnel properties", sorted(extra), "are not accepted")
            _must(c.uri == child(mo.uri, Cls.PF_EP_TUNNEL), "URI", c.uri, "is not its tunnel's")
            if Prop.CLASSID in p:
                classid = p[Prop.CLASSID]
                ok = (
                    isinstance(classid, int)
                    and not isinstance(classid, bool)
                    and classid == (intent.classid or 0)
                )
                _must(ok, "classid", classid, "is not its group's")
            if Prop.TUNNEL_IP in p:
                tunnel_ip(p[Prop.TUNNEL_IP])
            kept.append(MO(c.subject, c.uri, dict(p), [], mo.subject, mo.uri, c.subject))
        else:
            raise Refused(f"child objects {show([c.subject])} are not accepted")
    _must(len({c.uri for c in kept}) == len(kept), "child objects", [c.uri for c in kept], "repeat")
    return tuple(sorted(kept, key=lambda c: c.uri))


def _l3(mo: MO, intent: EndpointIntent) -> None:
    p = mo.properties
    ip = p.get(Prop.IP)
    if intent.rd is None:
        raise Refused("the intent gives it no routing domain")
    _must(isinstance(ip, str) and ip in intent.addresses, "ip", ip, "is not one of its addresses")
    _must(mo.uri == intent.l3_uri(str(ip)), "URI", mo.uri, "is not its routing domain and address")
    context = p.get(Prop.CONTEXT)
    _must(context == intent.rd, "context", context, "is not its routing domain")


def check(mo: MO, children: Sequence[MO], index: IntentIndex) -> Checked:
    """``mo`` (an ``EprL2Ep`` or ``EprL3Ep`` with ``children``, the objects under it) as the
    registry stores it; raises ``Refused`` unless it says what the intent says.

    The endpoint is the one its ``uuid`` names when that is ``TENANT/NAME`` (what our agents send),
    else the one whose registry URI it has (bridge domain and MAC, or routing domain and address:
    a reference agent's ``uuid`` is its endpoint file's id); what is stored carries
    ``TENANT/NAME``."""
    l2 = mo.subject == Cls.EPR_L2_EP
    if not l2:
        unknown = sorted({c.subject for c in children} - IGNORED_CHILDREN)
        _must(not unknown, "child objects", unknown, "are not accepted")
    p = mo.properties
    extra = p.keys() - (L2_PROPERTIES if l2 else L3_PROPERTIES)
    _must(not extra, f"{mo.subject} properties", sorted(extra), "are not accepted")
    key = p.get(Prop.UUID)
    if isinstance(key, str) and "/" not in key:  # not TENANT/NAME: a reference agent's own id
        intent = index.by_uri(mo.uri)
    else:
        intent = index.get(key) if isinstance(key, str) else None
    if intent is None:
        raise Refused(f"uuid {show(key)} is not an endpoint of the intent")
    _must(p.get(Prop.MAC) == intent.mac, "mac", p.get(Prop.MAC), "is not its MAC")
    _group(p, intent)
    if Prop.VM_NAME in p:
        _must(is_interface(p[Prop.VM_NAME]), "vmName", p[Prop.VM_NAME], "is not a name")
    stored = {**p, Prop.UUID: intent.key}
    if l2:
        _l2(mo, intent)
        kept = _l2_children(mo, children, intent)
        top = MO(
            mo.subject, mo.uri, stored, [c.uri for c in kept], Cls.EPR_L2_UNIVERSE, EPR_L2, Cls.EPR_L2_EP
        )
        return Checked(top, intent, kept)
    _l3(mo, intent)
    return Checked(MO(mo.subject, mo.uri, stored, [], Cls.EPR_L3_UNIVERSE, EPR_L3, Cls.EPR_L3_EP), intent)


def conform(mos: Sequence[MO], intent: EndpointIntent) -> list[MO] | None:
    """A stored declaration (its top object first, then its children) with the values only the
    intent decides, its group and that group's class id, set to what ``intent`` now says; None if
    the intent gives the endpoint no group (then the declaration cannot follow it).

    Why: when an endpoint moves to another group, its declaration no longer says what the intent
    says. Withdrawing it would take the endpoint out of every other host's flows until its agent
    has seen the move and declared it again (a round trip through that agent); rewriting the two
    values the agent took from the intent in the first place keeps it, with the new group, in one
    push. The result is checked again like any declaration (``check``), so what is stored still
    says exactly what the intent says; the agent's own values (``tunnelIp``, ``interfaceName``)
    are kept as it declared them."""
    if intent.group is None:
        return None
    out = []
    for mo in mos:
        p = mo.properties
        if Prop.GROUP in p and p[Prop.GROUP] != intent.group:
            mo = replace(mo, properties={**p, Prop.GROUP: intent.group})
        elif (
            mo.subject == Cls.PF_EP_TUNNEL and Prop.CLASSID in p and p[Prop.CLASSID] != (intent.classid or 0)
        ):
            mo = replace(mo, properties={**p, Prop.CLASSID: intent.classid or 0})
        out.append(mo)
    return out


__all__ = ["Checked", "Refused", "check", "conform", "show", "tunnel_ip"]
