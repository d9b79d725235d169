"""Ordinary faults of a shared tracking server, for real (tests/servers.py: PostgreSQL + basic-auth
`mlflow server` on loopback): the server killed and restarted mid-run, its PostgreSQL restarted,
and four runs starting at once into a new experiment. A run in progress rides each out: it ends
FINISHED in its one MLflow run with every epoch logged once."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time

import pytest

from tests import forkserver
from tests.servers import REPO, server_env

ARGS = ["--epochs", "4", "--max-train-images", "160", "--no-progress", "--no-system-metrics"]


def start_run(server, experiment: str, synthetic_root, recipe: str = "medium-vgg-bn", args=ARGS, window_s: int = 300) -> forkserver.Child:
    """`harness run` as a process of its own (forked from tests/forkserver.py: no imports to pay)."""
    env = dict(server_env(server), HARNESS_OUTAGE_WINDOW_S=str(window_s))
    return forkserver.popen(["run", recipe, "--experiment-name", experiment, "--data-dir", synthetic_root, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_epoch(admin, experiment: str, p: forkserver.Child, epoch: int = 0):
    deadline = time.time() + 300
    while time.time() < deadline:
        exp = admin.get_experiment_by_name(experiment)
        found = admin.search_runs([exp.experiment_id]) if exp else []
        if found and any(m.step >= epoch for m in admin.get_metric_history(found[0].info.run_id, "epoch_time_s")):
            return found[0]
        assert p.poll() is None, p.stdout.read()
        time.sleep(0.2)
    raise AssertionError(f"no epoch {epoch + 1} logged within 300 s")


def assert_finished_once(admin, run, epochs: int = 4):
    [done] = admin.search_runs([run.info.experiment_id])
    assert done.info.run_id == run.info.run_id and done.info.status == "FINISHED"
    assert sorted(m.step for m in admin.get_metric_history(done.info.run_id, "epoch_time_s")) == list(range(epochs))
    assert "test_acc" in done.data.metrics
    assert "harness-state" not in {a.path for a in admin.list_artifacts(done.info.run_id)}


def test_a_run_rides_out_the_server_killed_and_restarted(server, admin, synthetic_root):
    p = start_run(server, "outage-server", synthetic_root)
    run = wait_for_epoch(admin, "outage-server", p)
    server["kill_server"]()
    try:
        # down longer than MLflow's own retries of a refused connection ride out (2 retries, backoff 2 s
        # and 4 s plus up to 1 s of jitter each): the run's next writes fail to harness's outage handling
        time.sleep(10)
    finally:
        server["start_server"]()  # back after 10 s plus its start-up (seconds)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    back = re.search(r"reachable again after (\d+) s", out)
    assert "tracking store unreachable" in out and back, out
    print(f"server restart ridden out: the store was unreachable for {back.group(1)} s")
    assert_finished_once(admin, run)


def test_a_run_rides_out_postgresql_restarted(default_auth_server, admin, synthetic_root):
    """On MLflow's default auth (no cache): the auth check's own database is down, and answers 401s."""
    server = default_auth_server
    p = start_run(server, "outage-postgres", synthetic_root)
    run = wait_for_epoch(admin, "outage-postgres", p)
    server["stop_postgres"]()
    try:
        # down 5 s, and on until one of the run's writes has failed (the run says so): a write need not
        # fall in 5 s (an epoch can take longer, the heartbeat beats every 10 s)
        time.sleep(5)
        said = read_until(p, "tracking store unreachable", 120)
    finally:
        server["start_postgres"]()
    out = said + p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    back = re.search(r"reachable again after (\d+) s", out)
    assert "tracking store unreachable" in out and back, out
    print(f"PostgreSQL restart ridden out: {back.group(0)}")
    assert_finished_once(admin, run)


def read_until(p, words: str, seconds: float) -> str:
    """What the process printed until it printed `words` (or `seconds` passed, or it closed its output)."""
    fd, seen, deadline = p.stdout.fileno(), b"", time.time() + seconds
    while words.encode() not in seen and time.time() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
    return seen.decode()


def test_four_runs_starting_at_once_into_a_new_experiment_all_finish(server, admin, synthetic_root):
    """They all register the same test set in a new experiment at the same moment."""
    cap = ["--epochs", "1", "--max-train-images", "128", "--no-progress", "--no-system-metrics"]
    procs = [start_run(server, "four-at-once", synthetic_root, recipe, cap)
             for recipe in ("fastai-simplenet", "tutorial-base", "fastai-convnet", "tutorial-c16")]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outs)
    exp = admin.get_experiment_by_name("four-at-once")
    found = admin.search_runs([exp.experiment_id])
    assert len(found) == 4 and all(r.info.status == "FINISHED" for r in found)
    for r in found:
        assert {d.dataset.name for d in r.inputs.dataset_inputs} == {"cifar10-subset-train", "cifar10-subset-test"}


class Answered(Exception):
    """An error the server answered with, as MLflow's own carry their HTTP status."""

    def __init__(self, code: int, text: str = ""):
        super().__init__(text or f"HTTP {code}")
        self.code = code

    def get_http_status_code(self):
        return self.code


