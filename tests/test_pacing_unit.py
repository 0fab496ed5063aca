"""The agent's reconcile pacing: a lone change and its follow-up at once, a burst paced."""

from __future__ import annotations

import itertools

from policyfabric.agent.pacing import Pacer


def test_a_lone_change_and_its_follow_up_are_not_delayed() -> None:
    pacer = Pacer(0.010)
    assert pacer.delay(100.0) == 0.0  # idle: at once
    pacer.started(100.0)
    # the rule's classifier, resolved 3 ms into that reconcile: at once too, not 7 ms later
    assert pacer.delay(100.003) == 0.0
    pacer.started(100.003)


def test_a_burst_is_paced_by_the_debounce_after_the_follow_up() -> None:
    pacer = Pacer(0.010)
    starts = []
    now = 0.0
    for _ in range(6):  # woken every 1 ms, each reconcile instant
        now += pacer.delay(now)
        pacer.started(now)
        starts.append(round(now, 6))
        now += 0.001
    assert starts[:2] == [0.0, 0.001]  # the change and its follow-up
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts[1:])]
    assert gaps == [0.01] * 4  # then one per debounce


def test_after_a_quiet_spell_the_next_change_is_lone_again() -> None:
    pacer = Pacer(0.010)
    for t in (0.0, 0.001):
        assert pacer.delay(t) == 0.0
        pacer.started(t)
    assert pacer.delay(0.002) > 0  # the third within the debounce waits
    pacer.started(0.011)
    assert pacer.delay(5.0) == 0.0  # quiet: lone again, and its follow-up too
    pacer.started(5.0)
    assert pacer.delay(5.002) == 0.0
