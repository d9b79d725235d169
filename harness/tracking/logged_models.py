"""A run's logged model: written once however often a finish is repeated (an incomplete one,
left by a process killed while logging, removed first), and loaded back. A part of Tracker."""

from __future__ import annotations

import logging

import mlflow

from .guards import held
from .guards import retry_locked as _retry_locked
from .outage import riding

# the pickle format is chosen deliberately (see log_model); its warning on every run is noise
logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)

_riding_held = riding(held)


def pytorch_flavor():
    """mlflow.pytorch, imported with the root logger kept as it was: its import runs
    `logging.basicConfig(level=ERROR)` (mlflow/pytorch/_lightning_autolog.py), which in a command
    with no logging set up silenced every warning after a run's first logged model (a later run's
    "tracking store unreachable" included)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    import mlflow.pytorch

    root.setLevel(level)
    root.handlers[:] = handlers
    return mlflow.pytorch


class LoggedModels:
    """Tracker's logged-model calls (self.client, self.experiment_id: Tracker's)."""

    @_riding_held
    def has_model(self, run_id: str, name: str = "model") -> bool:
        """Whether the run has a complete (READY) logged model `name`. Incomplete ones, left by
        a process killed while logging, are deleted so that the next attempt leaves one model."""
        return self._complete_model(run_id, name)

    def _complete_model(self, run_id: str, name: str = "model") -> bool:
        found = _retry_locked(self.client.search_logged_models)(
            experiment_ids=[self.experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
        ready = False
        for m in found:
            if str(m.status).endswith("READY"):
                ready = True
            else:
                _retry_locked(self.client.delete_logged_model)(m.model_id)
        return ready

    @_riding_held
    def log_model(self, run_id: str, model, input_example, pip_requirements: list[str], code_paths: list[str] | None = None) -> None:
        """Log the model unless a complete one exists; an attempt cut short by an outage leaves an
        incomplete one, which the next attempt removes (has_model), so repeating it is safe."""
        if self._complete_model(run_id):
            return
        # pickle format: loads back as the same nn.Module class (pt2 would need tracing);
        # code_paths: a user's network module, copied into the model and put on sys.path at load
        # run_id, not `with mlflow.start_run(run_id)`: that context writes the run's status (RUNNING
        # on entry, FINISHED on exit) behind the lifecycle's owner check; runs/lifecycle.py is the
        # one writer of a run's status. The logged model goes to the run's experiment.
        mlflow.set_experiment(experiment_id=self.experiment_id)
        pytorch_flavor().log_model(model, name="model", serialization_format="pickle", code_paths=code_paths,
                                   input_example=input_example, pip_requirements=pip_requirements, run_id=run_id)


def load_model(uri: str, run_id: str):
    mlflow.set_tracking_uri(uri)
    return pytorch_flavor().load_model(f"runs:/{run_id}/model")
