"""What a run records beside its metrics: its data sets (MLflow dataset inputs, the runs
table's Dataset column) and the machine's system metrics while it trains. A part of Tracker."""

from __future__ import annotations

import contextlib
import json
import time

from mlflow.entities import Dataset, DatasetInput, InputTag

from .guards import guarded
from .outage import riding

_riding = riding(guarded)


class RunContext:
    """Tracker's data set and system metric calls (self.client, self.uri: Tracker's)."""

    @_riding
    def log_datasets(self, run_id: str, datasets: list[dict]) -> None:
        """MLflow dataset inputs (the runs table's Dataset column): each dict has name, digest,
        source (a folder or URL), profile (a dict) and context (training, validation, test)."""
        inputs = []
        for d in datasets:
            source_type = "http" if str(d["source"]).startswith(("http://", "https://")) else "local"
            entity = Dataset(name=d["name"], digest=d["digest"], source_type=source_type,
                             source=json.dumps({"url" if source_type == "http" else "uri": str(d["source"])}),
                             profile=json.dumps(d["profile"]))
            inputs.append(DatasetInput(entity, tags=[InputTag("mlflow.data.context", d["context"])]))
        # runs starting at once into a new experiment race to register the same data set
        # (MLflow's store: "UNIQUE constraint failed: datasets..."); once one has, the others
        # find it and only link their inputs, so a retry succeeds
        for attempt in range(6):
            try:
                self.client.log_inputs(run_id, datasets=inputs)
                return
            except Exception as e:
                text = str(e).lower()
                if attempt == 5 or not any(k in text for k in ("unique constraint", "duplicate key", "uniqueviolation", "integrityerror")):
                    raise
                time.sleep(0.2 * (attempt + 1))

    @contextlib.contextmanager
    def system_metrics(self, run_id: str, enabled: bool, interval_s: float, resume: bool):
        """MLflow's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) sampled by a
        background thread every `interval_s` seconds for the duration of the block."""
        monitor = None
        if enabled:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=resume, tracking_uri=self.uri)
                monitor.start()
            except Exception:  # psutil missing or a platform it cannot read: training goes on without
                monitor = None
        try:
            yield
        finally:
            if monitor is not None:
                monitor.finish()