def test_what_is_ridden_out_and_for_how_long_without_a_server():
    """What the runs above rely on, on a fake clock: an unreachable store, a 5xx and a 401 (the
    auth server's database restarting) are retried, backing off to 15 s between tries; another
    4xx is the call's own fault, raised at once; past the window it is one StoreUnavailable line."""
    from harness.tracking.outage import Outage, StoreUnavailable, transient

    assert transient(ConnectionError("connection refused")) and transient(Answered(503)) and transient(Answered(401))
    assert not transient(Answered(403, "PERMISSION_DENIED")) and not transient(ValueError("bad parameter"))
    now, waits = [0.0], []

    def sleep(s):
        waits.append(s)
        now[0] += s

    def failing(n, error):
        left = [n]

        def call():
            if left[0]:
                left[0] -= 1
                raise error
            return "written"
        return call

    outage = Outage(300, clock=lambda: now[0], sleep=sleep)
    assert outage.call(failing(6, ConnectionError("connection refused"))) == "written"
    assert waits == [1, 2, 4, 8, 15, 15] and outage.longest == 45 and outage.since is None
    waits.clear()
    with pytest.raises(Answered):
        outage.call(failing(1, Answered(403, "PERMISSION_DENIED")))
    assert waits == []
    short = Outage(20, clock=lambda: now[0], sleep=sleep)
    with pytest.raises(StoreUnavailable) as e:
        short.call(failing(99, Answered(503, "service unavailable")))
    assert waits == [1, 2, 4, 8, 5] and "\n" not in str(e.value) and "HARNESS_OUTAGE_WINDOW_S=20" in str(e.value), str(e.value)


def test_an_experiment_tag_set_meanwhile_by_another_process_is_no_error(tmp_path, monkeypatch):
    """What four runs starting at once into a new experiment on a server meet: another process
    inserted the experiment's kind tag between this one's read and write (PostgreSQL answers a
    duplicate key). Its tag is as good: the run goes on. Another failure still fails."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from harness.errors import HarnessError
    from harness.tracking import Tracker
    from harness.tracking.records import EXPERIMENT_KIND

    real = MlflowClient.set_experiment_tag

    def raced(self, experiment_id, key, value):
        real(self, experiment_id, key, value)  # the other process's, first
        raise MlflowException('duplicate key value violates unique constraint "experiment_tag_pk"')

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", raced)
    t = Tracker(f"sqlite:///{tmp_path}/a.db")
    assert MlflowClient(t.uri).get_experiment(t.experiment_id).tags[EXPERIMENT_KIND] == "custom_model_development"

    def refused(self, experiment_id, key, value):
        raise MlflowException("PERMISSION_DENIED: no")

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", refused)
    with pytest.raises(HarnessError, match="PERMISSION_DENIED"):
        Tracker(f"sqlite:///{tmp_path}/b.db")
