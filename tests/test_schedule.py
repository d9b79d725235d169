"""Runs start longest first, and the order changes nothing a run records."""

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.executors.schedule import expected_work, longest_first
from harness.recipes.catalogue import load_catalogue
from harness.runs.job import RunOptions
from harness.training.environment import all_cores


def test_the_catalogue_starts_with_its_longest_runs():
    """On the subset, the suite measured cs598-vgg-bn-aug 2,713 s, medium-vgg-bn 1,109 s,
    skl-cnn 229 s and every other run under 65 s: they must start in that order."""
    order = [e.id for e in longest_first(list(load_catalogue().values()), 5170, RunOptions())]
    assert order[:3] == ["cs598-vgg-bn-aug", "medium-vgg-bn", "skl-cnn"]
    assert order[-1] == "fastai-simplenet"


def test_caps_and_repeats_count_in_the_expected_work():
    cat = load_catalogue()
    vgg, tut = cat["cs598-vgg-bn-aug"], cat["tutorial-base"]
    full = expected_work(vgg, 50_000, RunOptions())
    assert expected_work(vgg, 50_000, RunOptions(epochs=5)) == full / 10  # 5 of its 50 epochs
    assert expected_work(tut, 50_000, RunOptions(repeats=3)) == 3 * expected_work(tut, 50_000, RunOptions())
    # capped to 40 images, one batch-256 step is more than ten batch-4 ones only for a big net
    order = [e.id for e in longest_first([cat["fastai-simplenet"], tut], 50_000, RunOptions(max_train_images=40))]
    assert order == ["tutorial-base", "fastai-simplenet"]


def _train(store, synthetic_root, ids):
    r = CliRunner().invoke(main, ["run", *ids, "--data-dir", str(synthetic_root), "--tracking-uri", store, "--epochs", "1",
                                  "--max-train-images", "40", "--no-progress", "--no-system-metrics"])
    assert r.exit_code == 0, r.output
    c = MlflowClient(store)
    runs = c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id], order_by=["attributes.start_time ASC"])
    return r.output, runs


def _recorded(run):
    return run.data.tags["harness.config_hash"], dict(run.data.params)


def test_order_is_by_work_and_records_do_not_depend_on_it(synthetic_root, store, tmp_path):
    out, runs = _train(store, synthetic_root, ["fastai-simplenet", "tutorial-base"])
    # asked alphabetically; tutorial-base (10 steps of 4) has more work than one step of 40
    assert [r.data.tags["harness.experiment_id"] for r in runs] == ["tutorial-base", "fastai-simplenet"]
    other = f"sqlite:///{tmp_path}/other.db"
    _, again = _train(other, synthetic_root, ["tutorial-base", "fastai-simplenet"])
    by_id = {r.data.tags["harness.experiment_id"]: _recorded(r) for r in again}
    for r in runs:
        assert _recorded(r) == by_id[r.data.tags["harness.experiment_id"]]
    assert set(by_id) == {"tutorial-base", "fastai-simplenet"}


def test_the_pool_shares_free_cores_once_its_queue_is_empty(monkeypatch):
    """While runs wait each worker keeps cores // jobs; once the queue is empty the runs still
    training split every core between them."""
    from collections import deque
    from types import SimpleNamespace

    import harness.executors.pool as pool_mod

    monkeypatch.setattr(pool_mod, "all_cores", lambda: 8)
    share = SimpleNamespace(value=2)
    busy = [SimpleNamespace(task=0), SimpleNamespace(task=1), SimpleNamespace(task=2), SimpleNamespace(task=None)]
    pool = pool_mod._Pool(start=None, todo=[], echo=print, jobs=4, share=share, queue=deque([5, 6]), slots=busy)
    pool.share_cores()
    assert share.value == 2  # runs still queued: each keeps its share
    pool.queue.clear()
    pool.share_cores()
    assert share.value == 2  # 8 cores over 3 runs still training
    busy[1].task = busy[2].task = None
    pool.share_cores()
    assert share.value == 8  # the last run takes every core


def test_a_run_follows_free_cores_between_epochs_within_its_policy(monkeypatch):
    import torch

    from harness.runs.one_run import follow_free_cores

    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    said = []
    free = [1]

    def job(policy, pinned=None):
        from types import SimpleNamespace

        return SimpleNamespace(cores=lambda: free[0], opts=RunOptions(threads=pinned), device=torch.device("cpu"), policy_threads=policy,
                               threads=1, run_name="r", echo=said.append)

    big, small, pinned = job(policy=4), job(policy=1), job(policy=1, pinned=1)
    for j in (big, small, pinned):
        follow_free_cores(j)
    assert set_to == [] and big.threads == 1  # nothing freed yet
    free[0] = 3
    for j in (big, small, pinned):
        follow_free_cores(j)
    assert big.threads == 3 and set_to == [3] and said  # a big recipe takes the freed cores
    assert small.threads == 1 and pinned.threads == 1  # a small one stays on its one thread; --threads pins
    free[0] = 8
    follow_free_cores(big)
    assert big.threads == 4  # never more than its policy


@pytest.mark.slow
@pytest.mark.skipif(all_cores() < 2, reason="needs 2 cores to free one")
def test_with_jobs_the_long_run_takes_the_core_a_short_one_freed(synthetic_root, store):
    """Two runs side by side on 2 cores, one thread each; when the short one ends, the long one
    (a VGG, whose policy is every core) trains its later epochs on both, and records it."""
    r = CliRunner().invoke(main, ["run", "fastai-simplenet", "medium-vgg-bn", "--jobs", "2", "--data-dir", str(synthetic_root),
                                  "--tracking-uri", store, "--epochs", "8", "--max-train-images", "400", "--no-system-metrics"])
    assert r.exit_code == 0, r.output
    c = MlflowClient(store)
    [vgg] = [x for x in c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id])
             if x.data.tags["harness.experiment_id"] == "medium-vgg-bn"]
    threads = [m.value for m in sorted(c.get_metric_history(vgg.info.run_id, "threads"), key=lambda m: m.step)]
    assert threads[0] == 1 and threads[-1] == all_cores(), threads
    assert vgg.data.params["threads"] == "1"  # the param: what it started on
