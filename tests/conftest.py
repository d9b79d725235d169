"""Shared fixtures: a tiny synthetic CIFAR-10 in the official format (tests never need
../shared), the real subset when present, and an isolated MLflow store per test."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from harness.data.loader import write_cifar10

# one process per command unless a test asks for more: many tests patch the training code in
# this process (CliRunner), which worker processes would not see; test_shared_store checks the default
os.environ.setdefault("HARNESS_JOBS", "1")

REAL_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_synthetic(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0, filenames: bool = True) -> Path:
    """Images whose colour depends on the class (plus noise), so a network can learn them."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 226, size=(10, 3))

    def images(n):
        y = np.arange(n) % 10
        rng.shuffle(y)
        x = palette[y][:, :, None, None] + rng.normal(0, 25, size=(n, 3, 32, 32))
        return np.clip(x, 0, 255).astype(np.uint8), y

    (tx, ty), (vx, vy) = images(n_train), images(n_test)
    write_cifar10(root, tx, ty, vx, vy, CLASSES, filenames=filenames)
    return root


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def real_root() -> Path:
    if not (REAL_SUBSET / "cifar-10-batches-py" / "batches.meta").exists():
        pytest.skip("real CIFAR-10 subset (../shared/data/cifar10-subset) not present")
    return REAL_SUBSET


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty SQLite store, its schema built once per session as harness builds one (MLflow
    creates and migrates it on first use: over a second each time)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    client.search_experiments(max_results=1)
    client._tracking_client.store.engine.dispose()
    return db


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store) -> str:
    """A fresh sqlite store (a copy of empty_store: the same file harness would create, without
    the migration's cost) and state dir; the cwd is the repo so experiments/ is found. The tests
    of creating a store (test_reliability, test_bad_inputs) make their own."""
    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def pytest_configure(config):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# --- pytest-xdist (pyproject: -n auto --dist loadgroup) ------------------------------------------
# Most of the suite waits, not computes: `harness` subprocesses importing torch and MLflow, fresh
# SQLite stores migrating their schema, servers answering. Two workers on 2 cores overlap that.
# Tests that build something costly once (a tracking server, a trained store, a Ray cluster) are
# kept on one worker, which builds it once: xdist_group, given here by the fixtures a test uses.

def pytest_xdist_auto_num_workers(config):
    """-n auto: a worker per core for the suite or several files; none (in-process, no start-up
    cost) when the command names one file or tests of one file. PYTEST_XDIST_AUTO_NUM_WORKERS
    (xdist's own variable) still decides where set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    files = {a.split("::")[0] for a in config.args if a.split("::")[0].endswith(".py")}
    if config.args and len(files) == 1 and all(a.split("::")[0].endswith(".py") for a in config.args):
        return 0
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# fixtures whose tests share one worker (the group's name), the first that a test uses deciding:
# the Ray cluster's tests (module-scoped cluster, ~10 minutes of the suite) are a group of their
# own, with a tracking server of their own on their worker, so that they and the other server
# tests (outages, tracking server: ~5 minutes) run beside each other, not one after the other.
# A test using another module-scoped fixture runs on the worker of its module's other tests
# (that fixture is then built once).
SHARED = {"cluster": "ray-cluster", "server": "tracking-server", "admin": "tracking-server"}
# the longest groups, given to the workers first (xdist otherwise hands out groups by their number
# of tests, and a long group handed out late is the suite's tail)
LONGEST_FIRST = ("ray-cluster", "tracking-server")


@pytest.hookimpl(tryfirst=True)  # before xdist's, which names each test's group from the mark, and -m's selection
def pytest_collection_modifyitems(config, items):
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        names = set(getattr(item, "fixturenames", ()))
        if "server" in names:  # starting PostgreSQL and the server alone takes longer than the quick tier's share
            item.add_marker(pytest.mark.slow)
        group = next((g for n, g in SHARED.items() if n in names), None)
        if group is None and info is not None:
            scoped = [d[-1] for n, d in info.name2fixturedefs.items() if n in names and d and d[-1].scope in ("module", "class", "package")]
            if scoped:
                group = item.module.__name__ if item.module else item.nodeid.split("::")[0]
        if group and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup, with the groups of LONGEST_FIRST handed out before any other work."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class LongestFirst(LoadGroupScheduling):
        def _assign_work_unit(self, node):
            for name in reversed(LONGEST_FIRST):
                if name in self.workqueue:
                    self.workqueue.move_to_end(name, last=False)
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


@pytest.fixture(autouse=True, scope="session")
def sigint_as_in_a_terminal():
    """Ctrl-C as a terminal delivers it, however pytest was started.

    A background job of a non-interactive shell (`nohup python -m pytest &` in a script, some CI
    runners) starts with SIGINT ignored, and Python then installs no KeyboardInterrupt handler:
    the tests that send Ctrl-C to themselves, or to a child started from here (which inherits
    the ignored disposition through fork and exec, new session or not), would wait for an
    interrupt that never comes. For the session the default handler is back, so an os.kill(...,
    SIGINT) raises KeyboardInterrupt here and every child starts with SIGINT's default action;
    the disposition pytest was started with is restored at the end.
    test_started_in_background runs such tests from a process with SIGINT ignored."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(scope="session")
def server():
    """One PostgreSQL + basic-auth MLflow server for the session (tests/servers.py)."""
    from tests.servers import tracking_server

    with tracking_server() as s:
        yield s


@pytest.fixture(scope="session")
def admin(server):
    from mlflow.tracking import MlflowClient

    from tests.servers import ADMIN, PASSWORD

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = ADMIN, PASSWORD
    try:
        yield MlflowClient(server["url"])
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)


@pytest.fixture
def ctrl_c_during_final_writes(monkeypatch):
    """A Ctrl-C that lands while a finished run writes its artifacts (finish.write_artifacts)."""
    import signal

    import harness.runs.finish as finish

    real = finish.write_artifacts

    def ctrl_c_while_writing(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(finish, "write_artifacts", ctrl_c_while_writing)
