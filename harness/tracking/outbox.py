"""Store writes off the training thread: an Outbox runs the writes it is given in a thread of its
own, in the order given, so an epoch's metrics and checkpoint upload cost the training loop the
time to queue them, not a round trip to the server (against a basic-auth server: ~200 ms an
epoch). During an outage the writes wait in the queue while the Tracker retries the oldest
(tracking/outage.py); the queue is bounded, so a store that stays away slows training down
rather than filling memory. A write that fails for good stops the ones after it (they would
land out of order) and is raised in the training thread at its next submit or flush.
"""

from __future__ import annotations

import queue
import threading

_STOP, _MARK = object(), object()


class Outbox:
    def __init__(self, maxsize: int = 256):
        self._queue: queue.Queue = queue.Queue(maxsize)
        self.error: BaseException | None = None
        self.abandoned = False
        self._thread = threading.Thread(target=self._loop, name="harness-outbox", daemon=True)
        self._thread.start()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # after a clean end everything was flushed already; after a fault what is queued still
        # lands if the store answers within a few seconds (the checkpoint's history covers the rest)
        self.close(timeout=None if exc_type is None else 10.0)

    def submit(self, fn, *args, **kwargs) -> None:
        """Queue `fn(*args, **kwargs)` after every write queued before it."""
        self.raise_error()
        self._queue.put((fn, args, kwargs))

    def flush(self) -> None:
        """Wait until every write queued so far has landed; raise the first that failed."""
        done = threading.Event()
        self._queue.put((_MARK, (done,), {}))
        while not done.wait(0.5):
            if self.error is not None or not self._thread.is_alive():
                break
        self.raise_error()

    def abandon(self) -> None:
        """Drop every write still queued (the run is another process's now, or deleted)."""
        self.abandoned = True

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self, timeout: float | None = None) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args, kwargs = item
            if fn is _MARK:
                args[0].set()
                continue
            if self.error is not None or self.abandoned:  # keep order: nothing lands after a lost write
                continue
            try:
                fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                self.error = e
