"""Named crash points of a run's life, for the crash-point matrix (tests/test_crash_matrix.py).

Each step of a run's life calls `point(step, ...)` once: claim (the claim written, before the
settling wait), settle (the claim confirmed), record (params and config written), epoch_end
(an epoch trained, before its checkpoint), checkpoint (the checkpoint being written), outbox_flush
(the epochs' writes landing before the final ones), final_metrics, model (before the model is
logged), finish (before the status write that ends the run) and clear (the run FINISHED, its
checkpoint not yet removed).

Beside a run's steps, a `--jobs` worker's own: worker_ready (a worker started, before it tells its
supervisor it can take a run).

In production $HARNESS_FAULT is unset and `point` returns at once. A test sets
HARNESS_FAULT=step:fault (step[@n] for the n-th time that step is reached in this process, 1 by
default; step#n for the n-th time any process of the command reaches it, counted by files in
$HARNESS_FAULT_DIR: `worker_ready#2` is the second worker a --jobs command starts, its first
replacement, whose own count is 1 like every worker's). Several faults: joined by commas
(`epoch_end@1:kill,worker_ready#2:pause`: a worker killed at its first epoch's end, its
replacement paused before it is ready).
  kill      SIGKILL this process          term   SIGTERM this process (Ctrl-C as signals.py makes it)
  disk      the disk full: raises torch.save's RuntimeError (at checkpoint)
  store     the store unreachable from now on: every store call fails as a refused connection
  outage    the store unreachable until $HARNESS_FAULT_DIR/go exists (an outage on this process's
            side only: other processes reach the store meanwhile), then it answers again
  delete    the run deleted in the store (by someone else), then go on (only where the step knows its run)
Each fault that fires first writes $HARNESS_FAULT_DIR/fired-<step> (when that variable is set).
  pause     write $HARNESS_FAULT_DIR/paused, then wait until $HARNESS_FAULT_DIR/go exists (a test
            runs a second claimer meanwhile, then lets this one go on): ordering by files, no sleeps
HARNESS_FAKE_CLOCK_STEP=S steps this process's wall clock by S seconds (time.time and what psutil
derives from it) before anything reads it: a clock step as an observer sees it.

It lives in tracking/ (the lowest layer) because the store fault is injected into the Tracker's calls.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

STEPS = ("claim", "settle", "record", "epoch_end", "checkpoint", "outbox_flush", "final_metrics", "model", "finish", "clear")
WORKER_STEPS = ("worker_ready",)
FAULTS = ("kill", "term", "disk", "store", "outage", "delete", "pause")

_seen: dict[str, int] = {}
_store_down = False
_outage_until: Path | None = None  # the file whose appearance ends an `outage`


def _wanted() -> list[tuple[str, int, bool, str]]:
    """(step, n, counted across the command, fault) for each fault $HARNESS_FAULT names."""
    spec = os.environ.get("HARNESS_FAULT")
    out = []
    for one in (spec or "").split(","):
        if not one:
            continue
        where, fault = one.split(":", 1)
        command = "#" in where
        step, _, nth = where.partition("#" if command else "@")
        out.append((step, int(nth or 1), command, fault))
    return out


def _reached_in_command(step: str) -> int:
    """How many times a process of this command has reached `step`, this time included: the
    first free number k of $HARNESS_FAULT_DIR/reached-<step>-<k> (made exclusively, so two
    processes never count the same k)."""
    folder = Path(os.environ["HARNESS_FAULT_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    k = 1
    while True:
        try:
            os.close(os.open(folder / f"reached-{step}-{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return k
        except FileExistsError:
            k += 1


def point(step: str, tracker=None, run_id: str | None = None) -> None:
    """The crash point `step`: a no-op unless $HARNESS_FAULT names it."""
    wanted = _wanted()
    if not wanted:
        return
    assert step in STEPS or step in WORKER_STEPS, step
    _seen[step] = _seen.get(step, 0) + 1
    mine = [w for w in wanted if w[0] == step]
    in_command = _reached_in_command(step) if any(command for _, _, command, _ in mine) else 0
    for _, nth, command, fault in mine:
        if nth == (in_command if command else _seen[step]):
            _fire(step, fault, tracker, run_id)


def _fire(step: str, fault: str, tracker, run_id: str | None) -> None:
    if fault == "delete" and (tracker is None or run_id is None):
        return  # not fired: the test sees no fired-<step> file and fails the cell
    _fired(step, fault)
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "term":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the handler runs in the main thread at its next instruction; a crash point off it waits for it
    elif fault == "disk":
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/0: file write failed")
    elif fault == "store":
        global _store_down
        _store_down = True
    elif fault == "outage":
        global _outage_until
        _outage_until = Path(os.environ["HARNESS_FAULT_DIR"]) / "go"
    elif fault == "delete":
        if tracker is not None and run_id is not None:
            tracker.client.delete_run(run_id)
    elif fault == "pause":
        folder = Path(os.environ["HARNESS_FAULT_DIR"])
        (folder / "paused").write_text(str(os.getpid()))
        while not (folder / "go").exists():
            time.sleep(0.02)
    else:
        raise ValueError(f"HARNESS_FAULT: unknown fault {fault!r} (one of {', '.join(FAULTS)})")


def _fired(step: str, fault: str) -> None:
    """$HARNESS_FAULT_DIR/fired-<step>: the fault did fire (a cell whose hook is never reached fails)."""
    folder = os.environ.get("HARNESS_FAULT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"fired-{step}").write_text(fault)


def store_down() -> None:
    """Raise as an unreachable store would, once the `store` fault has fired."""
    global _outage_until
    if _store_down:
        raise ConnectionError("Connection refused (HARNESS_FAULT: the store unreachable)")
    if _outage_until is not None:
        if not _outage_until.exists():
            raise ConnectionError("Connection refused (HARNESS_FAULT: the store unreachable until go)")
        _outage_until = None


def _step_clock() -> None:
    step = float(os.environ.get("HARNESS_FAKE_CLOCK_STEP") or 0)
    if not step:
        return
    import psutil

    real_time, real_create = time.time, psutil.Process.create_time
    time.time = lambda: real_time() + step
    psutil.Process.create_time = lambda self: real_create(self) + step  # the boot time moves with the clock


_step_clock()
