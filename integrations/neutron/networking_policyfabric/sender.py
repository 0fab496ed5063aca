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
    "network": ("bridge-domains", "external-networks"),
    "subnet": ("subnets",),
    "port": ("endpoints",),
    "security_group": ("security-groups",),
    "router": ("routers",),
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

    def network_objects(self, net: dict[str, Any]) -> list[mapping.Obj]:
        if mapping.is_external(net):
            subs = self.core.get_subnets(self.ctx, filters={"network_id": [net["id"]]})
            subs = sorted(subs, key=lambda s: (s["ip_version"], s.get("created_at") or ""))
            return [mapping.subnet(subs[0], net)] if subs else []
        bd = mapping.network(net)
        return [bd] if bd else []

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
            return [ep] if ep else None
        if resource == "security_group":
            sg = _get(lambda: core.get_security_group(ctx, object_id))
            return None if sg is None else [mapping.security_group(sg)]
        if resource == "router":
            r = _get(lambda: self.l3.get_router(ctx, object_id))
            if r is None:
                return None
            ports = core.get_ports(
                ctx, filters={"device_id": [object_id], "device_owner": list(mapping.ROUTER_INTERFACE_OWNERS)}
            )
            subnets = [f["subnet_id"] for p in ports for f in p.get("fixed_ips") or []]
            gw = r.get("gw_port_id") and _get(lambda: core.get_port(ctx, r["gw_port_id"]))
            return [mapping.router(r, subnets, mapping.gateway_address(gw or None), self.gateway_hosts)]
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
                a = self.authority.delete(collection, None, mapping.name(object_id, resource))
                if journal.classify(a.status) != journal.SENT:
                    return a
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
