"""The agent's OVSDB side (ovsdbapp): which endpoints are plugged into the bridge.

One IDL connection is kept open; its change notifications only wake the
agent, which then reads the ``Interface`` table in one bulk read (never one
read per port — the Neutron lesson). Writes are transactions with
``check_error=True`` so a failed change raises instead of passing silently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ovsdbapp.backend.ovs_idl import connection, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

log = logging.getLogger(__name__)

TUNNEL_PORT = "pf-geneve"
# Only what the agent reads or writes: above all not Interface.statistics, which OVS rewrites
# every few seconds for every interface (at 1,000 ports that alone kept the IDL thread busy).
COLUMNS = {
    "Open_vSwitch": ["bridges", "cur_cfg", "next_cfg"],
    "Bridge": ["name", "ports"],
    "Port": ["name", "interfaces"],
    "Interface": ["name", "type", "options", "ofport", "external_ids"],
}


@dataclass(frozen=True)
class Plugged:
    """An interface on the bridge that names an endpoint in ``external_ids:iface-id``."""

    iface_id: str
    name: str
    ofport: int


class _NotifyingIdl(connection.OvsdbIdl):  # type: ignore[misc]
    on_change: Callable[[], None] | None = None
    dirty = True  # set on every Interface/Port change; the bulk read clears it

    def notify(self, event: Any, row: Any, updates: Any = None) -> None:
        table = getattr(getattr(row, "_table", None), "name", None)
        if table in ("Interface", "Port"):
            self.dirty = True
            if self.on_change is not None:
                self.on_change()


class Ovsdb:
    def __init__(self, target: str, bridge: str, timeout: float = 10.0) -> None:
        self.target, self.bridge = target, bridge
        helper = idlutils.get_schema_helper(target, "Open_vSwitch")
        for table, columns in COLUMNS.items():
            helper.register_columns(table, columns)
        idl = _NotifyingIdl(target, helper)
        self.idl = idl
        self.conn = connection.Connection(idl=idl, timeout=timeout)
        self.api = impl_idl.OvsdbIdl(self.conn, start=True)
        self._last: tuple[list[Plugged], int | None] | None = None
        self.ofports: dict[str, int] = {}  # every interface on the bridge, by name (external ports)

    def watch(self, callback: Callable[[], None]) -> None:
        """``callback`` runs on the OVSDB thread after every Interface/Port change."""
        self.idl.on_change = callback

    def ensure_tunnel(self, local_ip: str) -> None:
        """One flow-based Geneve port: remote host and VNI are set per packet by the flows."""
        options = {"remote_ip": "flow", "key": "flow", "local_ip": local_ip}
        with self.api.transaction(check_error=True) as txn:
            txn.add(self.api.add_port(self.bridge, TUNNEL_PORT, may_exist=True))
            txn.add(self.api.db_set("Interface", TUNNEL_PORT, ("type", "geneve"), ("options", options)))

    def interfaces(self) -> tuple[list[Plugged], int | None]:
        """The bridge's endpoint interfaces with an OpenFlow port number, and the tunnel's port.
        Read again only after OVSDB reported a change (a policy change costs no OVSDB read)."""
        if not self.idl.dirty and self._last is not None:
            return self._last
        self.idl.dirty = False  # before reading: a change during the read marks it dirty again
        self._last = self._read()
        return self._last

    def _read(self) -> tuple[list[Plugged], int | None]:
        ports = self.api.list_ports(self.bridge).execute(check_error=True) or []
        on_bridge = set(ports)
        rows = self.api.db_list("Interface", columns=["name", "ofport", "external_ids"]).execute(
            check_error=True
        )
        plugged, tunnel, ofports = [], None, {}
        for row in rows or []:
            name, ofport = row["name"], row["ofport"]
            ofport = ofport[0] if isinstance(ofport, list) and ofport else ofport
            if name not in on_bridge or not isinstance(ofport, int) or ofport <= 0:
                continue
            ofports[name] = ofport
            if name == TUNNEL_PORT:
                tunnel = ofport
            iface_id = row["external_ids"].get("iface-id")
            if iface_id:
                plugged.append(Plugged(iface_id, name, ofport))
        self.ofports = ofports
        return sorted(plugged, key=lambda p: p.iface_id), tunnel

    def close(self) -> None:
        self.conn.stop()
