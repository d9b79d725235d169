"""Tracker: the connection to one tracking store and MLflow experiment.

Runs are written through MlflowClient with explicit run ids (no global active run), metrics
go in batches (one call per epoch), and SQLite "database is locked" from a concurrent
process is retried rather than crashing.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..errors import HarnessError, UsageError
from .guards import guarded as _guarded
from .guards import held as _held
from .guards import retry_locked as _retry_locked
from .logged_models import LoggedModels
from .outage import Outage, riding, window_s
from .records import EXPERIMENT_KIND, TAG, RunRecord, ui_link
from .run_context import RunContext
from .store import DEFAULT_EXPERIMENT, artifact_location, check_reachable, describe, init_lock, prepare, redact, resolve_uri

# schema creation/migration notices are MLflow internals, not news for a harness user
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
# MLflow logs every SQLAlchemy error with its traceback before raising it; the harness
# reports each failure itself, in one line with the database's own reason (store.describe)
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
# "Started/Stopping system metrics monitoring" at INFO for every run is noise in a suite
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)


# a call made while a run trains is retried through a store outage (outage.py) for the Tracker's
# window; each attempt `guarded` (Ctrl-C held, SQLite's lock retried), or for a method of several
# calls `held` with each call retried on the lock (repeating it whole is safe: its writes are idempotent)
_riding = riding(_guarded)
BULK = 500  # runs per metric-history query (SQLite allows 32,766 bound values a statement)
_riding_held = riding(_held)


class Tracker(RunContext, LoggedModels):
    """A connection to one tracking store and one MLflow experiment (its data set and system
    metric calls in run_context.py, its logged model's in logged_models.py)."""

    def __init__(self, uri: str | None, experiment_name: str = DEFAULT_EXPERIMENT, create: bool = True,
                 outage_window_s: float | None = None):
        self.uri = resolve_uri(uri)
        # start-up (this constructor) fails fast; the calls a run makes later ride out an outage
        self.outage = Outage(window_s() if outage_window_s is None else outage_window_s)
        self.experiment_name = experiment_name
        shown = redact(self.uri)
        check_reachable(self.uri, must_exist=not create)
        mlflow.set_tracking_uri(self.uri)
        try:
            with init_lock(self.uri):
                prepare(self.uri, writing=create)
                self.client = MlflowClient(self.uri)
                exp = self.client.get_experiment_by_name(experiment_name)
                if exp is None and create:
                    try:
                        self.client.create_experiment(experiment_name, artifact_location=artifact_location(self.uri, experiment_name))
                    except MlflowException:  # created meanwhile by a concurrent process
                        pass
                    exp = self.client.get_experiment_by_name(experiment_name)
                if exp is not None and create and EXPERIMENT_KIND not in exp.tags:
                    # MLflow 3's UI opens an experiment on its GenAI overview unless told it is
                    # model training; a kind the user set is left alone
                    try:
                        self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, "custom_model_development")
                    except MlflowException as e:
                        # runs starting at once into a new experiment on a server race to insert the same
                        # tag (PostgreSQL: "duplicate key value violates unique constraint experiment_tag_pk");
                        # another process's tag is as good as this one's
                        if not any(k in str(e).lower() for k in ("unique constraint", "duplicate key", "uniqueviolation", "integrityerror")):
                            raise
                        exp = self.client.get_experiment(exp.experiment_id)
                        if EXPERIMENT_KIND not in exp.tags:
                            raise
        except HarnessError:
            raise
        except Exception as e:  # connection, driver and schema errors surface as assorted types
            if any(f"error code {code}" in str(e) for code in (401, 403)):
                raise UsageError(f"tracking server {shown}: authentication failed; check MLFLOW_TRACKING_USERNAME and "
                                 "MLFLOW_TRACKING_PASSWORD") from None
            raise HarnessError(f"tracking store {shown} unusable: {describe(e)}") from None
        if exp is None:
            known = [e.name for e in self.client.search_experiments()]
            raise HarnessError(f"no experiment {experiment_name!r} in {shown} (known: {', '.join(known) or 'none'})")
        self.experiment_id = exp.experiment_id

    def impatient(self) -> "Tracker":
        """This connection without riding out outages: for calls that are repeated anyway (a
        heartbeat) and must not stall for the window."""
        other = copy.copy(self)
        other.outage = Outage(0, parent=self.outage)  # its failures still fence this connection's next write
        return other

    # ------------------------------------------------------------------ queries

    @_riding
    def find_runs(self, config_hash: str) -> list[RunRecord]:
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{TAG}config_hash` = '{config_hash}'", max_results=1000)
        return [RunRecord(r.info.run_id, r.info.status, dict(r.data.tags), r.info.start_time, r.info.end_time) for r in runs]

    @_riding
    def finished_runs_tagged(self, tags: dict) -> list[tuple[dict, dict]]:
        """(tags, params) of the finished runs that carry every one of `tags`."""
        where = " and ".join([f"tags.`{k}` = '{v}'" for k, v in tags.items()] + ["attributes.status = 'FINISHED'"])
        return [(dict(r.data.tags), dict(r.data.params)) for r in self.client.search_runs([self.experiment_id], filter_string=where, max_results=1000)]

    @_riding
    def run_status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    @_riding
    def logged_steps(self, run_id: str, key: str) -> list[int]:
        return [m.step for m in self.client.get_metric_history(run_id, key)]

    @_riding
    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))

    @_riding
    def metric_histories(self, run_ids: list[str], key: str) -> dict[str, list[tuple[int, float]]]:
        """metric_history of each of `run_ids` (a report reads thousands): on a database store
        (SQLite, PostgreSQL) one query per BULK runs, through a server one call per run."""
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = self.client._tracking_client.store
        if not isinstance(store, SqlAlchemyStore):
            return {rid: sorted((m.step, m.value) for m in self.client.get_metric_history(rid, key)) for rid in run_ids}
        out: dict[str, list[tuple[int, float]]] = {rid: [] for rid in run_ids}
        ids = list(out)
        for i in range(0, len(ids), BULK):
            for m in store.get_metric_history_bulk(ids[i : i + BULK], key, max_results=2**62):
                out[m.run_id].append((m.step, m.value))
        return {rid: sorted(h) for rid, h in out.items()}

    def ui_url(self, base: str = "http://127.0.0.1:5000") -> str:
        """Where the runs are in the MLflow UI (`mlflow ui` for a local store, the server itself otherwise)."""
        if self.uri.startswith(("http://", "https://")):
            base = redact(self.uri)
        return ui_link(base, self.experiment_id)

    def search_runs_df(self, harness_only: bool = True):
        """Every (harness) run of the experiment as a pandas DataFrame, uncapped (report_runs.py)."""
        from .report_runs import search_runs_df

        return search_runs_df(self, harness_only)

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
        rid = self.create_run(run_name, tags).run_id
        self.record(rid, {}, params, files)
        return rid

    @_held
    def create_run(self, run_name: str, tags: dict) -> RunRecord:
        """A new RUNNING run carrying only `tags` (a claim; its record follows with `record`)."""
        run = _retry_locked(self.client.create_run)(self.experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()})
        return RunRecord(run.info.run_id, run.info.status, dict(run.data.tags), run.info.start_time)

    @_riding_held
    def record(self, run_id: str, tags: dict, params: dict, files: dict[str, str] | None = None) -> None:
        """Tags, params and small text artifacts of a claimed run; repeating it (a kill half-way,
        then a resume) logs the same values again, which MLflow accepts."""
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit for params
            _retry_locked(self.client.log_batch)(run_id, params=items[i : i + 100])
        if files:
            with tempfile.TemporaryDirectory() as tmp:
                for name, text in files.items():
                    (Path(tmp) / name).write_text(text)
                _retry_locked(self.client.log_artifacts)(run_id, tmp)
        if tags:  # last, so a tag can mark the record complete
            _retry_locked(self.client.log_batch)(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @_riding
    def run_tags(self, run_id: str) -> dict:
        return dict(self.client.get_run(run_id).data.tags)

    @_riding
    def run_record(self, run_id: str) -> RunRecord:
        """The run's status and tags, and whether it was deleted (MLflow still answers for a deleted run)."""
        r = self.client.get_run(run_id)
        return RunRecord(run_id, r.info.status, dict(r.data.tags), r.info.start_time, r.info.end_time, r.info.lifecycle_stage == "deleted")

    @_riding
    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    @_riding
    def upload_file(self, run_id: str, path: str | Path, artifact_dir: str) -> None:
        self.client.log_artifact(run_id, str(path), artifact_dir)

    def fetch_file(self, run_id: str, path: str, dst: str) -> str:
        """Download one artifact; raises if it is not there (retried through an outage)."""
        return self.outage.call(mlflow.artifacts.download_artifacts,run_id=run_id, artifact_path=path, dst_path=dst, tracking_uri=self.uri)

    def delete_artifacts(self, run_id: str, path: str) -> bool:
        """Remove the run's artifacts under `path` where the artifact store allows it."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            repo = get_artifact_repository(self.client.get_run(run_id).info.artifact_uri, tracking_uri=self.uri)
            repo.delete_artifacts(path)
            return True
        except Exception:  # a store without deletion keeps them: space, not correctness
            return False

    @_riding
    def delete_tag(self, run_id: str, key: str) -> None:
        if key in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, key)

    @_riding
    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    @_riding
    def set_tags(self, run_id: str, tags: dict) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    @_riding_held
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int, series: dict[str, list[tuple[int, float]]] | None = None) -> None:
        """Scalar metrics at `step` plus optional (step, value) series, all in as few calls as MLflow allows."""
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        for key, pts in (series or {}).items():
            items.extend(Metric(key, float(v), ts, s) for s, v in pts)
        for i in range(0, len(items), 1000):  # MLflow's batch limit for metrics
            _retry_locked(self.client.log_batch)(run_id, metrics=items[i : i + 1000])

    @_riding
    def log_artifacts(self, run_id: str, folder: str | Path) -> None:
        self.client.log_artifacts(run_id, str(folder))

    @_riding_held
    def terminate(self, run_id: str, status: str, reason: str | None = None, tags: dict | None = None) -> None:
        """End the run with `status` and `tags`; FAILED and KILLED say why, FINISHED clears an
        earlier reason. Only runs/lifecycle.py calls this."""
        tags = dict(tags or {})
        if reason:
            tags[f"{TAG}failure_reason"] = reason[:5000]
        if tags:
            _retry_locked(self.client.log_batch)(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        if not reason and status == "FINISHED" and f"{TAG}failure_reason" in _retry_locked(self.client.get_run)(run_id).data.tags:
            _retry_locked(self.client.delete_tag)(run_id, f"{TAG}failure_reason")
        _retry_locked(self.client.set_terminated)(run_id, status=status)
