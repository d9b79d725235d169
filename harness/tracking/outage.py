"""Riding out a tracking store that is briefly unreachable (a server or its database restarting).

Start-up fails fast: MLflow's own HTTP retries are few (tracking/__init__.py), so an unreachable
server is one line within seconds. Once a run trains, each store call is retried with backoff
while the store stays unreachable for at most the outage window ($HARNESS_OUTAGE_WINDOW_S,
default 600 s), counted from the first failure of the current outage on this process's monotonic
clock, shared by every call of one Tracker; past it the call raises StoreUnavailable and the run
stops resumable. A call that fails for another reason (a bad request, a permission) is raised at
once. Retrying is safe because every write the harness makes during a run is idempotent (tags and
params are set to the same values, metrics carry their own timestamp, artifacts are overwritten).

A fence keeps an outage or a stall from turning into a write into another owner's run: a run
trained here registers a check of its owner and a lease (`fence`, runs/lifecycle.py's). The owner
writes without asking only while the lease holds: while its last heartbeat that landed, and was read
back as its own (`renew`), is younger than the lease on this process's monotonic clock (twice the
beat interval, half of the four beats an observer must see unchanged before it takes a run over:
runs/liveness.py). A call about that run (its first parameter is the run id) made when the lease
has run out (an outage kept the heartbeat from landing, the process stalled: SIGSTOP, a paused VM),
or that follows a failed call, asks the store first who owns the run, every such call: when it is
not this owner any more the check raises a Fenced error and the write is not made. On a healthy
store the heartbeat renews the lease every beat, so nothing is asked.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time

from ..errors import HarnessError, one_line
from . import faults

DEFAULT_WINDOW_S = 600.0
log = logging.getLogger("harness.outage")

# what an unreachable or restarting server or database looks like through MLflow, requests,
# urllib3 and SQLAlchemy (connection refused/reset, timeouts, 5xx, a database that went away)
_TRANSIENT = ("max retries exceeded", "connection refused", "connection reset", "connection aborted", "remote end closed",
              "timed out", "timeout", "too many 500", "too many 502", "too many 503", "too many 504", "temporarily_unavailable",
              "temporarily unavailable", "bad gateway", "service unavailable", "could not connect", "server closed the connection",
              "terminating connection", "connection to server", "the database system is", "database is locked",
              "broken pipe", "name or service not known", "internal_error", "internal server error",
              "remotedisconnected", "protocolerror", "newconnectionerror",
              # the basic-auth server answers 401 while its own user database is unreachable (a
              # PostgreSQL restart): mid-run, after these credentials were accepted at start-up, a
              # 401 is that outage; a password revoked meanwhile stops the run resumable at the
              # window's end, and the rerun says so in one line at start-up
              "401 client error", "not authenticated", "unauthorized")


class StoreUnavailable(HarnessError):
    """The tracking store stayed unreachable past the outage window."""


class Fenced(Exception):
    """A write refused because its run is not this process's any more (runs/lifecycle.py's
    TakenOver and RunDeleted): never retried, never a store fault. `run_id`: the run it concerns,
    where known (a group trains several: one run's refusal says nothing of the others)."""

    def __init__(self, *args, run_id: str | None = None):
        super().__init__(*args)
        self.run_id = run_id


def window_s() -> float:
    """The outage window: $HARNESS_OUTAGE_WINDOW_S seconds, default 600."""
    raw = os.environ.get("HARNESS_OUTAGE_WINDOW_S")
    if not raw:
        return DEFAULT_WINDOW_S
    try:
        value = float(raw)
    except ValueError:
        raise HarnessError(f"HARNESS_OUTAGE_WINDOW_S={raw!r} is not a number of seconds") from None
    if value < 0:
        raise HarnessError(f"HARNESS_OUTAGE_WINDOW_S={raw!r} must be 0 or more seconds")
    return value


def store_fault(e: BaseException) -> bool:
    """Whether `e` came from the store or the network rather than from training itself."""
    if isinstance(e, (StoreUnavailable, ConnectionError, TimeoutError, OSError)):
        return True
    module = type(e).__module__ or ""
    return module.startswith(("mlflow", "requests", "urllib3", "sqlalchemy", "psycopg", "http.client"))


def transient(e: BaseException) -> bool:
    """Whether `e` says the store is unreachable for now (worth retrying), not that the call is wrong."""
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    status = getattr(e, "get_http_status_code", None)
    try:
        code = status() if status else None
    except Exception:
        code = None
    text = f"{type(e).__name__}: {e}".lower()
    if code == 401:
        return True  # see _TRANSIENT: mid-run, the auth server's database restarting
    if isinstance(code, int) and 400 <= code < 500 and "max retries" not in text:
        return False
    return (isinstance(code, int) and code >= 500) or any(k in text for k in _TRANSIENT)


class Outage:
    """When the store became unreachable (None: it answers), shared by the calls of one Tracker,
    so that consecutive calls during one outage share one window."""

    def __init__(self, window: float, clock=time.monotonic, sleep=time.sleep, parent: "Outage | None" = None):
        self.window, self.clock, self.sleep = window, clock, sleep
        self.parent = parent  # an impatient copy's (window 0): its failures count as the parent's outages
        self.since: float | None = None
        self.longest = 0.0  # the longest outage ridden out, in seconds (for the log and tests)
        self.outages = 0  # how many began: a run's fence is asked again after each
        self.fences: dict[str, object] = {}  # run id -> its owner check (raises Fenced)
        self._fenced: dict[str, int] = {}  # run id -> the outage count when its check last passed
        self._lease: dict[str, tuple[float, float | None]] = {}  # run id -> (lease s, when its last proof began)
        self._lock = threading.Lock()

    def fence(self, run_id: str, check, lease_s: float = float("inf")) -> None:
        """Ask `check()` before a call about `run_id` that follows a failed call or finds its lease
        run out (see the module); the lease starts at the first `renew`."""
        with self._lock:
            self.fences[run_id], self._fenced[run_id] = check, self.outages
            self._lease[run_id] = (lease_s, None if lease_s != float("inf") else self.clock())

    def unfence(self, run_id: str) -> None:
        with self._lock:
            self.fences.pop(run_id, None)
            self._fenced.pop(run_id, None)
            self._lease.pop(run_id, None)

    def root(self) -> "Outage":
        """The Outage whose fences and leases these are (an impatient copy's parent)."""
        return self.parent.root() if self.parent is not None else self

    def renew(self, run_id: str, since: float) -> None:
        """The owner proved it holds `run_id` by a heartbeat begun at `since` (this Outage's
        clock) that landed and was read back as its own: no write needs asking for a lease from then."""
        root = self.root()
        with root._lock:
            if run_id in root._lease:
                lease_s, held = root._lease[run_id]
                root._lease[run_id] = (lease_s, since if held is None else max(held, since))

    def leased(self, run_id: str) -> bool:
        """Whether writes about `run_id` may skip asking its owner (a run with no fence: always)."""
        root = self.root()
        lease_s, held = root._lease.get(run_id, (float("inf"), 0.0))
        return lease_s == float("inf") or (held is not None and root.clock() - held < lease_s)

    def call(self, fn, /, *args, **kwargs):
        return self.call_for(None, fn, *args, **kwargs)

    def call_for(self, run_id: str | None, fn, /, *args, **kwargs):
        """`fn(*args, **kwargs)` retried through an outage; a call about `run_id` fenced."""
        delay, failed = 1.0, False
        while True:
            try:
                faults.store_down()
                self._ask_fence(run_id, failed)
                result = fn(*args, **kwargs)
            except Fenced:
                self._answered()  # the store said so: it is reachable
                raise
            except Exception as e:
                failed = True
                if self.parent is not None and transient(e):
                    self.parent.note_outage()  # a heartbeat or an owner check that failed: the next write is fenced
                if self.window <= 0 or not transient(e):
                    raise
                self._failed(e)
                waited = self.clock() - self.since
                if waited >= self.window:
                    raise StoreUnavailable(f"tracking store unreachable for {waited:.0f} s, past the outage window "
                                           f"(HARNESS_OUTAGE_WINDOW_S={self.window:g}): {one_line(e)}") from None
                self.sleep(min(delay, self.window - waited))
                delay = min(delay * 2, 15.0)
                continue
            self._answered()
            return result

    def note_outage(self) -> None:
        """The store failed a call made without riding it out (an impatient copy's): the fences
        are asked again before the next write, as after an outage of this Outage's own."""
        with self._lock:
            self.outages += 1
        if self.parent is not None:
            self.parent.note_outage()

    def _ask_fence(self, run_id: str | None, failed: bool) -> None:
        check = self.fences.get(run_id) if run_id is not None else None
        if check is None:
            return
        outages = self.outages
        if not failed and self.since is None and self._fenced.get(run_id) == outages and self.leased(run_id):
            return
        check()  # Fenced: not ours; a store error: this attempt failed, the outage goes on
        with self._lock:
            if run_id in self.fences:
                self._fenced[run_id] = outages

    def _failed(self, e: BaseException) -> None:
        with self._lock:
            if self.since is None:
                self.outages += 1
                self.since = self.clock()
                log.warning("tracking store unreachable (%s); training goes on, its writes are retried for up to %g s",
                            one_line(e), self.window)

    def _answered(self) -> None:
        with self._lock:
            if self.since is not None:
                down = self.clock() - self.since
                self.longest = max(self.longest, down)
                self.since = None
                log.warning("tracking store reachable again after %.0f s; queued writes are landing in order", down)


def riding(per_attempt):
    """A decorator for methods of an object with an `outage` (a Tracker): the call is retried
    through an outage, each attempt wrapped by `per_attempt`; a method whose first parameter is
    `run_id` is fenced for that run."""

    def decorate(fn):
        inner = per_attempt(fn)
        names = list(inspect.signature(fn).parameters)
        about_run = len(names) > 1 and names[1] == "run_id"

        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            run_id = (args[0] if args else kwargs.get("run_id")) if about_run else None
            return self.outage.call_for(run_id, inner, self, *args, **kwargs)

        return wrapper

    return decorate
