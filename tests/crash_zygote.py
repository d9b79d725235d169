"""A fork server for the crash-point matrix: imports the harness (torch, MLflow) once, then forks
one child per `harness ...` command, so each of the matrix's hundred-odd commands costs its own
work, not five seconds of imports. Nothing here runs torch before forking (no thread pools to
inherit). Protocol, one JSON line each way on stdin/stdout:
  {"op": "start", "argv": [...], "env": {...}, "out": path, "sigint": "default"|"ignore"} -> {"pid": n}
  {"op": "wait", "pid": n} -> {"rc": exit code, or -signal}
Each child runs in a session of its own (signals reach it alone), its output in `out`.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys

import harness.cli  # noqa: F401  (torch, MLflow and every room of the harness, imported once)
import harness.executors.local  # noqa: F401
import harness.runs.one_run  # noqa: F401
import harness.tracking.tracker  # noqa: F401
from harness.tracking.logged_models import pytorch_flavor

pytorch_flavor()  # mlflow.pytorch, with the root logger kept as a fresh command has it


def warm() -> None:
    """What every command would otherwise load after the fork, lazily (a profile of one command:
    about 3.5 of its 8 seconds): torch._dynamo (the optimizer's first import), matplotlib's Agg
    renderer and fonts (the loss plots), GitPython and IPython (MLflow's run-context tags) and
    MLflow's map of installed packages (log_model's requirements). None of it runs a torch op."""
    import io

    import git  # noqa: F401
    import IPython  # noqa: F401
    import harness.plots  # noqa: F401  (Agg first)
    import matplotlib.pyplot as plt
    import torch._dynamo  # noqa: F401
    from mlflow.utils import requirements_utils

    requirements_utils._init_packages_to_modules_map()
    _open_a_store()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], marker="o", label="warm")
    ax.set_title("warm")
    ax.legend()
    fig.tight_layout()
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)


def _open_a_store() -> None:
    """Open (and close) a throwaway SQLite store as a command opens its own: SQLAlchemy's ORM and
    dialects, alembic (the schema check), MLflow's SQL store, tracing and pyfunc are 420-odd
    modules that each command imported after the fork, half of a small command's CPU (2.0 -> 1.0
    CPU-s a command). No global is left set (the client is not MLflow's current URI); the engine
    is disposed so that no child inherits its connection."""
    import tempfile

    import mlflow.pyfunc  # noqa: F401  (log_model's)
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        client = MlflowClient(f"sqlite:///{folder}/warm.db")
        client.search_experiments(max_results=1)
        client._tracking_client.store.engine.dispose()


def _elsewhere() -> None:
    """Test-only hooks that put a command past this machine's quick skip, so the store's claim and
    liveness are what decide: HARNESS_TEST_LOCK_DIR, a lock folder of its own (the configuration
    lock another machine, or another lock folder, would take); HARNESS_FAKE_HOST, another machine
    as liveness sees it (its owner's process is judged by the heartbeat, not by /proc)."""
    locks = os.environ.get("HARNESS_TEST_LOCK_DIR")
    if locks:
        import harness.executors.local as local
        from pathlib import Path

        local.lock_root = lambda uri: Path(locks)
    host = os.environ.get("HARNESS_FAKE_HOST")
    if host:
        import socket

        socket.gethostname = lambda: host


def child(req: dict) -> None:
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the protocol's pipe is the server's, not the command's
    os.close(null)
    fd = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.update(req["env"])
    from harness.tracking import faults

    faults._step_clock()
    _elsewhere()
    # a background job of a script starts with SIGINT ignored, as Python then leaves it
    signal.signal(signal.SIGINT, signal.SIG_IGN if req.get("sigint") == "ignore" else signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 0
    try:
        harness.cli.main.main(args=req["argv"], prog_name="harness", standalone_mode=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - a traceback is a finding: it goes to the output
        import traceback

        traceback.print_exc()
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    warm()
    gc.freeze()  # what the imports made stays out of the children's collections: fewer pages copied
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "start":
            open(req["out"], "w").close()  # there before the reply: the test may read it at once
            pid = os.fork()
            if pid == 0:
                try:
                    child(req)
                finally:
                    os._exit(98)
            reply = {"pid": pid}
        else:
            _, status = os.waitpid(req["pid"], 0)
            reply = {"rc": -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
