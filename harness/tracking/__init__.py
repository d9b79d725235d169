"""Every MLflow call of the harness lives in this package.

- faults.py: named crash points of a run's life, a no-op unless a test sets $HARNESS_FAULT.
- guards.py: Ctrl-C held over store writes, "database is locked" retried call by call.
- outage.py: a store briefly unreachable during a run, ridden out for a window; its faults told apart.
- outbox.py: Outbox, store writes off the training thread, in order.
- store.py: which store a URI names, whether it is reachable, usable and writable, and
  creating a new SQLite store all-or-nothing; one-line reasons for store errors.
- report_runs.py: what `harness report` reads (every harness run, uncapped; the deleted ones apart) and writes (the report as a run's artifact).
- records.py: the plain records (the tag prefix, RunRecord as read back, links into the MLflow UI).
- tracker.py: Tracker, the connection to one store and experiment (runs, tags, params, metrics,
  artifacts, status writes); two of its parts in files of their own:
- run_context.py: a run's data set inputs and system metrics (Tracker's).
- logged_models.py: a run's logged model, written once and loaded back (Tracker's).
"""

import os

# set before MLflow is imported anywhere in the process
# start-up fails fast on an unreachable server instead of MLflow's minutes of back-off; a run
# in progress rides out an outage by retrying each call itself for a window (outage.py)
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow 3's usage telemetry runs a background thread that, offline, cost 15% of training
# throughput on 2 cores (measured by `harness bench`); a user may still set it to false
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# against a server MLflow prints "View run/experiment" links as each run ends (one more request
# each); harness prints its own, pointing at the UI's training view
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

from .store import DEFAULT_EXPERIMENT, DEFAULT_URI, redact, resolve_uri  # noqa: E402
from .logged_models import load_model  # noqa: E402
from .records import TAG, RunRecord, ui_link  # noqa: E402
from .tracker import Tracker  # noqa: E402

__all__ = ["DEFAULT_EXPERIMENT", "DEFAULT_URI", "TAG", "RunRecord", "Tracker", "load_model", "redact", "resolve_uri", "ui_link"]
