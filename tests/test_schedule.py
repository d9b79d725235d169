"""Runs start longest first, side by side only as far as their threads fit in the cores, and the
order changes nothing a run records."""

from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.executors.schedule import expected_work, longest_first
from harness.recipes.catalogue import load_catalogue
from harness.runs.job import RunOptions


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


def test_the_plan_never_oversubscribes_the_cores_and_starts_the_longest_first():
    """Runs of 1, 2 and 8 threads on 2, 8 and 32 cores: at no moment do the runs in flight hold
    more cores than there are; the longest run starts first, at once, on its whole width; a
    narrow run never waits while a longer narrow one could have started; no core idles while a
    waiting run would fit."""
    import random

    from harness.executors.schedule import plan, width

    rng = random.Random(0)
    for cores in (2, 8, 32):
        for _ in range(200):
            n = rng.randint(1, 25)
            threads = [rng.choice([1, 1, 1, 2, 8]) for _ in range(n)]
            durations = sorted((rng.uniform(1, 100) for _ in range(n)), reverse=True)  # the queue: longest first
            widths = [width(t, cores) for t in threads]
            placed = plan(durations, widths, cores)
            assert sorted(p.run for p in placed) == list(range(n))
            assert placed[0].run == 0 and placed[0].start == 0 and placed[0].cores == widths[0]
            for p in placed:
                assert abs(p.end - p.start - durations[p.run]) < 1e-9 and p.cores == widths[p.run]
                busy = [q for q in placed if q.start <= p.start < q.end]
                assert sum(q.cores for q in busy) <= cores, (cores, p, busy)
                # every run that waited did so because it did not fit: at its start minus a moment, a
                # waiting run of the same or smaller width and longer work would have started first
                earlier = [q for q in placed if q.run < p.run and q.cores <= p.cores]
                assert all(q.start <= p.start for q in earlier), (p, earlier)
            for t in {p.start for p in placed} | {p.end for p in placed}:
                free = cores - sum(q.cores for q in placed if q.start <= t < q.end)
                assert all(q.cores > free for q in placed if q.start > t), (t, free)  # nothing that fits waits


def test_two_threads_on_two_cores_run_alone_and_one_thread_runs_pack_longest_first():
    from harness.executors.schedule import plan

    # cs598 (2 threads, 1,546 s), medium-vgg-bn (2, 623 s), then one-thread runs of 229, 60, 50, 40 s
    placed = {p.run: p for p in plan([1546, 623, 229, 60, 50, 40], [2, 2, 1, 1, 1, 1], cores=2)}
    assert (placed[0].start, placed[1].start) == (0, 1546)  # each VGG alone, on both cores, from its start
    assert placed[2].start == placed[3].start == 1546 + 623  # then the one-thread runs two at a time
    assert placed[4].start == placed[3].end and placed[5].start == placed[4].end  # longest first beside skl-cnn
    assert max(p.end for p in placed.values()) == 1546 + 623 + 229


def test_the_pool_starts_a_run_only_when_its_cores_are_free(monkeypatch):
    """The supervisor's dispatch: on 2 cores, with a one-thread run in flight, a waiting
    two-thread run is not handed to the idle worker, a one-thread run behind it is; once
    nothing else runs, the two-thread run starts."""
    from collections import deque
    from types import SimpleNamespace

    import harness.executors.pool as pool_mod

    sent = []
    conn = SimpleNamespace(send=sent.append)
    busy, idle = SimpleNamespace(task=0, ready=True, conn=conn), SimpleNamespace(task=None, ready=True, conn=conn)
    todo = [(SimpleNamespace(id=f"r{i}"), 0) for i in range(3)]
    pool = pool_mod._Pool(start=None, todo=todo, echo=print, jobs=2, widths=[1, 2, 1], cores=2, queue=deque([1, 2]), slots=[busy, idle])
    pool.dispatch()
    assert idle.task == 2 and [m[0] for m in sent] == [2] and list(pool.queue) == [1]  # r1 (2 threads) waits
    busy.task = idle.task = None
    pool.dispatch()
    assert [m[0] for m in sent] == [2, 1] and not pool.queue
    assert sum(s.task is not None for s in (busy, idle)) == 1  # alone on both cores


def test_a_runs_width_is_its_threads_within_the_machine_and_one_on_a_gpu(monkeypatch):
    import torch

    import harness.executors.schedule as schedule
    import harness.training.environment as env

    monkeypatch.setattr(env, "all_cores", lambda: 8)
    cat = load_catalogue()
    vgg, tut = cat["medium-vgg-bn"], cat["tutorial-base"]
    assert schedule.run_width(vgg, RunOptions(), 8) == 4 and schedule.run_width(tut, RunOptions(), 8) == 1
    assert schedule.run_width(tut, RunOptions(threads=64), 8) == 8  # pinned past the machine: all of it, alone
    monkeypatch.setattr(schedule, "resolve_device", lambda name: torch.device("cuda"))
    assert schedule.run_width(vgg, RunOptions(device="cuda"), 8) == 1  # GPU runs: --jobs alone says how many at once
