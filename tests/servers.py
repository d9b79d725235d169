"""A real shared tracking server for the tests: PostgreSQL 15 (Debian's, started as the postgres
user on 127.0.0.1), `mlflow server --app-name basic-auth` with served artifacts, credentials from
MLflow's own MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD; and harness run against it.

The tests that use it are skipped where PostgreSQL, psycopg or mlflow[auth] are missing, unless
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

import contextlib

import pytest

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


@contextlib.contextmanager
def tracking_server(auth_cache_ttl_s: int = 0):
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
    pg_start = as_postgres(PG_BIN / "pg_ctl", "-D", pg, "-o", f"-h 127.0.0.1 -p {pg_port} -k {pg}", "-l", pg / "log", "-w", "start")
    subprocess.run(pg_start, check=True, capture_output=True)
    server_proc = None
    try:
        for db in ("mlflow", "mlflowauth"):
            subprocess.run(as_postgres(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", pg_port, "-U", "postgres", db), check=True, capture_output=True)
        def write_auth_ini(ttl_s: int, ini: Path = root / "auth.ini") -> None:
            ini.write_text(
                "[mlflow]\ndefault_permission = EDIT\n"
                f"database_uri = postgresql://postgres@127.0.0.1:{pg_port}/mlflowauth\n"
                f"admin_username = {ADMIN}\nadmin_password = {PASSWORD}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                # 0: MLflow's default, every request re-checks the password hash (measure_scale_out compares)
                f"auth_cache_ttl_seconds = {ttl_s}\n")

        write_auth_ini(auth_cache_ttl_s)
        # no job runner: MLflow 3's server otherwise starts 8 more processes (huey consumers) that
        # harness never gives work, seconds of CPU at each start and restart of the server
        env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(root / "auth.ini"), MLFLOW_FLASK_SERVER_SECRET_KEY="harness-tests",
                   MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        log = root / "server.log"
        url = f"http://127.0.0.1:{port}"

        def serve(at_port: int, ini: Path, at_log: Path) -> subprocess.Popen:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"postgresql://postgres@127.0.0.1:{pg_port}/mlflow",
                 "--artifacts-destination", str(root / "artifacts"), "--app-name", "basic-auth", "--host", "127.0.0.1", "--port", str(at_port),
                 "--workers", "1"], cwd=root, env=dict(env, MLFLOW_AUTH_CONFIG_PATH=str(ini)), stdout=open(at_log, "a"),
                stderr=subprocess.STDOUT, start_new_session=True)
            wait_http(f"http://127.0.0.1:{at_port}/health", 180, proc, at_log)
            return proc

        def start_server():
            nonlocal server_proc
            server_proc = serve(port, root / "auth.ini", log)

        def kill_server():
            """The server dies as a crash or an OOM kill leaves it (its workers too)."""
            nonlocal server_proc
            if server_proc is not None:
                os.killpg(server_proc.pid, signal.SIGKILL)
                server_proc.wait(timeout=60)
                server_proc = None

        def stop_postgres():
            subprocess.run(as_postgres(PG_BIN / "pg_ctl", "-D", pg, "-m", "fast", "-w", "stop"), check=True, capture_output=True)

        def start_postgres():
            subprocess.run(pg_start, check=True, capture_output=True)

        @contextlib.contextmanager
        def beside(ttl_s: int):
            """A second server on the same PostgreSQL and artifact store (the same runs), with another
            auth cache, on a port of its own while held; the first serves on meanwhile. Its dict has
            what a test of a run against it needs (url, root, PostgreSQL's stop and start)."""
            ini, at_log, at_port = root / f"auth-{ttl_s}.ini", root / f"server-{ttl_s}.log", free_port()
            write_auth_ini(ttl_s, ini)
            proc = serve(at_port, ini, at_log)
            try:
                yield {"url": f"http://127.0.0.1:{at_port}", "root": root, "stop_postgres": stop_postgres, "start_postgres": start_postgres,
                       "auth_cache_ttl_s": ttl_s}
            finally:
                os.killpg(proc.pid, signal.SIGTERM)  # that server and its workers, nothing else
                proc.wait(timeout=60)

        start_server()
        yield {"url": url, "root": root, "start_server": start_server, "kill_server": kill_server,
               "stop_postgres": stop_postgres, "start_postgres": start_postgres, "beside": beside, "auth_cache_ttl_s": auth_cache_ttl_s}
    finally:
        if server_proc is not None:
            os.killpg(server_proc.pid, signal.SIGTERM)  # our own server and its workers, nothing else
            server_proc.wait(timeout=60)
        subprocess.run(as_postgres(PG_BIN / "pg_ctl", "-D", pg, "-m", "fast", "-w", "stop"), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def server_env(server, password=PASSWORD) -> dict:
    """What a user on another machine sets: the server and MLflow's own credential variables
    (and this test's own cache folder for the per-machine locks)."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=server["url"], MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=password,
               MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO), XDG_CACHE_HOME=str(server["root"] / "cache"))
    env.pop("HARNESS_STATE_DIR", None)
    return env


def harness(server, *args, password=PASSWORD, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=cwd or REPO, env=server_env(server, password),
                          capture_output=True, text=True, timeout=timeout)
