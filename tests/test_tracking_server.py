"""harness against a real shared tracking server: PostgreSQL 15 (Debian's, started here as the
postgres user on 127.0.0.1), `mlflow server --app-name basic-auth` with served artifacts, and
credentials from MLflow's own MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.

Skipped where PostgreSQL, psycopg or mlflow[auth] are missing, unless
HARNESS_REQUIRE_SERVER_TESTS=1 (set by .ci/run), where that is a failure."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
ADMIN, PASSWORD = "admin", "harness-admin-password-1"
CAP = ["--epochs", "1", "--max-train-images", "256", "--no-progress", "--no-system-metrics"]


def missing() -> str | None:
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 not found in {PG_BIN}"
    for module, pkg in (("psycopg", 'psycopg[binary]'), ("flask_wtf", "mlflow[auth]")):
        try:
            __import__(module)
        except ImportError:
            return f"{pkg} is not installed"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without runuser to start PostgreSQL as postgres"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*cmd) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *map(str, cmd)] if os.geteuid() == 0 else list(map(str, cmd))


def wait_http(url: str, seconds: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds} s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server():
    why = missing()
    if why:
        if os.environ.get("HARNESS_REQUIRE_SERVER_TESTS") == "1":
            pytest.fail(f"server tests required here but {why}")
        pytest.skip(why)
    # not under pytest's own tmp folder: that is private to its user, and PostgreSQL runs as postgres
    root = Path(tempfile.mkdtemp(prefix="harness-server-"))
    root.chmod(0o755)
    pg, pg_port, port = root / "pg", free_port(), free_port()
    pg.mkdir()
    if os.geteuid() == 0:
        shutil.chown(pg, "postgres")
    subprocess.run(as_postgres(PG_BIN / "initdb", "-D", pg, "-U", "postgres", "--auth=trust", "-E", "UTF8"), check=True, capture_output=True)
    subprocess.run(as_postgres(PG_BIN / "pg_ctl", "-D", pg, "-o", f"-h 127.0.0.1 -p {pg_port} -k {pg}", "-l", pg / "log", "-w", "start"),
                   check=True, capture_output=True)
    server_proc = None
    try:
        for db in ("mlflow", "mlflowauth"):
            subprocess.run(as_postgres(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", pg_port, "-U", "postgres", db), check=True, capture_output=True)
        (root / "auth.ini").write_text(
            "[mlflow]\ndefault_permission = EDIT\n"
            f"database_uri = postgresql://postgres@127.0.0.1:{pg_port}/mlflowauth\n"
            f"admin_username = {ADMIN}\nadmin_password = {PASSWORD}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(root / "auth.ini"), MLFLOW_FLASK_SERVER_SECRET_KEY="harness-tests")
        log = root / "server.log"
        server_proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"postgresql://postgres@127.0.0.1:{pg_port}/mlflow",
             "--artifacts-destination", str(root / "artifacts"), "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], cwd=root, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", 180, server_proc, log)
        yield {"url": url, "root": root}
    finally:
        if server_proc is not None:
            os.killpg(server_proc.pid, signal.SIGTERM)  # our own server and its workers, nothing else
            server_proc.wait(timeout=60)
        subprocess.run(as_postgres(PG_BIN / "pg_ctl", "-D", pg, "-m", "fast", "-w", "stop"), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def harness(server, *args, password=PASSWORD, cwd=None):
    env = dict(os.environ, MLFLOW_TRACKING_URI=server["url"], MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=password,
               MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO), HARNESS_STATE_DIR=str(server["root"] / "state"))
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def admin(server):
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = ADMIN, PASSWORD
    try:
        yield MlflowClient(server["url"])
    finally:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)


@pytest.fixture(scope="module")
def trained(server, admin, synthetic_root):
    r = harness(server, "run", "fastai-simplenet", "tutorial-base", "--data-dir", synthetic_root, *CAP, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    exp = admin.get_experiment_by_name("cifar10-harness")
    runs = admin.search_runs([exp.experiment_id])
    return {"runs": runs, "exp": exp, "out": r.stdout}


def test_runs_params_metrics_and_artifacts_reach_the_server(trained, admin):
    runs = trained["runs"]
    assert sorted(r.data.tags["harness.experiment_id"] for r in runs) == ["fastai-simplenet", "tutorial-base"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["model.name"] and "test_acc" in run.data.metrics and "test_acc_eval_mode" in run.data.metrics
        arts = {a.path for a in admin.list_artifacts(run.info.run_id)}
        assert {"config.json", "confusion_matrix.png", "test_predictions.csv", "loss_curve.png"} <= arts
        assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"cifar10-subset-train", "cifar10-subset-test"}
    assert admin.get_experiment(trained["exp"].experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert "?workflowType=machine_learning" in trained["out"] and "View run" not in trained["out"]


def test_the_logged_model_loads_in_another_process(server, trained):
    run = trained["runs"][0]
    code = ("import mlflow.pytorch, torch, sys; m = mlflow.pytorch.load_model(f'runs:/{sys.argv[1]}/model'); "
            "print(tuple(m(torch.zeros(3, 3, 32, 32)).shape))")
    env = dict(os.environ, MLFLOW_TRACKING_URI=server["url"], MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=PASSWORD)
    r = subprocess.run([sys.executable, "-c", code, run.info.run_id], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "(3, 10)" in r.stdout, r.stderr[-2000:]


def test_the_report_is_built_from_the_server(server, trained, tmp_path):
    out = tmp_path / "report.html"
    r = harness(server, "report", "--out", out)
    assert r.returncode == 0, r.stderr
    html = out.read_text()
    for run in trained["runs"]:
        assert run.info.run_id in html
    assert "Runs with missing artifacts" not in html


def test_a_rerun_against_the_server_trains_nothing_again(server, trained, admin, synthetic_root):
    r = harness(server, "run", "fastai-simplenet", "--data-dir", synthetic_root, *CAP)
    assert r.returncode == 0 and "skipped" in r.stdout
    assert len(admin.search_runs([trained["exp"].experiment_id])) == len(trained["runs"])


def test_a_wrong_password_is_one_line_exit_2_and_no_run(server, trained, admin, synthetic_root):
    before = len(admin.search_runs([trained["exp"].experiment_id]))
    r = harness(server, "run", "fastai-convnet", "--data-dir", synthetic_root, *CAP, password="not-the-password")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "authentication failed" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert "not-the-password" not in r.stderr + r.stdout
    assert len(admin.search_runs([trained["exp"].experiment_id])) == before


def test_an_unreachable_server_is_one_line(synthetic_root):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}", MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "harness.cli", "run", "fastai-simplenet", "--data-dir", str(synthetic_root), *CAP],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "unreachable" in r.stderr, r.stderr
