"""Store writes off the training thread: an Outbox runs the writes it is given in a thread of its
own, in the order given, so an epoch's metrics and checkpoint upload cost the training loop the
time to queue them, not a round trip to the server (against a basic-auth server: ~200 ms an
epoch). During an outage the writes wait in the queue while the Tracker retries the oldest
(tracking/outage.py); the queue is bounded, so a store that stays away slows training down
rather than filling memory. A write that fails for good stops the ones after it (they would
land out of order) and is raised in the training thread at its next submit or flush.

A write refused by its run's fence (outage.py: the run is another owner's now, or deleted) drops
that run's writes still queued: those of a write submitted with `run=` (a group's outbox serves
several runs; that run's error is raised at its next submit or flush), every write otherwise. A
fenced exception leaving the `with` block drops them all: nothing queued lands in another owner's
run, except a refusal that concerns one run only (a write submitted with `run=` raised it): then
only that run's writes are dropped, and a group's other runs still land. A dropped write's `dropped` callback runs (a checkpoint's temporary file removed).
"""

from __future__ import annotations

import queue
import threading

from .outage import Fenced

_STOP, _MARK = object(), object()


class Outbox:
    def __init__(self, maxsize: int = 256):
        self._queue: queue.Queue = queue.Queue(maxsize)
        self.error: BaseException | None = None
        self.abandoned = False
        self.lost: dict[str, BaseException] = {}  # run id -> why its writes are dropped
        self._thread = threading.Thread(target=self._loop, name="harness-outbox", daemon=True)
        self._thread.start()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # after a clean end everything was flushed already; after a fault what is queued still
        # lands if the store answers within a few seconds (the checkpoint's history covers the
        # rest), unless the run is not this process's any more
        if isinstance(exc, Fenced) and not any(exc is why for why in self.lost.values()):
            self.abandon()  # one run's refusal (a `run=` write) dropped that run's writes already
        self.close(timeout=None if exc_type is None else 10.0)

    def submit(self, fn, *args, run: str | None = None, dropped=None, **kwargs) -> None:
        """Queue `fn(*args, **kwargs)` after every write queued before it (`run`: the run it
        writes to; `dropped`: called instead of `fn` if the write is dropped)."""
        self.raise_error(run)
        self._queue.put((fn, args, kwargs, run, dropped))

    def flush(self, run: str | None = None) -> None:
        """Wait until every write queued so far has landed; raise the first that failed (and
        why `run`'s writes were dropped)."""
        done = threading.Event()
        self._queue.put((_MARK, (done,), {}, None, None))
        while not done.wait(0.5):
            if self.error is not None or not self._thread.is_alive():
                break
        self.raise_error(run)

    def abandon(self) -> None:
        """Drop every write still queued (the run is another process's now, or deleted)."""
        self.abandoned = True

    def drop(self, run: str, why: BaseException) -> None:
        """Drop `run`'s writes still queued (a group's run lost; the others' still land)."""
        self.lost.setdefault(run, why)

    def raise_error(self, run: str | None = None) -> None:
        if self.error is not None:
            raise self.error
        if run is not None and run in self.lost:
            raise self.lost[run]

    def close(self, timeout: float | None = None) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args, kwargs, run, dropped = item
            if fn is _MARK:
                args[0].set()
                continue
            if self.error is not None or self.abandoned or run in self.lost:  # keep order: nothing lands after a lost write
                _call_dropped(dropped)
                continue
            try:
                fn(*args, **kwargs)
            except Fenced as e:  # the run is another owner's now: its queued writes go too
                if run is None:
                    self.error, self.abandoned = e, True
                else:
                    self.lost.setdefault(run, e)
                _call_dropped(dropped)
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                self.error = e


def _call_dropped(dropped) -> None:
    if dropped is not None:
        try:
            dropped()
        except Exception:  # noqa: BLE001 - a clean-up's failure is not the run's
            pass
