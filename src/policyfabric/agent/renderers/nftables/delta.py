"""From one ruleset to another in one ``nft -f`` transaction that touches only what changed.

Pure: two ``Ruleset`` values in, the text and its counts out. Parts are compared by identity
first (the compiler gives an unchanged part the same object), then by value, so the cost is the
number of parts plus the size of those that changed:

- a set's elements: ``add element`` / ``delete element`` of the difference (a member joining is
  one line of one element);
- the endpoint bridges: elements of the ``ports`` and ``zones`` maps (an endpoint coming or going
  is one element of each, the base chains stay as they are);
- a chain whose rules changed: ``flush chain`` and its rules again; a new chain or set is added,
  a gone one deleted.

The kernel runs the file as one transaction, and checks references as it goes, so the order is:
new sets and (empty) chains first, which rules and map elements may then name; rules and map
elements next; chains and sets no longer named last.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from policyfabric.agent.renderers.nftables.ruleset import (
    TABLE,
    Ruleset,
    ports_element,
    set_declaration,
    zones_element,
)

T = f"inet {TABLE}"


@dataclass(frozen=True)
class Delta:
    """``text`` for ``nft -f`` (empty: nothing to do) and what it changes: set and map elements and
    rules added and removed, and how many chains it writes again."""

    text: str
    added: int
    removed: int
    chains: int
    elements_only: bool  # only set elements change (a membership change)

    def describe(self) -> str:
        return f"{self.chains} chains written" if self.chains else "set elements"


def _elements(words: Iterable[str]) -> str:
    return ", ".join(sorted(words))


def changes(old: Ruleset, new: Ruleset) -> Delta:
    """The commands that turn a table holding ``old`` into one holding ``new``."""
    first: list[str] = []  # new sets and chains
    middle: list[str] = []  # element additions, chains written again, map elements
    last: list[str] = []  # element deletions, then chains and sets no longer named
    added = removed = 0
    elements_only = old.chain_map is new.chain_map or old.chain_map == new.chain_map
    for name, elements in new.sets.items():
        before = old.sets.get(name)
        if before is None:
            first.append(f"add {set_declaration(name, elements, table=T)}")
            added += len(elements)
            elements_only = False
        elif before is not elements and before != elements:
            came, gone = elements - before, before - elements
            if came:
                middle.append(f"add element {T} {name} {{ {_elements(came)} }}")
            if gone:
                last.append(f"delete element {T} {name} {{ {_elements(gone)} }}")
            added, removed = added + len(came), removed + len(gone)
    gone_sets = [name for name in old.sets if name not in new.sets]
    elements_only = elements_only and not gone_sets

    written = 0
    if old.chain_map is not new.chain_map:
        refill: list[str] = []
        for name, chain in new.chain_map.items():
            before_chain = old.chain_map.get(name)
            if before_chain is None:
                first.append(f"add chain {T} {name}" + (f" {{ {chain.hook} }}" if chain.hook else ""))
            elif before_chain is chain or before_chain == chain:
                continue
            else:
                middle.append(f"flush chain {T} {name}")
                removed += len(before_chain.rules)
            refill += chain.block(name)
            added += len(chain.rules)
            written += 1
        gone_chains = [name for name in old.chain_map if name not in new.chain_map]
        for name in gone_chains:
            middle.append(f"flush chain {T} {name}")  # its jumps go before the chains they name
            removed += len(old.chain_map[name].rules)
        if refill:
            middle += [f"table {T} {{", *refill, "}"]
        last_chains = [f"delete chain {T} {name}" for name in gone_chains]
    else:
        last_chains = []

    if old.bridges is not new.bridges and old.bridges != new.bridges:
        elements_only = False
        gone_b = [(b, n) for b, n in old.bridges.items() if new.bridges.get(b) != n]
        came_b = [(b, n) for b, n in new.bridges.items() if old.bridges.get(b) != n]
        if gone_b:
            keys = _elements(f'"{b}"' for b, _ in gone_b)
            middle += [f"delete element {T} ports {{ {keys} }}", f"delete element {T} zones {{ {keys} }}"]
        if came_b:
            middle.append(f"add element {T} ports {{ {_elements(ports_element(b, n) for b, n in came_b)} }}")
            middle.append(f"add element {T} zones {{ {_elements(zones_element(b, n) for b, n in came_b)} }}")
        added, removed = added + 2 * len(came_b), removed + 2 * len(gone_b)

    last += last_chains
    for name in gone_sets:
        last.append(f"delete set {T} {name}")
        removed += len(old.sets[name])
    lines = first + middle + last
    return Delta("\n".join(lines) + "\n" if lines else "", added, removed, written, elements_only)
