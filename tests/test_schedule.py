"""Runs start longest first, and the order changes nothing a run records."""

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
