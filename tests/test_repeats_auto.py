"""`--repeats auto`: the loop above the executors (harness/auto/). Its rounds with a stand-in
store and executor (no training, seconds): a large gap decided well before the cap, an A/A pair
never called different, racing, the budget, a killed loop continued without training a seed twice.
Then end to end as a user runs it (`harness run ... --repeats auto`, tiny caps; marked slow)."""

from __future__ import annotations

import collections
import csv
import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from harness.auto import loop
from harness.auto.budget import fit_round, parse_budget, wave
from harness.auto.state import Seeds
from harness.errors import UsageError
from harness.runs.job import Outcome, RunOptions

from . import forkserver
from .test_bad_inputs import assert_one_line as one_line

REPO = Path(__file__).resolve().parents[1]


class FakeStore:
    """The store as the loop reads it, and an executor that 'trains' a seed by drawing its
    accuracy; refuses to train a seed twice. A clock that advances by what the seeds cost."""

    def __init__(self, means: dict[str, float], sd: float = 0.8, cost: float = 10.0, seed: int = 0, stop_after: int | None = None,
                 same_seed_same_number: bool = False):
        self.means, self.sd, self.cost, self.same, self.base = means, sd, cost, same_seed_same_number, seed
        self.rng = np.random.default_rng(seed)
        self.seeds = {i: Seeds() for i in means}
        self.trained: list[tuple[str, int]] = []
        self.now = 0.0
        self.stop_after = stop_after
        self.workers = 1

    def execute(self, todo):
        out = []
        for exp, s in todo:
            assert (exp.id, s) not in self.trained, f"{exp.id} seed {s} trained twice"
            if self.stop_after is not None and len(self.trained) >= self.stop_after:
                raise KeyboardInterrupt("killed mid-round")
            self.trained.append((exp.id, s))
            rng = np.random.default_rng([self.base, s]) if self.same else self.rng
            acc = float(rng.normal(self.means[exp.id], self.sd))
            self.seeds[exp.id].acc[s], self.seeds[exp.id].wall[s] = acc, self.cost
            self.now += self.cost / self.workers  # workers side by side
            out.append(Outcome(exp.id, s, "finished", f"run-{exp.id}-{s}", acc, self.cost))
        return out


@pytest.fixture
def fake(monkeypatch):
    def make(means, **kw):
        store = FakeStore(means, **kw)
        monkeypatch.setattr(loop, "seed_hashes", lambda e, data, opts, seeds: {})
        monkeypatch.setattr(loop, "with_aliases", lambda tracker, exps, data, opts, hashes: hashes)
        monkeypatch.setattr(loop, "read_state", lambda tracker, exps, hashes: {i: Seeds(dict(s.acc), dict(s.wall), dict(s.run), dict(s.device))
                                                                               for i, s in store.seeds.items()})
        monkeypatch.setattr(loop, "seed_costs", lambda exps, n, opts, walls: {e.id: store.cost for e in exps})
        return store

    return make


def run(store, auto, lines=None):
    exps = [SimpleNamespace(id=i) for i in store.means]
    return loop.run_auto(exps, SimpleNamespace(train_x=[0] * 10, test_x=[0] * 1000), None, RunOptions(), auto, store.execute,
                         echo=(lines.append if lines is not None else lambda m: None), clock=lambda: store.now)


def test_a_large_gap_is_decided_well_before_the_cap(fake):
    store = fake({"vgg": 90.0, "tutorial": 70.0}, sd=1.5)
    lines = []
    r = run(store, loop.AutoOptions(max_repeats=10), lines)
    assert r.reason == loop.ANSWERED and r.decisions.pairs[0].verdict == "a_better"
    assert max(len(s.acc) for s in r.seeds.values()) <= 4
    assert lines[0].startswith("start: 2 open") and any("closed: vgg > tutorial" in x for x in lines)
    assert "the question is answered" in lines[-1]


