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
BINDABLE_TYPES = ("geneve", "vxlan", "local")
VIF_DETAILS = {portbindings.CAP_PORT_FILTER: True, "bridge_name": "br-int"}


def refuse(e: mapping.Refused) -> n_exc.InvalidInput:
    return n_exc.InvalidInput(error_message=str(e))


class PolicyfabricMechanismDriver(api.MechanismDriver):
    def initialize(self) -> None:
        db.ensure_table()
        self._agents: tuple[float, set[str]] = (0.0, set())
        for event in (events.PRECOMMIT_CREATE, events.PRECOMMIT_UPDATE, events.PRECOMMIT_DELETE):
            registry.subscribe(self._security_group, resources.SECURITY_GROUP, event)
        for event in (events.PRECOMMIT_CREATE, events.PRECOMMIT_DELETE):
            registry.subscribe(self._security_group_rule, resources.SECURITY_GROUP_RULE, event)

    def get_workers(self) -> list[Any]:
        return [JournalWorker()]

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
        nets = plugin.get_networks(
            ctx, filters={"project_id": [net["project_id"]]}, fields=["id", "router:external"]
        )
        ids = [n["id"] for n in nets if not n.get("router:external")]
        cidrs = [
            s["cidr"] for s in plugin.get_subnets(ctx, filters={"network_id": ids}) if s["id"] != sub["id"]
        ]
        clash = mapping.overlaps(sub["cidr"], cidrs)
        if clash is not None:
            raise n_exc.InvalidInput(
                error_message=f"Requested subnet with cidr: {sub['cidr']} for network: {net['id']} overlaps "
                f"with another subnet ({clash}) of the project: policyfabric gives a project one "
                "routing domain"
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
    def _port(self, context: Any) -> None:
        p, net = context.current, context.network.current
        ctx = context._plugin_context
        owner = p.get("device_owner", "")
        if owner in mapping.ROUTER_INTERFACE_OWNERS or owner == n_const.DEVICE_OWNER_ROUTER_GW:
            if p.get("device_id"):
                db.record(ctx, "router", p["device_id"], p["project_id"])
            return
        if not mapping.is_endpoint(p, net):
            return
        ids = [f["subnet_id"] for f in p.get("fixed_ips") or []]
        subs = {s["id"]: s for s in context._plugin.get_subnets(ctx, filters={"id": ids})} if ids else {}
        try:
            mapping.port(p, net, subs)
        except mapping.Refused as e:
            raise refuse(e) from None
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
            if p.get("device_id"):
                db.record(context._plugin_context, "router", p["device_id"], p["project_id"])
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
                mapping.security_group(sg)
            except mapping.Refused as e:
                raise refuse(e) from None
        db.record(payload.context, "security_group", payload.resource_id or sg["id"], sg.get("project_id"))

    def _security_group_rule(self, resource: str, event: str, trigger: Any, payload: Any) -> None:
        if event == events.PRECOMMIT_CREATE:
            rule = payload.latest_state
            try:
                mapping.security_group_rule(rule)
            except mapping.Refused as e:
                raise refuse(e) from None
            sg_id = rule["security_group_id"]
        else:
            sg_id = payload.metadata["security_group_id"]
        db.record(payload.context, "security_group", sg_id, None)
