"""The plain records of the tracking layer: the harness's tag prefix, a run as read back from
the store (RunRecord) and links into the MLflow UI's training view."""

from __future__ import annotations

from dataclasses import dataclass

TAG = "harness."
EXPERIMENT_KIND = "mlflow.experimentKind"
# MLflow 3.17's UI ignores the experiment kind: it opens in the browser's last "GenAI" / "Model
# training" mode, GenAI by default; this query parameter selects (and remembers) training
UI_TRAINING_VIEW = "workflowType=machine_learning"


def ui_link(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """A page of the MLflow UI at `base`, in its Model training view."""
    page = f"/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{base.rstrip('/')}{page}?{UI_TRAINING_VIEW}"


@dataclass
class RunRecord:
    run_id: str
    status: str
    tags: dict
    start_time: int
    end_time: int | None = None
    deleted: bool = False  # deleted in the store (by a user, mid-run)
