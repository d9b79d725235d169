"""SIGTERM is Ctrl-C: Slurm, Kubernetes and `timeout` stop a job with SIGTERM, and a run stopped
that way must end as one stopped by Ctrl-C (KILLED with its reason, resumed by a rerun), not
die RUNNING. The handler hands SIGTERM to whatever handles SIGINT at that moment, so a store
write that holds Ctrl-C (tracking/guards.sigint_deferred) holds SIGTERM too.
"""

from __future__ import annotations

import contextlib
import signal

from ..tracking.guards import hold_stop, remember_dropped_stops


def _as_ctrl_c(signum, frame) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif not hold_stop():  # SIGINT ignored (a background job of a script): SIGTERM still stops the
        raise KeyboardInterrupt  # command, held like Ctrl-C in the foreground while a store write completes


def sigterm_is_ctrl_c() -> None:
    """From now on SIGTERM in this process (main thread) acts as Ctrl-C, and a stop that lands in a
    finalizer is not lost (tracking/guards.raise_dropped_stop)."""
    remember_dropped_stops()
    signal.signal(signal.SIGTERM, _as_ctrl_c)


@contextlib.contextmanager
def interruptible():
    """Ctrl-C and SIGTERM interrupt the block (a pool worker's run); both are ignored outside it
    (an idle worker: its supervisor decides what happens next)."""
    remember_dropped_stops()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _as_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def ignore_stops() -> None:
    """A pool worker between runs: its supervisor stops it, not a signal to the process group."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # blocked by the supervisor as it started us
