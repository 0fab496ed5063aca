"""The L3 service plugin ``policyfabric_router``: Neutron's router and floating IP API (its
database code unchanged), journalled for policyfabric, and routers' ports and floating IPs set
ACTIVE: policyfabric routes on every host (distributed), so there is no L3 agent to report them.

Routers and floating IPs reach the journal through their PRECOMMIT events (inside Neutron's
transaction); a router's interfaces and gateway through its ports' precommits in the ML2 driver.
"""

from __future__ import annotations

from typing import Any

from neutron.services.l3_router.l3_router_plugin import L3RouterPlugin
from neutron_lib import constants as n_const
from neutron_lib.callbacks import events, registry, resources

from networking_policyfabric import db


class PolicyfabricL3RouterPlugin(L3RouterPlugin):
    def __init__(self) -> None:
        super().__init__()
        for event in (events.PRECOMMIT_CREATE, events.PRECOMMIT_UPDATE, events.PRECOMMIT_DELETE):
            registry.subscribe(self._router_precommit, resources.ROUTER, event)
            registry.subscribe(self._fip_precommit, resources.FLOATING_IP, event)

    def get_plugin_description(self) -> str:
        return "policyfabric L3: distributed routers and floating IPs"

    def _router_precommit(self, resource: str, event: str, trigger: Any, payload: Any) -> None:
        db.record(payload.context, "router", payload.resource_id, payload.context.project_id)

    def _fip_precommit(self, resource: str, event: str, trigger: Any, payload: Any) -> None:
        fip_id = payload.resource_id
        if fip_id is None and event == events.PRECOMMIT_DELETE:  # published from its port's delete
            fip_id = payload.latest_state["device_id"]
        if fip_id:
            db.record(payload.context, "floatingip", fip_id, payload.context.project_id)

    # ---- status: ACTIVE once committed (every host routes)
    def _gateway_active(self, context: Any, router: dict[str, Any]) -> None:
        gw = router.get("gw_port_id") or self._get_router(context, router["id"]).gw_port_id
        if gw:
            self._core_plugin.update_port_status(context.elevated(), gw, n_const.PORT_STATUS_ACTIVE)

    def create_router(self, context: Any, router: Any) -> Any:
        r = super().create_router(context, router)
        self._gateway_active(context, r)
        return r

    def update_router(self, context: Any, id: str, router: Any) -> Any:
        r = super().update_router(context, id, router)
        self._gateway_active(context, r)
        return r

    def add_router_interface(self, context: Any, router_id: str, interface_info: Any = None) -> Any:
        info = super().add_router_interface(context, router_id, interface_info)
        self._core_plugin.update_port_status(context.elevated(), info["port_id"], n_const.PORT_STATUS_ACTIVE)
        return info

    def _fip_status(self, context: Any, fip: dict[str, Any]) -> dict[str, Any]:
        status = n_const.FLOATINGIP_STATUS_ACTIVE if fip.get("port_id") else n_const.FLOATINGIP_STATUS_DOWN
        if fip.get("status") != status:
            self.update_floatingip_status(context.elevated(), fip["id"], status)
            fip = {**fip, "status": status}
        return fip

    def create_floatingip(self, context: Any, floatingip: Any) -> Any:
        return self._fip_status(context, super().create_floatingip(context, floatingip))

    def update_floatingip(self, context: Any, id: str, floatingip: Any) -> Any:
        return self._fip_status(context, super().update_floatingip(context, id, floatingip))
