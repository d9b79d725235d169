"""`--repeats auto` on every path a round can take: the budget (no run started that the cost
model says would end past it, whatever the workers and the `--jobs` packing), the Ray executor
(the loop driving run_many_ray, its tasks run in this process by a stand-in for Ray), and two
drivers on one store (no seed trained twice, no recipe past its cap)."""

from __future__ import annotations

import collections
import os
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from harness.auto import loop
from harness.auto.budget import round_time
from harness.runs.job import Outcome, RunOptions

from . import forkserver
from .test_repeats_auto import CAP, REPO, fake, mine, run  # noqa: F401 (fixtures)


# ------------------------------------------------------------------ the budget


def test_no_run_starts_that_the_cost_model_says_would_end_past_the_budget(fake, monkeypatch):  # noqa: F811
    """Random recipes, costs, workers, budgets and `--jobs` packings (run widths on a few cores),
    the clock advancing by exactly the schedule the cost model predicts: the loop never ends past
    its budget, and its stop line says by how much it ended under it."""
    for case in range(60):
        rng = np.random.default_rng(case)
        ids = [f"r{i}" for i in range(int(rng.integers(2, 5)))]
        costs = {i: float(rng.uniform(5, 300)) for i in ids}
        workers = int(rng.integers(1, 4))
        cores = int(rng.integers(1, 5))
        widths = {i: int(rng.integers(1, cores + 1)) for i in ids} if case % 2 else None
        budget = float(rng.uniform(20, 3000))
        store = fake({i: 70.0 + 0.1 * k for k, i in enumerate(ids)}, sd=0.8, seed=case)
        monkeypatch.setattr(loop, "seed_costs", lambda exps, n, opts, walls, costs=costs: dict(costs))  # the estimate is the truth

        def execute(todo, store=store):
            for e, s in todo:
                assert (e.id, s) not in store.trained
                store.trained.append((e.id, s))
                store.seeds[e.id].acc[s], store.seeds[e.id].wall[s] = float(rng.normal(store.means[e.id], 0.8)), costs[e.id]
            store.now += round_time([e.id for e, _ in todo], costs, workers, widths, cores)  # the round as the pool packs it
            return [Outcome(e.id, s, "finished", f"run-{e.id}-{s}", 70.0, costs[e.id]) for e, s in todo]

        store.execute = execute
        lines: list[str] = []
        r = run(store, loop.AutoOptions(max_repeats=10, budget_s=budget, workers=workers, widths=widths, cores=cores), lines)
        assert store.now <= budget + 1e-6, (case, store.now, budget, lines)
        if r.reason == loop.BUDGET:  # what is left is less than the cheapest planned run's time
            assert budget - store.now < max(costs.values()) + 1e-6, (case, lines)
        assert f" under the {loop.fmt_duration(budget)} budget)" in lines[-1], lines[-1]


def test_the_stop_line_says_how_far_over_the_budget_a_slow_run_took_it(fake, monkeypatch):  # noqa: F811
    """The cost model says 10 s a seed; they take 100 s. The overshoot is said, not hidden."""
    store = fake({"a": 70.0, "b": 70.2}, sd=0.8, cost=100.0)
    monkeypatch.setattr(loop, "seed_costs", lambda exps, n, opts, walls: {e.id: 10.0 for e in exps})
    lines: list[str] = []
    r = run(store, loop.AutoOptions(max_repeats=10, budget_s=250.0), lines)
    assert r.reason == loop.BUDGET and store.now > 250.0
    assert f"({loop.fmt_duration(store.now - 250.0)} over the 4m10s budget)" in lines[-1], lines[-1]
    assert loop.budget_end(100.0, None) == ""


def test_a_first_wave_of_tiny_recipes_does_not_price_a_vgg_out_of_the_budget():
    """A budgeted loop first trains one cheap run a worker: their walls are mostly a run's fixed
    cost. Calibrated on whole walls, the rate made cs598-vgg-bn-aug's 1-epoch seed 1,542 s (it
    takes about 60) and left it out of a 15-minute budget; the fixed cost is now measured apart,
    and the rate only on recipes whose training outweighs it."""
    from harness.auto.budget import DEFAULT_MACS_PER_S, UNTIMED_MARGIN, seed_costs
    from harness.executors.schedule import expected_work
    from harness.recipes.catalogue import load_catalogue

    cat = load_catalogue()
    exps = [cat[i] for i in ("cs598-vgg-bn-aug", "medium-vgg-bn", "fastai-simplenet", "fastai-convnet")]
    opts = RunOptions(epochs=1)
    w = {e.id: expected_work(e, 5170, opts) / DEFAULT_MACS_PER_S for e in exps}  # seconds at the default rate
    before = seed_costs(exps, 5170, opts, {})
    after = seed_costs(exps, 5170, opts, {"fastai-simplenet": [5.0], "fastai-convnet": [6.0]})
    fixed = 5.0 - w["fastai-simplenet"]
    assert after["cs598-vgg-bn-aug"] == pytest.approx(UNTIMED_MARGIN * (w["cs598-vgg-bn-aug"] + fixed)) and after["cs598-vgg-bn-aug"] < before["cs598-vgg-bn-aug"] + 3
    # a VGG measured at half the default rate prices the other VGG at half it too (beyond the fixed cost)
    slow = seed_costs(exps, 5170, opts, {"fastai-simplenet": [5.0], "cs598-vgg-bn-aug": [2 * w["cs598-vgg-bn-aug"] + fixed]})
    assert slow["medium-vgg-bn"] == pytest.approx(UNTIMED_MARGIN * (2 * w["medium-vgg-bn"] + fixed)) and slow["fastai-simplenet"] == 5.0