def test_an_aa_pair_is_never_called_different(fake):
    """Two recipes equal only on average (independent seed noise): 'better' at most alpha of the
    time and the loop ends tied or at the cap. The same recipe under two ids (a seed gives the
    same number under either id, as training does): differences all 0, yet the interval keeps
    the width of half a test image's standard error (accuracies move in steps of one image), so
    the pair is tied on 4 seeds, not on a zero-width interval at 3."""
    store = fake({"tutorial-base": 60.0, "my-net": 60.0}, sd=0.8, same_seed_same_number=True)
    r = run(store, loop.AutoOptions(max_repeats=8))
    p = r.decisions.pairs[0]
    assert r.reason == loop.ANSWERED and p.verdict == "tied" and len(r.seeds["my-net"].acc) == 4 and p.hi - p.lo > 0.4
    ends, wrong = [], 0
    for k in range(300):
        store = fake({"tutorial-base": 60.0, "my-net": 60.0}, sd=0.8, seed=k)
        r = run(store, loop.AutoOptions(max_repeats=8))
        wrong += r.decisions.pairs[0].verdict.endswith("better")
        ends.append(r.reason if not r.decisions.pairs[0].verdict.endswith("better") else "wrong")
    assert wrong / 300 <= 0.05 and ends.count(loop.CAP) > 250


def test_racing_a_recipe_confidently_below_stops_getting_seeds(fake):
    store = fake({"a": 80.0, "b": 80.3, "far": 40.0}, sd=0.8, seed=3)
    r = run(store, loop.AutoOptions(max_repeats=10, workers=3))
    assert r.decisions.below.get("far") in ("a", "b")
    assert len(r.seeds["far"].acc) < len(r.seeds["a"].acc)


def test_the_budget_starts_no_run_that_would_not_finish(fake):
    store = fake({"a": 70.0, "b": 70.2}, sd=0.8, cost=100.0)
    r = run(store, loop.AutoOptions(max_repeats=10, budget_s=650.0))
    assert r.reason == loop.BUDGET and store.now <= 650.0 and len(store.trained) == 6


def test_killed_mid_loop_a_rerun_continues_and_trains_no_seed_twice(fake):
    store = fake({"a": 90.0, "b": 70.0, "c": 70.1}, sd=1.0, stop_after=5)
    with pytest.raises(KeyboardInterrupt):
        run(store, loop.AutoOptions(max_repeats=10))
    done = list(store.trained)
    store.stop_after = None
    lines = []
    r = run(store, loop.AutoOptions(max_repeats=10), lines)  # FakeStore.execute asserts no seed twice
    assert store.trained[: len(done)] == done and lines[0].startswith("start:") and "seeds a 2, b 2, c 1" in lines[0]
    assert all(sorted(s.acc) == list(range(len(s.acc))) for s in r.seeds.values())  # each recipe's seeds 0..n-1, no gaps


def test_budget_and_round_fitting():
    assert parse_budget("2h") == 7200 and parse_budget("30m") == 1800 and parse_budget("1h30m") == 5400 and parse_budget(None) is None
    for bad in ("2 hours", "soon", "0m", "5"):
        with pytest.raises(UsageError):
            parse_budget(bad)
    kept, eta = fit_round(["a", "b", "c", "d"], {"a": 50, "b": 50, "c": 50, "d": 500}, workers=2, left_s=120)
    assert kept == ["a", "b", "c"] and eta == 100
    assert wave(["a", "b", "c", "a", "b"], {"a": 50, "b": 50, "c": 50}, workers=2, most_s=100) == (["a", "b", "c", "a"], 100)


def test_a_first_estimate_far_too_low_does_not_overshoot_the_budget_by_more_than_a_wave(fake, monkeypatch):
    """The cost model says 10 s a seed, they take 100 s: waves of a quarter of what is left
    recalibrate from the store's own times and stop in time."""
    store = fake({"a": 70.0, "b": 70.2, "c": 70.1, "d": 69.9}, sd=0.8, cost=100.0)
    store.workers = 2
    monkeypatch.setattr(loop, "seed_costs", lambda exps, n, opts, walls: {e.id: (100.0 if walls.get(e.id) else 10.0) for e in exps})
    r = run(store, loop.AutoOptions(max_repeats=10, budget_s=900.0, workers=2))
    assert r.reason == loop.BUDGET and store.now <= 900.0


# ------------------------------------------------------------------ as a user runs it


def harness(*args, cwd, env=None):
    """`harness ARGS` as a process of its own, forked from tests/forkserver.py."""
    return forkserver.run(args, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=600)


