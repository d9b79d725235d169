"""One row is exactly one setup (issue 27, item 1): a parameter one run recorded and another did
not is a difference, never a reason to pool; the catalogue's own setup keeps the bare id, other
setups are named by what differs; a tie is never settled by which setup is newest; runs that
recorded no seed are not merged into one. Stores are written through the harness's run records."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_report_review import report
from tests.test_report_mixtures import write_run


@pytest.fixture
def tracker(tmp_path, monkeypatch, empty_store):
    import shutil

    from harness.tracking import Tracker

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")  # (conftest: the schema built once)
    return Tracker(f"sqlite:///{tmp_path}/mlflow.db")


def test_an_edited_recipe_is_not_pooled_with_the_shipped_one(tracker, tmp_path):
    """Seeds 0-2 as shipped (about 61%), seeds 3-5 after adding model.args.dropout = 0.3 (about 41%)."""
    for seed, acc in ((0, 60.0), (1, 61.0), (2, 62.0)):
        write_run(tracker, "tutorial-base", seed, acc, [acc, acc], 20)
    for seed, acc in ((3, 40.0), (4, 41.0), (5, 42.0)):
        write_run(tracker, "tutorial-base", seed, acc, [acc, acc], 20, extra={"model.args.dropout": "0.3"})
    csv = report(tracker, tmp_path)["csv"]
    assert set(csv.index) == {"tutorial-base", "tutorial-base · model.args.dropout=0.3"}
    assert csv.loc["tutorial-base", "n"] == 3 and csv.loc["tutorial-base", "seeds"] == "0, 1, 2"
    assert csv.loc["tutorial-base · model.args.dropout=0.3", "n"] == 3
    assert csv.loc["tutorial-base", "test_acc_mean"] == pytest.approx(61.0)


def test_the_edit_retrained_on_the_same_seeds_supersedes_nothing(tracker, tmp_path):
    for seed in range(3):
        write_run(tracker, "tutorial-base", seed, 60.0 + seed, [60.0, 60.0], 20)
    for seed in range(3):
        write_run(tracker, "tutorial-base", seed, 40.0 + seed, [40.0, 40.0], 20, extra={"model.args.dropout": "0.3"})
    rep = report(tracker, tmp_path)
    csv = rep["csv"]
    assert csv.loc["tutorial-base", "n"] == 3 and csv.loc["tutorial-base", "superseded"] == 0
    assert csv.loc["tutorial-base · model.args.dropout=0.3", "n"] == 3 and csv["superseded"].sum() == 0


def test_a_run_from_a_version_that_did_not_record_a_parameter_is_its_own_row(tracker, tmp_path):
    """One legacy run without data.crop_style must not merge the rows that recorded it."""
    for seed in range(3):
        write_run(tracker, "tutorial-base", seed, 60.0 + seed, [60.0, 60.0], 20)
        write_run(tracker, "tutorial-base", seed, 40.0 + seed, [40.0, 40.0], 20, lr=0.5)
    write_run(tracker, "tutorial-base", 3, 50.0, [50.0, 50.0], 20, drop=("data.crop_style",))
    csv = report(tracker, tmp_path)["csv"]
    assert csv.loc["tutorial-base", "n"] == 3 and csv.loc["tutorial-base · train.phases.0.lr=0.5", "n"] == 3
    assert csv.loc["tutorial-base · data.crop_style absent", "n"] == 1 and len(csv) == 3


def test_a_tie_between_two_versions_of_a_users_recipe_labels_neither_bare(tracker, tmp_path):
    """A recipe the catalogue does not hold, edited between runs, 3 seeds each: whichever was
    trained last, both rows name their values."""
    mine = {"harness.experiment_id": "my-net", "harness.user_recipe": "true"}
    for seed in range(3):
        write_run(tracker, "tutorial-base", seed, 60.0, [60.0, 60.0], 20, tags_extra=mine, extra={"model.args.width": "16"})
    for seed in range(3):
        write_run(tracker, "tutorial-base", seed, 61.0, [61.0, 61.0], 20, tags_extra=mine, extra={"model.args.width": "32"})
    csv = report(tracker, tmp_path)["csv"]
    assert set(csv.index) == {"my-net · model.args.width=16", "my-net · model.args.width=32"}
    # one more run of one version: it is the commonest, labelled by the bare id
    write_run(tracker, "tutorial-base", 3, 60.0, [60.0, 60.0], 20, tags_extra=mine, extra={"model.args.width": "16"})
    csv = report(tracker, tmp_path)["csv"]
    assert set(csv.index) == {"my-net", "my-net · model.args.width=32"}


def test_runs_without_a_seed_are_not_merged_into_one(tracker, tmp_path):
    for acc in (60.0, 61.0, 62.0):
        write_run(tracker, "tutorial-base", 0, acc, [acc, acc], 20, drop=("harness.seed", "seed"))
    csv = report(tracker, tmp_path)["csv"]
    assert csv.loc["tutorial-base", "n"] == 3 and csv.loc["tutorial-base", "seeds"] == "?, ?, ?"
    assert csv.loc["tutorial-base", "superseded"] == 0


def test_the_catalogue_the_labels_read_is_read_again_once_a_spec_changes(tmp_path, monkeypatch):
    """The report keeps the catalogue's specs between reports of one process (loading it runs
    every network), but an edit of a spec, or a spec added, is read by the next report."""
    import os
    import shutil

    from harness.report.keys import catalogue_specs

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "experiments").mkdir()
    shutil.copy(repo / "experiments" / "tutorial-base.toml", tmp_path / "experiments")
    monkeypatch.chdir(tmp_path)
    lr = lambda specs: dict(specs["tutorial-base"])["train.phases.0.lr"]
    first = catalogue_specs()
    assert list(first) == ["tutorial-base"] and catalogue_specs() == first
    spec = tmp_path / "experiments" / "tutorial-base.toml"
    text = spec.read_text()
    assert "lr = 0.001" in text
    spec.write_text(text.replace("lr = 0.001", "lr = 0.002", 1))
    os.utime(spec, ns=(0, 0))  # even with an old timestamp: the size or the time differs
    assert lr(first) == "0.001" and lr(catalogue_specs()) == "0.002"
    shutil.copy(repo / "experiments" / "fastai-simplenet.toml", tmp_path / "experiments")
    assert sorted(catalogue_specs()) == ["fastai-simplenet", "tutorial-base"]


def test_one_per_seed_keeps_each_run_once_whatever_the_index():
    """Runs of two searches concatenated repeat index labels: each run still counts once (the
    latest of its seed, or superseded), and a run without a seed is a sample of its own."""
    import pandas as pd

    from harness.report.keys import one_per_seed

    runs = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "tags.harness.seed": ["0", "0", "1", None],
                         "start_time": [1, 2, 3, 4], "end_time": [1, 2, 3, 4]}, index=[7, 7, 7, 7])
    latest, superseded = one_per_seed(runs)
    assert list(latest["run_id"]) == ["b", "c", "d"] and list(superseded["run_id"]) == ["a"]
    assert list(latest["_seed"].iloc[:2]) == [0.0, 1.0] and pd.isna(latest["_seed"].iloc[2])
