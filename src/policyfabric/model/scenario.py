"""Scenario files (LAB.md): load the intent part and check it offline.

The checker runs exactly the authority's validator (``parse_spec`` then
``rules.validate``) against an in-memory view of the file, and reports each
problem with the file line it comes from: every problem in one pass (an object
whose fields do not parse still has its references checked), duplicate keys
(YAML would silently keep the last), and the lab sections (hosts, the lab keys
of endpoints, external_hosts, expect) as LAB.md defines them.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from policyfabric.model import kinds as k
from policyfabric.model.errors import PolicyError, Problem
from policyfabric.model.kinds import Kind
from policyfabric.model.objects import Spec
from policyfabric.model.parse import parse_spec
from policyfabric.model.rules import Obj, check_references, references, validate

STDIN = "-"  # the file name that means standard input (`-f -`)

# Top-level keys that belong to the lab (checked by `policyfabric lab`).
LAB_SECTIONS = ("hosts", "external_hosts", "expect")
# Keys of an endpoint entry that say how the lab builds it, not what the intent is (``dhcp: true``:
# the lab configures nothing and runs a DHCP client in its namespace). The intent parts of the
# file (check, apply) leave them out; the lab's plan reads them.
LAB_ENDPOINT_KEYS = ("dhcp",)
TENANT_SECTIONS = {kind.section: kind for kind in k.ORDER if kind.scoped}


class LocDict(dict[str, Any]):
    """A mapping that remembers the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[str, int]


