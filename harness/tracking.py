"""Every MLflow call of the harness lives here.

Runs are written through MlflowClient with explicit run ids (no global active run), metrics
go in batches (one call per epoch), and SQLite "database is locked" from a concurrent
process is retried rather than crashing.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_EXPERIMENT = "cifar10-harness"
DEFAULT_URI = "sqlite:///mlflow.db"

# fail fast on an unreachable server instead of MLflow's minutes of back-off
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow 3's usage telemetry runs a background thread that, offline, cost 15% of training
# throughput on 2 cores (measured by `harness bench`); a user may still set it to false
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from .errors import HarnessError  # noqa: E402

# the pickle format is chosen deliberately (see log_model); its warning on every run is noise
logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
# schema creation/migration notices are MLflow internals, not news for a harness user
for _name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
    logging.getLogger(_name).setLevel(logging.WARNING)

TAG = "harness."


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _retry_locked(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        delay = 0.2
        for attempt in range(12):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # sqlalchemy OperationalError arrives wrapped in MlflowException
                if "locked" not in str(e).lower() or attempt == 11:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 3.0)

    return wrapper


@contextlib.contextmanager
def _sigint_deferred():
    """Hold Ctrl-C until a store write is complete. A KeyboardInterrupt raised inside
    SQLAlchemy leaves the SQLite connection mid-transaction, holding the write lock, so the
    write that marks the run KILLED then fails with "database is locked" (and the process
    hung at exit). The interrupt is delivered as soon as the write returns; a second one at once."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # not ours to manage: another thread, or a handler someone else installed
        return
    pending = []

    def hold(signum, frame):
        if pending:  # a second Ctrl-C (a write stuck on a slow server): the user insists
            raise KeyboardInterrupt
        pending.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt


