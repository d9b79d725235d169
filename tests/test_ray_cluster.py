"""run-all over a real 2-node Ray cluster (`ray start --head` + `ray start --address`, one CPU
each) into the shared PostgreSQL + basic-auth MLflow server of tests/servers.py.

Ray rewrites 127.0.0.1 to the machine's outward address, so these tests run only inside a
network namespace whose only interface is loopback (.ci/run starts pytest in one: `unshare -n
-p -f --mount-proc`, then `ip link set lo up`); elsewhere they are skipped, and where
HARNESS_REQUIRE_SERVER_TESTS=1 that is a failure. Every Ray process they start is found by its
own temporary folder and stopped by its id; `ray stop` is never called.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.servers import CAP, REPO, free_port, harness, server_env

SUITE = ["fastai-simplenet", "tutorial-base", "fastai-convnet", "skl-cnn"]  # measure_scale_out's capped suite
# the test's: 2 recipes x 2 seeds, 4 runs for 2 one-CPU nodes, two of them queued while the first two train:
# spreading, queueing and each-run-once as with the suite's 8, at half the training
SPREAD = ["fastai-simplenet", "tutorial-base"]
# How often a test asks the server how its runs stand while it waits: each poll is 2-3 requests
# the one-worker server and PostgreSQL answer. RACE_POLL_S where the test must act before the
# driver does (freeze it before it collects a short run; kill a node before its run finishes:
# seconds of training later); POLL_S where a later look only acts later
RACE_POLL_S, POLL_S = 0.5, 1.0


# Ray's GCS declares a node dead after health_check_failure_threshold failed checks, one each
# health_check_period_ms (defaults 5 x 3 s). Here 5 x 1 s: a killed worker node is still found
# dead by Ray's own health check, seconds sooner (each check still waits up to Ray's 10 s for an
# answer, so a node slow on a busy machine is not taken for dead)
QUICK_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}


def loopback_only() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else shutil.which("ray") or "ray"


def ours(tag: str) -> list[psutil.Process]:
    """The processes whose command line names `tag` (our cluster's folder, or one node's port)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(tag in part for part in p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def kill_tree(procs: list[psutil.Process]) -> None:
    every = {p.pid: p for p in procs}
    for p in procs:
        try:
            every.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for p in every.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(every.values()), timeout=30)


def require_a_cluster_here() -> None:
    why = None if loopback_only() else "needs a network namespace whose only interface is lo (.ci/run provides one)"
    try:
        import ray  # noqa: F401
    except ImportError:
        why = why or 'Ray is not installed (pip install "harness[ray]")'
    if why:
        if os.environ.get("HARNESS_REQUIRE_SERVER_TESTS") == "1":
            pytest.fail(f"Ray cluster tests required here but {why}")
        pytest.skip(why)


@pytest.fixture(scope="module")
def server(cached_server):
    """The tracking server with the README's auth cache (conftest.cached_server)."""
    require_a_cluster_here()
    return cached_server


@pytest.fixture(scope="module")
def admin(cached_admin):
    return cached_admin


@pytest.fixture(scope="module")
def cluster(server):
    require_a_cluster_here()
    tmp = Path(tempfile.mkdtemp(prefix="hray-"))  # short: Ray's socket paths are length-limited
    head_port, worker_port = free_port(), free_port()
    # the nodes know nothing of the tracking server: tasks must be handed URI and credentials
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", **QUICK_DEATH)
    # no log monitors: harness's drivers take no worker output (ray.init(log_to_driver=False)), and
    # the two of one host polled every worker's log files all session (9 of the file's ~300 CPU-s)
    common = ["--num-cpus=1", "--disable-usage-stats", "--include-log-monitor=false"]
    try:
        subprocess.run([ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={head_port}", "--include-dashboard=false",
                        f"--temp-dir={tmp}", *common], env=env, check=True, capture_output=True, timeout=300)
        subprocess.run([ray_cli(), "start", f"--address=127.0.0.1:{head_port}", f"--node-manager-port={worker_port}", *common],
                       env=env, check=True, capture_output=True, timeout=300)
        address = f"127.0.0.1:{head_port}"
        yield {"address": address, "worker_port": worker_port, "nodes": node_ids(address, worker_port), "tmp": tmp}
    finally:
        kill_tree(ours(str(tmp)) + ours(f"--node_manager_port={worker_port}"))
        shutil.rmtree(tmp, ignore_errors=True)


