"""A Ctrl-C or SIGTERM whose KeyboardInterrupt lands while a finalizer runs (multiprocessing's
Finalize as a dead --jobs worker's objects are collected) is dropped by Python, printed as
"Exception ignored": the command then went on as if never stopped (seen in
test_crash_matrix's --jobs test under load). tracking/guards remembers it and the loops raise it
again at their next turn (the pool's wait, each epoch)."""

from __future__ import annotations

import sys

import pytest

from harness.tracking import guards


class _StopInFinalizer:
    def __del__(self):
        raise KeyboardInterrupt  # as the signal handler does when SIGTERM lands here


class _ErrorInFinalizer:
    def __del__(self):
        raise ValueError("not a stop")


def test_a_stop_dropped_in_a_finalizer_is_raised_at_the_next_turn_and_only_once(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    monkeypatch.setattr(guards, "_dropped", False)
    guards.remember_dropped_stops()
    guards.remember_dropped_stops()  # a second call does not wrap the hook twice
    guards.raise_dropped_stop()  # nothing dropped: nothing raised
    _StopInFinalizer()  # collected at once: Python calls the unraisable hook
    assert seen == []  # remembered, not printed as a traceback
    with pytest.raises(KeyboardInterrupt):
        guards.raise_dropped_stop()
    guards.raise_dropped_stop()  # raised once
    _ErrorInFinalizer()
    assert len(seen) == 1 and seen[0].exc_type is ValueError  # other finalizer errors are reported as before
