"""Shared fixtures: a tiny synthetic CIFAR-10 in the official format (tests never need
../shared), the real subset when present, and an isolated MLflow store per test."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from harness.data.loader import write_cifar10
from harness.training.environment import start_flushing_pool

# PyTorch's pool threads in this process flush subnormals, as those of a harness command do: a run
# trained here (CliRunner) computes as one trained by a command (training/environment.py). Before
# any test's tensor work; nothing here forks (the crash matrix's fork server is its own process).
start_flushing_pool()

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


def pytest_sessionfinish(session):
    """This process's fork server for `harness` commands (tests/forkserver.py), if a test started it."""
    import sys

    if "tests.forkserver" in sys.modules:
        sys.modules["tests.forkserver"].close()


# --- pytest-xdist (pyproject: -n auto --dist loadgroup) ------------------------------------------
# Most of the suite waits, not computes: `harness` subprocesses importing torch and MLflow, fresh
# SQLite stores migrating their schema, servers answering. Two workers on 2 cores overlap that.
# Tests that build something costly once (a tracking server, a trained store, a Ray cluster) are
# kept on one worker, which builds it once: xdist_group, given here by the fixtures a test uses.

def pytest_xdist_auto_num_workers(config):
    """-n auto: a worker per core for the suite or several files, and one more where the slow tests
    run (the comment at LONGEST_FIRST says why); none (in-process, no start-up cost) when the command names one file or
    tests of one file. PYTEST_XDIST_AUTO_NUM_WORKERS (xdist's own variable) still decides where set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    files = {a.split("::")[0] for a in config.args if a.split("::")[0].endswith(".py")}
    if config.args and len(files) == 1 and all(a.split("::")[0].endswith(".py") for a in config.args):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    slow_left_out = "not slow" in (config.option.markexpr or "").replace("  ", " ")
    return cores if slow_left_out else cores + 1


# fixtures whose tests share one worker (the group's name), the first that a test uses deciding:
# the Ray cluster's tests (module-scoped cluster, ~10 minutes of the suite) are a group of their
# own, with a tracking server of their own on their worker, so that they and the other server
# tests (outages, tracking server: ~5 minutes) run beside each other, not one after the other.
# A test using another module-scoped fixture runs on the worker of its module's other tests
# (that fixture is then built once).
SHARED = {"cluster": "ray-cluster", "cached_server": "ray-cluster", "server": "tracking-server", "admin": "tracking-server"}
# the longest groups, given to the workers first (xdist otherwise hands out groups by their number
# of tests, and a long group handed out late is the suite's tail)
LONGEST_FIRST = ("ray-cluster", "tracking-server")
# Those two groups mostly wait (on a Ray node's death, a PostgreSQL restart, a
# server's answers): measured on 2 cores, their workers used 0.4 and 0.6 of a core for their first
# five minutes. With one worker a core, a core was idle for that long; the suite (slow tests
# included) therefore gets one worker more than the cores, which fills it.


# The quick tier's budget is 2 minutes on 2 cores: these tests of several seconds each (a `harness`
# subprocess, a training or a store built for them: 4-25 s apiece on a busy 2-core machine) run in
# the full suite only. Each module keeps quick tests of the same kind: test_bad_inputs a spec, a
# data file, a pickle and a usage error refused in one line; test_bench one fast-loop recipe; etc.
# An entry is a test's name, with its parameters for one case or without for all.
FULL_SUITE_ONLY = {
    "test_bad_inputs.py": ["test_report_out_under_a_file_is_one_line", "test_report_out_in_a_read_only_folder_is_one_line",
                           "test_report_out_under_proc_is_one_line", "test_report_out_that_is_a_folder_is_a_usage_error",
                           "test_read_only_store_says_so_in_one_line", "test_crafted_batch_is_one_line",
                           "test_unreadable_data_is_one_line[test_batch]", "test_usage_errors_exit_2[args1-words1]",
                           "test_usage_errors_exit_2[args2-words2]", "test_postgresql_without_its_driver_names_the_install_command",
                           "test_store_that_is_not_a_database_is_one_line", "test_device_cuda_without_cuda_exits_2",
                           "test_spec_that_is_not_utf8_is_one_line", "test_unreadable_data_is_one_line[folder]"],
    "test_bench.py": ["test_runs_record_the_threads_they_trained_on", "test_fast_loop_trains_exactly_like_a_plain_loop[fastai-convbnnet-600]"],
    "test_fidelity.py": ["test_adam_step_clamp_keeps_every_step_counter_within_1000_to_1024"],
    "test_reliability.py": ["test_a_store_killed_while_it_is_created_is_absent_or_complete[9-0.3]"],
    "test_schedule.py": ["test_order_is_by_work_and_records_do_not_depend_on_it"],
    "test_identity.py": ["test_an_old_run_is_matched_by_what_it_trained_not_by_the_flags_given"],
    "test_together.py": ["test_each_seed_matches_its_sequential_run[medium-three-conv]", "test_each_seed_matches_its_sequential_run[skl-cnn]"],
    "test_user_recipes.py": ["test_an_id_of_the_catalogue_is_refused_for_a_users_recipe"],
    "test_report_review.py": ["test_by_default_the_data_set_with_most_recipes_is_compared"],
    "test_run_life.py": ["test_an_outage_within_the_window_is_ridden_out_and_every_epoch_lands_once"],
    "test_mlflow_native.py": ["test_datasets_are_logged_as_run_inputs"],
    "test_crash_matrix.py": ["test_crash_point[claimer-claim]", "test_crash_point[term-finish]"],
    "test_seeds_by_looking.py": ["test_a_command_stopped_short_of_its_planned_seeds_counts_as_chosen_by_looking",
                                 "test_the_same_plan_run_again_is_one_command_and_another_plan_is_looking",
                                 "test_a_store_older_than_the_tag_reads_as_before_and_new_seeds_beside_it_count_as_a_second_command",
                                 "test_a_plan_whose_runs_were_deleted_still_counts"],
    "test_repeats_auto.py": ["test_a_store_of_fixed_seed_counts_keeps_its_fixed_n_verdicts"],
    "test_report_setups.py": ["test_a_tie_between_two_versions_of_a_users_recipe_labels_neither_bare"],
    "test_report_mixtures.py": ["test_data_chooses_the_data_set_compared"],
}


def full_suite_only(config, items) -> None:
    """Mark FULL_SUITE_ONLY's tests slow; a name there that is no test of its module (renamed?) is an error."""
    by_file = {}
    for item in items:
        by_file.setdefault(item.path.name, []).append(item)
    for file, names in FULL_SUITE_ONLY.items():
        for name in names:
            hit = [i for i in by_file.get(file, []) if name in (i.name, getattr(i, "originalname", None))]
            for item in hit:
                item.add_marker(pytest.mark.slow)
            if not hit and file in by_file and not any("::" in a for a in config.args):
                raise pytest.UsageError(f"tests/conftest.py FULL_SUITE_ONLY names {name}, which is no test of tests/{file}")


