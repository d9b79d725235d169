"""What `harness report` reads from and writes to the store: every harness run of an experiment,
however many runs it holds, and the report itself as a run's artifact."""

from __future__ import annotations

from pathlib import Path

import mlflow

from .tracker import TAG


def search_runs_df(tracker, harness_only: bool = True):
    """Every run of the experiment as a pandas DataFrame (mlflow.search_runs, paged until the last
    page: no cap, so a big shared experiment loses no run); `harness_only`: only the runs the
    harness made (tagged with an experiment id), filtered by the store itself, so the other runs of
    a shared experiment are neither read nor counted."""
    where = f"tags.`{TAG}experiment_id` LIKE '%'" if harness_only else ""
    return mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string=where, max_results=None)


def deleted_runs_df(tracker):
    """The harness runs of the experiment deleted (MLflow UI, `mlflow runs delete`) but not yet
    garbage-collected, as search_runs_df: the report never counts them, but reads which plans
    trained them (a plan whose runs were deleted was still run, and read)."""
    from mlflow.entities import ViewType

    return mlflow.search_runs(experiment_ids=[tracker.experiment_id], filter_string=f"tags.`{TAG}experiment_id` LIKE '%'",
                              run_view_type=ViewType.DELETED_ONLY, max_results=None)


def log_report(tracker, html: str | Path, name: str = "harness report", tags: dict | None = None) -> str:
    """A run of its own in the experiment with the report's HTML as its artifact, so a team on a
    shared server opens it from the MLflow UI; returns its run id. It carries no harness
    experiment id, so no report counts it as a training."""
    client = tracker.client
    run = client.create_run(tracker.experiment_id, run_name=name, tags={f"{TAG}report": "true", **{k: str(v) for k, v in (tags or {}).items()}})
    try:
        client.log_artifact(run.info.run_id, str(html))
        client.set_terminated(run.info.run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    return run.info.run_id
