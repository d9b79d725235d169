"""Several runs at once on this machine (`--jobs N`): N worker processes, each training one
(experiment, seed) at a time with the same claim and one-run code as the single-process path
(executors/local.py: run_one), so locks, store claims, logging and outcomes are the same.

Why: the batch-4/20 recipes train on one intra-op thread (environment.choose_threads), which
leaves the other cores idle; N of those runs side by side use them. Each run trains on the threads
its recipe and the machine chose, whatever runs beside it (so its numbers do not depend on the
schedule); the supervisor starts a run only when that many cores are free (schedule.pick), so the
machine is never oversubscribed: a big recipe gets its whole cores, the one-thread ones pack.

The workers are supervised here rather than by concurrent.futures: a worker that dies (the
out-of-memory killer's SIGKILL) breaks a ProcessPoolExecutor, failing every queued run and
SIGTERMing the healthy workers mid-run. Here it is replaced and its run handed to the new
worker, which takes the run over and resumes it from its checkpoint; the others go on.
Workers run in their own process group, so Ctrl-C or SIGTERM reaches this supervisor only:
it starts nothing more, passes one Ctrl-C to each busy worker (its run ends KILLED, resumable,
or FINISHED if it was completing), waits for them and says what was stopped and what never
started. A worker never gets a second Ctrl-C (that would cut its KILLED write short).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait

from ..data.cifar_files import Cifar10
from ..errors import HarnessError, Interrupted, one_line
from ..recipes.spec import Experiment
from ..runs import lifecycle
from ..runs.job import Outcome, RunOptions
from ..tracking import Tracker
from ..tracking.guards import raise_dropped_stop, sigint_deferred
from ..tracking.store import absolute_uri
from ..training.environment import all_cores
from . import fork_server
from .local import finished_already, outcome_line
from .pool_worker import Claimed, worker
from .schedule import pick, run_width

MAX_WORKER_DEATHS = 3  # per run: a run whose worker dies this often is left for a rerun to resume
SETTLE_S = 120.0  # how long a stop waits for busy workers to mark their runs before it kills them


@dataclass
class _Slot:
    proc: multiprocessing.Process
    conn: Connection
    task: int | None = None
    ready: bool = False


@dataclass
class _Pool:
    """The supervisor's view: workers, the queue of run indices, and what came back."""

    start: object  # () -> _Slot
    todo: list[tuple[Experiment, int]]
    echo: object
    jobs: int  # at most this many runs at once
    widths: list[int] = field(default_factory=list)  # run index -> the cores its threads occupy (schedule.width)
    cores: int = 1  # what the busy runs' widths may add up to
    tracker: Tracker | None = None  # to end a run whose worker cannot
    claims: dict[int, Claimed] = field(default_factory=dict)  # run index -> the run its latest worker claimed
    queue: deque = field(default_factory=deque)
    slots: list[_Slot] = field(default_factory=list)
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    interrupted: list[str] = field(default_factory=list)
    deaths: dict[int, int] = field(default_factory=dict)
    idle_deaths: int = 0
    stopping: bool = False

    def busy(self) -> list[_Slot]:
        return [s for s in self.slots if s.task is not None]

    def free(self) -> int:
        return self.cores - sum(self.widths[s.task] for s in self.busy())

    def dispatch(self) -> None:
        """Workers up to `jobs`; each ready idle one is handed the longest queued run that fits
        in the free cores (schedule.pick), if any."""
        while self.queue and len(self.slots) < min(self.jobs, len(self.queue) + len(self.busy())):
            self.slots.append(self.start())
        for s in self.slots:
            if s.ready and s.task is None and self.queue:
                i = pick(self.queue, self.widths, self.free())
                if i is None:
                    return
                self.queue.remove(i)
                s.task = i
                exp, seed = self.todo[i]
                s.conn.send((i, exp, seed))

    def step(self, timeout: float | None = None) -> None:
        """Wait for a result or a worker's death, and handle it."""
        ready = set(wait([s.conn for s in self.slots] + [s.proc.sentinel for s in self.slots], timeout))
        with sigint_deferred():  # a result taken off its pipe is recorded before a Ctrl-C lands
            for s in list(self.slots):
                if s.conn in ready or (s.proc.sentinel in ready and s.conn.poll()):
                    self._result(s)
                elif s.proc.sentinel in ready:
                    self._died(s)

    def _result(self, s: _Slot) -> None:
        try:
            message = s.conn.recv()
        except (EOFError, OSError):
            return self._died(s)
        self.handle(s, message)

    def handle(self, s: _Slot, message) -> None:
        """A worker's message: None (ready), or (run index, Claimed | its Outcome | Interrupted)."""
        if message is None:
            s.ready = True
            return
        i, result = message
        if isinstance(result, Claimed):
            self.claims[i] = result
            return
        s.task = None
        self.claims.pop(i, None)
        if isinstance(result, Interrupted):
            self.interrupted.append(str(result))
            return
        self.outcomes[i] = result
        if result.status != "finished":  # a finished run's worker has said its line
            self.echo(outcome_line(result))

    def end_resumable(self, i: int, reason: str) -> str | None:
        """The run of index `i`, whose worker died or was killed, marked KILLED with the reason:
        resumable, and not left RUNNING under a dead owner (a run another process took over is its
        own). Tried once, without riding out an outage: a run not marked is resumed by a rerun all
        the same. Its id, when a worker had claimed one."""
        claim = self.claims.pop(i, None)
        if claim is None or self.tracker is None:
            return None
        try:
            lifecycle.stop(self.tracker.impatient(), claim.run_id, claim.owner, f"{reason}; run again to resume")
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - a Ctrl-C here cuts only this courtesy short
            self.echo(f"could not mark run {claim.run_id} KILLED ({one_line(e) if str(e) else type(e).__name__}); a rerun resumes it all the same")
        return claim.run_id

    def _died(self, s: _Slot) -> None:
        self.slots.remove(s)
        s.conn.close()
        s.proc.join(timeout=5)  # its pipe can close before it is reaped
        i, how = s.task, _exit(s.proc.exitcode)
        if i is None:  # between runs (while starting, say): replaced by dispatch, a few times
            self.idle_deaths += 1
            if self.idle_deaths >= MAX_WORKER_DEATHS * self.jobs and self.queue:
                raise HarnessError(f"worker processes keep dying before they train anything (last {how}); "
                                   f"{len(self.queue)} run(s) were not started")
            return
        exp, seed = self.todo[i]
        self.deaths[i] = self.deaths.get(i, 0) + 1
        if self.stopping:
            self.end_resumable(i, f"interrupted; its worker process died ({how}) while stopping")
            self.interrupted.append(f"run {exp.id} (seed {seed}): its worker process died ({how}) while stopping; it is resumable")
            return
        if self.deaths[i] >= MAX_WORKER_DEATHS:
            reason = f"its worker process died {self.deaths[i]} times (last {how})"
            o = Outcome(exp.id, seed, "resumable", self.end_resumable(i, reason),
                        reason=f"{reason}; the run is left resumable: run the same command again")
            self.outcomes[i] = o
            self.echo(outcome_line(o))
            return
        self.echo(f"{exp.id} (seed {seed}): its worker process died ({how}); a new worker resumes the run")
        self.queue.appendleft(i)


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run_pool(experiments: list[Experiment], data: Cifar10, tracker: Tracker, opts: RunOptions, jobs: int, echo=print,
             todo: list[tuple[Experiment, int]] | None = None) -> list[Outcome]:
    """`todo`: the (experiment, seed) runs to train (default: every experiment's seeds of opts)."""
    if todo is None:
        todo = [(exp, seed) for exp in experiments for seed in range(opts.seed, opts.seed + opts.repeats)]
    per_run = replace(opts, bars=False)
    done = finished_already(todo, data, tracker, per_run)  # said here: no worker starts to skip them
    for o in done.values():
        echo(outcome_line(o))
    queue = deque(i for i in range(len(todo)) if i not in done)
    cores, held = all_cores(), {}
    for i in queue:  # the cores each run's threads will hold (one model built per recipe)
        held.setdefault(todo[i][0].id, run_width(todo[i][0], per_run, cores))
    widths = [held.get(exp.id, 0) for exp, _ in todo]
    ctx, launched = fork_server.worker_context(), []  # (fork_server.py: why not spawn, why not fork)
    # this process's variables now: a fork server an earlier pool of this process started has that pool's
    args = (absolute_uri(tracker.uri), tracker.experiment_name, str(data.root.resolve()), per_run, dict(os.environ))

    def start() -> _Slot:
        return _Slot(*fork_server.start_worker(ctx, worker, args, launched))

    pool = _Pool(start, todo, echo, jobs, widths=widths, cores=cores, tracker=tracker, queue=queue, outcomes=done)
    try:
        try:
            while pool.queue or pool.busy():
                raise_dropped_stop()  # a stop a finalizer swallowed while we waited
                pool.dispatch()
                pool.step(timeout=1.0)
        except KeyboardInterrupt:
            raise Interrupted(_stop(pool)) from None
    finally:
        _shut(pool)
        fork_server.stop(launched)
    if pool.interrupted:
        raise Interrupted("; ".join(pool.interrupted))
    return [pool.outcomes[i] for i in sorted(pool.outcomes)]


