"""What a lab created, as typed records, and its ``state.json``.

The state file is how ``lab down`` (possibly another process, possibly a newer
version of policyfabric) finds everything a lab made, so it is written before
each creation and its shape is kept: a record is written as the JSON object
older versions wrote, optional fields only once set. Reading is lenient both
ways: keys an older file lacks get their defaults, keys this version does not
know are ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Self, TypeVar

from policyfabric.lab.plan import LabError

OPTIONAL = {"optional": True}  # field metadata: written to state.json only when not at its default


@dataclass(frozen=True)
class _Record:
    """A frozen record of state.json; change one with ``dataclasses.replace`` (then save)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{key: value for key, value in data.items() if key in known})
        except TypeError as exc:  # a required key is missing: not a file any version wrote
            raise LabError(f"state.json: a {cls.__name__} record is incomplete ({exc})") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("optional") and value == f.default:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


R = TypeVar("R", bound=_Record)


@dataclass(frozen=True)
class HostState(_Record):
    """A lab host: its namespace, Open vSwitch run directory and how its agent runs."""

    netns: str
    underlay_ip: str
    rundir: str
    renderer: str = "ovs"  # older files: every host rendered with Open vSwitch
    role: str = "compute"
    external: dict[str, str] = field(default_factory=dict)  # external network -> interface (ext<N>)
    failed: str = field(default="", metadata=OPTIONAL)  # "" (running), "cut" or "killed"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        # older versions wrote "failed": false once a host was healed
        return super().from_json({**data, "failed": data.get("failed") or ""})


@dataclass(frozen=True)
class EndpointState(_Record):
    """An endpoint namespace and the host-side port plugged into br-int (hybrid: via qbr/qvb/qvo).
    ``ips``: every address it should hold by the intent (probes aim there), its SLAAC addresses
    too (older versions: only those the lab configured)."""

    netns: str
    host: str
    mac: str
    ips: tuple[str, ...]
    key: str  # TENANT/NAME: the port's iface-id
    port: str  # host-side end of the endpoint's veth
    bridge: str | None = field(default=None, metadata=OPTIONAL)  # hybrid plugging: qbrN
    ovs_port: str | None = field(default=None, metadata=OPTIONAL)  # hybrid plugging: qvoN on br-int
    dhcp: bool = field(default=False, metadata=OPTIONAL)  # configured by its own DHCP client

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        return super().from_json({**data, "ips": tuple(data.get("ips", ()))})

    @property
    def br_int_port(self) -> str:
        """The endpoint's port on br-int."""
        return self.ovs_port or self.port


@dataclass(frozen=True)
class ExternalHostState(_Record):
    """A namespace on an external network, outside the fabric."""

    netns: str
    ip: str
    network: str = ""


@dataclass(frozen=True)
class ExternalAddress(_Record):
    """A probe target outside the fabric's own addresses: a floating IP (with its endpoint) or a
    router (its SNAT address, no endpoint)."""

    ip: str
    endpoint: str | None = None


@dataclass
class LabState:
    """What a lab created; written before each creation so cleanup is exact."""

    id: str
    directory: str
    scenario: str
    url: str = ""
    opflex: str = ""
    namespaces: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid (authority, agent:HOST, etcd:MEMBER)
    endpoints: dict[str, EndpointState] = field(default_factory=dict)
    hosts: dict[str, HostState] = field(default_factory=dict)
    external_hosts: dict[str, ExternalHostState] = field(default_factory=dict)
    external_addresses: dict[str, ExternalAddress] = field(default_factory=dict)
    store: str = ""  # the embedded authority's --store (etcd://...), "" for its SQLite file
    store_prefix_owned: bool = False  # the lab chose that etcd prefix: `lab down` deletes it

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "directory": self.directory,
            "scenario": self.scenario,
            "url": self.url,
            "opflex": self.opflex,
            "namespaces": self.namespaces,
            "pids": self.pids,
            "endpoints": {name: e.to_json() for name, e in self.endpoints.items()},
            "hosts": {name: h.to_json() for name, h in self.hosts.items()},
            "external_hosts": {name: x.to_json() for name, x in self.external_hosts.items()},
            "external_addresses": {name: a.to_json() for name, a in self.external_addresses.items()},
            **({"store": self.store, "store_prefix_owned": self.store_prefix_owned} if self.store else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabState:
        def records(key: str, record: type[R]) -> dict[str, R]:
            return {name: record.from_json(value) for name, value in (data.get(key) or {}).items()}

        try:
            return cls(
                id=data["id"],
                directory=data["directory"],
                scenario=data["scenario"],
                url=data.get("url", ""),
                opflex=data.get("opflex", ""),
                namespaces=list(data.get("namespaces", [])),
                pids=dict(data.get("pids", {})),
                endpoints=records("endpoints", EndpointState),
                hosts=records("hosts", HostState),
                external_hosts=records("external_hosts", ExternalHostState),
                # versions before routers were probe targets called them floating_ips
                external_addresses=records(
                    "external_addresses" if "external_addresses" in data else "floating_ips", ExternalAddress
                ),
                store=data.get("store", ""),
                store_prefix_owned=bool(data.get("store_prefix_owned", False)),
            )
        except KeyError as exc:
            raise LabError(f"state.json: {exc} is missing") from None

    def save(self) -> None:
        path = Path(self.directory) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, directory: Path) -> LabState:
        try:
            data = json.loads((directory / "state.json").read_text())
        except FileNotFoundError:
            raise LabError(f"no lab is up under {directory} (no state.json)") from None
        return cls.from_json(data)
