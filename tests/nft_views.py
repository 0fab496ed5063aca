"""Random views for the nftables renderer's incremental tests: a small fabric and the changes a
real one sees (endpoints come, go and move, rules come and go, security group members join and
leave, groups come and go), each a new ``Network`` in which the records of what did not change are
the same objects, as the view keeps them; ``copied`` gives one whose records are all equal but new.

Values go through the agent's parsers (``agent.values``), as the reader's do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from policyfabric.agent.values import parse_ip, parse_ipv4, parse_mac, parse_prefix
from policyfabric.agent.view import Contract, Endpoint, Group, IpAddress, Network, Rule, SecurityGroup, SgRule

BD = "/PolicyUniverse/PolicySpace/t/GbpBridgeDomain/bd/"
CLASSIDS = (0x4001, 0x4002, 0x4003, 0x4004)
CONTRACTS = tuple(f"/PolicyUniverse/PolicySpace/t/GbpContract/c{i}/" for i in range(3))
SGS = tuple(f"/PolicyUniverse/PolicySpace/t/GbpSecGroup/sg{i}/" for i in range(4))


@dataclass
class Fabric:
    """A fabric's records by key; ``network()`` is the view of it."""

    rng: random.Random
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    contracts: dict[str, Contract] = field(default_factory=dict)
    sgs: dict[str, SecurityGroup] = field(default_factory=dict)
    serial: int = 0

    def network(self) -> Network:
        eps = sorted(self.endpoints.values(), key=lambda e: e.key)
        members: dict[str, list[IpAddress]] = {uri: [] for uri in self.sgs}
        for e in eps:
            for g in e.security_groups:
                if g in members:
                    members[g].extend(e.ips)
        return Network(
            local=tuple(e for e in eps if e.ofport is not None),
            remote=tuple(e for e in eps if e.ofport is None),
            groups=dict(self.groups),
            contracts=dict(self.contracts),
            security_groups=dict(self.sgs),
            address_sets={uri: tuple(dict.fromkeys(ips)) for uri, ips in members.items()},
        )

    # ---- records

    def _ips(self) -> tuple[IpAddress, ...]:
        self.serial += 1
        n = self.serial
        ips = [parse_ip(f"10.{n >> 8 & 255}.{n & 255}.{1 + self.rng.randrange(3)}")]
        if self.rng.random() < 0.3:
            ips.append(parse_ip(f"fd00::{n:x}"))
        if self.rng.random() < 0.1 and self.endpoints:  # an address another endpoint has too
            ips.append(self.rng.choice(list(self.endpoints.values())).ips[0])
        return tuple(dict.fromkeys(ips))

    def _free_port(self) -> int:
        used = {e.ofport for e in self.endpoints.values()}
        return next(p for p in range(1, 1000) if p not in used)

    def endpoint(self, local: bool) -> Endpoint:
        self.serial += 1
        n = self.serial
        where: dict[str, object] = {"vtep": parse_ipv4(f"192.0.2.{1 + n % 9}")}
        if local:
            port = self._free_port()
            where = {"ofport": port, "interface": f"qvo{port}"}
        return Endpoint(
            f"t/ep{n}",
            parse_mac(f"02:00:00:00:{n >> 8 & 255:02x}:{n & 255:02x}"),
            self._ips(),
            BD,
            self.rng.choice((0, *CLASSIDS)),
            security_groups=self._some(SGS),
            **where,  # type: ignore[arg-type]
        )

    def _some(self, pool: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(u for u in pool if self.rng.random() < 0.4)

    def _rule(self, key: str) -> Rule:
        r = self.rng
        protocol = r.choice((None, 6, 17, 1, 58))
        ports = None
        if protocol in (6, 17) and r.random() < 0.7:
            lo = r.choice((22, 80, 443, 8000))
            ports = (lo, lo + r.choice((0, 0, 10)))
        return Rule(
            key,
            r.randrange(5),
            r.random() < 0.8,
            r.choice(("in", "out", "bidirectional")),
            r.choice((None, 0x0800, 0x86DD)),
            protocol,
            ports,
        )

    def _sg_rule(self, key: str) -> SgRule:
        r = self.rng
        base = self._rule(key)
        remote: dict[str, object] = {}
        pick = r.random()
        if pick < 0.5:
            remote = {"remote_group": r.choice(SGS)}
        elif pick < 0.8:
            remote = {"remote_prefix": parse_prefix(r.choice(("10.0.0.0/8", "fd00::/64", "0.0.0.0/0")))}
        return SgRule(
            key,
            base.order,
            True,
            r.choice(("in", "out")),
            base.ethertype,
            base.protocol,
            base.ports,
            **remote,  # type: ignore[arg-type]
        )

    def group(self, classid: int) -> Group:
        return Group(
            f"/PolicyUniverse/PolicySpace/t/GbpEpGroup/g{classid:x}/",
            classid,
            BD,
            self.rng.random() < 0.7,
            self._some(CONTRACTS),
            self._some(CONTRACTS),
        )

    def contract(self, uri: str) -> Contract:
        self.serial += 1
        return Contract(
            uri, tuple(self._rule(f"{uri}r{self.serial}.{i}") for i in range(1 + self.rng.randrange(3)))
        )

    def sg(self, uri: str) -> SecurityGroup:
        self.serial += 1
        return SecurityGroup(
            uri, tuple(self._sg_rule(f"{uri}#{self.serial}.{i}") for i in range(self.rng.randrange(4)))
        )

    # ---- the fabric and its changes

    @classmethod
    def random(cls, seed: int, local: int = 6, remote: int = 8) -> Fabric:
        f = cls(random.Random(seed))
        for c in CLASSIDS[:3]:
            g = f.group(c)
            f.groups[g.uri] = g
        for uri in CONTRACTS:
            f.contracts[uri] = f.contract(uri)
        for uri in SGS[:3]:
            f.sgs[uri] = f.sg(uri)
        for i in range(local + remote):
            e = f.endpoint(i < local)
            f.endpoints[e.key] = e
        return f

    def change(self) -> str:
        """One random change; says which."""
        r = self.rng
        eps = sorted(self.endpoints)
        kind = r.choice(CHANGES)
        if kind == "endpoint added":
            e = self.endpoint(r.random() < 0.5)
            self.endpoints[e.key] = e
        elif kind == "endpoint removed" and eps:
            del self.endpoints[r.choice(eps)]
        elif kind == "endpoint moved" and eps:
            e = self.endpoints[r.choice(eps)]
            if e.ofport is None or r.random() < 0.3:
                port = self._free_port()
                e = replace(e, ofport=port, interface=f"qvo{port}", vtep=None)
            else:
                e = replace(e, ofport=None, interface=None, vtep=parse_ipv4("192.0.2.99"))
            self.endpoints[e.key] = e
        elif kind == "member joined or left" and eps:
            e = self.endpoints[r.choice(eps)]
            self.endpoints[e.key] = replace(e, security_groups=self._some(SGS))
        elif kind == "endpoint regrouped" and eps:
            e = self.endpoints[r.choice(eps)]
            self.endpoints[e.key] = replace(e, classid=r.choice((0, *CLASSIDS)))
        elif kind == "addresses changed" and eps:
            e = self.endpoints[r.choice(eps)]
            self.endpoints[e.key] = replace(e, ips=self._ips())
        elif kind == "contract rule added or removed":
            uri = r.choice(CONTRACTS)
            c = self.contracts.get(uri) or self.contract(uri)
            rules = list(c.rules)
            if rules and r.random() < 0.5:
                rules.pop(r.randrange(len(rules)))
            else:
                self.serial += 1
                rules.append(self._rule(f"{uri}r{self.serial}"))
            self.contracts[uri] = Contract(uri, tuple(rules))
        elif kind == "contract removed or added":
            uri = r.choice(CONTRACTS)
            if uri in self.contracts:
                del self.contracts[uri]
            else:
                self.contracts[uri] = self.contract(uri)
        elif kind == "group changed":
            classid = r.choice(CLASSIDS)
            uri = self.group(classid).uri
            if uri in self.groups and r.random() < 0.3:
                del self.groups[uri]
            else:
                self.groups[uri] = self.group(classid)
        elif kind == "sg rule added or removed":
            uri = r.choice(SGS)
            sg = self.sgs.get(uri) or self.sg(uri)
            sg_rules = list(sg.rules)
            if sg_rules and r.random() < 0.5:
                sg_rules.pop(r.randrange(len(sg_rules)))
            else:
                self.serial += 1
                sg_rules.append(self._sg_rule(f"{uri}#{self.serial}"))
            self.sgs[uri] = SecurityGroup(uri, tuple(sg_rules))
        elif kind == "sg removed or added":
            uri = r.choice(SGS)
            if uri in self.sgs:
                del self.sgs[uri]
            else:
                self.sgs[uri] = self.sg(uri)
        elif kind == "records copied":
            self.copy_records()
        return kind

    def copy_records(self) -> None:
        """Every record replaced by an equal new one (a view that does not keep identities)."""
        self.endpoints = {k: replace(e) for k, e in self.endpoints.items()}
        self.groups = {k: replace(g) for k, g in self.groups.items()}
        self.contracts = {
            k: replace(c, rules=tuple(replace(r) for r in c.rules)) for k, c in self.contracts.items()
        }
        self.sgs = {k: replace(s, rules=tuple(replace(r) for r in s.rules)) for k, s in self.sgs.items()}


CHANGES = (
    "endpoint added",
    "endpoint removed",
    "endpoint moved",
    "member joined or left",
    "member joined or left",
    "endpoint regrouped",
    "addresses changed",
    "contract rule added or removed",
    "contract removed or added",
    "group changed",
    "sg rule added or removed",
    "sg removed or added",
    "records copied",
)