def test_auto_options_are_checked_before_anything_runs(tmp_path):
    one_line(harness("run", "tutorial-base", "--max-repeats", "5", cwd=tmp_path), 2, "--max-repeats only apply with --repeats auto")
    bad = harness("run", "tutorial-base", "--repeats", "some", cwd=tmp_path)  # click's own usage error, as for every option's value
    assert bad.returncode == 2 and "neither a whole number of seeds" in bad.stderr and "Traceback" not in bad.stderr
    one_line(harness("run", "tutorial-base", "tutorial-c16", "--repeats", "auto", "--budget", "soon", cwd=tmp_path), 2, "--budget 'soon'")
    one_line(harness("run", "tutorial-base", "--repeats", "auto", cwd=tmp_path), 2, "at least two")


CAP = ["--epochs", "1", "--max-train-images", "200", "--no-progress", "--no-system-metrics", "--jobs", "1"]


@pytest.fixture
def mine(tmp_path, synthetic_root):
    """tutorial-base as a user's own recipe (same network, other id), plus a fast learner and a
    frozen one (a large gap), on the synthetic images."""
    env = {"HARNESS_STATE_DIR": str(tmp_path / "state")}
    assert harness("new", "my-net", "--like", "tutorial-base", "--dir", tmp_path, cwd=tmp_path, env=env).returncode == 0
    spec = (tmp_path / "my-net.toml").read_text()
    (tmp_path / "quick.toml").write_text(spec.replace('id = "my-net"', 'id = "quick"').replace("lr = 0.001", "lr = 0.02"))
    (tmp_path / "frozen.toml").write_text(spec.replace('id = "my-net"', 'id = "frozen"').replace("lr = 0.001", "lr = 0.0000001"))
    return tmp_path, env, ["--data-dir", synthetic_root, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]


