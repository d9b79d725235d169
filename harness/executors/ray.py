"""The Ray executor: `run-all --executor ray` trains each (experiment, seed) as one Ray task.

The driver decides what is trained: it claims each configuration in the shared store (the same
claims as the local executor, its heartbeat keeping them while tasks wait for a free node) and
hands each task its run id, so a task that Ray retries after its node died resumes that run
from its checkpoint instead of creating a second one. Ray workers do not inherit the driver's
environment: the tracking URI and MLflow's credentials are passed to each task explicitly (else
they would silently write to a SQLite file in the worker's folder). The task trains with the
one-run code of the local executor (one_run.train_run).

Ray is optional: `pip install "harness[ray]"`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path

from ..data.cifar_files import Cifar10, load_cifar10
from ..runs import lifecycle
from ..runs.claims import RECORDED, ClaimPolicy, Claimer, Heartbeat, of_claim, take_attempt
from ..errors import HarnessError, Interrupted, UsageError, one_line
from ..runs.job import Outcome, RunOptions
from ..runs.one_run import train_run
from .capacity import CapacityWatch, check_feasible
from .local import claim_jobs, make_job, outcome_line
from .signals import sigterm_is_ctrl_c
from ..recipes.spec import Experiment
from ..tracking import TAG, Tracker
from ..tracking.outage import window_s
from ..tracking.store import absolute_uri
from ..training.environment import flushing_denormals

# what MLflow reads from the environment to reach and authenticate with a server
FORWARDED_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS",
                 "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                 "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "HARNESS_STATE_DIR", "HARNESS_STALE_AFTER_S")


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: $RAY_ADDRESS, else a Ray instance started for this command
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_retries: int = 3  # reruns of a task whose worker or node died; each resumes the same run


@dataclass(frozen=True)
class TaskSpec:
    """Everything a task needs, nothing it would take from its node's environment."""

    exp: Experiment
    opts: RunOptions
    seed: int
    run_id: str
    uri: str
    experiment_name: str
    data_root: str
    fingerprint: str
    env: dict
    beat_s: float
    owner: str  # the driver's claim; each attempt of the task trains under an owner of its own (claims.take_attempt)
    lines: object = None  # a ray.util.queue.Queue to the driver: the task's epoch lines, prefixed by run


def require_ray():
    try:
        import ray
    except ImportError:
        raise UsageError('--executor ray needs Ray: pip install "harness[ray]"') from None
    return ray


def connect(ray, address: str | None, runtime_env: dict | None = None) -> None:
    """Join the cluster; an address that does not answer is one line at once (ray.init would
    retry for minutes). `runtime_env`: what every task of this driver gets (a user's network)."""
    target = address or os.environ.get("RAY_ADDRESS")
    host, _, port = (target or "").rpartition(":")
    if host and port.isdigit() and "://" not in target:
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as e:
            raise HarnessError(f"Ray cluster {target} unreachable ({e.strerror or type(e).__name__}); start it with "
                               "`ray start --head` or check --ray-address") from None
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", include_dashboard=False,
                 configure_logging=True, ignore_reinit_error=True, runtime_env=runtime_env or None)
    except Exception as e:
        raise HarnessError(f"Ray cluster {address or os.environ.get('RAY_ADDRESS') or '(local)'} unusable: {one_line(e)}") from None


@flushing_denormals()  # from before its first tensor: the pool threads it starts inherit it
def run_task(spec: TaskSpec) -> Outcome:
    """One (experiment, seed) on a Ray worker: the same one-run code as the local executor."""
    os.environ.update(spec.env)  # before MLflow reads credentials (it reads them per request)
    tracker = Tracker(spec.uri, spec.experiment_name, create=False)
    node = _node_name()
    try:
        data = load_cifar10(Path(spec.data_root))
    except HarnessError as e:
        return Outcome(spec.exp.id, spec.seed, "failed", spec.run_id, reason=f"on {node}: {e}")
    if data.fingerprint != spec.fingerprint:
        return Outcome(spec.exp.id, spec.seed, "failed", spec.run_id, reason=f"the data in {spec.data_root} on {node} differ from the driver's")
    job = make_job(spec.exp, data, tracker, spec.opts, spec.seed, echo=_to_driver(spec.lines))
    if tracker.run_record(spec.run_id).status == "FINISHED":  # an earlier attempt finished it, its reply lost with its node
        return Outcome(spec.exp.id, spec.seed, "skipped", spec.run_id, reason="finished by an earlier attempt of this task")
    # this attempt's own owner: a retry while an earlier attempt still lives takes the run from it
    owner, found = take_attempt(tracker, spec.run_id, spec.owner, ClaimPolicy.for_store(tracker.uri).settle_s)
    if owner is None:
        return Outcome(spec.exp.id, spec.seed, "skipped", spec.run_id, reason=f"taken over by {found} before this task started")
    tracker.set_tags(spec.run_id, {f"{TAG}node": node})
    recorded = RECORDED in tracker.run_tags(spec.run_id)
    # always "resumed": the run exists (the driver made it) and a retried task continues it
    return train_run(job, spec.run_id, resumed=True, recorded=recorded, beat_s=spec.beat_s, owner=owner)