def test_a_tiny_recipe_slower_than_the_default_rate_does_not_price_a_vgg_short():
    """Under `--budget 30m` a VGG seed started on a first estimate of 1,524 s took about 2,274 s
    and overran by 8 minutes. The calibration took a run's fixed cost from the recipe of least
    work (its walls less that work at the default rate): a tiny recipe that trains slower than
    the default rate left its slow training in the fixed cost, and the rate taken on the others'
    time beyond that cost came out many times too fast. Here (fixed cost 3 s): tutorial-base at
    4 G/s, medium-three-conv and the VGG at 48 G/s; the VGG's estimate must not fall short of its
    time (it was priced at about 280 s), nor be absurdly long."""
    from harness.auto.budget import UNTIMED_MARGIN, seed_costs
    from harness.executors.schedule import expected_work
    from harness.recipes.catalogue import load_catalogue

    cat = load_catalogue()
    exps = [cat[i] for i in ("cs598-vgg-bn-aug", "medium-three-conv", "tutorial-base")]
    opts = RunOptions()
    work = {e.id: expected_work(e, 5170, opts) for e in exps}
    true = {"tutorial-base": 3 + work["tutorial-base"] / 4e9, "medium-three-conv": 3 + work["medium-three-conv"] / 48e9,
            "cs598-vgg-bn-aug": 3 + work["cs598-vgg-bn-aug"] / 48e9}
    cost = seed_costs(exps, 5170, opts, {i: [true[i]] for i in ("tutorial-base", "medium-three-conv")})
    assert true["cs598-vgg-bn-aug"] <= cost["cs598-vgg-bn-aug"] <= UNTIMED_MARGIN * 1.5 * true["cs598-vgg-bn-aug"]


def test_only_seeds_timed_on_this_device_price_the_next_ones(fake, monkeypatch):  # noqa: F811
    """A store shared by a GPU machine and a CPU one: seeds timed on the GPU say nothing of what a
    seed costs on the CPU (there they would price a VGG at seconds, and start it under any
    budget). The loop prices its seeds on the walls of its own device (harness.device)."""
    from harness.auto.budget import timed_here
    from harness.auto.state import Seeds

    seeds = {"a": Seeds({0: 1.0, 1: 2.0}, {0: 5.0, 1: 900.0}, {}, {0: "cuda:NVIDIA H100", 1: "cpu:Xeon, 2 cores"}), "b": Seeds({0: 1.0}, {0: 4.0}, {}, {})}
    assert timed_here(seeds, "cpu:Xeon, 2 cores") == {"a": [900.0], "b": []} and timed_here(seeds, None) == {"a": [5.0, 900.0], "b": [4.0]}

    store = fake({"a": 90.0, "b": 70.0}, sd=1.0)
    for i in store.seeds:  # one seed each, timed on a GPU
        store.seeds[i].acc[0], store.seeds[i].wall[0], store.seeds[i].device[0] = store.means[i], 1.0, "cuda:NVIDIA H100"
    seen = []
    monkeypatch.setattr(loop, "seed_costs", lambda exps, n, opts, walls: seen.append(walls) or {e.id: store.cost for e in exps})
    exps = [SimpleNamespace(id=i) for i in store.means]
    loop.run_auto(exps, SimpleNamespace(train_x=[0] * 10, test_x=[0] * 1000), None, RunOptions(), loop.AutoOptions(max_repeats=4), store.execute,
                  echo=lambda m: None, clock=lambda: store.now, device="cpu:Xeon, 2 cores")
    assert seen and seen[0] == {"a": [], "b": []}


# ------------------------------------------------------------------ the Ray executor


class InProcessRay:
    """Ray as run_many_ray and the loop's wiring use it: one node of `cpus` CPUs whose tasks run
    in this process, one at a time, when the driver waits for them."""

    def __init__(self, cpus: int = 2):
        self.cpus, self.inits, self.specs, self.pending, self.done = cpus, [], [], {}, {}

    def init(self, **kw):
        self.inits.append(kw)

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": float(self.cpus)}}]

    def cluster_resources(self):
        return {"CPU": float(self.cpus)}

    def remote(self, fn):
        ray = self

        class Task:
            def options(self, **kw):
                ray.task_options = kw
                return self

            def remote(self, spec):
                ref = len(ray.specs)
                ray.specs.append(spec)
                ray.pending[ref] = (fn, spec)
                return ref

        return Task()

    def wait(self, refs, num_returns=1, timeout=None):
        ready = [r for r in refs if r in self.done][:num_returns]
        for r in refs:
            if len(ready) >= num_returns:
                break
            if r in self.pending:
                fn, spec = self.pending.pop(r)
                self.done[r] = fn(spec)
                ready.append(r)
        return ready, [r for r in refs if r not in ready]

    def get(self, ref, timeout=None):
        return self.done[ref]

    def cancel(self, ref, force=False):
        self.pending.pop(ref, None)