def _held(fn):
    """Ctrl-C waits until `fn` returns."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _sigint_deferred():
            return fn(*args, **kwargs)

    return wrapper


def _guarded(fn):
    """A single store call made while a run is open: retried while another process holds the
    SQLite lock, never cut by Ctrl-C (reads too: one cut mid-query can keep the lock).
    Methods of several calls use `_held` and retry each call, so a retry never repeats a
    call that already succeeded (a second run, metrics logged twice)."""
    return _held(_retry_locked(fn))


@dataclass
class RunRecord:
    run_id: str
    status: str
    tags: dict
    start_time: int


class Tracker:
    """A connection to one tracking store and one MLflow experiment."""

    def __init__(self, uri: str | None, experiment_name: str = DEFAULT_EXPERIMENT, create: bool = True):
        self.uri = resolve_uri(uri)
        self.experiment_name = experiment_name
        self._check_reachable(must_exist=not create)
        mlflow.set_tracking_uri(self.uri)
        try:
            with _init_lock(self.uri):
                self.client = MlflowClient(self.uri)
                exp = self.client.get_experiment_by_name(experiment_name)
                if exp is None and create:
                    try:
                        self.client.create_experiment(experiment_name, artifact_location=_artifact_location(self.uri, experiment_name))
                    except MlflowException:  # created meanwhile by a concurrent process
                        pass
                    exp = self.client.get_experiment_by_name(experiment_name)
        except MlflowException as e:
            raise HarnessError(f"tracking store {self.uri}: {_first_line(e)}") from None
        except Exception as e:  # connection and schema errors surface as assorted types
            raise HarnessError(f"tracking store {self.uri} unusable: {_first_line(e)}") from None
        if exp is None:
            known = [e.name for e in self.client.search_experiments()]
            raise HarnessError(f"no experiment {experiment_name!r} in {self.uri} (known: {', '.join(known) or 'none'})")
        self.experiment_id = exp.experiment_id

    def _check_reachable(self, must_exist: bool = False) -> None:
        uri = self.uri
        if uri.startswith(("http://", "https://")):
            try:
                urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
            except (urllib.error.URLError, OSError) as e:
                raise HarnessError(f"tracking server {uri} unreachable ({getattr(e, 'reason', e)})") from None
        elif uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///") :]).expanduser()
            if must_exist and not db.exists():
                raise HarnessError(f"no run store at {db}; run `harness run-all` first or pass --tracking-uri")
            folder = db.parent
            if not folder.is_dir():
                raise HarnessError(f"tracking store {uri}: folder {folder} does not exist")

    # ------------------------------------------------------------------ queries

    @_guarded
    def find_runs(self, config_hash: str) -> list[RunRecord]:
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{TAG}config_hash` = '{config_hash}'", max_results=1000)
        return [RunRecord(r.info.run_id, r.info.status, dict(r.data.tags), r.info.start_time) for r in runs]

    @_guarded
    def logged_steps(self, run_id: str, key: str) -> list[int]:
        return [m.step for m in self.client.get_metric_history(run_id, key)]

    @_guarded
    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    def search_runs_df(self):
        """All runs of the experiment as a pandas DataFrame (mlflow.search_runs)."""
        return mlflow.search_runs(experiment_ids=[self.experiment_id], max_results=50000)

    def download_artifact(self, run_id: str, path: str, dst: str) -> str | None:
        try:
            return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst, tracking_uri=self.uri)
        except Exception:
            return None

    # ------------------------------------------------------------------ writing

    @_held
    def start_run(self, run_name: str, tags: dict, params: dict, files: dict[str, str] | None = None) -> str:
        """A new RUNNING run with its tags, params and small text artifacts (`files`: name ->
        content), written as one uninterruptible step so no run exists without its config."""
        run = _retry_locked(self.client.create_run)(self.experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
        rid = run.info.run_id
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit for params
            _retry_locked(self.client.log_batch)(rid, params=items[i : i + 100])
        if files:
            with tempfile.TemporaryDirectory() as tmp:
                for name, text in files.items():
                    (Path(tmp) / name).write_text(text)
                _retry_locked(self.client.log_artifacts)(rid, tmp)
        return rid

    @_guarded
    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    @_guarded
    def set_tags(self, run_id: str, tags: dict) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @_held
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int, series: dict[str, list[tuple[int, float]]] | None = None) -> None:
        """Scalar metrics at `step` plus optional (step, value) series, all in as few calls as MLflow allows."""
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        for key, pts in (series or {}).items():
            items.extend(Metric(key, float(v), ts, s) for s, v in pts)
        for i in range(0, len(items), 1000):  # MLflow's batch limit for metrics
            _retry_locked(self.client.log_batch)(run_id, metrics=items[i : i + 1000])

    @_guarded
    def log_artifacts(self, run_id: str, folder: str | Path) -> None:
        self.client.log_artifacts(run_id, str(folder))

    @_guarded
    def log_model(self, run_id: str, model, input_example, pip_requirements: list[str]) -> None:
        # pickle format: loads back as the same nn.Module class (pt2 would need tracing)
        with mlflow.start_run(run_id=run_id):
            mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                     input_example=input_example, pip_requirements=pip_requirements)
        # start_run's context exit marks the run FINISHED: the caller sets the real end status

    @_guarded
    def terminate(self, run_id: str, status: str, reason: str | None = None) -> None:
        if reason:
            self.client.set_tag(run_id, f"{TAG}failure_reason", reason[:5000])
        self.client.set_terminated(run_id, status=status)


def load_model(uri: str, run_id: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.pytorch.load_model(f"runs:/{run_id}/model")


def _artifact_location(uri: str, experiment_name: str) -> str | None:
    """Artifacts of a SQLite store go beside its database (mlflow.db + mlruns/ together),
    not into whatever directory the process happens to run in."""
    if not uri.startswith("sqlite:///"):
        return None  # servers and other stores choose their own
    folder = Path(uri[len("sqlite:///") :]).expanduser().absolute().parent / "mlruns"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment_name)
    return str(folder / safe)


@contextlib.contextmanager
def _init_lock(uri: str):
    """MLflow creates and migrates a new SQLite schema on first use; two processes doing it at
    once collide ("duplicate column"), so initialisation is serialised with an flock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri[len("sqlite:///") :]).expanduser()
    fd = os.open(f"{path}.init-lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _first_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__