@pytest.mark.slow
def test_aa_pair_end_to_end_is_never_called_different(mine, empty_store):
    d, env, where = mine
    shutil.copyfile(empty_store, d / "mlflow.db")  # (conftest: the schema built once; the loop is what is checked)
    p = harness("run", "tutorial-base", d / "my-net.toml", "--repeats", "auto", "--max-repeats", "3", *where, *CAP, cwd=REPO, env=env)
    assert p.returncode == 0, p.stderr
    # the same network and seeds give the same numbers: tied as soon as a verdict is possible (3 seeds), else open at the cap
    assert "every open recipe is at its cap (--max-repeats 3)" in p.stdout or "the question is answered" in p.stdout
    assert "better" not in p.stdout.split("seeds and time per recipe")[1]
    r = harness("report", "--tracking-uri", f"sqlite:///{d}/mlflow.db", "--out", d / "r.html", "--csv", d / "r.csv", cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    [row] = list(csv.DictReader(open(d / "r-decisions.csv")))
    assert {row["row_a"], row["row_b"]} == {"tutorial-base", "my-net"} and row["verdict"] in ("tied", "undecided")
    assert row["n_a"] == row["n_b"] == "3" and float(row["diff_lo"]) <= 0 <= float(row["diff_hi"])
    assert "Decided (anytime-valid)" in (d / "r.html").read_text()


@pytest.mark.slow
def test_large_gap_end_to_end_killed_then_continued_decides_before_the_cap(mine, empty_store):
    d, env, where = mine
    shutil.copyfile(empty_store, d / "mlflow.db")  # (conftest: the schema built once; the loop is what is checked)
    cmd = ["run", d / "quick.toml", d / "frozen.toml", "--repeats", "auto", "--max-repeats", "8", *where, *CAP]
    proc = forkserver.popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env}, start_new_session=True)
    seen = []
    for line in proc.stdout:  # Ctrl-C as soon as the first round is in the store and the second has begun
        seen.append(line)
        if line.startswith("round 2: training"):
            # at once, not after a pause: on the fork server a whole loop of these tiny runs ends
            # within 1.5 s (CI saw the loop finish before a Ctrl-C sent 1.5 s after this line)
            os.killpg(proc.pid, signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and "interrupted" in rest, "".join(seen) + rest  # stopped mid-round, as Ctrl-C does
    # what the store holds at the interrupt (how far round 2 got depends on the machine's load)
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{d}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    client._tracking_client.store.engine.dispose()
    done = collections.Counter(r.data.tags["harness.experiment_id"] for r in runs if r.info.status == "FINISHED")
    assert done["quick"] >= 2 and done["frozen"] >= 2, done  # round 1 is in the store
    again = harness(*cmd, cwd=REPO, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    start = next(x for x in again.stdout.splitlines() if x.startswith("start:"))
    # continued from the store, not from scratch: it starts from exactly the finished seeds there
    assert f"seeds quick {done['quick']}, frozen {done['frozen']} " in start, (start, done)
    assert "the question is answered" in again.stdout and "quick better" in again.stdout
    r = harness("report", "--tracking-uri", f"sqlite:///{d}/mlflow.db", "--out", d / "r.html", "--csv", d / "r.csv", cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    [row] = list(csv.DictReader(open(d / "r-decisions.csv")))
    assert row["verdict"] in ("a_better", "b_better") and int(row["n_a"]) < 8
    summary = list(csv.DictReader(open(d / "r.csv")))
    for s in summary:  # no seed counted or superseded twice: each seed trained once
        assert s["superseded"] == "0"


def test_a_round_whose_runs_are_all_skipped_stops_with_the_reason_instead_of_looping(fake):
    """A run the executor counts as done but the loop cannot see (an old hash, say) comes back
    "skipped" every round: the loop says so and stops rather than planning the same seeds forever."""
    store = fake({"a": 70.0, "b": 70.2})
    calls = []

    def skip(todo):
        calls.append(todo)
        assert len(calls) < 5, "still planning the same seeds"
        return [Outcome(e.id, s, "skipped", "r", reason="identical finished run exists") for e, s in todo]

    store.execute = skip
    lines = []
    r = run(store, loop.AutoOptions(max_repeats=10), lines)
    assert r.reason == loop.STUCK and len(calls) == 1
    assert "a round finished no seed (a seed 0 skipped" in lines[-1] and "identical finished run exists" in lines[-1]
    store = fake({"a": 70.0, "b": 70.2})  # a fault that stops each run resumable: said once, not retried forever
    store.execute = lambda todo: [Outcome(e.id, s, "resumable", "r", reason="disk full; run the same command again") for e, s in todo]
    r = run(store, loop.AutoOptions(max_repeats=10))
    assert r.reason == loop.STUCK and "resumable: disk full" in r.detail and r.rounds == 1


def test_runs_held_by_another_driver_are_waited_for_then_the_loop_goes_on(fake, monkeypatch):
    """A second driver on the store trains the seed this one planned: this one reads the store
    again until that seed is finished, then continues (and stops, bounded, if it never is)."""
    store = fake({"a": 90.0, "b": 70.0}, sd=1.0)
    other = FakeStore({"a": 90.0, "b": 70.0}, sd=1.0, seed=7)
    held: list = []
    trains = store.execute

    def execute(todo):  # the other driver holds seed 0 of a: skipped here, trained there
        mine = [(e, s) for e, s in todo if (e.id, s) != ("a", 0) or ("a", 0) in store.trained]
        held.extend((e, s) for e, s in todo if (e, s) not in mine)
        return trains(mine) + [Outcome(e.id, s, "skipped", "r", reason="being trained by host:123") for e, s in todo if (e, s) not in mine]

    def sleep(s):
        store.now += s
        for e, seed in held:  # the other driver's run finishes while this one waits
            store.seeds[e.id].acc[seed], store.seeds[e.id].wall[seed] = other.means[e.id], 10.0
            store.trained.append((e.id, seed))
        held.clear()

    store.execute = execute
    exps = [SimpleNamespace(id=i) for i in store.means]
    lines = []
    # round 1 trains a1, b0, b1: progress; whichever round finds only a0 held waits for it
    store.seeds["b"].acc.update({0: 70.0, 1: 71.0})
    store.seeds["a"].acc.update({1: 90.5})
    r = loop.run_auto(exps, SimpleNamespace(train_x=[0]), None, RunOptions(), loop.AutoOptions(max_repeats=10), store.execute,
                      echo=lines.append, clock=lambda: store.now, sleep=sleep)
    assert r.reason == loop.ANSWERED and 0 in r.seeds["a"].acc and any("held by another process" in x for x in lines)

    store = fake({"a": 70.0, "b": 70.2})
    store.execute = lambda todo: [Outcome(e.id, s, "skipped", "r", reason="being trained by host:123") for e, s in todo]
    slept = []
    r = loop.run_auto([SimpleNamespace(id=i) for i in store.means], SimpleNamespace(train_x=[0]), None, RunOptions(),
                      loop.AutoOptions(max_repeats=10), store.execute, echo=lines.append, clock=lambda: store.now, sleep=slept.append)
    assert r.reason == loop.HELD and sum(slept) <= loop.WAIT_MAX_S and "host:123" in r.detail


def test_the_loop_counts_a_seed_stored_under_an_old_hash_as_the_executor_does(synthetic_root, store):
    """A finished run recorded before effective overrides (`--epochs 5` on a 2-epoch recipe) is
    skipped by the executor as done: the loop's state must hold it too."""
    from harness.auto.state import read_state, seed_hashes, with_aliases
    from harness.data.cifar_files import load_cifar10, resolve_data_dir
    from harness.recipes.catalogue import load_catalogue
    from harness.recipes.spec import config_hash
    from harness.tracking import Tracker

    exp = load_catalogue()["tutorial-base"]
    data = load_cifar10(resolve_data_dir(str(synthetic_root), download=False))
    t = Tracker(store)
    tags = {"harness.config_hash": config_hash(exp, {"epochs": 5, "max_train_images": 100000}, 1, data.fingerprint),
            "harness.experiment_id": "tutorial-base", "harness.seed": 1, "harness.data_fingerprint": data.fingerprint}
    rid = t.start_run("tutorial-base", tags, {"override.epochs": 5, "override.max_train_images": 100000, "precision": "fp32"})
    t.log_metrics(rid, {"test_acc": 41.5}, 0)
    t.terminate(rid, "FINISHED")
    opts = RunOptions()
    hashes = {exp.id: seed_hashes(exp, data, opts, range(0, 4))}
    assert read_state(t, [exp], hashes)[exp.id].acc == {}  # the current hash alone misses it
    assert read_state(t, [exp], with_aliases(t, [exp], data, opts, hashes))[exp.id].acc == {1: 41.5}


def test_a_failed_recipe_stays_in_the_family_and_is_never_answered_away(fake):
    """A recipe whose seed fails keeps its pairs (undecided, the family's size fixed): a two-recipe
    loop ends saying which recipe failed and why, never "answered"; in a three-recipe loop the
    other two still get their seeds."""
    store = fake({"a": 70.0, "b": 70.0})
    trains = store.execute
    store.execute = lambda todo: trains([x for x in todo if x[0].id != "b"]) + [
        Outcome("b", s, "failed", None, reason="loss diverged") for e, s in todo if e.id == "b"]
    lines = []
    r = run(store, loop.AutoOptions(max_repeats=10), lines)
    assert r.reason == loop.FAILED and r.decisions.m == 1 and r.decisions.pairs[0].verdict == "undecided"
    assert "recipe b failed: loss diverged" in lines[-1] and "answered" not in lines[-1]

    store = fake({"a": 90.0, "b": 70.0, "c": 70.0}, sd=1.0)
    trains = store.execute
    store.execute = lambda todo: trains([x for x in todo if x[0].id != "c"]) + [
        Outcome("c", s, "failed", None, reason="out of memory") for e, s in todo if e.id == "c"]
    r = run(store, loop.AutoOptions(max_repeats=10))
    assert r.decisions.m == 3 and r.reason == loop.FAILED and "recipe c failed: out of memory" in r.detail
    assert next(p for p in r.decisions.pairs if {p.a, p.b} == {"a", "b"}).verdict == "a_better"
    assert len(r.seeds["a"].acc) < 10, "a's only open pair is with the failed c: more seeds of a cannot close it"


def _loop_store(tmp_path, monkeypatch, looked: bool, empty_store):
    """Two recipes, 4 seeds each, 10 points apart, written as the harness records them; with
    `looked`, as `--repeats auto` at alpha 0.2, margin 1.0 leaves them. The store starts as a copy
    of the session's empty one (conftest.empty_store: MLflow's schema migrations cost seconds)."""
    from harness.recipes.catalogue import load_catalogue
    from harness.tracking import Tracker

    from .test_report_mixtures import write_run

    monkeypatch.chdir(REPO)
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    store = f"sqlite:///{tmp_path}/mlflow.db"
    t = Tracker(store, "cifar10-harness")
    cat = load_catalogue()
    for exp_id, mean in (("tutorial-base", 50.0), ("fastai-simplenet", 60.0)):
        for s in range(4):
            rid = write_run(t, exp_id, s, mean + (0.3, -0.2, 0.1, -0.4)[s], [40.0] * cat[exp_id].train.epochs, 1.0)
            if looked:
                t.set_tags(rid, {"harness.repeats": "auto", "harness.auto_alpha": "0.2", "harness.auto_margin": "1.0",
                                 "harness.auto_stop": "stopped after 2 round(s), 10s: the question is answered."})
    return store


def _report(store, tmp_path, **kw):
    import pandas as pd

    from harness.report import build_report

    out = build_report(store, "cifar10-harness", str(tmp_path / "r.html"), str(tmp_path / "r.csv"), "http://x", **kw)
    return (out.read_text(), pd.read_csv(tmp_path / "r-tests.csv", keep_default_na=False),
            pd.read_csv(tmp_path / "r-decisions.csv", keep_default_na=False))


def test_on_seeds_a_loop_chose_the_report_shows_no_fixed_n_verdicts_and_decides_as_the_loop_did(tmp_path, monkeypatch, empty_store):
    from harness.report.decided import LOOKED

    store = _loop_store(tmp_path, monkeypatch, looked=True, empty_store=empty_store)
    html, tests, dec = _report(store, tmp_path)
    assert tests["verdict"].tolist() == [LOOKED] and tests["p_seeds"].tolist() == [""] and tests["p_holm"].tolist() == [""]
    assert html.count('<span class="tag real">real</span>') == 1  # the one in the prose that explains the label, no verdict
    assert "seed counts chosen by `--repeats auto`" in html and LOOKED in html
    assert dec["m"].tolist() == [1] and dec["threshold"].tolist() == [5.0]  # the loop's alpha 0.2: e >= 1/0.2
    assert "alpha 0.2, margin 1.0 (the loop&#39;s)" in html and "the question is answered" in html[html.index('id="decided-loop"'):]
    _, _, dec = _report(store, tmp_path, alpha=0.01)
    assert dec["threshold"].tolist() == [100.0]  # harness report --alpha overrides


def test_a_store_of_fixed_seed_counts_keeps_its_fixed_n_verdicts(tmp_path, monkeypatch, empty_store):
    html, tests, dec = _report(_loop_store(tmp_path, monkeypatch, looked=False, empty_store=empty_store), tmp_path)
    assert tests["verdict"].tolist() == ["real"] and float(tests["p_seeds"][0]) < 0.05
    assert dec["threshold"].tolist() == [20.0] and "(default;" in html and 'id="decided-looked"' not in html


def test_the_loop_records_on_its_runs_that_it_chose_their_seeds_and_why_it_stopped(fake):
    """Each run the loop trains carries harness.repeats=auto and the loop's alpha and margin (set
    at its start, so a killed loop's runs carry them too); at the end every run its verdicts rest
    on records the stop line. The report reads these (decided.loop_record)."""
    import torch

    from harness.recipes.catalogue import load_catalogue
    from harness.runs.job import Job
    from harness.runs.run_record import run_record
    from harness.auto.state import loop_tags

    exp = load_catalogue()["tutorial-base"]
    opts = RunOptions(loop_tags=loop_tags(0.1, 0.25))
    data = SimpleNamespace(fingerprint="f" * 16, root=Path("/d"), train_x=range(10), test_x=range(10))
    job = Job(exp, data, None, opts, 3, torch.device("cpu"), "h", "tutorial-base-s3", exp.train.epochs, overrides={}, train_images=10)
    tags, _, _ = run_record(job, SimpleNamespace(n_train=10, val_is_test=True, val_x=[], test_x=range(10)), 1)
    assert tags["harness.repeats"] == "auto" and float(tags["harness.auto_alpha"]) == 0.1 and float(tags["harness.auto_margin"]) == 0.25

    store = fake({"a": 90.0, "b": 70.0}, sd=1.0)
    for s in store.seeds.values():
        s.run.update({k: f"r{k}" for k in range(3)})
    written = {}
    tracker = SimpleNamespace(set_tags=lambda rid, t: written.__setitem__(rid, t))
    r = loop.run_auto([SimpleNamespace(id=i) for i in store.means], SimpleNamespace(train_x=[0]), tracker, RunOptions(),
                      loop.AutoOptions(max_repeats=10, alpha=0.1), store.execute, echo=lambda m: None, clock=lambda: store.now)
    assert r.reason == loop.ANSWERED and written and all(t["harness.auto_alpha"] == "0.1" and "question is answered" in t["harness.auto_stop"]
                                                          for t in written.values())


def test_only_runs_the_loop_trained_say_a_loop_chose_their_seeds(fake):
    """A loop run on seeds that already answer the question trains nothing: it chose no seed, so
    the runs it read keep their fixed-n record (no harness.repeats=auto; the report would hide
    their Welch tests), though they note the loop's level and stop. A loop that trains marks
    the runs it trained, and only those."""
    store = fake({"a": 90.0, "b": 70.0}, sd=1.0)
    for i, base in (("a", 90.0), ("b", 70.0)):  # five seeds a side, 20 points apart: answered at the start
        store.seeds[i].acc.update({k: base + (0.3, -0.2, 0.1, -0.4, 0.2)[k] for k in range(5)})
        store.seeds[i].run.update({k: f"old-{i}{k}" for k in range(5)})
    written = {}
    tracker = SimpleNamespace(set_tags=lambda rid, t: written.__setitem__(rid, t))
    exps = [SimpleNamespace(id=i) for i in store.means]
    r = loop.run_auto(exps, SimpleNamespace(train_x=[0]), tracker, RunOptions(), loop.AutoOptions(), store.execute, echo=lambda m: None,
                      clock=lambda: store.now)
    assert r.reason == loop.ANSWERED and store.trained == [] and len(written) == 10
    assert all("harness.repeats" not in t and "question is answered" in t["harness.auto_stop"] for t in written.values())

    store = fake({"a": 90.0, "b": 70.0}, sd=1.0)
    for i in store.seeds:
        store.seeds[i].acc.update({0: store.means[i]})
        store.seeds[i].run.update({0: f"old-{i}0"})

    def execute(todo):  # as the store records them: each trained seed's run
        out = store.execute(todo)
        for o in out:
            store.seeds[o.experiment_id].run[o.seed] = o.run_id
        return out

    written.clear()
    r = loop.run_auto(exps, SimpleNamespace(train_x=[0]), tracker, RunOptions(), loop.AutoOptions(), execute, echo=lambda m: None,
                      clock=lambda: store.now)
    assert store.trained and {rid for rid, t in written.items() if t.get("harness.repeats") == "auto"} == {f"run-{i}-{k}" for i, k in store.trained}
    assert "harness.repeats" not in written["old-a0"] and "harness.repeats" not in written["old-b0"]


def test_with_jobs_a_round_is_timed_on_the_pools_own_packing(fake):
    """--jobs 2 on 2 cores with recipes whose runs each hold both cores (run_width 2): the pool
    trains them one after the other, so a round's estimate and the budget must not count them as
    side by side (which overshot the budget by a factor of up to the jobs)."""
    assert fit_round(["a", "b"], {"a": 100.0, "b": 100.0}, 2, None)[1] == 100.0  # independent slots
    assert fit_round(["a", "b"], {"a": 100.0, "b": 100.0}, 2, None, {"a": 2, "b": 2}, 2)[1] == 200.0
    assert fit_round(["a", "b"], {"a": 100.0, "b": 100.0}, 2, 150.0, {"a": 2, "b": 2}, 2)[0] == ["a"]
    assert fit_round(["a", "b"], {"a": 100.0, "b": 100.0}, 2, None, {"a": 1, "b": 1}, 2)[1] == 100.0  # one core each: side by side
    assert wave(["a", "b", "a", "b"], {"a": 100.0, "b": 100.0}, 2, 250.0, {"a": 2, "b": 2}, 2) == (["a", "b"], 200.0)

    store = fake({"a": 70.0, "b": 70.2}, sd=0.8, cost=100.0)  # its clock: one run after the other, as the pool runs them
    r = run(store, loop.AutoOptions(max_repeats=10, budget_s=650.0, workers=2, widths={"a": 2, "b": 2}, cores=2))
    assert r.reason == loop.BUDGET and store.now <= 650.0 and len(store.trained) == 6