class LocList(list[Any]):
    line: int = 0
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    """Builds LocDicts and LocLists, and notes every key given twice in one mapping."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[Located] = []


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LocDict:
    out = LocDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in out:
            first = out.key_lines.get(str(key), out.line)
            loader.duplicates.append(
                Located(line, str(key), Problem(None, f"duplicate key (first at line {first}): give it once"))
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[str(key)] = line
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LocList:
    out = LocList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


class ScenarioError(Exception):
    """The file cannot be read as a scenario at all."""


@dataclass
class Entry:
    """One object declared in the file."""

    kind: Kind
    data: dict[str, Any]
    path: str  # e.g. "tenants[0].subnets[1]"
    node: Any
    spec: Spec | None = None

    @property
    def key(self) -> tuple[str, str | None, str]:
        data = self.data if isinstance(self.data, dict) else {}
        scope = data.get("tenant") if self.kind.scoped else None
        return self.kind.name, scope, str(data.get("name"))

    def line(self, field: str | None) -> int:
        """The line of ``field`` (a dotted path) inside this entry, as deep as it resolves."""
        node, line = self.node, getattr(self.node, "line", 0)
        for part in re.findall(r"[^.\[\]]+|\[\d+\]", field or ""):
            if part.startswith("[") and isinstance(node, LocList):
                i = int(part[1:-1])
                if i >= len(node):
                    break
                line, node = node.item_lines[i], node[i]
            elif isinstance(node, LocDict) and part in node:
                line, node = node.key_lines.get(part, line), node[part]
            else:
                break
        return line


@dataclass
class Located:
    """A problem at a place in the file."""

    line: int
    path: str
    problem: Problem

    def render(self, filename: str) -> str:
        where = f"{self.path}.{self.problem.field}" if self.problem.field else self.path
        return f"{filename}:{self.line}: {where}: {self.problem.message}"


@dataclass
class Scenario:
    path: Path
    entries: list[Entry] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    problems: list[Located] = field(default_factory=list)  # structural problems found while loading

    def in_order(self) -> list[Entry]:
        """Entries in dependency order (file order within a kind)."""
        rank = {kind.name: i for i, kind in enumerate(k.ORDER)}
        return sorted(self.entries, key=lambda e: rank[e.kind.name])


def load(path: str | Path) -> Scenario:
    """Read a scenario file (``-``: standard input); structural problems (unknown sections,
    duplicate keys) are recorded, not raised."""
    path = Path(path)
    if str(path) == STDIN:
        return loads(sys.stdin.read(), path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror}") from None
    return loads(text, path)


def loads(text: str, path: str | Path = "<string>") -> Scenario:
    """A scenario from its text; ``path`` names it in messages."""
    path = Path(path)
    loader = _Loader(text)
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if raw is None:
        raw = LocDict()
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: the top level must be a mapping (tenants:, endpoints:, ...)")
    scenario = Scenario(path, raw=raw)
    scenario.entries = list(_entries(raw))
    scenario.problems = [*loader.duplicates, *_structure_problems(raw), *lab_problems(raw)]
    return scenario


def _items(raw: Any, section: str) -> Iterator[tuple[int, Any]]:
    value = raw.get(section) if isinstance(raw, dict) else None
    if isinstance(value, list):
        yield from enumerate(value)


def _entries(raw: dict[str, Any]) -> Iterator[Entry]:
    for i, tenant in _items(raw, "tenants"):
        if not isinstance(tenant, dict):
            continue
        where = f"tenants[{i}]"
        yield Entry(k.TENANT, {"name": tenant.get("name")}, where, tenant)
        for section, kind in TENANT_SECTIONS.items():
            for j, item in _items(tenant, section):
                data = dict(item) if isinstance(item, dict) else item
                if isinstance(data, dict):
                    data.setdefault("tenant", tenant.get("name"))
                yield Entry(kind, data, f"{where}.{section}[{j}]", item)
    for i, item in _items(raw, "external_networks"):
        yield Entry(k.EXTERNAL_NETWORK, item, f"external_networks[{i}]", item)
    for i, item in _items(raw, "endpoints"):
        data = (
            {key: v for key, v in item.items() if key not in LAB_ENDPOINT_KEYS}
            if isinstance(item, dict)
            else item
        )
        yield Entry(k.ENDPOINT, data, f"endpoints[{i}]", item)


def _structure_problems(raw: dict[str, Any]) -> Iterator[Located]:
    known = {"tenants", "external_networks", "endpoints", *LAB_SECTIONS}
    for key in raw:
        if key not in known:
            yield Located(
                _key_line(raw, key),
                str(key),
                Problem(None, f"unknown section (known: {', '.join(sorted(known))})"),
            )
        elif not isinstance(raw[key], list):
            yield Located(_key_line(raw, key), str(key), Problem(None, "must be a list"))
    for i, tenant in _items(raw, "tenants"):
        where = f"tenants[{i}]"
        if not isinstance(tenant, dict):
            yield Located(_item_line(raw["tenants"], i), where, Problem(None, "a tenant must be a mapping"))
            continue
        for key in tenant:
            if key != "name" and key not in TENANT_SECTIONS:
                sections = ", ".join(TENANT_SECTIONS)
                yield Located(
                    _key_line(tenant, key),
                    f"{where}.{key}",
                    Problem(None, f"unknown key in a tenant (known: name, {sections})"),
                )
            elif key != "name" and not isinstance(tenant[key], list):
                yield Located(_key_line(tenant, key), f"{where}.{key}", Problem(None, "must be a list"))


# The lab sections (LAB.md). lab/plan.py builds the lab from them and checks them again; these are
# its rules, repeated here with lines (the model cannot import the lab; a test keeps them equal).
HOST_ROLES = ("compute", "gateway")
RENDERERS = ("ovs", "nftables")
PROBE = re.compile(r"^(icmp|icmpv6|(tcp|udp|tcp6|udp6|bulk|bulk6)/(?P<port>\d{1,5}))$")
PROBES = "icmp, icmpv6, tcp/N, udp/N, tcp6/N, udp6/N, bulk/N or bulk6/N"
MAX_HOSTS = 250
LAB_KEYS = {
    "hosts": ("name", "role", "renderer"),
    "external_hosts": ("name", "network", "ip"),
    "expect": ("from", "to", "probe", "result"),
}


def lab_problems(raw: dict[str, Any]) -> Iterator[Located]:
    """Every problem of the lab sections, with its line. Only a file with ``hosts`` is a lab: the
    endpoints' ``host`` must then name one of them."""

    def at(node: Any, i: int, key: str | None, where: str, message: str) -> Located:
        item = node[i] if isinstance(node, list) and i < len(node) else None
        line = (
            _key_line(item, key) if key and isinstance(item, LocDict) and key in item else _item_line(node, i)
        )
        return Located(line, where, Problem(key, message))

    def mappings(section: str) -> Iterator[tuple[int, LocDict]]:
        node = raw.get(section)
        for i, item in _items(raw, section):
            if not isinstance(item, dict):
                yield_line = _item_line(node, i)
                found.append(Located(yield_line, f"{section}[{i}]", Problem(None, "must be a mapping")))
                continue
            for key in item:
                if key not in LAB_KEYS[section]:
                    known = ", ".join(LAB_KEYS[section])
                    found.append(at(node, i, str(key), f"{section}[{i}]", f"unknown key (known: {known})"))
            yield i, item  # type: ignore[misc]

    found: list[Located] = []
    hosts: set[str] = set()
    node = raw.get("hosts")
    for i, h in mappings("hosts"):
        where = f"hosts[{i}]"
        name = h.get("name")
        if not isinstance(name, str) or not name:
            found.append(at(node, i, "name" if "name" in h else None, where, "needs a name"))
        elif name in hosts:
            found.append(at(node, i, "name", where, f"host {name!r} is declared twice"))
        else:
            hosts.add(name)
        if str(h.get("role", "compute")) not in HOST_ROLES:
            found.append(at(node, i, "role", where, f"role {h.get('role')!r}: use {' or '.join(HOST_ROLES)}"))
        if str(h.get("renderer", "ovs")) not in RENDERERS:
            have = ", ".join(RENDERERS)
            found.append(
                at(node, i, "renderer", where, f"renderer {h.get('renderer')!r} is not available ({have})")
            )
    if isinstance(node, list) and len(node) > MAX_HOSTS:
        found.append(
            Located(_key_line(raw, "hosts"), "hosts", Problem(None, f"at most {MAX_HOSTS} lab hosts"))
        )
    node = raw.get("endpoints")
    names: dict[str, set[str]] = {"source": set(), "target": set()}
    for i, e in _items(raw, "endpoints"):
        if not isinstance(e, dict):
            continue
        names["source"].add(str(e.get("name")))
        if "hosts" in raw and e.get("host") not in hosts:
            found.append(at(node, i, "host", f"endpoints[{i}]", f"host {e.get('host')!r} is not in hosts:"))
        if not isinstance(e.get("dhcp", False), bool):
            found.append(at(node, i, "dhcp", f"endpoints[{i}]", f"dhcp {e.get('dhcp')!r}: use true or false"))
    networks: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
    gateways: dict[str, str] = {}
    for _, n in _items(raw, "external_networks"):
        try:
            net = ipaddress.ip_network(str(n.get("cidr")), strict=False)
        except (ValueError, AttributeError):
            continue  # the intent check reports it
        networks[str(n.get("name"))] = net
        gateways[str(n.get("name"))] = str(n.get("gateway_ip") or next(net.hosts(), ""))
    node = raw.get("external_hosts")
    for i, x in mappings("external_hosts"):
        where = f"external_hosts[{i}]"
        if not isinstance(x.get("name"), str):
            found.append(at(node, i, None, where, "needs a name, a network and an ip"))
            continue
        names["source"].add(x["name"])
        segment = networks.get(str(x.get("network")))
        if segment is None:
            msg = f"network {x.get('network')!r} is not in external_networks"
            found.append(at(node, i, "network", where, msg))
            continue
        try:
            ip = ipaddress.ip_address(str(x.get("ip")))
        except ValueError:
            found.append(at(node, i, "ip", where, f"ip {x.get('ip')!r} is not an address"))
            continue
        if ip not in segment or str(ip) == gateways[str(x.get("network"))]:
            found.append(at(node, i, "ip", where, f"{ip} must be inside {segment}, and not its gateway"))
    for tenant in (t for _, t in _items(raw, "tenants") if isinstance(t, dict)):
        for section in ("floating_ips", "routers"):
            names["target"].update(
                str(o.get("name")) for _, o in _items(tenant, section) if isinstance(o, dict)
            )
    node = raw.get("expect")
    for i, x in mappings("expect"):
        where = f"expect[{i}]"
        for key, allowed in (("from", names["source"]), ("to", names["source"] | names["target"])):
            if key not in x:
                found.append(at(node, i, None, where, f"needs {key}: (from, to, probe, result)"))
            elif str(x[key]) not in allowed:
                what = (
                    "an endpoint or external host"
                    if key == "from"
                    else "an endpoint, floating IP, router or external host"
                )
                found.append(at(node, i, key, where, f"{x[key]!r} is not {what} of this file"))
        probe, result = str(x.get("probe", "")), str(x.get("result", ""))
        matched = PROBE.match(probe)
        if not matched:
            found.append(at(node, i, "probe", where, f"probe {probe!r}: use {PROBES}"))
        elif matched["port"] is not None and not 1 <= int(matched["port"]) <= 65535:
            found.append(at(node, i, "probe", where, f"probe {probe!r}: ports are 1-65535"))
        if result not in ("allow", "deny"):
            found.append(at(node, i, "result", where, f"result {result!r}: use allow or deny"))
    return iter(found)