def node_ids(address: str, worker_port: int) -> dict[str, str]:
    """{"head": id, "worker": id} (first 8 hex digits, as the runs' harness.node tags show them)."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(json.dumps({n['NodeID'][:8]: n['NodeManagerPort'] for n in ray.nodes() if n['Alive']}))") % address
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    ports = json.loads(out.strip().splitlines()[-1])
    assert len(ports) == 2, ports
    return {"worker" if port == worker_port else "head": nid for nid, port in ports.items()}


def run_all(server, cluster, experiment: str, *args, password=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "harness.cli", "run-all", "--executor", "ray", "--ray-address", cluster["address"],
           "--experiment-name", experiment, *map(str, args)]
    env = server_env(server) if password is None else server_env(server, password)
    # a session of its own: signals sent in a test reach the driver alone, with SIGINT's default handler
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def runs_of(admin, experiment: str):
    exp = admin.get_experiment_by_name(experiment)
    return admin.search_runs([exp.experiment_id], max_results=1000) if exp else []


def only(ids):
    return [a for i in ids for a in ("--only", i)]


def test_a_capped_suite_spreads_over_both_nodes_and_trains_each_run_once(server, cluster, admin, synthetic_root, tmp_path):
    t0 = time.time()
    p = run_all(server, cluster, "ray-suite", *only(SPREAD), "--repeats", "2", "--data-dir", synthetic_root, *CAP)
    out, err = p.communicate(timeout=900)
    wall = time.time() - t0
    assert p.returncode == 0, out + err
    runs = runs_of(admin, "ray-suite")
    keys = sorted((r.data.tags["harness.experiment_id"], r.data.tags["harness.seed"]) for r in runs)
    assert keys == sorted((e, str(s)) for e in SPREAD for s in (0, 1)), keys  # each once
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["harness.node"].split("/")[-1] for r in runs} == set(cluster["nodes"].values())  # both nodes trained
    assert out.count(": finished, test accuracy") == len(keys) and "experiment" in out  # a line per run, then the table
    for r in runs:
        arts = {a.path for a in admin.list_artifacts(r.info.run_id)}
        assert {"config.json", "test_predictions.csv", "confusion_matrix.png"} <= arts and "harness-state" not in arts
    dst = tmp_path / "dl"
    admin.download_artifacts(runs[0].info.run_id, "config.json", str(dst.mkdir() or dst))
    assert json.loads((dst / "config.json").read_text())["resolved"]["config_hash"] == runs[0].data.tags["harness.config_hash"]
    report = tmp_path / "report.html"
    r = harness(server, "report", "--experiment-name", "ray-suite", "--out", report)
    assert r.returncode == 0, r.stderr
    html = report.read_text()
    assert all(run.info.run_id in html for run in runs)
    print(f"\ncapped suite, {len(runs)} runs on 2 nodes: {wall:.1f} s")


def test_two_drivers_at_once_train_nothing_twice(server, cluster, admin, synthetic_root):
    ids = ["fastai-simplenet", "fastai-convnet"]
    procs = [run_all(server, cluster, "ray-race", *only(ids), "--repeats", "2", "--data-dir", synthetic_root, *CAP) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    runs = runs_of(admin, "ray-race")
    keys = sorted((r.data.tags["harness.experiment_id"], r.data.tags["harness.seed"]) for r in runs)
    assert keys == sorted((e, str(s)) for e in ids for s in (0, 1)), keys  # no duplicate, no loser left behind
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sum(o.count(": finished, test accuracy") for o, _ in outs) == 4


def test_repeats_auto_trains_its_rounds_as_ray_tasks_each_seed_once(server, cluster, admin, synthetic_root):
    """`--repeats auto` on the cluster: the loop's first round (here its cap, 2 seeds a recipe,
    4 runs for the 2 one-CPU nodes) goes out as Ray tasks, each seed once, every run tagged as the
    loop's with why it stopped, and the command says it."""
    ids = ["fastai-simplenet", "tutorial-base"]
    p = run_all(server, cluster, "ray-auto", *only(ids), "--repeats", "auto", "--max-repeats", "2", "--data-dir", synthetic_root, *CAP)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, out + err
    assert "round 1: training 4 run(s)" in out, out
    assert re.search(r"stopped after 1 round\(s\).*every open recipe is at its cap \(--max-repeats 2\)", out), out
    runs = runs_of(admin, "ray-auto")
    keys = sorted((r.data.tags["harness.experiment_id"], r.data.tags["harness.seed"]) for r in runs)
    assert keys == sorted((e, str(s)) for e in ids for s in range(2)), keys  # each once
    assert all(r.info.status == "FINISHED" and r.data.tags["harness.repeats"] == "auto" and "stopped after" in r.data.tags["harness.auto_stop"]
               and r.data.tags.get("harness.node") and r.data.tags.get("harness.invocation") for r in runs)


