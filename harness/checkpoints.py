"""Where a run's training state lives between epochs: one folder per MLflow run id under the
state root, written atomically, read back without unpickling arbitrary objects (weights_only).

The state root belongs to the tracking store, not to the folder a command runs in: for a SQLite
store it is `.harness/state` beside the database, so every process that uses the store (from
any folder, with a relative or an absolute URI) finds the same locks and checkpoints.
$HARNESS_STATE_DIR overrides it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .errors import HarnessError
from .tracking.store import redact, sqlite_path


def state_root(store_uri: str | None = None) -> Path:
    if os.environ.get("HARNESS_STATE_DIR"):
        return Path(os.environ["HARNESS_STATE_DIR"])
    db = sqlite_path(store_uri) if store_uri else None
    if db is not None:
        return db.expanduser().resolve().parent / ".harness" / "state"
    return Path.cwd() / ".harness" / "state"


def store_identity(store_uri: str) -> str:
    """One name per store however its URI is spelt: a SQLite file by its resolved path."""
    db = sqlite_path(store_uri)
    if db is not None:
        return "sqlite:" + str(db.expanduser().resolve())
    return redact(store_uri).rstrip("/").lower()


class RunState:
    """The epoch checkpoint (`state.pt`) and the best-validation weights (`best.pt`) of one run."""

    def __init__(self, run_id: str, root: Path | None = None):
        self.dir = (root or state_root()) / run_id
        self.last = self.dir / "state.pt"
        self.best = self.dir / "best.pt"

    def save_last(self, state: dict) -> None:
        _atomic_save(state, self.last, self.dir)

    def save_best(self, weights: dict) -> None:
        _atomic_save(weights, self.best, self.dir)

    def load_last(self, device: torch.device) -> dict | None:
        return _load(self.last, device)

    def load_best(self, device: torch.device) -> dict | None:
        return _load(self.best, device)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _atomic_save(obj, path: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact


def _load(path: Path, device: torch.device) -> dict | None:
    if not path.exists():
        return None
    try:
        # tensors, numbers, strings, lists and dicts only: a checkpoint file cannot run code
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise HarnessError(f"checkpoint {path} unreadable ({type(e).__name__}); delete it to restart the run from epoch 1") from None
