"""Stores the mixtures fixture does not cover: a data set with one recipe beside one with several,
only capped rows capped differently, runs missing their data or seed tags, a run marked FINISHED
without its final metrics. Each checks that the report states no verdict its runs do not support."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from harness.cli import main
from tests.test_report_mixtures import DATA_A, DATA_B, html_rows, table, write_run


@pytest.fixture
def tracker(tmp_path, monkeypatch, empty_store):
    import shutil

    from harness.tracking import Tracker

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")  # (conftest: the schema built once)
    return Tracker(f"sqlite:///{tmp_path}/mlflow.db")


def report(tracker, tmp_path, *extra):
    out, csv = tmp_path / "r.html", tmp_path / "r.csv"
    r = CliRunner().invoke(main, ["report", "--tracking-uri", tracker.uri, "--out", str(out), "--csv", str(csv), *extra])
    assert r.exit_code == 0, r.output
    read = lambda p: pd.read_csv(p, keep_default_na=False)
    return {"html": out.read_text(), "csv": read(csv).set_index("row"), "tests": read(tmp_path / "r-tests.csv"),
            "budgets": read(tmp_path / "r-budgets.csv").set_index(["minutes", "scored_on"])}


def test_a_lone_compared_row_is_not_called_best(tracker, tmp_path):
    write_run(tracker, "tutorial-base", 0, 60.0, [60.0, 60.0], 20)
    rep = report(tracker, tmp_path)
    assert "best" not in rep["csv"].loc["tutorial-base", "verdict"]
    basis = rep["html"][rep["html"].index('id="basis"'):]
    assert "Best measured" not in basis[:600] and "Only one row compared" in basis[:600]


def test_by_default_the_data_set_with_most_recipes_is_compared(tracker, tmp_path):
    """Data A: one recipe, three seeds; data B: two recipes. Comparing A compares nothing."""
    for s in range(3):
        write_run(tracker, "tutorial-base", s, 60.0 + s, [60.0, 60.0 + s], 20)
    write_run(tracker, "tutorial-base", 0, 30.0, [31.0, 30.0], 20, data=DATA_B)
    write_run(tracker, "fastai-simplenet", 0, 35.0, [33.0, 33.0, 33.0, 35.0], 12, data=DATA_B)
    rep = report(tracker, tmp_path)
    assert len(rep["tests"]) == 1 and set(rep["tests"].loc[0, ["best", "other"]]) == {"fastai-simplenet", "tutorial-base · data bbbb2222"}
    assert rep["tests"].loc[0, "verdict"].endswith("recipes untested")
    assert not bool(rep["csv"].loc["tutorial-base", "compared"])
    sets = html_rows(rep["html"], "data-sets")
    assert DATA_B in sets[0] and "compared" in sets[0] and "--data aaaa1111" in sets[1]
    # asking for A still works, and its lone row is not called best
    rep = report(tracker, tmp_path, "--data", "aaaa")
    assert rep["tests"].empty and "best" not in rep["csv"].loc["tutorial-base", "verdict"]


def test_rows_capped_differently_are_not_paired(tracker, tmp_path):
    """No uncapped row: a recipe cut to 1 epoch is not tested against one cut to 400 images."""
    write_run(tracker, "tutorial-base", 0, 40.0, [40.0], 20, epochs=1)
    write_run(tracker, "tutorial-c16", 0, 42.0, [42.0], 20, epochs=1)
    write_run(tracker, "fastai-simplenet", 0, 60.0, [33.0, 33.0, 33.0, 60.0], 12, max_images=400)
    rep = report(tracker, tmp_path)
    tests, csv = rep["tests"], rep["csv"]
    assert len(tests) == 1 and set(tests.loc[0, ["best", "other"]]) == {"tutorial-base", "tutorial-c16"}
    assert not bool(csv.loc["fastai-simplenet", "compared"]) and csv.loc["fastai-simplenet", "verdict"] == "not compared"
    assert all("fastai-simplenet" not in str(b) for b in rep["budgets"]["best"]) and "fastai-simplenet" in table(rep["html"], "left-out")


def test_runs_without_a_data_fingerprint_are_not_compared(tracker, tmp_path):
    """A run whose data set is not recorded may have seen any images: never paired or ranked."""
    from mlflow.tracking import MlflowClient

    a = write_run(tracker, "tutorial-base", 0, 60.0, [60.0, 60.0], 20)
    b = write_run(tracker, "fastai-simplenet", 0, 70.0, [33.0, 33.0, 33.0, 70.0], 12)
    c = write_run(tracker, "medium-three-conv", 0, 65.0, [50.0 + e for e in range(30)], 10)
    for rid in (b, c):
        MlflowClient(tracker.uri).delete_tag(rid, "harness.data_fingerprint")
    rep = report(tracker, tmp_path)
    assert rep["tests"].empty and not bool(rep["csv"].loc["fastai-simplenet", "compared"])
    assert "best" not in " ".join(rep["csv"]["verdict"]) and a[:8] not in table(rep["html"], "left-out")
    assert b[:8] in table(rep["html"], "left-out") and "not recorded" in table(rep["html"], "left-out")


def test_a_run_missing_its_seed_tag_is_counted_by_its_seed_param(tracker, tmp_path):
    from mlflow.tracking import MlflowClient

    write_run(tracker, "tutorial-base", 0, 60.0, [60.0, 60.0], 20)
    b = write_run(tracker, "tutorial-base", 1, 62.0, [60.0, 62.0], 20)
    MlflowClient(tracker.uri).delete_tag(b, "harness.seed")
    rep = report(tracker, tmp_path)
    assert rep["csv"].loc["tutorial-base", "seeds"] == "0, 1"


def test_a_finished_run_without_final_metrics_is_not_counted(tracker, tmp_path):
    """Marked FINISHED by hand (or by another tool) with only a test accuracy: listed, not counted, no traceback."""
    write_run(tracker, "tutorial-base", 0, 60.0, [60.0, 60.0], 20)
    write_run(tracker, "fastai-simplenet", 0, 70.0, [33.0, 33.0, 33.0, 70.0], 12)
    rid = tracker.start_run("tutorial-c16", {"harness.experiment_id": "tutorial-c16", "harness.seed": 0}, {})
    tracker.log_metrics(rid, {"test_acc": 99.0}, 0)
    tracker.terminate(rid, "FINISHED")
    rep = report(tracker, tmp_path)
    assert "tutorial-c16" not in rep["csv"].index and rid in table(rep["html"], "unfinished")


def test_a_best_within_seed_noise_of_another_row_is_not_called_best(tracker, tmp_path):
    """Three seeds a side, means 61 and 60.7 with spreads of a point: the top row leads, nothing more."""
    for s, (a, b) in enumerate(((60.0, 59.0), (61.0, 62.0), (62.0, 61.0))):
        write_run(tracker, "tutorial-base", s, a, [a, a], 20)
        write_run(tracker, "tutorial-c16", s, b, [b, b], 20)
    rep = report(tracker, tmp_path)
    assert rep["tests"].loc[0, "verdict"] == "within noise"
    assert rep["csv"].loc["tutorial-base", "verdict"] == "highest mean (within seed noise)"
    assert '<span class="tag best">' not in table(rep["html"], "summary")


@pytest.mark.slow
def test_the_budget_table_ranks_a_validation_split_apart_from_the_test_set(tracker, tmp_path):
    """medium-three-conv scores its best epoch on its own validation split, fastai-simplenet its last
    epoch on the test set: different images, so neither is ranked above the other, whatever the seeds
    (the split's 79 would otherwise read as beating the test set's 72)."""
    for s in range(3):
        write_run(tracker, "fastai-simplenet", s, 70.0 + s, [60.0, 60.0, 60.0, 70.0 + s], 12)
        write_run(tracker, "medium-three-conv", s, 65.0 + s, [50.0 + e + s for e in range(30)], 10)
    rep = report(tracker, tmp_path)
    b = rep["budgets"]
    for m in (5, 15, 60):
        test, split = b.loc[(m, "test set")], b.loc[(m, "validation split (20%, random)")]
        assert test["best"] == "fastai-simplenet" and split["best"] == "medium-three-conv"
        assert test["runner_up"] == "" and split["runner_up"] == "" and test["p"] == "" and split["p"] == ""
        assert test["verdict"] == split["verdict"] == "only candidate"
    assert "ranked apart" in rep["html"] and "beyond seed noise" not in table(rep["html"], "budgets")


def test_a_store_whose_runs_recorded_no_data_set_compares_nothing_and_says_so(tracker, tmp_path):
    from mlflow.tracking import MlflowClient

    for exp_id, acc in (("tutorial-base", 60.0), ("tutorial-c16", 65.0)):
        rid = write_run(tracker, exp_id, 0, acc, [acc, acc], 20)
        MlflowClient(tracker.uri).delete_tag(rid, "harness.data_fingerprint")
    rep = report(tracker, tmp_path)
    assert rep["tests"].empty and not rep["csv"]["compared"].astype(bool).any()
    [row] = html_rows(rep["html"], "data-sets")
    assert "compared" not in row and "not recorded" in row
