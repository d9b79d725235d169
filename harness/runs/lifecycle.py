"""A run's life in the store: its states, the transitions between them, and the ownership check
before every status write. Every status change of a run goes through this module (the Tracker's
model logging writes none: one writer of a run's status).

    claimed -> recorded -> training -> finished
                                    -> resumable   (KILLED: a rerun or another claimer resumes it)
                                    -> failed      (FAILED: a rerun would fail the same way)
    resumable/claimed/... -> superseded            (KILLED: retired, a newer run of its configuration trains instead)

The invariants, held at every crash point (tests/test_crash_matrix.py injects each fault at each
named step, tracking/faults.py, and checks them all with one checker, then reruns and checks again):
  1. Every epoch of a run is logged exactly once. A resume continues after the last checkpointed
     epoch, from the home the run recorded (checkpoints.py) whatever this process's state folder;
     a run with epochs logged and no checkpoint is never trained again inside itself: a new run
     supersedes it, and the line says where the checkpoint was expected.
  2. At most one live process trains a configuration: a claim is ordered by a lock that depends on
     the store only (checkpoints.lock_root), then by the store itself (claims.py); an owner names
     its process by start ticks since boot, which no clock step moves (liveness.py); an observer
     never counts a store outage as an owner's silence; an owner whose run was taken over or
     deleted writes nothing more (the store asked before each checkpoint, the final writes and
     each status write: `still_held`, `check_owner`; and, once the owner's last landed heartbeat
     is two beats old (an outage on its side, a stall), before every write about the run, the
     training thread waiting for the store's answer before its next checkpoint: `fence`, which
     drops the writes still queued; a group's run lost this way ends alone); each attempt of a Ray task is an owner of its own
     (liveness.attempt_owner, written then read back after the settling wait), so a retry cannot
     train beside its first attempt.
  3. A run is RUNNING only while a live owner holds it: every stop a process can see (Ctrl-C,
     SIGTERM in the foreground or as a background job, a fault, a claim interrupted, a signal
     between the claim and training) ends it KILLED, FAILED or FINISHED; a KILLED run whose
     takeover was interrupted is left resumable again (`stop`). A process SIGKILLed, or whose
     store is gone, cannot write: its run stays RUNNING under a dead owner, which the next claim
     sees at once and takes over.
  4. FAILED only for what a rerun would repeat (`permanent`): a store outage, a full disk, memory,
     a signal or a lost worker leave the run resumable, with its reason.
  5. Nothing a run leaves behind outlives it: its checkpoint is removed when it finishes (a kill
     between the finish and the removal: by the next claim that finds it finished), fails for
     good (any FAILED end: one_run.ended_outcome; no claim resumes a FAILED run) or is deleted
     in the store; a lock file is removed by its holder; an owner that loses its run drops the
     writes still queued for it, and their temporary checkpoint files.
  6. Every stop says in one line what became of each run, and the same command then finishes the work.

The state is the tag `harness.state` beside MLflow's own status, written in the same step.
Which end a fault leads to is `ending`, after Kubernetes Jobs' podFailurePolicy: only a failure
that a rerun would repeat (divergence, an invalid spec or model) is FAILED; a store or network
outage, memory, a signal or a lost worker leaves the run resumable, with its reason.

Before a status write the run's owner tag is read back: a process whose run was taken over
meanwhile (it stalled past the stale limit and another resumed it) raises TakenOver instead of
ending the new owner's run.
"""

from __future__ import annotations

from ..errors import DivergedError
from ..tracking import TAG, Tracker
from ..tracking.outage import Fenced, StoreUnavailable, store_fault

OWNER = f"{TAG}owner"
HEARTBEAT = f"{TAG}heartbeat"
BEAT_INTERVAL = f"{TAG}beat_s"  # the writer's beat interval, so an observer knows how long "unchanged" means
RECORDED = f"{TAG}recorded"
STATE = f"{TAG}state"
REASON = f"{TAG}failure_reason"

CLAIMED, RECORDED_STATE, TRAINING, FINISHED, RESUMABLE, FAILED = "claimed", "recorded", "training", "finished", "resumable", "failed"
SUPERSEDED = "superseded"  # KILLED and retired: a newer run of its configuration trains instead, nobody resumes it
# MLflow's status for each end
_STATUS = {FINISHED: "FINISHED", RESUMABLE: "KILLED", FAILED: "FAILED"}


class TakenOver(Fenced):
    """The run was claimed by another process while this one trained it."""


class RunDeleted(Fenced):
    """The run was deleted in the store while this process trained it: nothing more is written to
    it and its checkpoint is removed; the same command then trains a new run."""


