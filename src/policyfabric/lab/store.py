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

import httpx

from policyfabric.lab.etcd import EtcdCluster, delete_prefix
from policyfabric.lab.etcd import missing as etcd_missing
from policyfabric.lab.plan import LabError
from policyfabric.lab.state import LabState

ETCD_ROLE = "etcd:"  # state.pids keys of the lab's own etcd members


def check(store: str | None) -> None:
    """Refuse a --store the lab cannot use, before anything is created."""
    if store is None or store in ("sqlite", "etcd"):
        if store == "etcd" and (why := etcd_missing()) is not None:
            raise LabError(f"--store etcd starts an etcd cluster: {why}")
        return
    endpoints, _ = split_url(store)
    if not store.startswith("etcd://") or not endpoints or not all(_host_port(e) for e in endpoints):
        raise LabError(
            f"--store {store!r}: etcd://HOST:PORT,HOST:PORT,...[/PREFIX], or 'etcd' (the lab starts a "
            "cluster of its own)"
        )


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
    elif not split_url(store)[1]:
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
    endpoints, prefix = split_url(state.store)
    try:
        delete_prefix(endpoints, "/" + prefix + "/")
    except (httpx.HTTPError, RuntimeError) as exc:
        return [f"etcd prefix /{prefix}/ on {','.join(endpoints)}: {exc}"]
    return []


def split_url(url: str) -> tuple[list[str], str]:
    """``etcd://H:P,H:P/PREFIX`` -> (["H:P", "H:P"], "PREFIX"): the authority parses the URL itself
    (``store.etcd.parse_url``); the lab only needs the members and whether a prefix was given."""
    hosts, _, path = url.partition("://")[2].partition("/")
    return [h.strip() for h in hosts.split(",") if h.strip()], path.strip("/")


def _host_port(endpoint: str) -> bool:
    host, colon, port = endpoint.rpartition(":")
    return bool(colon and host and port.isdigit() and 0 < int(port) < 65536)
