"""Store calls that neither a concurrent process nor a Ctrl-C can cut in half."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
import time


def retry_locked(fn):
    """Retry `fn` while another process holds the SQLite write lock."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        delay = 0.2
        for attempt in range(12):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # sqlalchemy OperationalError arrives wrapped in MlflowException
                if "locked" not in str(e).lower() or attempt == 11:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 3.0)

    return wrapper


@contextlib.contextmanager
def sigint_deferred():
    """Hold Ctrl-C until a store write is complete. A KeyboardInterrupt raised inside
    SQLAlchemy leaves the SQLite connection mid-transaction, holding the write lock, so the
    write that marks the run KILLED then fails with "database is locked" (and the process
    hung at exit). The interrupt is delivered as soon as the write returns; a second one at once."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        with _stops_held():  # a background job: SIGINT stays ignored, a SIGTERM is held (executors/signals.py)
            yield
        return
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # not ours to manage: another thread, or a handler someone else installed
        return
    pending = []

    def hold(signum, frame):
        if pending:  # a second Ctrl-C (a write stuck on a slow server): the user insists
            raise KeyboardInterrupt
        pending.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt


# a background job of a script starts with SIGINT ignored, and SIGTERM then stops it by raising
# KeyboardInterrupt itself (executors/signals.py): while a store write is held, that waits too
_hold_depth = 0
_stop_pending = False


@contextlib.contextmanager
def _stops_held():
    global _hold_depth, _stop_pending
    _hold_depth += 1
    try:
        yield
    finally:
        _hold_depth -= 1
    if _hold_depth == 0 and _stop_pending:
        _stop_pending = False
        raise KeyboardInterrupt


def hold_stop() -> bool:
    """A SIGTERM arrived while SIGINT is ignored: True when a store write holds it (raised as
    KeyboardInterrupt once the write is complete); False: stop now (none held, or a second one)."""
    global _stop_pending
    if _hold_depth > 0 and not _stop_pending:
        _stop_pending = True
        return True
    return False


def held(fn):
    """Ctrl-C waits until `fn` returns."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with sigint_deferred():
            return fn(*args, **kwargs)

    return wrapper


def guarded(fn):
    """A single store call made while a run is open: retried while another process holds the
    SQLite lock, never cut by Ctrl-C (reads too: one cut mid-query can keep the lock).
    Methods of several calls use `held` and retry each call, so a retry never repeats a
    call that already succeeded (a second run, metrics logged twice)."""
    return held(retry_locked(fn))


# A Ctrl-C or SIGTERM whose KeyboardInterrupt is raised while the main thread runs a finalizer or a
# weakref callback (multiprocessing's Finalize as a dead worker's objects are collected, a pooled
# connection's) is printed by Python as "Exception ignored ... KeyboardInterrupt" and dropped: the
# command went on as if never stopped (a --jobs supervisor SIGTERMed while it waited for a new
# worker trained on). Remembered instead, and raised again where a loop next turns.
_dropped = False


def remember_dropped_stops() -> None:
    """From now on a stop dropped in a finalizer is remembered, not printed (sys.unraisablehook);
    other unraisable exceptions go to the hook as before."""
    if getattr(sys.unraisablehook, "remembers_stops", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        global _dropped
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            _dropped = True
            return
        previous(unraisable)

    hook.remembers_stops = True
    sys.unraisablehook = hook


def raise_dropped_stop() -> None:
    """The stop a finalizer dropped, raised now (once)."""
    global _dropped
    if _dropped:
        _dropped = False
        raise KeyboardInterrupt
