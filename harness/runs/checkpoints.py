"""Where a run's training state lives between epochs, so a killed run resumes after its last
completed epoch: one file with the weights, the optimizer, the RNG, the progress and (for the
recipes that keep their best-validation weights) those too, read back with weights_only so a
checkpoint cannot run code.

Two homes, chosen by the store:
- a SQLite store is one machine's: `LocalRunState` keeps the file in `.harness/state/<run id>/`
  beside the database (so every process on the store, from any folder, finds it), written
  atomically. $HARNESS_STATE_DIR overrides the folder.
- a tracking server is shared by many machines: `SharedRunState` keeps it as an artifact of the
  run itself (`harness-state/`), so a run whose machine died resumes on any other. Two slots are
  written in turn and a tag names the complete one, so a kill mid-upload loses nothing; a resumed
  run's first save goes to the slot the tag does not name. With an Outbox the upload happens off
  the training thread, in order with the epoch's metrics; a checkpoint still queued when a newer
  one is saved is replaced by it (one upload, not a backlog, after an outage).

A run keeps one home: the tag `harness.checkpoint_home` records where it trains ("artifacts", or
host:folder), and a later attempt whose own choice differs (another $HARNESS_STATE_DIR, set or
unset, on a server) resumes from the recorded home when its checkpoint is there, rather than
retire the run for want of one. Where neither has it, the note says both places.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import torch

from ..errors import HarnessError
from ..tracking import TAG, RunRecord, Tracker, faults
from ..tracking.outage import StoreUnavailable
from ..tracking.store import redact, sqlite_path

STATE_DIR = "harness-state"
STATE_TAG = f"{TAG}checkpoint"
HOME_TAG = f"{TAG}checkpoint_home"


class CheckpointUnwritable(OSError):
    """An epoch's checkpoint could not be written (a full disk): a rerun resumes, so the run stays
    resumable (an OSError: lifecycle.permanent says no)."""


def _why(e: BaseException) -> str:
    text = str(e).lower()
    if "no space" in text or "file write failed" in text or getattr(e, "errno", None) == 28:
        return "disk full: free space first"
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def state_root(store_uri: str | None = None) -> Path:
    if os.environ.get("HARNESS_STATE_DIR"):
        return Path(os.environ["HARNESS_STATE_DIR"])
    db = sqlite_path(store_uri) if store_uri else None
    if db is not None:
        return db.expanduser().resolve().parent / ".harness" / "state"
    return Path.cwd() / ".harness" / "state"


def lock_root(store_uri: str) -> Path:
    """Where this machine keeps the configuration locks of a store: beside a SQLite file, in the
    user's cache for a server. It depends on the store only (never on $HARNESS_STATE_DIR or the
    folder a command runs in), so two claimers of one store on one machine always meet at one lock."""
    db = sqlite_path(store_uri)
    if db is not None:
        return db.expanduser().resolve().parent / ".harness" / "locks"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "harness" / "locks"


def store_identity(store_uri: str) -> str:
    """One name per store however its URI is spelt: a SQLite file by its resolved path."""
    db = sqlite_path(store_uri)
    if db is not None:
        return "sqlite:" + str(db.expanduser().resolve())
    return redact(store_uri).rstrip("/").lower()


def shared_store(store_uri: str) -> bool:
    """Whether processes on other machines may share the store (anything but a SQLite file)."""
    return sqlite_path(store_uri) is None


class LocalRunState:
    """The epoch checkpoint of one run in a folder of its own."""

    def __init__(self, run_id: str, root: Path | None = None, outbox=None):
        self.dir = (root or state_root()) / run_id
        self.last = self.dir / "state.pt"

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.last.with_suffix(".pt.tmp")
        try:
            faults.point("checkpoint")
            torch.save(state, tmp)
        except (RuntimeError, OSError) as e:  # torch says a full disk as RuntimeError ("file write failed")
            tmp.unlink(missing_ok=True)
            raise CheckpointUnwritable(f"checkpoint {self.last} could not be written ({_why(e)}); the previous epoch's is kept") from None
        os.replace(tmp, self.last)  # a kill mid-write leaves the previous checkpoint intact

    def load(self, device: torch.device) -> dict | None:
        return _load(self.last, device) if self.last.exists() else None

    def exists(self) -> bool:
        return self.last.exists()

    def where(self) -> str:
        return str(self.last)

    def home(self) -> str:
        return f"{socket.gethostname()}:{self.dir.parent.resolve()}"

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class SharedRunState:
    """The epoch checkpoint of one run as artifacts of the run, in the tracking server's store."""

    def __init__(self, tracker: Tracker, run_id: str, outbox=None):
        self.tracker, self.run_id, self.outbox = tracker, run_id, outbox
        self.current: str | None = None  # "<slot>:<epoch>" of the complete checkpoint, as the run's tag says
        self._known = False  # whether `current` has been read from the tag
        self._pending: tuple[Path, int] | None = None  # a checkpoint queued and not yet uploading
        self._lock = threading.Lock()

    def save(self, state: dict) -> None:
        # written now (the weights change in the next epoch), uploaded now or from the outbox
        path = Path(tempfile.mkdtemp(prefix="harness-ck-")) / "state.pt"
        try:
            faults.point("checkpoint")
            torch.save(state, path)
        except (RuntimeError, OSError) as e:
            shutil.rmtree(path.parent, ignore_errors=True)
            raise CheckpointUnwritable(f"checkpoint of run {self.run_id} could not be written to {path.parent} ({_why(e)})") from None
        if self.outbox is None:
            return self._upload(path, state["epoch"])
        with self._lock:
            older, self._pending = self._pending, (path, state["epoch"])
        if older is not None:  # still queued: its upload will carry this newer one instead
            shutil.rmtree(older[0].parent, ignore_errors=True)
        else:
            try:
                self.outbox.submit(self._upload_pending, run=self.run_id, dropped=self._discard_pending)
            except BaseException:  # the outbox refuses (the run lost, a write failed): no upload, no temporary file
                self._discard_pending()
                raise

    def _upload_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._upload(*pending)

    def _discard_pending(self) -> None:
        """The upload dropped (the run is another owner's now): its temporary file goes too."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            shutil.rmtree(pending[0].parent, ignore_errors=True)

    def _upload(self, path: Path, epoch: int) -> None:
        try:
            if not self._known:  # a resumed run: the tag names the complete slot, which must stay intact
                self.current, self._known = self.tracker.run_tags(self.run_id).get(STATE_TAG), True
            slot = "b.pt" if self.current and self.current.startswith("a.pt") else "a.pt"
            target = path.with_name(slot)
            os.replace(path, target)
            self.tracker.upload_file(self.run_id, target, STATE_DIR)
            self.current = f"{slot}:{epoch}"
            self.tracker.set_tags(self.run_id, {STATE_TAG: self.current})  # only now is the new slot the one to read
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)

    def load(self, device: torch.device) -> dict | None:
        current = self.current if self._known else self.tracker.run_tags(self.run_id).get(STATE_TAG)
        self.current, self._known = current, True
        if not current:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.tracker.fetch_file(self.run_id, f"{STATE_DIR}/{current.split(':')[0]}", tmp)
            except Exception as e:
                raise StoreUnavailable(f"checkpoint {current} of run {self.run_id} could not be downloaded ({type(e).__name__})") from None
            return _load(Path(path), device)

    def exists(self) -> bool:
        return bool(self.tracker.run_tags(self.run_id).get(STATE_TAG))

    def where(self) -> str:
        return f"{STATE_DIR}/ of run {self.run_id}"

    def home(self) -> str:
        return "artifacts"

    def clear(self) -> None:
        """The slots removed, then the tag that named one (a tag left on a run says its checkpoint may still be there)."""
        if self.tracker.delete_artifacts(self.run_id, STATE_DIR):
            try:
                self.tracker.delete_tag(self.run_id, STATE_TAG)
            except Exception:  # a run deleted in the store meanwhile: its tags go with it
                pass


def run_state(tracker: Tracker, run_id: str, outbox=None, tags: dict | None = None) -> LocalRunState | SharedRunState:
    """The run's checkpoint home: this process's choice, or the home the run recorded when its
    checkpoint is there and not here (`tags`: the run's, when the caller has them); with
    `outbox`, a shared one uploads off the training thread."""
    here = _chosen(tracker, run_id, outbox)
    if here.exists():
        return here
    there = recorded_home(tracker, run_id, outbox, tags)
    return there if there is not None and there.home() != here.home() and there.exists() else here


def _chosen(tracker: Tracker, run_id: str, outbox=None) -> LocalRunState | SharedRunState:
    if shared_store(tracker.uri) and not os.environ.get("HARNESS_STATE_DIR"):
        return SharedRunState(tracker, run_id, outbox)
    return LocalRunState(run_id, state_root(tracker.uri))


def recorded_home(tracker: Tracker, run_id: str, outbox=None, tags: dict | None = None) -> LocalRunState | SharedRunState | None:
    """The home the run recorded (HOME_TAG), where this process can reach it: the server's
    artifacts, or a folder of this host. None: none recorded, or another host's folder."""
    if tags is None:
        try:
            tags = tracker.impatient().run_tags(run_id)
        except Exception:  # noqa: BLE001 - the store unreachable: this process's own home, as before
            return None
    home = tags.get(HOME_TAG, "")
    if home == "artifacts":
        return SharedRunState(tracker, run_id, outbox) if shared_store(tracker.uri) else None
    host, _, folder = home.partition(":")
    return LocalRunState(run_id, Path(folder)) if folder and host == socket.gethostname() else None


def expected_at(tracker: Tracker, run_id: str, state, tags: dict | None = None) -> str:
    """Where a run's checkpoint was looked for: this process's home, and the recorded one if other."""
    home = (tags if tags is not None else tracker.run_tags(run_id)).get(HOME_TAG)
    return state.where() + (f" nor in the home it was written to ({home})" if home and home != state.home() else "")


def clear_leftover(tracker: Tracker, run: RunRecord) -> bool:
    """Remove the checkpoint of a FINISHED run that still has one (its process was killed between
    the finish and the clear), in this process's home and the one the run recorded; each claim
    that finds the run finished looks (a file check, or the checkpoint tag it already read: no
    store call for a run with nothing left). Whether one was there."""
    found, homes = False, {}
    for state in (_chosen(tracker, run.run_id), recorded_home(tracker, run.run_id, tags=run.tags)):
        if state is not None:
            homes.setdefault(state.home(), state)
    for state in homes.values():
        there = bool(run.tags.get(STATE_TAG)) if isinstance(state, SharedRunState) else state.exists()
        if there:
            state.clear()
            found = True
    return found


def _load(path: Path, device: torch.device) -> dict:
    try:
        # tensors, numbers, strings, lists and dicts only: a checkpoint file cannot run code
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise HarnessError(f"checkpoint {path} unreadable ({type(e).__name__}); delete it to restart the run from epoch 1") from None
