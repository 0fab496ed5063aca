"""Sending one journal row: read the resource's current state from Neutron, map it, write it.

Level-triggered, so idempotent: the row names a resource, and what is sent is what Neutron holds
now (an upsert), or a delete when Neutron no longer has it (``desired``). The tenant of an object
(its project's tenant, l3_context and the driver's two port-security groups) is written first,
once per process and again after the authority's state went backwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from neutron_lib import exceptions as n_exc
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory

from networking_policyfabric import journal, mapping
from networking_policyfabric.client import Answer, Authority

LOG = logging.getLogger(__name__)

# where each Neutron resource may live in policyfabric, for deletes (names are Neutron UUIDs,
# unique across tenants, so a delete needs no tenant)
DELETE_FROM = {
    "network": ("bridge-domains", "external-networks", "l3-contexts"),
    "subnet": ("subnets",),
    "port": ("endpoints",),
    "security_group": ("security-groups",),
    "router": ("routers", "l3-contexts"),
    "floatingip": ("floating-ips",),
}


def _get(getter: Callable[[], Any]) -> Any:
    try:
        return getter()
    except n_exc.NotFound:
        return None


class Reader:
    """Neutron's current state, through its plugins (in the API or the periodic worker process)."""

    def __init__(self, context: Any, gateway_hosts: list[str]) -> None:
        self.ctx = context
        self.gateway_hosts = gateway_hosts

    @property
    def core(self) -> Any:
        return directory.get_plugin()

    @property
    def l3(self) -> Any:
        return directory.get_plugin(plugin_constants.L3)

    def interface_ports(self, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
        """Router interface ports matching ``filters`` (network_id or device_id)."""
        return list(
            self.core.get_ports(
                self.ctx, filters={**filters, "device_owner": list(mapping.ROUTER_INTERFACE_OWNERS)}
            )
        )

    def network_objects(self, net: dict[str, Any]) -> list[mapping.Obj]:
        if mapping.is_external(net):
            subs = self.core.get_subnets(self.ctx, filters={"network_id": [net["id"]]})
            subs = sorted(subs, key=lambda s: (s["ip_version"], s.get("created_at") or ""))
            return [mapping.subnet(subs[0], net)] if subs else []
        router_id = mapping.network_router(net["id"], self.interface_ports({"network_id": [net["id"]]}))
        return mapping.network_objects(net, router_id)

    def group_copies(self, group_ids: list[str], project_id: str) -> list[mapping.Obj]:
        """Copies, in ``project_id``'s tenant, of groups of another project that a port there uses,
        with the groups their rules name (``mapping.group_closure``)."""
        groups: dict[str, Any] = {}
        todo = list(group_ids)
        while todo:  # read the closure's groups, one level of remote groups at a time
            found = self.core.get_security_groups(self.ctx, filters={"id": todo})
            groups.update({g["id"]: g for g in found})
            todo = [
                r["remote_group_id"]
                for g in found
                for r in g.get("security_group_rules") or []
                if r.get("remote_group_id") and r["remote_group_id"] not in groups
            ]
        return [
            mapping.security_group(groups[g], project_id) for g in mapping.group_closure(group_ids, groups)
        ]

    def copy_tenants(self, sg_id: str, home_project: str) -> list[str]:
        """The tenants (projects of networks) other than the group's own where a port uses it."""
        ports = self.core.get_ports(self.ctx, filters={"security_groups": [sg_id]})
        net_ids = sorted({p["network_id"] for p in ports if p.get("project_id") != home_project})
        if not net_ids:
            return []
        nets = self.core.get_networks(self.ctx, filters={"id": net_ids}, fields=["project_id"])
        return sorted({n["project_id"] for n in nets if n["project_id"] != home_project})

    def desired(self, resource: str, object_id: str) -> list[mapping.Obj] | None:
        """What the authority should hold for this resource (None: Neutron no longer has it)."""
        core, ctx = self.core, self.ctx
        if resource == "network":
            net = _get(lambda: core.get_network(ctx, object_id))
            return None if net is None else self.network_objects(net)
        if resource == "subnet":
            sub = _get(lambda: core.get_subnet(ctx, object_id))
            if sub is None:
                return None
            net = core.get_network(ctx, sub["network_id"])
            return self.network_objects(net) if mapping.is_external(net) else [mapping.subnet(sub, net)]
        if resource == "port":
            p = _get(lambda: core.get_port(ctx, object_id))
            if p is None:
                return None
            net = core.get_network(ctx, p["network_id"])
            ids = [f["subnet_id"] for f in p.get("fixed_ips") or []]
            subs = {s["id"]: s for s in core.get_subnets(ctx, filters={"id": ids})} if ids else {}
            ep = mapping.port(p, net, subs)
            if ep is None:
                return None
            foreign = mapping.foreign_groups(p, net)
            return [*self.group_copies(foreign, net["project_id"]), ep] if foreign else [ep]
        if resource == "security_group":
            sg = _get(lambda: core.get_security_group(ctx, object_id))
            if sg is None:
                return None
            copies = [mapping.security_group(sg, t) for t in self.copy_tenants(sg["id"], sg["project_id"])]
            return [mapping.security_group(sg), *copies]
        if resource == "router":
            r = _get(lambda: self.l3.get_router(ctx, object_id))
            if r is None:
                return None
            ports = self.interface_ports({"device_id": [object_id]})
            subnets = [f["subnet_id"] for p in ports for f in p.get("fixed_ips") or []]
            gw = r.get("gw_port_id") and _get(lambda: core.get_port(ctx, r["gw_port_id"]))
            return mapping.router_objects(r, subnets, mapping.gateway_address(gw or None), self.gateway_hosts)
        if resource == "floatingip":
            fip = _get(lambda: self.l3.get_floatingip(ctx, object_id))
            return None if fip is None else [mapping.floating_ip(fip)]
        raise ValueError(f"unknown journal resource {resource!r}")


class Sender:
    def __init__(self, authority: Authority, reader: Reader) -> None:
        self.authority, self.reader = authority, reader
        self.tenants: set[str] = set()

    def forget_tenants(self) -> None:
        self.tenants.clear()

    def _ensure_tenant(self, tenant: str) -> Answer:
        if tenant in self.tenants:
            return Answer(200)
        for obj in mapping.tenant(tenant):
            a = self.authority.upsert(obj.collection, obj.body)
            if journal.classify(a.status) != journal.SENT:
                return a
        self.tenants.add(tenant)
        return Answer(200)

    def send(self, resource: str, object_id: str) -> Answer:
        """Make the authority hold what Neutron holds for this resource; if that is refused for the
        sake of other objects, send those again from Neutron's current state and try once more
        (``journal.mentioned``)."""
        answer = self._send(resource, object_id)
        if journal.classify(answer.status) != journal.REFUSED:
            return answer
        others = journal.mentioned(answer.error, object_id)
        for other, other_id in others:
            LOG.info(
                "policyfabric: %s %s refused over %s %s: sending that again",
                resource,
                object_id,
                other,
                other_id,
            )
            self._send(other, other_id)
        return self._send(resource, object_id) if others else answer

    def _send(self, resource: str, object_id: str) -> Answer:
        try:
            objs = self.reader.desired(resource, object_id)
        except mapping.Refused as e:  # accepted before a driver refused it (a full sync of old data)
            return Answer(422, error=f"not expressible in policyfabric: {e}")
        if objs is None:
            last = Answer(404)
            for collection in DELETE_FROM[resource]:
                while True:  # a group may have copies in other tenants (one name, several tenants)
                    a = self.authority.delete(collection, None, mapping.name(object_id, resource))
                    if journal.classify(a.status) != journal.SENT:
                        return a
                    if a.status == 404 or collection != "security-groups":
                        break
                    last = a
                last = a if a.status != 404 else last
            return last
        if not objs and resource == "network":  # an external network without a subnet
            return self.authority.delete("external-networks", None, mapping.name(object_id, resource))
        last = Answer(200)
        for obj in objs:
            t = obj.body.get("tenant")
            if t:
                a = self._ensure_tenant(t)
                if journal.classify(a.status) != journal.SENT:
                    return a
            last = self.authority.upsert(obj.collection, obj.body)
            if journal.classify(last.status) != journal.SENT:
                return last
        return last
