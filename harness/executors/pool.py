"""Several runs at once on this machine (`--jobs N`): N worker processes, each training one
(experiment, seed) at a time with the same claim and one-run code as the single-process path
(executors/local.py: run_one), so locks, store claims, logging and outcomes are the same.

Why: the batch-4/20 recipes train on one intra-op thread (environment.choose_threads), which
leaves the other cores idle; N of those runs side by side use them. Each worker gets at most
cores/N intra-op threads, so compute-bound runs do not oversubscribe the machine.

Ctrl-C on a terminal reaches every worker (one process group): a worker that is training marks
its run KILLED, as a single process does; idle workers ignore it and queued runs never start.
"""

from __future__ import annotations

import functools
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace

from ..data.cifar_files import Cifar10, load_cifar10
from ..training.environment import all_cores
from ..errors import Interrupted, one_line
from ..runs.job import Outcome, RunOptions
from .local import outcome_line, run_one
from ..recipes.spec import Experiment
from ..tracking import Tracker
from ..tracking.store import absolute_uri


def _quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # between runs; a run turns it back on


@functools.lru_cache(maxsize=2)
def _context(uri: str, experiment_name: str, data_root: str) -> tuple[Tracker, Cifar10]:
    """The worker's store connection and data, made once per worker process."""
    return Tracker(uri, experiment_name, create=False), load_cifar10(data_root)


def _work(uri: str, experiment_name: str, data_root: str, exp: Experiment, opts: RunOptions, seed: int) -> Outcome:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        tracker, data = _context(uri, experiment_name, data_root)
        try:
            return run_one(exp, data, tracker, opts, seed, echo=lambda *a: print(*a, flush=True))
        except Interrupted:
            raise
        except KeyboardInterrupt:
            raise Interrupted(f"no run of {exp.id} (seed {seed}) had been created yet; nothing of it was recorded") from None
        except Exception as e:  # raised before a run existed
            return Outcome(exp.id, seed, "failed", reason=one_line(e))
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_pool(experiments: list[Experiment], data: Cifar10, tracker: Tracker, opts: RunOptions, jobs: int, echo=print) -> list[Outcome]:
    todo = [(exp, seed) for exp in experiments for seed in range(opts.seed, opts.seed + opts.repeats)]
    per_run = replace(opts, bars=False, max_threads=max(1, all_cores() // jobs))
    outcomes: list[Outcome | None] = [None] * len(todo)
    interrupted: list[str] = []
    # spawn, not fork: a forked copy of a process that already started torch's threads can hang
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_worker) as pool:
        futures = {pool.submit(_work, absolute_uri(tracker.uri), tracker.experiment_name, str(data.root.resolve()), exp, per_run, seed): i
                   for i, (exp, seed) in enumerate(todo)}
        try:
            for fut in as_completed(futures):
                i = futures[fut]
                outcomes[i] = _outcome(fut, *todo[i], interrupted, echo)
        except KeyboardInterrupt:
            for fut in futures:
                fut.cancel()
            for fut in futures:  # the runs in flight settle themselves (KILLED, or FINISHED if done)
                if not fut.cancelled():
                    _outcome(fut, *todo[futures[fut]], interrupted, echo)
            raise Interrupted("; ".join(interrupted) or "interrupted before any run started; nothing was recorded") from None
    if interrupted:
        raise Interrupted("; ".join(interrupted))
    return [o for o in outcomes if o is not None]


def _outcome(fut, exp: Experiment, seed: int, interrupted: list[str], echo) -> Outcome | None:
    try:
        o = fut.result()
    except Interrupted as e:
        interrupted.append(str(e))
        return None
    except BaseException as e:  # a worker that died (killed, out of memory) takes its run with it
        o = Outcome(exp.id, seed, "failed", reason=f"its worker process ended: {one_line(e)}")
    if o.status != "finished":  # a finished run's worker has said its line
        echo(outcome_line(o))
    return o
