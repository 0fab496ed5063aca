"""Drift: a renderer's device changed by someone else, repaired by the agent, reported as a fault.

A renderer that can watch its device (``api.Renderer.watch``: the Open vSwitch renderer's flow
monitor, the nftables renderer's ``nft monitor``) says so as soon as it happens; the agent then
applies that renderer again at once, in full (the renderer has forgotten what it applied), which
restores exactly what is missing. ``DriftFaults`` is the bookkeeping, pure and apart from the
loop: which renderers have a repair pending, the fault ``drift-<renderer>`` raised at the first
drift, and when it may be cleared: once the device has stayed repaired for ``quiet`` seconds (a
person editing a bridge by hand types several commands: one fault for the episode, not one raised
and cleared per command; and a fault that lasted 30 ms would be seen by no one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

QUIET = 2.0  # seconds a repaired device must stay so before its fault is cleared


def code(renderer: str) -> str:
    return f"drift-{renderer}"


@dataclass
class _Episode:
    what: list[str] = field(default_factory=list)  # what drifted, as the renderer said (pending repair)
    detected: float | None = None  # when the drift pending repair was seen (first of them)
    repaired: float | None = None  # when it was last repaired
    drifts: int = 0
    description: str = ""  # the fault's
    told: object = None  # the session the fault was raised in


class DriftFaults:
    def __init__(self, quiet: float = QUIET) -> None:
        self.quiet = quiet
        self._episodes: dict[str, _Episode] = {}
        self.repairs = 0  # repairs made (a counter the agent reports)

    def noted(
        self, renderer: str, what: str, now: float, session: object = None
    ) -> tuple[str, str, str] | None:
        """A drift was seen: the fault (code, severity, description) to raise now, if this starts an
        episode (raised in ``session``: see ``untold``)."""
        episode = self._episodes.get(renderer)
        new = episode is None
        if episode is None:
            episode = self._episodes[renderer] = _Episode()
        episode.what.append(what)
        episode.drifts += 1
        if episode.detected is None:
            episode.detected = now
        if not new:
            return None
        episode.description = f"{renderer}: changed by someone else, repaired at once: {what}"
        episode.told = session
        return code(renderer), "major", episode.description

    def untold(self, session: object) -> list[tuple[str, str, str]]:
        """The faults to raise (again) in ``session``: those raised in none or in an earlier one
        (reports are best effort: a fault raised as the session broke is said again)."""
        if session is None:
            return []
        out = []
        for renderer, episode in self._episodes.items():
            if episode.told is not session:
                episode.told = session
                out.append((code(renderer), "major", episode.description))
        return out

    def pending(self, renderer: str) -> bool:
        """A repair is due: apply this renderer even if its desired state is unchanged."""
        episode = self._episodes.get(renderer)
        return episode is not None and episode.detected is not None

    def take(self, renderer: str) -> tuple[float, list[str]] | None:
        """The drift an apply starting now repairs (when it was seen, what it was), or None."""
        episode = self._episodes.get(renderer)
        if episode is None or episode.detected is None:
            return None
        taken = (episode.detected, episode.what)
        episode.detected, episode.what = None, []
        return taken

    def give_back(self, renderer: str, taken: tuple[float, list[str]]) -> None:
        """The apply failed: the drift is still pending."""
        episode = self._episodes.get(renderer)
        if episode is not None:
            detected, what = taken
            episode.detected = detected if episode.detected is None else min(detected, episode.detected)
            episode.what = what + episode.what

    def repaired(self, renderer: str, now: float) -> None:
        episode = self._episodes.get(renderer)
        if episode is not None:
            episode.repaired = now
            self.repairs += 1

    def clearable(self, now: float) -> list[tuple[str, str, str]]:
        """The faults to clear now (their devices have stayed repaired ``quiet`` seconds); forgotten."""
        out = []
        for renderer, episode in list(self._episodes.items()):
            repaired = episode.repaired
            if episode.detected is None and repaired is not None and now - repaired >= self.quiet:
                del self._episodes[renderer]
                n = episode.drifts
                out.append(
                    (code(renderer), "cleared", f"{renderer}: repaired ({n} drift{'s' if n != 1 else ''})")
                )
        return out

    def next_clear(self, now: float) -> float | None:
        """Seconds until a fault may be cleared (when to look again), or None."""
        due = [
            e.repaired + self.quiet - now
            for e in self._episodes.values()
            if e.detected is None and e.repaired is not None
        ]
        return max(0.0, min(due)) if due else None
