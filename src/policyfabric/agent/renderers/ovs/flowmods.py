"""Flow mods as command objects, and the pure planner that diffs a mirror against the desired flows.

``plan(installed, desired)`` says what to send, without sending it: ``ReplaceFlows`` when
nothing is known about the bridge (the first sync after start: OVS compares every flow itself
and changes only those that differ), otherwise one ``AddFlow`` per new or changed flow (an add
replaces the flow with the same table, priority and match) and one ``DeleteFlow`` (strict) per
flow no longer wanted. Two interpreters read the same commands: the applier's executor
(``applier.py``) turns them into one ``ovs-ofctl`` bundle, and the fake switch (``simulate.py``)
applies them to its tables. This is ovsdbapp's habit, commands as values inside one transaction,
and it is what lets the tests prove that a plan takes a switch from ``installed`` to exactly
``desired`` and that replaying it changes nothing. Deletes come first, as in ``replace-flows``;
within a bundle the order is invisible to traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from policyfabric.agent.renderers.ovs.flows import Flow

FlowKey = tuple[int, int, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class AddFlow:
    """``flow add``: install ``flow``, replacing any flow with the same table, priority and match."""

    flow: Flow


@dataclass(frozen=True)
class DeleteFlow:
    """``flow delete_strict``: remove the flow with exactly this table, priority and match."""

    flow: Flow


@dataclass(frozen=True)
class ReplaceFlows:
    """``replace-flows``: make the bridge hold exactly ``flows``, whatever it held before."""

    flows: tuple[Flow, ...]


Command = AddFlow | DeleteFlow | ReplaceFlows


def index(flows: Iterable[Flow]) -> dict[FlowKey, Flow]:
    """Flows by key, as the mirror keeps them (of two flows with one key, the last wins)."""
    return {f.key: f for f in flows}


def plan(installed: Mapping[FlowKey, Flow] | None, desired: Mapping[FlowKey, Flow]) -> list[Command]:
    """The commands that make a bridge holding ``installed`` (None: unknown) hold ``desired``."""
    if installed is None:
        return [ReplaceFlows(tuple(desired.values()))]
    commands: list[Command] = [DeleteFlow(gone) for key, gone in installed.items() if key not in desired]
    for key, new in desired.items():
        old = installed.get(key)
        if old is not new and old != new:  # compiled flows are memoised: mostly the same object
            commands.append(AddFlow(new))
    return commands
