"""A claim's proof of life: the heartbeat tag of the runs a process trains, refreshed from a
daemon thread, and each beat's check that the run is still this owner's (liveness.py reads it).
A beat that landed and was read back as this owner's renews the owner's lease on its writes
(tracking/outage.py's fence): a run is beaten at once when held, then every interval."""

from __future__ import annotations

import threading
import time

from ..tracking import Tracker
from .lifecycle import BEAT_INTERVAL, HEARTBEAT, OWNER
from .liveness import beating


DELETED = "(deleted in the store)"  # Heartbeat.lost's value for a run deleted while it trained


class Heartbeat:
    """Refreshes the heartbeat tag of the runs it holds, from a daemon thread, until stopped.
    With `owner`, each beat first checks the run is still that owner's: one taken over meanwhile
    (this process stalled past the stale limit and another resumed the run) is put in `lost`
    instead, and its trainer stops at the next epoch's end rather than train it a second time."""

    def __init__(self, tracker: Tracker, interval_s: float, owner: str | None = None, clock=time.time):
        # a beat is repeated anyway: it never waits out a store outage (the trainer's writes do)
        self.tracker, self.interval_s, self.owner, self.clock = tracker.impatient(), interval_s, owner, clock
        self.runs: set[str] = set()
        self.lost: dict[str, str] = {}  # run id -> its new owner
        self._stop, self._wake = threading.Event(), threading.Event()
        self._mutex = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="harness-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        beating(self.owner, True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        beating(self.owner, False)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def hold(self, run_id: str) -> None:
        with self._mutex:
            self.runs.add(run_id)
        self._wake.set()  # its first beat now: the lease on its writes starts

    def drop(self, run_id: str) -> None:
        with self._mutex:
            self.runs.discard(run_id)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._mutex:
                runs = list(self.runs)
            for run_id in runs:
                try:
                    self.beat(run_id)
                except Exception:  # a store hiccup: the next beat retries; missing several makes the run stale
                    pass

    def beat(self, run_id: str) -> None:
        began = self.tracker.outage.root().clock()
        if not self._still_mine(run_id):
            return
        self.tracker.set_tags(run_id, {HEARTBEAT: f"{self.clock():.3f}", BEAT_INTERVAL: f"{self.interval_s:g}"})
        if self.owner is not None and self._still_mine(run_id):  # read back: a takeover during the beat is seen
            self.tracker.outage.renew(run_id, began)

    def _still_mine(self, run_id: str) -> bool:
        if self.owner is None:
            return True
        run = self.tracker.run_record(run_id)
        now = DELETED if run.deleted else run.tags.get(OWNER)
        if now != self.owner:
            self.lost[run_id] = now or "another process"
            self.drop(run_id)
            return False
        return True
