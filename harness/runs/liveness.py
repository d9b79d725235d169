"""Whether the owner of a claimed run is alive, decided without trusting how a URI is spelt,
which user or state folder a process runs with, or any clock but the observer's own.

- On this machine the owner's process decides: the owner tag names its pid and start time in
  clock ticks since boot (/proc/<pid>/stat), which no step of the wall clock moves (psutil's
  create_time is boot time + ticks in wall seconds, and the boot time moves with a clock step), so a live owner is seen as live from any folder, user or spelling of the store, and a
  dead one (even SIGKILLed) as dead at once; a reused pid has another start time. "This machine"
  is the host, its boot and its PID namespace, so containers that share a hostname and boot id
  are told apart (each judges the other by its heartbeat).
- Across machines the heartbeat decides, as the observer sees it: a run is stale only after
  this process has seen its heartbeat value unchanged for the stale limit on its own monotonic
  clock. The value is never compared with a clock, so skewed clocks cannot make a live run look
  stale. The writer records its beat interval, and the limit is at least four of its beats, so
  two machines with different HARNESS_STALE_AFTER_S agree on who is live.
"""

from __future__ import annotations

import collections
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import psutil

from ..tracking import RunRecord
from .lifecycle import BEAT_INTERVAL, HEARTBEAT

ALIVE, DEAD, WATCHING = "alive", "dead", "watching"

# owners whose heartbeat runs in this process (a claim of this very process is judged by it, not
# by its pid, which is alive whatever became of the claim)
_beating: collections.Counter = collections.Counter()
_beating_lock = threading.Lock()


def machine_id() -> str:
    """This machine: hostname, boot and PID namespace (the namespace in which an owner's pid means something)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "?"
    try:
        pidns = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        pidns = "?"
    return f"{socket.gethostname()}/{boot}/{pidns}"


UNREADABLE = -1  # start_ticks: the process may exist, but /proc does not say (hidepid, permissions)


def start_ticks(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat):
    monotonic, so a stepped wall clock cannot make a live process look another. None: no such
    process; UNREADABLE: /proc would not say (mounted hidepid=1/2, another user's process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:  # a missing /proc entry under hidepid=2 is not proof of death: ask the kernel
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:  # EPERM: it exists, not ours
            return UNREADABLE
        return UNREADABLE
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": the command may hold spaces
    return None if fields[0] == "Z" else int(fields[19])


def new_owner(attempt: str | None = None) -> str:
    """machine|pid|process start ticks|a claimer's own id (or `attempt`'s)."""
    pid = os.getpid()
    ticks = start_ticks(pid)
    start = f"t{ticks}" if ticks not in (None, UNREADABLE) else f"{psutil.Process(pid).create_time():.3f}"
    return f"{machine_id()}|{pid}|{start}|{attempt or uuid.uuid4().hex[:8]}"


def attempt_owner(claim_owner: str) -> str:
    """The owner of one attempt at a run claimed by `claim_owner` (a Ray driver, for a task): the
    claimer's process (its liveness is the claimer's, as before) with an id of this attempt after
    the claimer's own id. A task that Ray retries while its first attempt still lives (a
    partition, not a death) is then another owner: the first attempt loses the run to it at its
    next owner check instead of training beside it."""
    machine, pid, start, ident = claim_owner.split("|")
    return f"{machine}|{pid}|{start}|{ident.split('+')[0]}+{uuid.uuid4().hex[:8]}"


def of_claim(owner: str, claim_owner: str) -> bool:
    """Whether `owner` is `claim_owner` itself or one attempt at a run it claimed (attempt_owner)."""
    if owner == claim_owner:
        return True
    head, _, attempt = owner.rpartition("+")
    return bool(attempt) and "+" not in claim_owner.rsplit("|", 1)[-1] and head == claim_owner


def owner_machine(owner: str) -> str:
    return owner.split("|", 1)[0]


def beating(owner: str | None, on: bool) -> None:
    """Register (or drop) `owner` as kept alive by a heartbeat in this process."""
    if owner is None:
        return
    with _beating_lock:
        _beating[owner] += 1 if on else -1
        if _beating[owner] <= 0:
            del _beating[owner]


def process_alive(owner: str) -> bool | None:
    """Whether the owner's process lives, where this machine can tell (None: another machine,
    or an owner tag this version did not write)."""
    parts = owner.split("|")
    if len(parts) != 4 or parts[0] != machine_id():
        return None
    try:
        pid = int(parts[1])
        ticks = int(parts[2][1:]) if parts[2].startswith("t") else None
        if ticks is None:
            float(parts[2])  # an earlier version's start in wall seconds
    except ValueError:
        return None
    if pid == os.getpid():
        with _beating_lock:
            return _beating.get(owner, 0) > 0
    if ticks is not None:
        now = start_ticks(pid)
        return None if now == UNREADABLE else now == ticks  # unreadable: the heartbeat decides
    # an owner written by an earlier version (its start in wall seconds, which a stepped clock
    # moves): a missing process is dead, a present one is left to the heartbeat
    return False if not psutil.pid_exists(pid) else None


class Observer:
    """Heartbeats as this process has seen them, on its own monotonic clock."""

    def __init__(self, stale_after_s: float, monotonic=time.monotonic):
        self.stale_after_s, self.monotonic = stale_after_s, monotonic
        self.seen: dict[str, tuple[str, float, bool]] = {}  # run id -> (value, since, seen to change)
        self.looked: dict[str, float] = {}  # run id -> when this process last read its heartbeat

    def limit(self, run: RunRecord) -> float:
        """How long an unchanged heartbeat means a dead owner: our limit, and at least four of its beats."""
        try:
            beat_s = float(run.tags.get(BEAT_INTERVAL) or 0)
        except ValueError:
            beat_s = 0.0
        return max(self.stale_after_s, 4 * beat_s)

    def poll_s(self, run: RunRecord) -> float:
        """How often to look again while deciding."""
        return min(5.0, max(0.05, self.limit(run) / 8))

    def liveness(self, run: RunRecord) -> str:
        """ALIVE once its heartbeat changed while we watched (until it stays unchanged for the
        limit), DEAD when unchanged for the limit, WATCHING before either is known."""
        value, now = run.tags.get(HEARTBEAT, ""), self.monotonic()
        prev = self.seen.get(run.run_id)
        looked, self.looked[run.run_id] = self.looked.get(run.run_id), now
        if prev is not None and prev[0] == value and looked is not None and now - looked > self.limit(run) / 4:
            # we could not look for a while (a store outage, or this process stalled): the owner
            # may not have been able to beat either, so the time unseen does not count as unchanged
            self.seen[run.run_id] = (value, now, prev[2])
            return ALIVE if prev[2] else WATCHING
        if prev is None:
            self.seen[run.run_id] = (value, now, False)
            return WATCHING
        if prev[0] != value:
            self.seen[run.run_id] = (value, now, True)
            return ALIVE
        if now - prev[1] >= self.limit(run):
            return DEAD
        return ALIVE if prev[2] else WATCHING
