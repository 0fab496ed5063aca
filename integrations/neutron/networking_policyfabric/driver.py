"""The ML2 mechanism driver ``policyfabric`` (and security groups, through Neutron's registry).

Precommit (inside Neutron's transaction) checks that policyfabric can express the change
(``mapping``; a refusal is Neutron's ``InvalidInput``, HTTP 400, and nothing commits) and writes a
journal row in the same transaction (``db.record``). Postcommit does nothing: the journal worker
(``get_workers``) sends rows in order. Router interface and gateway ports are recorded as their
router's row (the L3 plugin's resource). Binding: only on a host whose policyfabric agent is
connected to the authority (``GET /v1/agents``), as ``vif_type: ovs`` on ``br-int`` with the agent
filtering; a provisioning block then waits for the agent to report the endpoint ACTIVE.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from neutron_lib import constants as n_const
from neutron_lib import exceptions as n_exc
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.plugins.ml2 import api

from networking_policyfabric import config, db, mapping
from networking_policyfabric.worker import JournalWorker, authority

LOG = logging.getLogger(__name__)
SCHEMA_TTL = 30.0  # seconds a read of the authority's model (its OpenAPI schemas) is reused
BINDABLE_TYPES = ("geneve", "vxlan", "local")
VIF_DETAILS = {portbindings.CAP_PORT_FILTER: True, "bridge_name": "br-int"}


def refuse(e: mapping.Refused) -> n_exc.InvalidInput:
    return n_exc.InvalidInput(error_message=str(e))


class PolicyfabricMechanismDriver(api.MechanismDriver):
    def initialize(self) -> None:
        db.ensure_table()
        self._agents: tuple[float, set[str]] = (0.0, set())
        self._schemas: tuple[float, dict[str, list[str]]] = (-SCHEMA_TTL, {})
        for event in (events.PRECOMMIT_CREATE, events.PRECOMMIT_UPDATE, events.PRECOMMIT_DELETE):
            registry.subscribe(self._security_group, resources.SECURITY_GROUP, event)
        for event in (events.PRECOMMIT_CREATE, events.PRECOMMIT_DELETE):
            registry.subscribe(self._security_group_rule, resources.SECURITY_GROUP_RULE, event)

    def get_workers(self) -> list[Any]:
        return [JournalWorker()]

    def known_fields(self) -> dict[str, list[str]]:
        """The authority's model (its OpenAPI schemas' properties), read at most every
        ``SCHEMA_TTL``; the last one read while it is away (nothing read yet: nothing judged)."""
        at, known = self._schemas
        if time.monotonic() - at < SCHEMA_TTL:
            return known
        found = authority().schema_fields()
        if found is not None:
            known = found
        self._schemas = (time.monotonic(), known)
        return known

    def check_supported(self, obj: mapping.Obj | None) -> None:
        """Refuse, in precommit, what this authority's model cannot take yet (a newer field)."""
        if obj is None:
            return
        missing = mapping.unsupported(obj, self.known_fields())
        if missing:
            raise n_exc.InvalidInput(
                error_message=f"{', '.join(missing)}: not supported by this policyfabric authority "
                "(its model has no such field; upgrade it)"
            )

    # ---- networks and subnets
    def _network(self, context: Any) -> None:
        try:
            mapping.network(context.current)
        except mapping.Refused as e:
            raise refuse(e) from None
        db.record(context._plugin_context, "network", context.current["id"], context.current["project_id"])

    create_network_precommit = update_network_precommit = _network

    def delete_network_precommit(self, context: Any) -> None:
        db.record(context._plugin_context, "network", context.current["id"], context.current["project_id"])

    def _subnet(self, context: Any) -> None:
        sub, net = context.current, context.network.current
        plugin, ctx = context._plugin, context._plugin_context
        try:
            mapping.subnet(sub, net)
        except mapping.Refused as e:
            raise refuse(e) from None
        if mapping.is_external(net):
            others = [
                s
                for s in plugin.get_subnets(ctx, filters={"network_id": [net["id"]]})
                if s["id"] != sub["id"]
            ]
            if others:
                raise n_exc.InvalidInput(
                    error_message="policyfabric takes one subnet per external network; "
                    f"{net['id']} has {others[0]['cidr']}"
                )
            db.record(ctx, "network", net["id"], net["project_id"])
            return
        router_id = mapping.network_router(net["id"], _interface_ports(plugin, ctx, network_id=[net["id"]]))
        if router_id is not None:  # Neutron checks the subnets on the router; policyfabric routes all
            clash = _router_clash(plugin, ctx, router_id, net["id"], [sub["cidr"]])
            if clash is not None:
                raise n_exc.InvalidInput(
                    error_message=f"Requested subnet with cidr: {sub['cidr']} for network: {net['id']} "
                    f"overlaps with another subnet ({clash[1]}) of a network on router {router_id}: "
                    "policyfabric routes every subnet of a network on a router"
                )
        db.record(ctx, "subnet", sub["id"], net["project_id"])

    create_subnet_precommit = update_subnet_precommit = _subnet

    def delete_subnet_precommit(self, context: Any) -> None:
        net = context.network.current
        if mapping.is_external(net):
            db.record(context._plugin_context, "network", net["id"], net["project_id"])
        else:
            db.record(context._plugin_context, "subnet", context.current["id"], net["project_id"])

    # ---- ports
    def _router_interface(self, context: Any) -> None:
        """A router interface port: its network joins the router's l3_context (the network's row,
        before the router's), if policyfabric can express it: the network on no other router, and
        none of its subnets overlapping those of the router's other networks."""
        p, net = context.current, context.network.current
        plugin, ctx = context._plugin, context._plugin_context
        router_id = p.get("device_id")
        if not router_id:
            return
        try:
            mapping.network_router(net["id"], [*_interface_ports(plugin, ctx, network_id=[net["id"]]), p])
        except mapping.Refused as e:
            raise refuse(e) from None
        mine = [s["cidr"] for s in plugin.get_subnets(ctx, filters={"network_id": [net["id"]]})]
        clash = _router_clash(plugin, ctx, router_id, net["id"], mine)
        if clash is not None:
            raise n_exc.InvalidInput(
                error_message=f"Cidr {clash[0]} of network {net['id']} overlaps with cidr "
                f"{clash[1]} of a subnet of another network on router {router_id}: policyfabric "
                "routes every subnet of a network on a router"
            )
        db.record(ctx, "network", net["id"], net["project_id"])
        db.record(ctx, "router", router_id, p["project_id"])

    def _port(self, context: Any) -> None:
        p, net = context.current, context.network.current
        ctx = context._plugin_context
        owner = p.get("device_owner", "")
        if owner in mapping.ROUTER_INTERFACE_OWNERS:
            original = getattr(context, "original", None) or {}
            if original.get("device_owner") not in (None, *mapping.ROUTER_INTERFACE_OWNERS):
                db.record(ctx, "port", p["id"], net["project_id"])  # it was an endpoint: removed
            self._router_interface(context)
            return
        if owner == n_const.DEVICE_OWNER_ROUTER_GW:
            if p.get("device_id"):
                db.record(ctx, "router", p["device_id"], p["project_id"])
            return
        if not mapping.is_endpoint(p, net):
            return
        ids = [f["subnet_id"] for f in p.get("fixed_ips") or []]
        subs = {s["id"]: s for s in context._plugin.get_subnets(ctx, filters={"id": ids})} if ids else {}
        try:
            ep = mapping.port(p, net, subs)
        except mapping.Refused as e:
            raise refuse(e) from None
        self.check_supported(ep)
        db.record(ctx, "port", p["id"], net["project_id"])

    def create_port_precommit(self, context: Any) -> None:
        self._port(context)

    def update_port_precommit(self, context: Any) -> None:
        self._port(context)
        original = context.original or {}
        bound_now = context.vif_type == portbindings.VIF_TYPE_OVS and context.host
        newly = (
            original.get(portbindings.VIF_TYPE) != portbindings.VIF_TYPE_OVS
            or original.get(portbindings.HOST_ID) != context.host
        )
        if bound_now and newly and mapping.is_endpoint(context.current, context.network.current):
            from neutron.db import provisioning_blocks

            provisioning_blocks.add_provisioning_component(
                context._plugin_context, context.current["id"], resources.PORT,
                provisioning_blocks.L2_AGENT_ENTITY,
            )  # fmt: skip

    def delete_port_precommit(self, context: Any) -> None:
        p = context.current
        owner = p.get("device_owner", "")
        if owner in mapping.ROUTER_INTERFACE_OWNERS or owner == n_const.DEVICE_OWNER_ROUTER_GW:
            if p.get("device_id"):  # the router first: it drops the interface before the network leaves
                db.record(context._plugin_context, "router", p["device_id"], p["project_id"])
            if owner in mapping.ROUTER_INTERFACE_OWNERS:
                net = context.network.current
                db.record(context._plugin_context, "network", net["id"], net["project_id"])
        elif mapping.is_endpoint(p, context.network.current):
            db.record(context._plugin_context, "port", p["id"], context.network.current["project_id"])

    # ---- binding
    def live_hosts(self) -> set[str]:
        """Hosts whose agent is connected to the authority (read at most every ``agents_ttl``)."""
        at, hosts = self._agents
        if time.monotonic() - at < config.conf().agents_ttl:
            return hosts
        a = authority().agents()
        if a.status == 200:
            hosts = {x["name"] for x in a.body.get("items", []) if x.get("connected", True)}
            self._agents = (time.monotonic(), hosts)
        else:
            LOG.warning("policyfabric: cannot read the live agents (%s); using the last list", a.error)
        return hosts

    def bind_port(self, context: Any) -> None:
        if context.current.get(portbindings.VNIC_TYPE, portbindings.VNIC_NORMAL) != portbindings.VNIC_NORMAL:
            return
        host = (context.host or "").lower()
        if host not in self.live_hosts():
            LOG.info(
                "policyfabric: no live agent on host %r; port %s not bound",
                context.host,
                context.current["id"],
            )
            return
        for segment in context.segments_to_bind:
            if segment[api.NETWORK_TYPE] in BINDABLE_TYPES:
                context.set_binding(segment[api.ID], portbindings.VIF_TYPE_OVS, dict(VIF_DETAILS))
                return

    # ---- security groups (registry callbacks, inside the security group's transaction)
    def _security_group(self, resource: str, event: str, trigger: Any, payload: Any) -> None:
        sg = payload.latest_state if event != events.PRECOMMIT_DELETE else payload.states[0]
        if event != events.PRECOMMIT_DELETE:
            try:
                obj = mapping.security_group(sg)
            except mapping.Refused as e:
                raise refuse(e) from None
            self.check_supported(obj)
        db.record(payload.context, "security_group", payload.resource_id or sg["id"], sg.get("project_id"))

    def _security_group_rule(self, resource: str, event: str, trigger: Any, payload: Any) -> None:
        if event == events.PRECOMMIT_CREATE:
            rule = payload.latest_state
            try:
                mapped = mapping.security_group_rule(rule)
            except mapping.Refused as e:
                raise refuse(e) from None
            self.check_supported(mapping.Obj("security-groups", {"name": "rule", "rules": [mapped]}))
            sg_id = rule["security_group_id"]
        else:
            sg_id = payload.metadata["security_group_id"]
        db.record(payload.context, "security_group", sg_id, None)


