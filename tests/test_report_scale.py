"""A report that scales (issue 27, item 6): every run of a big shared experiment counted, 200 rows
x 10 seeds built with readable charts, the Pareto front of the chart that of the table, the CSV
with the 95% interval, and `--log-to-mlflow` (item 7). Big stores are cloned in SQLite from runs
written through the harness's own run records (tests/clone_runs.py)."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from harness.cli import main
from tests.clone_runs import clone, foreign_runs
from tests.test_report_mixtures import DATA_B, html_rows, write_run


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
    return r, out.read_text(), pd.read_csv(csv, keep_default_na=False).set_index("row")


def test_every_run_of_a_store_past_the_search_cap_is_counted(tracker, tmp_path, monkeypatch):
    """50,000 newer runs of other users in the shared experiment, and pages of 2 runs: the harness's
    6 runs are all counted (a search capped at 50,000 runs saw none of them)."""
    import mlflow.tracking.fluent

    for seed in range(3):
        write_run(tracker, "tutorial-base", seed, 60.0 + seed, [60.0, 60.0], 20)
        write_run(tracker, "fastai-simplenet", seed, 70.0 + seed, [70.0] * 4, 12)
    foreign_runs(Path(tracker.uri.removeprefix("sqlite:///")), tracker.experiment_id, 50_000, 2_000_000_000_000)
    monkeypatch.setattr(mlflow.tracking.fluent, "NUM_RUNS_PER_PAGE_PANDAS", 2)
    _, html, csv = report(tracker, tmp_path)
    assert csv.loc["tutorial-base", "n"] == 3 and csv.loc["fastai-simplenet", "n"] == 3
    assert "6 finished of 6 runs" in html


def test_the_charts_pareto_front_is_the_tables(tracker, tmp_path, monkeypatch):
    """A fast, accurate row on another data set is not compared: it is on neither front."""
    import harness.report.charts as charts

    drawn = {}
    real = charts.pareto_chart
    monkeypatch.setattr(charts, "pareto_chart", lambda rows, front: drawn.update(rows=[r.key for r in rows], front=set(front)) or real(rows, front))
    for seed in range(3):  # tutorial-base slower (60 s) and less accurate than fastai-simplenet (48 s)
        write_run(tracker, "tutorial-base", seed, 60.0 + seed, [60.0, 60.0], 30)
        write_run(tracker, "fastai-simplenet", seed, 70.0 + seed, [70.0] * 4, 12)
    write_run(tracker, "tutorial-c16", 0, 90.0, [90.0, 90.0], 1, data=DATA_B)
    _, html, csv = report(tracker, tmp_path)
    table_front = {r for r in csv.index if "Pareto" in next(x for x in html_rows(html, "summary") if f" {r} " in x)}
    assert drawn["front"] == table_front == {"fastai-simplenet"}
    assert set(drawn["rows"]) == {"tutorial-base", "fastai-simplenet"}


def test_the_csv_carries_the_95_percent_interval(tracker, tmp_path):
    from harness.report.mathstats import t_interval

    for seed, acc in enumerate((60.0, 61.0, 63.0)):
        write_run(tracker, "tutorial-base", seed, acc, [acc, acc], 20)
    _, _, csv = report(tracker, tmp_path)
    lo, hi = t_interval([60.0, 61.0, 63.0])
    assert float(csv.loc["tutorial-base", "ci95_low"]) == pytest.approx(lo, abs=1e-3)
    assert float(csv.loc["tutorial-base", "ci95_high"]) == pytest.approx(hi, abs=1e-3)


def test_the_report_is_logged_to_mlflow_as_a_run_of_the_experiment(tracker, tmp_path):
    from mlflow.tracking import MlflowClient

    for seed in range(2):
        write_run(tracker, "tutorial-base", seed, 60.0 + seed, [60.0, 60.0], 20)
    r, html, csv = report(tracker, tmp_path, "--log-to-mlflow")
    c = MlflowClient(tracker.uri)
    (run,) = c.search_runs([tracker.experiment_id], "tags.`harness.report` = 'true'")
    assert run.info.run_id in r.output and run.info.status == "FINISHED"
    assert [a.path for a in c.list_artifacts(run.info.run_id)] == ["r.html"]
    assert Path(c.download_artifacts(run.info.run_id, "r.html", str(tmp_path / "dl"))).read_text() == html
    _, html2, csv2 = report(tracker, tmp_path)  # the report run is not a training: nothing more counted
    assert csv2.loc["tutorial-base", "n"] == 2 and len(csv2) == len(csv) == 1


def png_size(data_uri: str) -> tuple[int, int]:
    import base64

    head = base64.b64decode(data_uri.split(",", 1)[1][:64])
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow
def test_a_200_row_report_of_10_seeds_builds_with_readable_charts(tracker, tmp_path):
    """200 setups x 10 seeds (2,000 runs): every row counted, every chart image at most 2,500 pixels
    high, the time-to-accuracy lines at most 10 a figure. Prints the build time (no timed assertion)."""
    import re

    template = write_run(tracker, "tutorial-base", 0, 60.0, [60.0, 60.0], 20)
    db = Path(tracker.uri.removeprefix("sqlite:///"))
    row_of, seed_of = (lambda i: i // 10), (lambda i: i % 10)
    acc = lambda i: 40.0 + 0.1 * row_of(i) + 0.05 * seed_of(i)
    clone(db, template, 2000, tags=lambda i: {"harness.experiment_id": f"net-{row_of(i):03d}", "harness.seed": seed_of(i), "harness.user_recipe": "true"},
          params=lambda i: {"seed": seed_of(i)}, artifacts=lambda i: seed_of(i) == 0,
          metrics=lambda i, k, s, v: acc(i) if k.startswith("test_acc") else v * (1 + row_of(i) / 50) if k in ("epoch_time_s", "train_time_s") else v)
    from mlflow.tracking import MlflowClient

    MlflowClient(tracker.uri).delete_run(template)
    t0 = time.perf_counter()
    _, html, csv = report(tracker, tmp_path)
    took = time.perf_counter() - t0
    print(f"\n200 rows x 10 seeds: report built in {took:.1f} s (this machine, contended), {len(html) / 1e6:.1f} MB of HTML")
    assert len(csv) == 200 and set(csv["n"]) == {10}
    sizes = [png_size(m) for m in re.findall(r'src="(data:image/png;base64,[^"]+)"', html)]
    print("chart sizes (w x h):", sorted(set(sizes)))
    assert sizes and max(h for _, h in sizes) <= 2500
    assert html.count('alt="accuracy against cumulative training time') == 20  # 200 lines, 10 a figure


def test_the_bulk_metric_histories_are_each_runs_own(tracker, monkeypatch):
    """The report reads the counted runs' curves in bulk (a few queries, not one per run and
    metric): each run gets exactly what metric_history gives it, across query chunks, with a
    repeated step kept and a run that never logged the metric empty."""
    import harness.tracking.tracker as tracker_module

    ids = [write_run(tracker, "tutorial-base", seed, 60.0 + seed, [60.0 + seed, 61.0 + seed], 20) for seed in range(3)]
    tracker.log_metrics(ids[1], {"val_acc": 99.0}, 1)  # a second value at step 1
    bare = tracker.start_run("tutorial-base", {}, {}, {})
    monkeypatch.setattr(tracker_module, "BULK", 2)  # 4 runs: two queries
    got = tracker.metric_histories([*ids, bare], "val_acc")
    assert got == {rid: tracker.metric_history(rid, "val_acc") for rid in [*ids, bare]}
    assert got[bare] == [] and got[ids[1]] == [(0, 61.0), (1, 62.0), (1, 99.0)]