def _stop(pool: _Pool) -> str:
    """Ctrl-C or SIGTERM: nothing more starts; each busy worker gets one Ctrl-C and is waited
    for. A second Ctrl-C here only says what it waits for; a third kills the workers outright
    (the supervisor marks their runs KILLED, resumable, in their place). What it left, in a line."""
    # a run whose worker died waits in the queue for a new worker with its claim held: it had
    # started, so it is marked KILLED (resumable) now rather than counted as never started
    orphans = [i for i in pool.queue if i in pool.claims]
    never, pool.stopping = len(pool.queue) - len(orphans), True
    pool.queue.clear()
    for i in orphans:
        exp, seed = pool.todo[i]
        pool.end_resumable(i, "interrupted while waiting for a new worker (its worker process had died)")
        pool.interrupted.append(f"run {exp.id} (seed {seed}): its worker had died and it waited for a new one; it is resumable")
    for s in pool.busy():
        _signal(s, signal.SIGINT)
    deadline, pressed = _now() + SETTLE_S, 0
    while pool.busy() and _now() < deadline:
        try:
            pool.step(timeout=1.0)
        except KeyboardInterrupt:
            pressed += 1
            if pressed >= 2:
                break
            pool.echo(f"stopping: waiting for {len(pool.busy())} run(s) to be marked KILLED; Ctrl-C again to kill them now (they stay resumable)")
    left = pool.busy()
    for s in left:  # stuck past the limit, or the user insists
        s.proc.kill()
        s.proc.join(timeout=5)
    for s in left:
        _drain(pool, s)
    said = list(pool.interrupted)
    for s in left:
        if s.task is not None:
            exp, seed = pool.todo[s.task]
            pool.end_resumable(s.task, "interrupted; its worker was killed before it marked the run")
            said.append(f"run {exp.id} (seed {seed}): its worker was killed before it marked the run; it is resumable")
    pool.interrupted = []
    if never:
        said.append(f"{never} queued run(s) were never started")
    return "; ".join(said) or "no run was in progress; nothing was recorded"


def _drain(pool: _Pool, s: _Slot) -> None:
    """What a killed worker said before it died (its claim, its run's end), read before it is
    reaped: its run is marked by the run it had claimed, or not at all if it had ended."""
    while s.task is not None:
        try:
            if not s.conn.poll(0):
                return
            message = s.conn.recv()
        except (EOFError, OSError):
            return
        pool.handle(s, message)


def _signal(s: _Slot, sig: int) -> None:
    try:
        os.kill(s.proc.pid, sig)
    except ProcessLookupError:
        pass


def _now() -> float:
    return time.monotonic()


def _shut(pool: _Pool) -> None:
    """Idle workers are told to stop; any left after a few seconds are killed."""
    for s in pool.slots:
        try:
            s.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
    for s in pool.slots:
        s.proc.join(timeout=10)
        if s.proc.is_alive():
            s.proc.kill()
            s.proc.join(timeout=5)
        s.conn.close()
