"""Where a lab's embedded authority keeps intent: its SQLite file (the default), or etcd.

``--store etcd://HOST:PORT,...`` uses a cluster the user runs. Without a key prefix in the URL the
lab takes one of its own (``/policyfabric-lab-ID/``: two labs on one cluster never meet, and an
authority's own ``/policyfabric/`` is not touched) and ``lab down`` deletes it, as it deletes the
SQLite file; with a prefix the user chose, the keys are the user's and stay.

``--store etcd`` (no address): the lab starts a 3-member etcd cluster of its own on loopback,
under its state directory (``lab/etcd.py``), records the members' PIDs in its state before it waits
for them, and stops them at ``lab down`` after the authority (three members: what replicas and
the failure tests run on; one member would hide nothing a lab shows, but costs as much to start).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from policyfabric.lab.etcd import EtcdCluster
from policyfabric.lab.etcd import missing as etcd_missing
from policyfabric.lab.plan import LabError
from policyfabric.lab.state import LabState
from policyfabric.store.etcd import parse_url
from policyfabric.store.etcd_client import EtcdClient, EtcdError, b64, prefix_end

ETCD_ROLE = "etcd:"  # state.pids keys of the lab's own etcd members


def check(store: str | None) -> None:
    """Refuse a --store the lab cannot use, before anything is created."""
    if store is None or store in ("sqlite", "etcd"):
        if store == "etcd" and (why := etcd_missing()) is not None:
            raise LabError(f"--store etcd starts an etcd cluster: {why}")
        return
    try:
        parse_url(store)
    except ValueError as exc:
        raise LabError(f"--store: {exc} (or 'etcd': the lab starts a cluster of its own)") from None


def start(
    state: LabState, store: str | None, directory: Path, detached: bool, say: Callable[[str], None]
) -> str:
    """Make ``store`` ready for the authority and record it in ``state``: the ``--store`` URL the
    authority gets, or "" for its SQLite file."""
    if store is None or store == "sqlite":
        return ""
    if store == "etcd":
        say("starting an etcd cluster of 3 members on loopback")
        cluster = EtcdCluster(directory, size=3, die_with_parent=not detached)
        for member, pid in zip(cluster.members, cluster.launch(), strict=True):
            state.pids[ETCD_ROLE + member.name] = pid
        state.save()
        try:
            cluster.wait_healthy()
        except RuntimeError as exc:
            raise LabError(str(exc)) from None
        url = cluster.url
    elif not _prefix_of(store):
        url, state.store_prefix_owned = f"{store.rstrip('/')}/policyfabric-lab-{state.id}", True
    else:
        url = store
    state.store = url
    state.save()
    return url


def remove(state: LabState) -> list[str]:
    """At ``lab down``, after the authority stopped: the prefix the lab chose on the user's cluster
    is deleted; what could not be done, as problems."""
    if not (state.store and state.store_prefix_owned):
        return []
    endpoints, prefix = parse_url(state.store)
    client = EtcdClient(endpoints)
    start = prefix.encode()
    try:
        client.txn([], [{"request_delete_range": {"key": b64(start), "range_end": b64(prefix_end(start))}}])
    except EtcdError as exc:
        return [f"etcd prefix {prefix} on {','.join(endpoints)}: {exc}"]
    finally:
        client.close()
    return []


def _prefix_of(url: str) -> str:
    return url.partition("://")[2].partition("/")[2].strip("/")
