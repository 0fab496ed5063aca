"""The revision an agent says it rendered: read from its tenants' ``PfRevision`` in the cache,
whole when what changed is unknown, else from the changed URIs only."""

from __future__ import annotations

from policyfabric.agent.reports import RevisionSeen, cached_revision
from policyfabric.authority.opflex.repository import revision_mo
from policyfabric.opflex.gbp import Cls
from policyfabric.opflex.uri import space


def test_the_highest_revision_of_the_resolved_tenants() -> None:
    policy = {m.uri: m for m in (revision_mo("acme", 7), revision_mo("beta", 9), revision_mo("gone", 99))}
    wanted = {
        space("acme"): Cls.POLICY_SPACE,
        space("beta"): Cls.POLICY_SPACE,
        "/x/PfEndpoint/e/": "PfEndpoint",
    }
    assert cached_revision(policy, wanted) == 9  # "gone" is not resolved: not counted
    assert cached_revision({}, wanted) is None


def test_kept_from_the_changed_uris() -> None:
    seen = RevisionSeen()
    wanted = {space("acme"): Cls.POLICY_SPACE}
    policy = {revision_mo("acme", 3).uri: revision_mo("acme", 3)}
    assert seen.update(policy, wanted, None) == 3  # unknown changes: a scan
    policy[revision_mo("acme", 5).uri] = revision_mo("acme", 5)
    assert seen.update(policy, wanted, {"/PolicyUniverse/PolicySpace/acme/GbpEpGroup/web/"}) == 3
    assert seen.update(policy, wanted, {revision_mo("acme", 5).uri}) == 5
    policy[revision_mo("beta", 4).uri] = revision_mo("beta", 4)
    assert seen.update(policy, wanted, {revision_mo("beta", 4).uri}) == 5  # the highest stays


def test_by_need_the_tenants_of_the_objects_resolved_count() -> None:
    """Agents resolve objects of a tenant, not the tenant: its revision still counts."""
    policy = {m.uri: m for m in (revision_mo("acme", 7), revision_mo("beta", 9), revision_mo("gone", 99))}
    wanted = {
        f"{space('acme')}{Cls.GBP_EP_GROUP}/web/": Cls.GBP_EP_GROUP,
        f"{space('beta')}PfEndpoint/e1/": "PfEndpoint",
        "/PolicyUniverse/PlatformConfig/x/": "PlatformConfig",  # in no tenant
    }
    assert cached_revision(policy, wanted) == 9
    del wanted[f"{space('beta')}PfEndpoint/e1/"]
    assert cached_revision(policy, wanted) == 7
