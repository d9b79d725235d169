"""Where `--jobs` workers (pool.py) are started from: a multiprocessing fork server, a fresh
interpreter started with the first worker that imports what a worker uses once; each worker is
then a fork of it, up in a fraction of a second, where a spawned one imported torch, MLflow and
the harness again (a 2-worker command: 22-23.5 CPU-seconds spawned, 15.3-15.8 forked).

Not a fork of the supervisor: it may have started torch's threads (building each recipe's model
to size it), and a forked copy of a process with threads can hang; the fork server runs no torch
op. It starts inside pool.start's masked section, so it and every worker forked from it begin
with Ctrl-C and SIGTERM ignored and blocked, as spawned workers did.
"""

from __future__ import annotations

import multiprocessing

PRELOAD = ("harness.executors.pool_worker", "harness.runs.one_run", "harness.plots", "torch._dynamo")


def worker_context():
    """The multiprocessing context workers start in (the server itself starts with the first)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def stop() -> None:
    """The fork server ended and reaped, so that the CPU time of its workers counts to this process
    as a spawned worker's did, and the next pool of this process starts one with its own
    variables. It ends once every worker forked from it has (they hold its pipe): called when
    all have been told to stop. multiprocessing itself never stops it (it exits, unreaped, when this process
    does); `_stop` is how its own tests stop it. Where Python has none, the server is left to
    end with this process."""
    from multiprocessing import forkserver

    halt = getattr(forkserver._forkserver, "_stop", None)
    if halt is not None:
        try:
            halt()
        except (OSError, ChildProcessError):
            pass
