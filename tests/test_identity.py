"""A run's identity follows what it trains: `--epochs` at or above the recipe's length and
`--max-train-images` at or above the data's size are no cap and no new configuration, and runs
recorded under the older hash of the same configuration are not trained again."""

from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from harness.cli import main


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def finished(store):
    c = MlflowClient(store)
    exp = c.get_experiment_by_name("cifar10-harness")
    return [r for r in c.search_runs([exp.experiment_id]) if r.info.status == "FINISHED"]


def test_a_cap_that_caps_nothing_is_the_recipe_itself(synthetic_root, store):
    common = ["--data-dir", synthetic_root, "--tracking-uri", store, "--no-progress"]
    # tutorial-base trains 2 epochs; the synthetic set has 600 training images
    r = cli("run", "tutorial-base", "--max-train-images", 600, *common)
    assert r.exit_code == 0, r.output
    [run] = finished(store)
    assert run.data.tags["harness.capped"] == "false", "a cap at the data's size caps nothing"
    assert run.data.params["override.max_train_images"] == "none" and run.data.params["data.n_train_available"] == "600"
    assert run.data.tags["harness.execution"] == "one-by-one"
    for same in (["--epochs", 2], ["--epochs", 9], ["--max-train-images", 100000], []):
        r = cli("run", "tutorial-base", *same, *common)
        assert r.exit_code == 0 and "identical finished run exists" in r.output, (same, r.output)
    assert len(finished(store)) == 1
    # a real cap is a new configuration, tagged capped
    r = cli("run", "tutorial-base", "--epochs", 1, "--max-train-images", 100, *common)
    assert r.exit_code == 0 and "identical" not in r.output, r.output
    capped = [x for x in finished(store) if x.info.run_id != run.info.run_id]
    assert len(capped) == 1 and capped[0].data.tags["harness.capped"] == "true"
    assert capped[0].data.tags["harness.config_hash"] != run.data.tags["harness.config_hash"]


def test_a_run_hashed_before_the_fix_is_not_trained_again(synthetic_root, store):
    """Before effective overrides, `--epochs 5` on a 2-epoch recipe was hashed with {"epochs": 5}:
    that finished run still counts as done for the same command after upgrading."""
    from harness.data.cifar_files import load_cifar10, resolve_data_dir
    from harness.recipes.catalogue import load_catalogue
    from harness.recipes.spec import config_hash
    from harness.tracking import Tracker

    exp = load_catalogue()["tutorial-base"]
    fp = load_cifar10(resolve_data_dir(str(synthetic_root), download=False)).fingerprint
    legacy = config_hash(exp, {"epochs": 5}, 0, fp)
    assert legacy != config_hash(exp, {}, 0, fp)
    t = Tracker(store)
    rid = t.create_run("tutorial-base", {"harness.config_hash": legacy, "harness.experiment_id": "tutorial-base", "harness.seed": 0}).run_id
    t.terminate(rid, "FINISHED")
    r = cli("run", "tutorial-base", "--epochs", 5, "--data-dir", synthetic_root, "--tracking-uri", store, "--no-progress")
    assert r.exit_code == 0 and "identical finished run exists" in r.output, r.output
    assert [x.info.run_id for x in finished(store)] == [rid]


def test_an_old_run_is_matched_by_what_it_trained_not_by_the_flags_given(synthetic_root, store):
    """Before effective overrides, `--epochs 5 --max-train-images 100000` on tutorial-base (2
    epochs, 600 images) was hashed with those flags. After upgrading, any command that trains the
    same (no flag, `--epochs 9`) finds it; a real cap recorded then (`--epochs 1`) is not the recipe."""
    from harness.data.cifar_files import load_cifar10, resolve_data_dir
    from harness.recipes.catalogue import load_catalogue
    from harness.recipes.spec import config_hash
    from harness.tracking import Tracker

    exp = load_catalogue()["tutorial-base"]
    fp = load_cifar10(resolve_data_dir(str(synthetic_root), download=False)).fingerprint
    t = Tracker(store)

    def old_run(seed, epochs, images):
        given = {"epochs": epochs, **({"max_train_images": images} if images else {})}
        tags = {"harness.config_hash": config_hash(exp, given, seed, fp), "harness.experiment_id": "tutorial-base", "harness.seed": seed,
                "harness.data_fingerprint": fp}
        rid = t.start_run("tutorial-base", tags, {"override.epochs": epochs, "override.max_train_images": images or "none", "precision": "fp32"})
        t.terminate(rid, "FINISHED")
        return rid

    done = old_run(0, 5, 100000)
    for same in ([], ["--epochs", 9], ["--max-train-images", 5000]):
        r = cli("run", "tutorial-base", *same, "--data-dir", synthetic_root, "--tracking-uri", store, "--no-progress")
        assert r.exit_code == 0 and "identical finished run exists" in r.output, (same, r.output)
    old_run(1, 1, None)  # seed 1, cut to 1 epoch: the recipe itself is still to train
    r = cli("run", "tutorial-base", "--seed", 1, "--data-dir", synthetic_root, "--tracking-uri", store, "--no-progress")
    assert r.exit_code == 0 and "identical" not in r.output, r.output
    assert done in [x.info.run_id for x in finished(store)] and len(finished(store)) == 3
