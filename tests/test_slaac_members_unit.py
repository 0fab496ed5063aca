"""A ``slaac`` endpoint's SLAAC address is in the member sets of its security groups (the remote
side of rules naming them), and follows its bridge domain's SLAAC subnets as they come:
the repository's incremental flush patches the member set as a whole build would."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from policyfabric.authority.opflex.repository import PolicyRepository
from policyfabric.model import objects as o
from policyfabric.model.kinds import BY_NAME as K
from policyfabric.opflex.cache import apply_policy_update
from policyfabric.opflex.gbp import Cls, Prop
from policyfabric.opflex.mo import MO
from tests.test_authority_incremental_unit import SUBNETS, T, check, seeded

MAC = "02:00:00:00:00:01"
IN_S4, IN_S5 = "2001:db8:4::ff:fe00:1", "2001:db8:5::ff:fe00:1"  # EUI-64 of MAC in s4 and s5


def members(mos: dict[str, MO]) -> set[str]:
    """Every member address of every member set (one-address GbpSubnets with a host's name)."""
    return {
        str(m.properties[Prop.ADDRESS])
        for m in mos.values()
        if m.subject == Cls.GBP_SUBNET and "." in str(m.properties.get(Prop.NAME, ""))
    }


def test_the_member_set_holds_the_slaac_address_and_follows_the_subnets(tmp_path: Path) -> None:
    authority = seeded(tmp_path)
    rule = o.SecurityGroupRule(
        direction="ingress", ethertype="ipv6", protocol="tcp", port=22, remote_group="g1"
    )

    def subnet(name: str) -> o.Subnet:
        return o.Subnet(name=name, tenant=T, bridge_domain="b1", cidr=SUBNETS[name], ipv6_ra_mode="slaac")

    authority.create_many(
        [
            (K["subnet"], subnet("s4")),
            (K["security_group"], o.SecurityGroup(name="g1", tenant=T, rules=[rule])),
            (
                K["endpoint"],
                o.Endpoint(
                    name="x1", tenant=T, epg="e1", ip=["10.1.0.10", "slaac"], mac=MAC, security_groups=["g1"]
                ),
            ),
        ]
    )
    cache: dict[str, MO] = {}
    pushes: list[dict[str, Any]] = []

    async def flush(repo: PolicyRepository) -> None:
        pushes.clear()
        await repo.rebuild({T}, push=True)
        for push in pushes:
            apply_policy_update(
                cache,
                [MO.from_wire(m) for m in push["replace"]],
                [MO.from_wire(m) for m in push["merge_children"]],
                [d["uri"] for d in push["delete"]],
            )
        check(repo, authority, {}, cache)

    async def go() -> None:
        repo = PolicyRepository(
            authority,
            fan_out=lambda method, table, parts: pushes.append(
                {k: [f for _, f in v] for k, v in parts.items()}
            ),
            schedule=lambda: None,
            gateways=dict,
            rebuilt=lambda t: None,
        )
        await repo.rebuild({None, T}, push=False)
        model = repo._models[T]
        cache.update({uri: MO.from_wire(mo.to_wire()) for uri, mo in repo.trees[T].mos.items()})
        assert members(cache) == {"10.1.0.10", IN_S4}
        authority.create(K["subnet"], subnet("s5"))  # a second SLAAC subnet on its bridge domain
        await flush(repo)
        assert members(cache) == {"10.1.0.10", IN_S4, IN_S5}
        assert repo._models[T] is model  # incremental all along

    asyncio.run(go())