def test_a_wrong_password_is_one_line_exit_2_and_no_run(server, cluster, admin, synthetic_root):
    p = run_all(server, cluster, "ray-denied", "--only", "fastai-simplenet", "--data-dir", synthetic_root, *CAP, password="wrong-password-x")
    out, err = p.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "authentication failed" in lines[0], err
    assert "wrong-password-x" not in out + err
    assert runs_of(admin, "ray-denied") == []


def test_a_users_own_network_travels_to_the_ray_tasks(server, cluster, admin, synthetic_root, tmp_path):
    """A network in the user's folder, which the nodes know nothing of: each task gets it in its
    runtime_env (py_modules) and imports that copy, the same code by hash."""
    from tests.test_user_recipes import NETS, recipe

    mine, mark = tmp_path / "mine", tmp_path / "imported-from.txt"
    mine.mkdir()
    (mine / "raynet.py").write_text(f"open({str(mark)!r}, 'a').write(__file__ + '\\n')\n" + NETS)
    (mine / "mine-ray.toml").write_text(recipe("mine-ray", 'file = "raynet.py"\nname = "MyNet"'))
    p = run_all(server, cluster, "ray-user", "--experiments", mine, "--only", "mine-ray", "--repeats", "2", "--data-dir", synthetic_root, *CAP)
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, out + err
    runs = runs_of(admin, "ray-user")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" and r.data.tags["harness.user_recipe"] == "true" for r in runs)
    where = set(mark.read_text().split())
    shipped = where - {str(mine / "raynet.py")}
    assert shipped and all("runtime_resources" in w for w in shipped), where  # the tasks imported Ray's copy


