"""Shared fixtures: a tiny synthetic CIFAR-10 in the official format (tests never need
../shared), the real subset when present, and an isolated MLflow store per test."""

from __future__ import annotations

import os
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


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A fresh sqlite store and state dir; the cwd is the repo so experiments/ is found."""
    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    return f"sqlite:///{tmp_path}/mlflow.db"


def pytest_configure(config):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


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