def _to_driver(lines):
    """An echo that hands each line to the driver's queue (a line lost to a full or gone queue
    is only progress: training goes on)."""

    def echo(*parts, **_):
        if lines is not None:
            try:
                lines.put_nowait(" ".join(map(str, parts)))
            except Exception:
                pass

    return echo


def _show_lines(lines, echo) -> None:
    """Print what the tasks said since the last call."""
    try:
        n = lines.qsize()
        for line in lines.get_nowait_batch(n) if n else []:
            echo(line)
    except Exception:  # progress only: a hiccup of the queue's actor costs a few lines
        pass


def _node_name() -> str:
    try:
        import ray

        return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    except Exception:
        return socket.gethostname()


def run_many_ray(experiments: list[Experiment], data: Cifar10, tracker: Tracker, opts: RunOptions, ray_opts: RayOptions,
                 echo=print, todo: list[tuple[Experiment, int]] | None = None) -> list[Outcome]:
    """`todo`: the (experiment, seed) runs to train (default: every experiment's seeds of opts)."""
    ray = require_ray()
    connect(ray, ray_opts.address, code_env(experiments))
    sigterm_is_ctrl_c()  # again: ray.init installs its own SIGTERM handler (sys.exit), which would strand the runs
    check_feasible(ray, ray_opts.cpus_per_run, ray_opts.gpus_per_run)
    from ray.util.queue import Queue

    policy = ClaimPolicy.for_store(tracker.uri)
    # in a task: epoch lines (to the driver) rather than bars, no more intra-op threads than the task's CPUs
    task_opts = replace(opts, bars=False, max_threads=max(1, int(ray_opts.cpus_per_run)))
    remote = ray.remote(run_task).options(num_cpus=ray_opts.cpus_per_run, num_gpus=ray_opts.gpus_per_run,
                                          max_retries=ray_opts.max_retries, retry_exceptions=False)
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    if todo is None:
        todo = [(exp, seed) for exp in experiments for seed in range(opts.seed, opts.seed + opts.repeats)]
    jobs = [make_job(exp, data, tracker, opts, seed, echo) for exp, seed in todo]
    outcomes: list[Outcome | None] = [None] * len(jobs)
    pending, locks, claims = {}, [], {}
    claimer = Claimer(tracker, policy)
    lines = Queue(maxsize=10_000, actor_options={"num_cpus": 0}) if opts.progress else None
    with Heartbeat(tracker, policy.beat_s, claimer.owner) as heartbeat:
        try:
            locks, claims, skipped = claim_jobs(jobs, claimer)
            for i, o in skipped.items():
                outcomes[i] = o
                echo(outcome_line(o))
            for i, claim in sorted(claims.items()):
                job = jobs[i]
                heartbeat.hold(claim.run_id)
                spec = TaskSpec(job.exp, task_opts, job.seed, claim.run_id, absolute_uri(tracker.uri), tracker.experiment_name, str(data.root.resolve()),
                                data.fingerprint, env, policy.beat_s, claimer.owner, lines)
                pending[remote.remote(spec)] = (i, claim.run_id)
            watch = CapacityWatch(ray, ray_opts.cpus_per_run, ray_opts.gpus_per_run, window_s(), echo)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                stranded = watch.stranded()
                if stranded:
                    said = _stop(ray, pending, tracker, claims, claimer.owner, outcomes, echo)
                    if lines is not None:
                        _show_lines(lines, echo)
                    raise HarnessError(f"{stranded}: {said}")
                if lines is not None:
                    _show_lines(lines, echo)
                for ref in ready:
                    i, run_id = pending.pop(ref)
                    outcomes[i] = _settle(ray, ref, tracker, jobs[i].exp.id, jobs[i].seed, run_id, claimer.owner)
                    heartbeat.drop(run_id)
                    locks[i].release()
                    echo(outcome_line(outcomes[i]))
        except KeyboardInterrupt:
            said = _stop(ray, pending, tracker, claims, claimer.owner, outcomes, echo)
            if lines is not None:  # the tasks' last lines (a run's "marked KILLED" among them)
                _show_lines(lines, echo)
            raise Interrupted(said) from None
        finally:
            for lock in locks:
                lock.release()
    return [o for o in outcomes if o is not None]