@pytest.mark.slow
def test_the_loop_on_the_ray_executor_decides_a_large_gap(mine, monkeypatch):  # noqa: F811
    """`--repeats auto --executor ray` without a cluster: the loop's rounds go through
    run_many_ray (claims in the driver, a TaskSpec a task, the task's own one-run code) to a
    stand-in for Ray; the rounds keep its 2 CPUs busy, every task carries the loop's tags and the
    command's id, and the large gap is decided before the cap with no seed trained twice."""
    import harness.executors.ray as ray_exec
    from harness.auto.wiring import run_auto_command
    from harness.data.cifar_files import load_cifar10, resolve_data_dir
    from harness.recipes.catalogue import load_catalogue, select_targets
    from harness.tracking import Tracker

    d, env, where = mine
    fake_ray = InProcessRay(cpus=2)
    monkeypatch.setattr(ray_exec, "require_ray", lambda: fake_ray)
    monkeypatch.setattr(ray_exec, "sigterm_is_ctrl_c", lambda: None)  # this test process keeps its own handlers
    monkeypatch.setattr(ray_exec, "_node_name", lambda: "in-process/00000000")
    monkeypatch.setenv("HARNESS_STATE_DIR", env["HARNESS_STATE_DIR"])
    monkeypatch.chdir(REPO)
    exps = select_targets(load_catalogue(), [str(d / "quick.toml"), str(d / "frozen.toml")])
    data = load_cifar10(resolve_data_dir(where[1], download=False))
    tracker = Tracker(where[3])
    opts = RunOptions(epochs=1, max_train_images=200, progress=False, system_metrics=False, invocation="cmd-1")
    lines: list[str] = []
    outcomes = run_auto_command(exps, data, tracker, opts, loop.AutoOptions(max_repeats=8), 1, ray_exec.RayOptions(), echo=lines.append)
    text = "\n".join(lines)
    assert "the question is answered" in text and "quick better" in text, text
    assert fake_ray.inits and fake_ray.task_options["num_cpus"] == 1.0
    assert "round 1: training 6 run(s)" in text  # the first round: the fewest seeds a test can use, on both CPUs
    trained = [(s.exp.id, s.seed) for s in fake_ray.specs]
    assert len(trained) == len(set(trained)) < 16 and all(o.status == "finished" for o in outcomes)
    assert all(dict(s.opts.loop_tags)["repeats"] == "auto" and s.opts.max_threads == 1 and s.opts.invocation == "cmd-1" for s in fake_ray.specs)
    df = tracker.search_runs_df()
    assert len(df) == len(trained) and (df["status"] == "FINISHED").all()
    assert (df["tags.harness.node"] == "in-process/00000000").all() and (df["tags.harness.repeats"] == "auto").all()
    assert (df["tags.harness.invocation"] == "cmd-1").all() and df["tags.harness.auto_stop"].str.contains("answered").all()


# ------------------------------------------------------------------ two drivers


@pytest.mark.slow
def test_two_drivers_on_one_store_train_no_seed_twice_and_stop_at_the_cap(mine):  # noqa: F811
    """Two `--repeats auto` commands at once on one SQLite store, on a pair that can never be
    decided (the same network under two ids, margin 0: never tied, never different): between
    them each recipe gets exactly its cap of seeds, each trained once, and both say why they stopped."""
    d, env, where = mine
    cmd = ["run", "tutorial-base", d / "my-net.toml", "--repeats", "auto", "--max-repeats", "4", "--margin", "0", *where, *CAP]
    procs = [forkserver.popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO), **env}) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    for out in outs:
        stop = next(x for x in out.splitlines() if x.startswith("stopped after"))
        assert "every open recipe is at its cap (--max-repeats 4)" in stop, out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{d}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    client._tracking_client.store.engine.dispose()
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.status, r.data.tags.get("harness.experiment_id")) for r in runs]
    keys = collections.Counter((r.data.tags["harness.experiment_id"], int(r.data.tags["harness.seed"])) for r in runs)
    assert sorted(keys) == [(e, s) for e in ("my-net", "tutorial-base") for s in range(4)] and set(keys.values()) == {1}, keys
    by_command = collections.Counter(r.data.tags["harness.invocation"] for r in runs)
    assert len(by_command) <= 2  # each run names one of the two commands
    print("\nruns each driver trained:", sorted(by_command.values()), "; waited for the other:", ["held by another process" in o for o in outs])