def test_a_request_no_node_can_meet_is_one_line_at_once(server, cluster, admin, synthetic_root):
    """Each node has 1 CPU: 4 per run would wait forever; it is one line naming what there is."""
    p = run_all(server, cluster, "ray-infeasible", "--only", "fastai-simplenet", "--cpus-per-run", "4", "--data-dir", synthetic_root, *CAP)
    out, err = p.communicate(timeout=120)
    # (Ray's own C++ log may add a line at import in a namespace without a route out; not ours)
    lines = [ln for ln in err.strip().splitlines() if not re.match(r"\[\d{4}-\d\d-\d\d [\d:,]+ [DIWE] ", ln)]
    assert p.returncode == 2 and len(lines) == 1, out + err
    assert "4 CPU(s)" in lines[0] and "largest node offers 1 CPU(s)" in lines[0], lines
    assert runs_of(admin, "ray-infeasible") == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_driver_ends_only_its_runs_still_training(server, cluster, admin, synthetic_root, sig):
    """The driver is frozen while one task finishes (its result not yet collected), then stopped
    by Ctrl-C or SIGTERM: the finished run stays FINISHED, the one training ends KILLED, and
    a rerun resumes it (and is stopped in turn). Meanwhile the driver showed the tasks' epoch lines, prefixed by run."""
    name = f"ray-stop-{sig.name}"
    # fastai-simplenet: 4 short epochs; medium-vgg-bn: 30 (long still training when the other is done)
    args = ["--only", "fastai-simplenet", "--only", "medium-vgg-bn", "--data-dir", synthetic_root, "--epochs", "30", "--no-system-metrics"]
    p = run_all(server, cluster, name, *args)

    def by_exp():
        return {r.data.tags.get("harness.experiment_id"): r for r in runs_of(admin, name)}

    def epochs(run_id):
        return sorted(m.step for m in admin.get_metric_history(run_id, "epoch_time_s"))

    deadline = time.time() + 600
    while time.time() < deadline:  # both tasks started: the driver is frozen before it can collect either
        runs = by_exp()
        if len(runs) == 2 and all("harness.node" in r.data.tags for r in runs.values()):
            break
        assert p.poll() is None, p.communicate()
        time.sleep(RACE_POLL_S)
    p.send_signal(signal.SIGSTOP)
    try:
        # the tasks go on: the short run finishes (its result not collected), the long one checkpoints
        # (what the rerun resumes from); waiting for that checkpoint before freezing the driver let the
        # short run be collected first where the server answers fast
        while True:
            runs = by_exp()
            if runs["fastai-simplenet"].info.status == "FINISHED" and "harness.checkpoint" in runs["medium-vgg-bn"].data.tags:
                break
            assert time.time() < deadline, "the short run did not finish, or the long one never checkpointed"
            time.sleep(POLL_S)
        assert by_exp()["medium-vgg-bn"].info.status == "RUNNING"
        t0 = time.monotonic()
        p.send_signal(sig)
    finally:
        p.send_signal(signal.SIGCONT)
    out, err = p.communicate(timeout=300)
    took = time.monotonic() - t0
    print(f"\n{sig.name} to exit, Ray driver: {took:.2f} s")
    assert p.returncode == 130 and "Traceback" not in out + err, out + err
    assert "fastai-simplenet: epoch 1/" in out and "medium-vgg-bn: epoch 1/" in out, out  # progress, by run
    runs = by_exp()
    assert runs["fastai-simplenet"].info.status == "FINISHED", "a finished run not yet collected became " + runs["fastai-simplenet"].info.status
    assert runs["medium-vgg-bn"].info.status == "KILLED", err
    assert "1 run(s) in flight are marked KILLED" in err and "1 run(s) had finished" in err, err
    if sig != signal.SIGTERM:  # the rerun once (the two signals take one path)
        return
    long_id, before = runs["medium-vgg-bn"].info.run_id, epochs(runs["medium-vgg-bn"].info.run_id)
    again = run_all(server, cluster, name, *args)
    while len(epochs(long_id)) <= len(before):  # the rerun trains the same run on, then is stopped too
        assert again.poll() is None and time.time() < deadline + 600, again.communicate()
        time.sleep(POLL_S)
    again.send_signal(signal.SIGTERM)
    out2, err2 = again.communicate(timeout=300)
    assert again.returncode == 130, out2 + err2
    assert f"resuming run {long_id}" in out2 and "identical finished run exists" in out2, out2
    after = epochs(long_id)
    assert after == list(range(len(after))) and len(after) > len(before)  # each epoch once, from where it stopped
    assert by_exp()["medium-vgg-bn"].info.status == "KILLED" and by_exp()["fastai-simplenet"].info.status == "FINISHED"