def _interface_ports(plugin: Any, ctx: Any, **filters: list[str]) -> list[dict[str, Any]]:
    """Router interface ports matching ``filters`` (network_id or device_id)."""
    return list(
        plugin.get_ports(ctx, filters={**filters, "device_owner": list(mapping.ROUTER_INTERFACE_OWNERS)})
    )


def _router_networks(plugin: Any, ctx: Any, router_id: str) -> set[str]:
    """The networks a router has interfaces on."""
    return {p["network_id"] for p in _interface_ports(plugin, ctx, device_id=[router_id])}


def _router_clash(
    plugin: Any, ctx: Any, router_id: str, network_id: str, cidrs: list[str]
) -> tuple[str, str] | None:
    """The first of ``cidrs`` (a network's subnets, or one about to be) that overlaps a subnet of
    another network on the router, with that subnet's cidr: policyfabric routes every subnet of a
    network on a router in one l3_context, so such a pair cannot be expressed. None: no clash."""
    others = _router_networks(plugin, ctx, router_id) - {network_id}
    if not others or not cidrs:
        return None
    theirs = [s["cidr"] for s in plugin.get_subnets(ctx, filters={"network_id": sorted(others)})]
    for mine in cidrs:
        clash = mapping.overlaps(mine, theirs)
        if clash is not None:
            return mine, clash
    return None
