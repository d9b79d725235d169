"""Scale-out measurements, printed side by side in one run (not a test: pytest does not collect
it). Run it inside a loopback-only namespace, as .ci/run runs the tests:

    unshare -n -p -f --mount-proc bash -c 'ip link set lo up && python -m tests.measure_scale_out [DATA_DIR]'

It starts PostgreSQL + a basic-auth MLflow server (tests/servers.py) and a Ray head node, and
prints: the capped suite's wall time on 1 node and on 2 nodes (one CPU each); the cost of one
epoch checkpoint of the 5.8M-parameter VGG kept locally and as a run artifact on the server;
the per-epoch logging cost against the server and against local SQLite.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tests.servers import ADMIN, PASSWORD, free_port, server_env, tracking_server
from tests.test_ray_cluster import SUITE, kill_tree, ours, ray_cli

CAP = ["--epochs", "1", "--max-train-images", "256", "--no-progress", "--no-system-metrics"]


def suite(server, address: str, name: str, data: str) -> float:
    cmd = [sys.executable, "-m", "harness.cli", "run-all", "--executor", "ray", "--ray-address", address, "--experiment-name", name,
           *[a for i in SUITE for a in ("--only", i)], "--repeats", "2", "--data-dir", data, *CAP]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=server_env(server), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return time.perf_counter() - t0


def checkpoint_costs(tracker, n: int = 5) -> tuple[float, float, int]:
    from harness.recipes.catalogue import load_catalogue
    from harness.runs.checkpoints import LocalRunState, SharedRunState
    from harness.models import count_params, create_model
    from harness.training.loop import build_optimizer

    exp = load_catalogue()["medium-vgg-bn"]
    model = create_model(exp.model.name, **exp.model.args)
    assert count_params(model) > 5_000_000
    opt = build_optimizer(model, exp.train.optimizer, exp.train.phases[0].lr)
    model(torch.zeros(2, 3, 32, 32)).sum().backward()
    opt.step()
    # what one_run checkpoints for this recipe: weights, optimizer, and the best-validation weights
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "best_model": model.state_dict(), "epoch": 0}
    run_id = tracker.start_run("checkpoint-cost", {}, {})
    shared, local = SharedRunState(tracker, run_id), LocalRunState(run_id, Path(tempfile.mkdtemp()))
    times = {"local": [], "shared": []}
    for i in range(n):
        for name, s in (("local", local), ("shared", shared)):
            state["epoch"] = i
            t0 = time.perf_counter()
            s.save(state)
            times[name].append(time.perf_counter() - t0)
    size = local.last.stat().st_size
    shared.clear()
    tracker.terminate(run_id, "FINISHED")
    return statistics.median(times["local"]), statistics.median(times["shared"]), size


def logging_cost(tracker, n: int = 10) -> float:
    run_id = tracker.start_run("logging-cost", {}, {})
    metrics = {k: 0.5 for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "epoch_images_per_s")}
    times = []
    for e in range(n):
        series = {"train_loss_step": [(e * 100 + s, 0.1) for s in range(100)]}
        t0 = time.perf_counter()
        tracker.log_metrics(run_id, metrics, e, series)
        times.append(time.perf_counter() - t0)
    tracker.terminate(run_id, "FINISHED")
    return statistics.median(times)


def main(data: str) -> None:
    from harness.tracking import Tracker

    with tracking_server(auth_cache_ttl_s=60) as server:
        os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=PASSWORD)
        cached = logging_cost(Tracker(server["url"], "measure"))
    with tracking_server() as server:
        os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=PASSWORD)
        remote = Tracker(server["url"], "measure")
        local = Tracker(f"sqlite:///{tempfile.mkdtemp()}/mlflow.db", "measure")
        lc, sc, size = checkpoint_costs(remote)
        print(f"medium-vgg-bn epoch checkpoint ({size / 1e6:.1f} MB): local file {lc * 1000:.0f} ms | run artifact on the server "
              f"{sc * 1000:.0f} ms | ratio {sc / lc:.1f}x")
        ls, lr = logging_cost(local), logging_cost(remote)
        print(f"per-epoch logging: SQLite {ls * 1000:.1f} ms | server with basic-auth {lr * 1000:.1f} ms | ratio {lr / ls:.1f}x | "
              f"the same with auth_cache_ttl_seconds = 60: {cached * 1000:.1f} ms")
        if os.environ.get("MEASURE_LOGGING_ONLY"):
            return
        tmp = Path(tempfile.mkdtemp(prefix="hray-"))
        port, wport = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
        common = ["--num-cpus=1", "--disable-usage-stats"]
        try:
            subprocess.run([ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
                            f"--temp-dir={tmp}", *common], env=env, check=True, capture_output=True)
            one = suite(server, f"127.0.0.1:{port}", "measure-1-node", data)
            subprocess.run([ray_cli(), "start", f"--address=127.0.0.1:{port}", f"--node-manager-port={wport}", *common],
                           env=env, check=True, capture_output=True)
            two = suite(server, f"127.0.0.1:{port}", "measure-2-nodes", data)
            print(f"capped suite ({len(SUITE)} experiments x 2 seeds): 1 node {one:.1f} s | 2 nodes {two:.1f} s | speedup {one / two:.2f}x")
        finally:
            kill_tree(ours(str(tmp)) + ours(f"--node_manager_port={wport}"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"))