def test_a_run_whose_worker_node_dies_resumes_on_the_head_node(server, cluster, admin, synthetic_root):
    """Last in this module: it kills the worker node. 3 epochs: killed after its first checkpoint
    (polled every RACE_POLL_S, seconds before the next), the run has epochs left to resume; each
    node has one CPU, so the resume waits for the head's own run: every epoch more is two in the
    test's length."""
    epochs = 3
    args = ["--only", "medium-vgg-bn", "--repeats", "2", "--data-dir", synthetic_root, "--epochs", epochs, "--max-train-images", "200",
            "--no-progress", "--no-system-metrics"]
    p = run_all(server, cluster, "ray-kill", *args)
    worker, head = cluster["nodes"]["worker"], cluster["nodes"]["head"]
    victim, deadline = None, time.time() + 600
    while victim is None and time.time() < deadline:
        for r in runs_of(admin, "ray-kill"):
            if r.data.tags.get("harness.node", "").endswith(worker) and "harness.checkpoint" in r.data.tags:
                victim = r
        assert p.poll() is None, p.communicate()
        time.sleep(RACE_POLL_S)
    assert victim is not None, "no checkpoint on the worker node within 600 s"
    t_kill = time.time()
    kill_tree(ours(f"--node_manager_port={cluster['worker_port']}"))
    resumed_after = None
    while p.poll() is None and time.time() < t_kill + 600:
        if resumed_after is None and admin.get_run(victim.info.run_id).data.tags.get("harness.node", "").endswith(head):
            resumed_after = time.time() - t_kill
        time.sleep(POLL_S)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, out + err
    runs = runs_of(admin, "ray-kill")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    again = admin.get_run(victim.info.run_id)  # the same MLflow run, finished on the head node
    assert again.data.tags["harness.node"].endswith(head)
    history = admin.get_metric_history(victim.info.run_id, "epoch_time_s")
    assert sorted(m.step for m in history) == list(range(epochs))  # each epoch once
    # when the head took it over: seen while polling, else (a resume quicker than the polls) its first epoch logged after the kill
    later = [m.timestamp / 1e3 - t_kill for m in history if m.timestamp / 1e3 > t_kill]
    took = resumed_after if resumed_after is not None else min(later, default=None)
    print(f"\nworker node killed; its run resumed on the head node" + (f", its next epoch logged {took:.1f} s later" if took is not None else ""))


def test_a_cluster_that_loses_every_node_able_to_take_the_runs_is_said_then_stopped_resumable():
    """Mid-run, the only node with the CPUs a run asks for leaves: said once at once; a node back
    within the window lets the runs go on; gone past the window, the driver stops (its runs
    resumable) instead of waiting forever. Ray's node table is faked: no cluster needed."""
    from types import SimpleNamespace

    from harness.executors.capacity import CapacityWatch

    big, small = {"Alive": True, "Resources": {"CPU": 4.0}}, {"Alive": True, "Resources": {"CPU": 1.0}}
    nodes, said, now = [big, small], [], [0.0]
    watch = CapacityWatch(SimpleNamespace(nodes=lambda: nodes), 2, 0, 300, said.append, clock=lambda: now[0])

    def at(t):
        now[0] = t
        return watch.stranded()

    assert at(11) is None and said == []
    nodes[:] = [small, {"Alive": False, "Resources": {"CPU": 4.0}}]  # the big node died
    assert at(22) is None and len(said) == 1 and "largest node offers 1 CPU(s)" in said[0] and "wait up to 300 s" in said[0]
    assert at(25) is None and at(200) is None and len(said) == 1  # said once, checked every CHECK_S
    nodes[:] = [small, big]  # back within the window: the runs go on
    assert at(250) is None and "back" in said[-1]
    nodes[:] = [small]
    assert at(300) is None and at(590) is None
    why = at(610)
    assert why is not None and "2 CPU(s)" in why and "for 310 s" in why
