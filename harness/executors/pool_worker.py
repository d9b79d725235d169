"""A `--jobs` worker process: trains each (experiment, seed) the supervisor (pool.py) hands it,
with the one-run code of the single-process path (local.run_one), and tells the supervisor which
run it claimed before training it, so that a worker's death never leaves that run unaccounted for."""

from __future__ import annotations

import os
from dataclasses import dataclass
from multiprocessing.connection import Connection

from ..data.cifar_files import Cifar10, load_cifar10
from ..errors import Interrupted, one_line
from ..recipes.spec import Experiment
from ..runs.job import Outcome, RunOptions
from ..tracking import Tracker, faults
from ..training.environment import flushing_denormals
from .local import run_one
from .signals import ignore_stops, interruptible


@dataclass(frozen=True)
class Claimed:
    """A worker's word that it owns this run now (sent before it trains it): should the worker
    die for good, the supervisor ends the run resumable in its place."""
    run_id: str
    owner: str


@flushing_denormals()  # from before its first tensor: the pool threads it starts inherit it
def worker(conn: Connection, uri: str, experiment_name: str, data_root: str, opts: RunOptions, env: dict | None = None) -> None:
    """A worker process: runs (index, experiment, seed) from `conn` until it reads None; `env`:
    the supervisor's environment variables, which it takes for its own."""
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    os.setpgid(0, 0)  # a terminal's Ctrl-C goes to the supervisor, which passes it on once
    ignore_stops()  # (started with both ignored already: see fork_server.start_worker)
    tracker, data = Tracker(uri, experiment_name, create=False), load_cifar10(data_root)
    try:
        faults.point("worker_ready")
        conn.send(None)  # ready: a run is handed only to a worker that can be stopped mid-run
        while True:
            task = conn.recv()
            if task is None:
                return
            i, exp, seed = task
            conn.send((i, _work(exp, seed, data, tracker, opts, _teller(conn, i))))
    except (EOFError, BrokenPipeError):  # the supervisor is gone (killed outright): so is the queue
        return


def _teller(conn: Connection, i: int):
    """on_claim for run_one: tells the supervisor which run this worker owns now (a supervisor
    gone meanwhile is noticed at the next send; training does not depend on this one)."""

    def claimed(run_id: str, owner: str) -> None:
        try:
            conn.send((i, Claimed(run_id, owner)))
        except (BrokenPipeError, OSError):
            pass

    return claimed


def _work(exp: Experiment, seed: int, data: Cifar10, tracker: Tracker, opts: RunOptions, claimed) -> Outcome | Interrupted:
    try:
        with interruptible():
            return run_one(exp, data, tracker, opts, seed, echo=lambda *a: print(*a, flush=True), on_claim=claimed)
    except Interrupted as e:
        return e
    except KeyboardInterrupt:
        return Interrupted(f"no run of {exp.id} (seed {seed}) had been created yet; nothing of it was recorded")
    except Exception as e:  # raised before a run existed
        return Outcome(exp.id, seed, "failed", reason=one_line(e))