class NoCheckpoint(Exception):
    """A run to resume has epochs logged but no checkpoint to continue them from: it is not
    trained on (its epochs would be logged twice); the next claim supersedes it with a new run."""


def permanent(e: BaseException) -> bool:
    """Whether a rerun would fail the same way (the run ends FAILED). A store or network
    fault, memory, a GPU or its driver failing (`device_fault`), a signal or a stopped process is
    not: the run stays resumable."""
    if isinstance(e, DivergedError):
        return True
    if isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError, StoreUnavailable, Fenced, NoCheckpoint)) or store_fault(e):
        return False
    if isinstance(e, RuntimeError) and device_fault(e):
        return False
    return True  # an invalid spec or model (HarnessError, shapes that do not fit), a bug: the same again


# what a GPU, its driver or its libraries say when the device failed rather than the run: an ECC
# error, a launch that failed, a lost device, a library's internal or allocation failure, NCCL's
# system or remote errors. A rerun on a healthy device finishes, so the run stays resumable (and
# its checkpoint kept). Memory too (torch's allocator out of memory, CUDA's, shared memory).
_DEVICE_FAULT = ("cuda error", "cuda driver error", "cudaerror", "cublas_status", "cudnn_status", "cusolver_status",
                 "cufft_internal", "nccl error", "ncclsystemerror", "ncclinternalerror", "ncclremoteerror", "ncclunhandledcudaerror",
                 "unspecified launch failure", "illegal memory access", "ecc error",
                 "memory", "failed to allocate", "hip error", "xpu error")


# ... except what the run's own code or set-up causes on any device: a kernel's assert (an index out
# of range), a launch configuration or a build without kernels for this device; a rerun repeats them
_RUNS_FAULT = ("device-side assert", "invalid configuration argument", "no kernel image", "invalid device function",
               "operation not supported", "cublas_status_invalid_value", "cublas_status_not_supported",
               "cudnn_status_bad_param", "cudnn_status_not_supported")


def device_fault(e: BaseException) -> bool:
    """Whether a RuntimeError is the device's fault (see _DEVICE_FAULT), not the run's."""
    text = str(e).lower()
    return any(k in text for k in _DEVICE_FAULT) and not any(k in text for k in _RUNS_FAULT)


def ending(e: BaseException) -> str:
    """FAILED or RESUMABLE for a fault that ended training."""
    return FAILED if permanent(e) else RESUMABLE


def owned_by(tracker: Tracker, run_id: str, owner: str | None) -> bool:
    """Whether `owner` (None: whoever) still owns the run."""
    if owner is None:
        return True
    return tracker.run_tags(run_id).get(OWNER, owner) == owner


def check_owner(tracker: Tracker, run_id: str, owner: str | None) -> None:
    if owner is not None:
        now = tracker.run_tags(run_id).get(OWNER, owner)
        if now != owner:
            raise TakenOver(f"taken over by {now}", run_id=run_id)


def still_held(tracker: Tracker, run_id: str, owner: str | None) -> None:
    """Before a write only the run's holder may make (an epoch's checkpoint and metrics, the final
    writes), asked of the store itself rather than left to the heartbeat's next beat: an owner
    that stalled past the stale limit and wakes after a takeover or a deletion writes nothing more.
    Raises RunDeleted or TakenOver. While the store is unreachable (this connection is riding out
    an outage, or the one look fails) it cannot tell: training goes on and its writes wait in the
    outbox, and the final writes look again. But once the owner's lease has run out (the outage
    outlasted two beats: another machine may have taken the run over) the store must answer
    first: this waits for it, within the outage window (past it StoreUnavailable, the run stops
    resumable), so a cut-off owner neither trains on nor writes its local checkpoint beside a taker."""
    if not tracker.outage.leased(run_id):
        run = tracker.run_record(run_id)  # ridden out: its fence asks whose the run is first
    elif tracker.outage.since is not None:
        return
    else:
        try:
            run = tracker.impatient().run_record(run_id)
        except Exception:  # noqa: BLE001 - the store unreachable: the heartbeat and the final writes check
            return
    if run.deleted:
        raise RunDeleted("deleted in the store while it trained", run_id=run_id)
    now = run.tags.get(OWNER, owner)
    if owner is not None and now != owner:
        raise TakenOver(f"taken over by {now}", run_id=run_id)