def code_env(experiments: list[Experiment]) -> dict:
    """A user's network travels to the tasks: its file or package in the job's runtime_env
    (py_modules; Ray uploads local paths only at the job level), imported there by name."""
    ship = sorted({e.code.ship for e in experiments if e.code is not None and e.code.ship})
    return {"py_modules": ship} if ship else {}


CANCEL_WAIT_S = 30.0  # for tasks to end their runs themselves after a Ctrl-C, before they are killed
COLLECT_S = 1.0  # for the replies of tasks that already ended to be taken in before the others are cancelled


def _stop(ray, pending: dict, tracker: Tracker, claims: dict, owner: str, outcomes: list, echo) -> str:
    """Ctrl-C or SIGTERM on the driver: queued tasks never start; running ones get a Ctrl-C and
    end their runs themselves (KILLED, or FINISHED when completing), and those that do not within
    CANCEL_WAIT_S are killed. Only runs still RUNNING and owned by this driver are then marked
    KILLED (a run that finished but was not yet collected stays FINISHED); a new run that no task
    started is deleted. What it left, in a line."""
    refs = list(pending)
    # tasks that ended while the driver was busy (or stopped) are collected, not cancelled: a cancel
    # that crosses a task's arriving reply can abort Ray's driver (2.60: task_manager.cc, "Check failed:
    # it != submissible_tasks_.end()", seen in test_ray_cluster's stop test)
    _, running = ray.wait(refs, num_returns=len(refs), timeout=COLLECT_S) if refs else ([], [])
    for ref in running:
        ray.cancel(ref, force=False)
    _, late = ray.wait(running, num_returns=len(running), timeout=CANCEL_WAIT_S) if running else ([], [])
    for ref in late:
        ray.cancel(ref, force=True)
    if late:
        ray.wait(late, num_returns=len(late), timeout=10.0)
    finished, killed, never = 0, 0, 0
    for ref in refs:
        i, run_id = pending[ref]
        try:
            o = ray.get(ref, timeout=0)
        except Exception:
            o = None
        if o is not None:
            outcomes[i] = o
            echo(outcome_line(o))
        status, tags = tracker.run_status(run_id), tracker.run_tags(run_id)
        holder = tags.get(lifecycle.OWNER, "")
        # its task (an attempt of it) could not end it, or never started (a KILLED run taken over
        # to resume, still KILLED and claimed): the driver does, and says it resumable again
        if status in ("RUNNING", "KILLED") and of_claim(holder, owner):
            if status == "RUNNING" and f"{TAG}node" not in tags and not claims[i].resumed:  # claimed here, never started: nothing to keep
                tracker.delete_run(run_id)
                never += 1
                continue
            lifecycle.stop(tracker, run_id, holder, "interrupted (Ctrl-C or SIGTERM on the Ray driver); run again to resume")
            status = tracker.run_status(run_id)
        finished += status == "FINISHED"  # done before the stop took effect, collected or not: left FINISHED
        killed += status == "KILLED"
    said = [f"{killed} run(s) in flight are marked KILLED; run the same command again to resume them"] if killed else []
    said += [f"{finished} run(s) had finished and are recorded FINISHED"] if finished else []
    said += [f"{never} queued run(s) were never started"] if never else []
    return "; ".join(said) or "no run was in flight; nothing was recorded"


def _settle(ray, ref, tracker: Tracker, exp_id: str, seed: int, run_id: str, owner: str) -> Outcome:
    """The task's outcome; a task that could not end its run (its node died more often than
    retried, or it failed before training) leaves the run resumable and says why."""
    try:
        outcome = ray.get(ref)
    except Exception as e:
        reason = f"its Ray task failed: {one_line(e)}"
        _stop_ours(tracker, run_id, owner, f"{reason}; run again to resume")
        return Outcome(exp_id, seed, "resumable", run_id, reason=f"{reason}; run the same command again to resume it")
    # "skipped": taken over by another process while the task stalled; the run is its now
    if outcome.status != "skipped":
        _stop_ours(tracker, run_id, owner, f"{outcome.reason}; run again to resume")
    return outcome


def _stop_ours(tracker: Tracker, run_id: str, owner: str, reason: str) -> None:
    """Leave the run resumable if the driver's claim still holds it, under the driver's owner or
    one of its tasks' attempts (a run another process took over is left to it)."""
    holder = tracker.run_tags(run_id).get(lifecycle.OWNER, "")
    if of_claim(holder, owner):
        lifecycle.stop(tracker, run_id, holder, reason)