def _key_line(node: Any, key: str) -> int:
    return node.key_lines.get(key, node.line) if isinstance(node, LocDict) else 0


def _item_line(node: Any, i: int) -> int:
    return node.item_lines[i] if isinstance(node, LocList) else 0


class FileView:
    """The rules' View over the file: ``find`` sees every object declared,
    ``list`` only those checked so far (so a clash is reported once, on the later one)."""

    def __init__(self, objs: Sequence[Obj]) -> None:
        self._by_key = {(o.kind.name, o.spec.scope, o.spec.name): o for o in objs}
        self._listed: dict[tuple[str, str | None], list[Obj]] = {}

    def find(self, kind: Kind, tenant: str | None, name: str) -> Obj | None:
        return self._by_key.get((kind.name, tenant, name))

    def list(self, kind: Kind, tenant: str | None) -> Sequence[Obj]:
        if tenant is None:
            return [o for (name, _), objs in self._listed.items() if name == kind.name for o in objs]
        return self._listed.get((kind.name, tenant), [])

    def admit(self, obj: Obj) -> None:
        self._listed.setdefault((obj.kind.name, obj.spec.scope), []).append(obj)


class _Tolerant(FileView):
    """A view in which objects that failed to parse still exist (for reference checks)."""

    def __init__(self, view: FileView, broken: set[tuple[str, str | None, str]]) -> None:
        self.__dict__.update(view.__dict__)
        self._broken = broken

    def find(self, kind: Kind, tenant: str | None, name: str) -> Obj | None:
        found = super().find(kind, tenant, name)
        if found is None and (kind.name, tenant, name) in self._broken:
            return Obj(kind, "broken", kind.spec.model_construct(name=name))
        return found