def fence(tracker: Tracker, run_id: str, owner: str | None, beat_s: float | None = None) -> None:
    """While this process trains the run: a call about it that follows a failed call (an outage,
    its own retry), or made when the owner's lease has run out, first asks the store whether the
    run is still this owner's (tracking/outage.py's fence). The lease is two beats (`beat_s`, the
    heartbeat's interval, recorded on the run) from the last heartbeat that landed: an observer
    takes a run over only after seeing its heartbeat unchanged for at least four beats
    (liveness.Observer.limit), so within the lease no other process can hold the run. An owner cut
    off from the store or stalled past it, whose run another machine took over meanwhile, then
    writes nothing into it: its queued writes are dropped (TakenOver, RunDeleted) and it stops with
    one line. Without `beat_s` the check is asked only after a failed call."""
    if owner is None:
        return
    ask = tracker.impatient()  # one try: the fenced call's own loop retries through the outage

    def check() -> None:
        run = ask.run_record(run_id)
        if run.deleted:
            raise RunDeleted("deleted in the store while this process could not reach it", run_id=run_id)
        now = run.tags.get(OWNER, owner)
        if now != owner:
            raise TakenOver(f"taken over by {now} while this process could not reach the store", run_id=run_id)

    tracker.outage.fence(run_id, check, 2 * beat_s if beat_s else float("inf"))


def unfence(tracker: Tracker, run_id: str) -> None:
    tracker.outage.unfence(run_id)


def claimed_tags(owner: str, beat: str, beat_s: float) -> dict:
    """What a claim writes: who owns the run, its first beat and how often it beats."""
    return {OWNER: owner, HEARTBEAT: beat, BEAT_INTERVAL: f"{beat_s:g}", STATE: CLAIMED}


def mark_recorded(tracker: Tracker, run_id: str) -> None:
    """The run's record is complete (params, config, data sets): the last write of `record`."""
    tracker.set_tags(run_id, {RECORDED: "true", STATE: RECORDED_STATE})


def start_training(tracker: Tracker, run_id: str, owner: str | None, resumed: bool, tags: dict | None = None) -> None:
    """claimed/recorded/resumable -> training: a resumed run is RUNNING again (`tags`: written
    with the state, such as where its checkpoint lives)."""
    check_owner(tracker, run_id, owner)
    if resumed:
        if tracker.run_record(run_id).status == "FINISHED":  # never reopened: a Ray retry whose first attempt finished it
            raise TakenOver(f"run {run_id} is finished already (an earlier attempt ended it): nothing to train")
        tracker.reopen(run_id)
    tracker.set_tags(run_id, {**(tags or {}), STATE: TRAINING})


def end(tracker: Tracker, run_id: str, owner: str | None, state: str, reason: str | None = None) -> None:
    """training -> finished, resumable or failed, if this process still owns the run."""
    check_owner(tracker, run_id, owner)
    tracker.terminate(run_id, _STATUS[state], reason, {STATE: state})


def finish(tracker: Tracker, run_id: str, owner: str | None) -> None:
    end(tracker, run_id, owner, FINISHED)


def fail(tracker: Tracker, run_id: str, owner: str | None, reason: str) -> None:
    end(tracker, run_id, owner, FAILED, reason)


def stop(tracker: Tracker, run_id: str, owner: str | None, reason: str) -> bool:
    """Leave a run resumable (KILLED with its reason) if this owner holds it: RUNNING, or a KILLED
    run it was taking over (claimed, not yet reopened: its state no longer says resumable). A run
    that finished, failed, is resumable already or belongs to another process meanwhile is left
    alone. Whether it was stopped."""
    run = tracker.run_record(run_id)
    claimed_killed = run.status == "KILLED" and run.tags.get(STATE) not in (RESUMABLE, SUPERSEDED, None)
    if run.status != "RUNNING" and not claimed_killed:
        return False
    if owner is not None and run.tags.get(OWNER, owner) != owner:
        return False
    tracker.terminate(run_id, "KILLED", reason, {STATE: RESUMABLE})
    return True


def settle(tracker: Tracker, run_id: str, owner: str | None, started: bool, e: BaseException, reason: str) -> str | None:
    """End a run that training left because of `e`: FAILED or resumable (`ending`), or deleted
    when nothing of it was recorded (nothing trained, nothing to see). The state it ended in,
    None when deleted. Raises TakenOver when the run is another process's now."""
    if not started:
        tracker.delete_run(run_id)
        return None
    if tracker.run_status(run_id) == "FINISHED":  # complete before the fault took effect (a Ctrl-C
        return FINISHED  # landing while the task returns): a FINISHED run is never ended again
    state = ending(e)
    end(tracker, run_id, owner, state, reason)
    return state


def supersede(tracker: Tracker, run_id: str, reason: str = "abandoned: superseded by a --force run") -> None:
    """An abandoned run replaced by a new run of its configuration (a --force run, or one that
    replaces a run whose checkpoint is gone): KILLED and kept, state superseded, so no claim
    resumes it."""
    tracker.terminate(run_id, "KILLED", reason, {STATE: SUPERSEDED})
