"""When the agent's next reconcile may start: a lone change at once, a burst paced by a debounce.

Why a follow-up goes at once too: a change often arrives in two parts a round trip apart. A rule
added to a contract comes with the contract; its classifier is another object, which the client
resolves when it sees the rule's reference and which arrives a few ms later, during or just after
the reconcile the contract woke. Paced by the debounce from that reconcile's start, the classifier
waited up to the whole debounce (6-9 ms of a rule add's ~16 ms at 1,000 endpoints, measured in
bench/converge.py) for a reconcile that costs ~2 ms. So the reconcile right after one that ran at
once (the loop was idle) runs at once as well; only then does the debounce pace a burst: at most
two reconciles in one debounce, then one per debounce, each taking in everything that arrived.
"""

from __future__ import annotations


class Pacer:
    """The loop asks ``delay(now)`` when woken, sleeps that long, and says ``started(now)``."""

    def __init__(self, debounce: float) -> None:
        self.debounce = debounce
        self._last = float("-inf")  # when the last reconcile started
        self._follow_up = False  # the last reconcile ran at once: the next may too

    def delay(self, now: float) -> float:
        """Seconds to wait before the next reconcile, woken at ``now``."""
        wait = self._last + self.debounce - now
        paced = wait > 0 and not self._follow_up
        self._follow_up = wait <= 0
        return wait if paced else 0.0

    def started(self, now: float) -> None:
        self._last = now
