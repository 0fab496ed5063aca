"""An example plug-in renderer: the compiled policy as a firewall-style configuration file.

The case of a device whose programming layer is its configuration language
(a firewall's CLI): the agent does not replace it, it writes what it should
say. Groups become ``object-group`` address sets (never expanded per
address), each local endpoint gets an inbound and an outbound access list
naming those sets, and the file is replaced atomically (write, then rename)
only when its text changes.

    policyfabric agent ... --renderer configfile:path=/etc/pf-firewall.conf

It is registered like any third-party renderer (``[project.entry-points.
"policyfabric.renderers"]`` in pyproject.toml) and is the template for one.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import ClassVar

from policyfabric.agent.renderers.api import Applied, Renderer, RendererContext, RendererError
from policyfabric.agent.values import printable
from policyfabric.agent.view import Endpoint, Group, Network, Rule, SgRule, opens

PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}


def short(uri: str) -> str:
    """``/PolicyUniverse/PolicySpace/acme/GbpSecGroup/ssh/`` → ``acme/ssh``."""
    parts = uri.strip("/").split("/")  # escaped names as they are: a name prints as itself or as %xx
    return f"{parts[2]}/{parts[-1]}" if len(parts) >= 5 else parts[-1]


def _line(action: str, rule: Rule, src: str, dst: str) -> str:
    """`` permit tcp SRC DST eq 80`` (the port, if any, after the destination)."""
    proto = PROTOCOLS.get(rule.protocol or -1, "ip" if rule.protocol is None else str(rule.protocol))
    line = f" {action} {proto} {src} {dst}"
    if rule.ports is not None:
        lo, hi = rule.ports
        line += f" eq {lo}" if lo == hi else f" range {lo} {hi}"
    return line


def _hosts(addresses: Iterable[str]) -> list[str]:
    return [f" host {a}" for a in sorted(set(addresses))]


def compile_config(net: Network, host: str) -> str:
    """The whole file for the local endpoints of ``net`` (pure): object groups first, then for each
    endpoint one access list per direction and policy layer. A packet must pass every list applied
    to the interface, as it must pass every layer that applies to it in the fabric."""
    members: dict[int, set[str]] = defaultdict(set)
    for ep in (*net.local, *net.remote):
        if ep.classid:
            members[ep.classid].update(ep.ips)
    groups = {g.classid: g for g in net.groups.values()}
    used_groups: set[int] = set()
    used_sets: set[str] = set()
    objects: list[str] = []
    acls: list[str] = []
    for ep in sorted(net.local, key=lambda e: e.key):
        name = printable(ep.key).replace("/", "-")
        me = f"host {ep.ips[0]}" if len(ep.ips) == 1 else f"object-group ep-{name}"
        if len(ep.ips) != 1:
            objects += [f"object-group network ep-{name}", *_hosts(ep.ips), "!"]
        lists: list[tuple[str, list[str], str]] = []
        group = groups.get(ep.classid)
        if group is not None:
            inbound, outbound = _group_rules(net, group, me, used_groups)
            lists += [("groups-in", inbound, "deny"), ("groups-out", outbound, "deny")]
        if ep.sg_governed:
            inbound, outbound = _sg_rules(net, ep, me, used_sets)
            egress_open = not outbound
            lists += [("sg-in", inbound, "deny"), ("sg-out", outbound, "permit" if egress_open else "deny")]
        applied = []
        for suffix, rules, last in lists:
            acls += [f"ip access-list extended {name}-{suffix}", *rules, f" {last} ip any any", "!"]
            applied.append(f" ip access-group {name}-{suffix} {'out' if suffix.endswith('in') else 'in'}")
        acls += [f"interface {name}", f" description {printable(ep.key)} {ep.mac}", *applied, "!"]
    for classid in sorted(used_groups):
        objects += [f"object-group network epg-{short(groups[classid].uri)}", *_hosts(members[classid]), "!"]
    for uri in sorted(used_sets):
        objects += [f"object-group network sg-{short(uri)}", *_hosts(net.address_sets.get(uri, ())), "!"]
    header = [
        f"! policyfabric: firewall configuration for host {host} (generated, do not edit)",
        "! stateful: replies to a permitted connection pass; a packet must pass every list applied",
    ]
    return "\n".join(header + objects + acls) + "\n"


def _group_rules(net: Network, group: Group, me: str, used: set[int]) -> tuple[list[str], list[str]]:
    """(inbound, outbound) lines of group policy: intra-group, then the contracts' rules."""
    own = f"object-group epg-{short(group.uri)}"
    inbound: list[str] = []
    outbound: list[str] = []
    if group.intra_allow:
        used.add(group.classid)
        inbound.append(f" permit ip {own} {me}")
        outbound.append(f" permit ip {me} {own}")
    ranked = sorted(
        ((uri, rule) for uri, contract in sorted(net.contracts.items()) for rule in contract.rules),
        key=lambda item: -item[1].priority,  # first match wins on a firewall: drop rules first
    )
    for uri, rule in ranked:
        action = "permit" if rule.allow else "deny"
        for peer in net.groups.values():
            other = f"object-group epg-{short(peer.uri)}"
            if opens(peer, group, uri, rule):
                used.add(peer.classid)
                inbound.append(_line(action, rule, other, me))
            if opens(group, peer, uri, rule):
                used.add(peer.classid)
                outbound.append(_line(action, rule, me, other))
    return inbound, outbound


def _sg_rules(net: Network, ep: Endpoint, me: str, used: set[str]) -> tuple[list[str], list[str]]:
    """(inbound, outbound) lines of the endpoint's security groups; no outbound lines: egress open."""
    inbound: list[str] = []
    outbound: list[str] = []
    for g in ep.security_groups:
        for rule in net.security_groups[g].rules if g in net.security_groups else ():
            remote = _remote(rule, used)
            if rule.direction == "in":
                inbound.append(_line("permit", rule, remote, me))
            else:
                outbound.append(_line("permit", rule, me, remote))
    return inbound, outbound


def _remote(rule: SgRule, used_sets: set[str]) -> str:
    if rule.remote_group is not None:
        used_sets.add(rule.remote_group)
        return f"object-group sg-{short(rule.remote_group)}"
    return rule.remote_prefix or "any"


class ConfigFileRenderer(Renderer[str]):
    OPTIONS: ClassVar[Mapping[str, str]] = {
        "path": "the configuration file to write (default: STATE_DIR/firewall.conf)"
    }

    def __init__(self, context: RendererContext) -> None:
        super().__init__(context)
        default = context.state_dir / "firewall.conf" if context.state_dir else None
        path = context.options.get("path") or default
        if path is None:
            raise RendererError("configfile: give --renderer configfile:path=FILE (or --state-dir)")
        self.path = Path(path)

    def compile(self, net: Network) -> str:
        return compile_config(net, self.context.host)

    def apply(self, desired: str) -> Applied:
        start = time.monotonic()
        old = self.path.read_text().splitlines() if self.path.exists() else []
        if old == desired.splitlines():
            return Applied(0, 0, time.monotonic() - start)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(desired)
        os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one
        new = desired.splitlines()
        added, removed = len(set(new) - set(old)), len(set(old) - set(new))
        return Applied(added, removed, time.monotonic() - start, str(self.path))