@pytest.hookimpl(tryfirst=True)  # before xdist's, which names each test's group from the mark, and -m's selection
def pytest_collection_modifyitems(config, items):
    full_suite_only(config, items)
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        names = set(getattr(item, "fixturenames", ()))
        if "server" in names or "cached_server" in names:  # starting PostgreSQL and the server alone takes longer than the quick tier's share
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


# As the README's cluster section advises (`auth_cache_ttl_seconds = 60`): with MLflow's default (0)
# every request re-hashes the password (scrypt, ~90 ms of CPU here) and the one-worker server spends
# its time hashing rather than serving. A wrong password is never cached: it is refused as with the
# default (test_tracking_server, test_ray_cluster check it).
AUTH_CACHE_TTL_S = 60


@pytest.fixture(scope="session")
def server():
    """One PostgreSQL + basic-auth MLflow server for the session (tests/servers.py), with the
    README's auth cache. The one test that needs MLflow's default (no cache: a PostgreSQL restart
    then answers 401s, a path runs ride out) asks for `default_auth_server` too."""
    from tests.servers import tracking_server

    with tracking_server(auth_cache_ttl_s=AUTH_CACHE_TTL_S) as s:
        yield s


@pytest.fixture
def default_auth_server(server):
    """A server with MLflow's default auth_cache_ttl_seconds = 0 beside the session's, for one
    test: the same PostgreSQL, artifact store and runs, on a port of its own. The test's run writes
    to it; the test's own looks (`admin`) go to the session's server, where they cost no password
    hash each (with no cache, each of a poll's requests re-hashed it: ~90 ms of the one-worker
    server's CPU, 5 polls a second). One server start instead of the session server's two restarts."""
    with server["beside"](0) as s:
        yield s


@pytest.fixture(scope="session")
def admin(server):
    with admin_client(server) as client:
        yield client


@pytest.fixture(scope="session")
def cached_server():
    """A second server set up as `server` (the README's auth cache), for the Ray cluster tests
    (their module's `server`) on a worker of their own, beside the other server tests. Without
    the cache the one-worker server spent 285 of the Ray capped suite's 353 CPU-seconds hashing
    the password (the Ray workers 27), and the runs waited on it."""
    from tests.servers import tracking_server

    with tracking_server(auth_cache_ttl_s=AUTH_CACHE_TTL_S) as s:
        yield s


@pytest.fixture(scope="session")
def cached_admin(cached_server):
    with admin_client(cached_server) as client:
        yield client


@contextlib.contextmanager
def admin_client(server):
    """An MlflowClient of the server's admin, with MLflow's credential variables set for this
    process while it is held (put back as they were after)."""
    from mlflow.tracking import MlflowClient

    from tests.servers import ADMIN, PASSWORD

    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    before = {n: os.environ.get(n) for n in names}
    os.environ.update(zip(names, (ADMIN, PASSWORD)))
    try:
        yield MlflowClient(server["url"])
    finally:
        for n, v in before.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


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
