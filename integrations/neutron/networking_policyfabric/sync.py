"""``policyfabric-neutron-sync``: make the authority hold exactly what Neutron holds, in one batch.

Run by hand (``policyfabric-neutron-sync --config-file neutron.conf --config-file ml2_conf.ini``)
or by the journal worker when the authority's revision went backwards. What Neutron holds that
policyfabric cannot express (created before the driver was enabled) is logged and left out.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from networking_policyfabric import mapping, reconcile
from networking_policyfabric.sender import Reader, Sender

LOG = logging.getLogger(__name__)


def desired(reader: Reader) -> list[mapping.Obj]:
    core, l3, ctx = reader.core, reader.l3, reader.ctx
    found: list[mapping.Obj] = []
    resources: list[tuple[str, list[dict[str, Any]]]] = [
        ("network", core.get_networks(ctx)),
        ("subnet", core.get_subnets(ctx)),
        ("security_group", core.get_security_groups(ctx)),
        ("port", core.get_ports(ctx)),
        ("router", l3.get_routers(ctx) if l3 else []),
        ("floatingip", l3.get_floatingips(ctx) if l3 else []),
    ]
    projects = set()
    for resource, items in resources:
        for item in items:
            try:
                objs = reader.desired(resource, item["id"]) or []
            except mapping.Refused as e:
                LOG.warning("full sync: %s %s left out: %s", resource, item["id"], e)
                continue
            for obj in objs:
                if obj.body.get("tenant"):
                    projects.add(obj.body["tenant"])
                found.append(obj)
    for project in sorted(projects):
        found = mapping.tenant(project) + found
    return found


def full_sync(ctx: Any, sender: Sender, attempts: int = 2) -> int:
    """Reconcile everything; returns the number of batch items sent.

    The authority is listed before Neutron is read: an object the listing has and Neutron's later
    read lacks was deleted in Neutron, so deleting it is right even while the journal worker runs
    beside a sync started by hand. An object the worker creates in between makes the batch's
    ``create`` a 409: the sync is then planned again (once)."""
    start = time.monotonic()
    for attempt in range(attempts):
        actual: dict[str, list[dict[str, Any]]] = {}
        for collection in reconcile.ORDER:
            a = sender.authority.list(collection)
            if a.status != 200:
                raise RuntimeError(f"full sync: cannot list {collection}: {a.error}")
            actual[collection] = a.body.get("items", [])
        items = reconcile.plan(desired(sender.reader), actual)
        if not items:
            break
        a = sender.authority.batch(items)
        if a.status == 200:
            break
        if a.status != 409 or attempt == attempts - 1:
            raise RuntimeError(f"full sync refused: {a.error}")
        LOG.info("full sync: %s; planning again", a.error)
    LOG.info("full sync: %d items in %.2f s", len(items), time.monotonic() - start)
    return len(items)


def main() -> None:
    from neutron import manager
    from neutron.common import config as common_config
    from neutron_lib import context as n_context

    from networking_policyfabric import config
    from networking_policyfabric.worker import authority

    common_config.register_common_config_options()
    common_config.init(sys.argv[1:])
    common_config.setup_logging()
    manager.init()
    ctx = n_context.get_admin_context()
    sender = Sender(authority(), Reader(ctx, config.conf().gateway_hosts))
    start = time.monotonic()
    n = full_sync(ctx, sender)
    print(f"policyfabric-neutron-sync: {n} items in {time.monotonic() - start:.2f} s")