def check(scenario: Scenario) -> list[Located]:
    """Every problem in the file, in file order; empty when the authority would accept it all."""
    found = list(scenario.problems)
    broken: set[tuple[str, str | None, str]] = set()
    unparsed: list[tuple[Entry, list[Problem]]] = []
    seen: dict[tuple[str, str | None, str], Entry] = {}
    for entry in scenario.entries:
        try:
            entry.spec = parse_spec(entry.kind, entry.data)
        except PolicyError as err:
            broken.add(entry.key)
            found += [Located(entry.line(p.field), entry.path, p) for p in err.problems]
            unparsed.append((entry, err.problems))
            continue
        if entry.key in seen:
            first = seen[entry.key]
            msg = (
                f"a {entry.kind} named {entry.spec.name!r} is already declared "
                f"at {first.path} (line {first.line(None)})"
            )
            found.append(Located(entry.line("name"), entry.path, Problem("name", msg)))
            broken.add(entry.key)
            continue
        seen[entry.key] = entry

    good = [e for e in scenario.in_order() if e.spec is not None and e.key not in broken]
    objs = {id(e): Obj(e.kind, e.path, e.spec) for e in good if e.spec is not None}
    view = FileView(list(objs.values()))
    claims: dict[str, Entry] = {}
    for entry in good:
        obj = objs[id(entry)]
        try:
            if _refers_to_broken(obj, broken):
                # Report its own missing references; the rest would only echo
                # the problem already reported where the broken object is.
                check_references(obj, _Tolerant(view, broken))
                continue
            held = validate(obj, view)
        except PolicyError as err:
            found += [Located(entry.line(p.field), entry.path, p) for p in err.problems]
            continue
        view.admit(obj)
        for claim in held:
            holder = claims.setdefault(claim.key, entry)
            if holder is not entry:
                msg = f"{claim.conflict} is already taken by {holder.kind} {holder.key[2]!r} ({holder.path})"
                found.append(Located(entry.line(claim.field), entry.path, Problem(claim.field, msg)))
    tolerant = _Tolerant(view, broken)
    for entry, problems in unparsed:
        found += [
            Located(entry.line(p.field), entry.path, p)
            for p in _reference_problems(entry, problems, tolerant)
        ]
    return sorted(found, key=lambda p: p.line)


def _reference_problems(entry: Entry, problems: list[Problem], view: FileView) -> list[Problem]:
    """The references of an object whose fields did not all parse: the fields that did parse are
    checked too, so one pass shows every problem (not a bad port now and a typo'd group later)."""
    if not isinstance(entry.data, dict):
        return []
    bad = {p.field.split(".")[0].split("[")[0] for p in problems if p.field}
    if None in {p.field for p in problems}:
        return []  # a problem of the object as a whole: nothing to check field by field
    good = {f: v for f, v in entry.data.items() if f not in bad}
    fields = entry.kind.spec.model_fields
    try:
        # each remaining field parsed on its own; missing ones take a harmless stand-in
        parsed = entry.kind.spec.model_validate(
            {**{f: _STAND_IN for f, info in fields.items() if info.is_required() and f not in good}, **good}
        )
    except ValueError:
        return []
    try:
        check_references(Obj(entry.kind, entry.path, parsed), view)
    except PolicyError as err:
        return [p for p in err.problems if p.field not in bad and p.field is not None]
    return []


_STAND_IN = "stand-in"  # a valid name: a required field that failed to parse, for the reference check


def _refers_to_broken(obj: Obj, broken: set[tuple[str, str | None, str]]) -> bool:
    scope = obj.spec.scope
    targets = {
        (r.kind.name, None if r.kind is k.EXTERNAL_NETWORK else scope, r.name) for r in references(obj.spec)
    }
    if scope is not None:
        targets.add((k.TENANT.name, None, scope))
    return bool(targets & broken)
