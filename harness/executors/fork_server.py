"""Where `--jobs` workers (pool.py) are started from: a multiprocessing fork server, a fresh
interpreter started with the first worker that imports what a worker uses once; each worker is
then a fork of it, up in a fraction of a second, where a spawned one imported torch, MLflow and
the harness again (a 2-worker command: 22-23.5 CPU-seconds spawned, 15.3-15.8 forked).

Not a fork of the supervisor: it may have started torch's threads (building each recipe's model
to size it), and a forked copy of a process with threads can hang; the fork server only imports
(no torch op: no OpenMP threads for a worker to inherit; the one other thread it has, the idle
pool numpy's OpenBLAS starts at import, OpenBLAS shuts down before each fork, openblas_fork_handler
registered with pthread_atfork). It starts inside start_worker's masked section, so it and every
worker forked from it begin with Ctrl-C and SIGTERM ignored and blocked, as spawned workers did.
"""

from __future__ import annotations

import multiprocessing
import signal

PRELOAD = ("harness.executors.pool_worker", "harness.runs.one_run", "harness.plots", "torch._dynamo")


def worker_context():
    """The multiprocessing context workers start in (the server itself starts with the first)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def start_worker(ctx, target, args: tuple, launched: list):
    """(process, the supervisor's end of its pipe): `target(their end, *args)` started, and
    recorded in `launched` before a Ctrl-C can land (one that cut a start short left a worker
    that nothing told to stop, and that held the fork server; `stop` ends it).

    The worker starts with Ctrl-C and SIGTERM ignored (the fork server's, inherited through
    exec): a signal while it starts cannot kill it with a traceback; it ignores them until it
    trains a run. Both are blocked here meanwhile: a blocked signal is kept pending even while
    ignored, and lands on the supervisor's own handler once restored (a SIGTERM sent as a dead
    worker's replacement started was lost). The worker unblocks them (signals.ignore_stops)."""
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=target, args=(theirs, *args), name="harness-worker")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    old = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        proc.start()
        launched.append(proc)
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    theirs.close()
    return proc, mine


def stop(launched: list) -> None:
    """Every worker of `launched` ended (the pool stopped its own: one left is one whose start a
    Ctrl-C cut short, killed), then the fork server ended and reaped, so that the CPU time of its
    workers counts to this process as a spawned worker's did, and the next pool of this process
    starts one with its own variables. The server ends once every worker forked from it has (they
    hold its pipe). multiprocessing itself never stops it (it exits, unreaped, when this process
    does); `_stop` is how its own tests stop it. Where Python has none, the server is left to end
    with this process."""
    for proc in launched:
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
    from multiprocessing import forkserver

    halt = getattr(forkserver._forkserver, "_stop", None)
    if halt is not None and not any(proc.is_alive() for proc in launched):
        try:
            halt()
        except (OSError, ChildProcessError):
            pass
