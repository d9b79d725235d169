"""A store that mixes everything a shared server collects: two data sets, fp32 and bf16, both
kinds of cap, a --force rerun, stacked and one-by-one runs, a recipe validating on the test set
beside one with a held-out split, rows of one seed. The runs are written straight into a
temporary store with the tags, params, metrics and artifacts the harness records (run_record
itself), so the report's rows, n, tests, verdicts and budget table can be checked exactly, in the
HTML and the CSV alike."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from harness.cli import main

DATA_A, DATA_B = "aaaa1111aaaa1111", "bbbb2222bbbb2222"
N_TEST, CLASSES = 1000, ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


_CATALOGUE: dict = {}  # the catalogue folder's files as they stand -> the catalogue


def catalogue() -> dict:
    """load_catalogue(), loaded again only when a file of its folder changed: each load runs all
    14 networks forward (half a CPU-second), and the report tests write hundreds of runs."""
    from harness.recipes.catalogue import experiments_dir, load_catalogue

    d = experiments_dir()
    stamp = (str(d.resolve()), tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir())))
    if stamp not in _CATALOGUE:
        _CATALOGUE.clear()
        _CATALOGUE[stamp] = load_catalogue()
    return _CATALOGUE[stamp]


def write_run(tracker, exp_id, seed, acc, val_curve, epoch_s, data=DATA_A, precision="fp32", epochs=None, max_images=None,
              together=1, n_available=600, legacy=False, lr=None, drop=(), extra=None, tags_extra=None, test_curve=None):
    """One finished run as the harness records it: run_record's tags and params, per-epoch
    metrics, final metrics and the prediction artifacts (the first `acc`% of test images right)."""
    from harness.recipes.spec import config_hash
    from harness.runs.job import Job, RunOptions, capped_phases, effective_overrides
    from harness.runs.run_record import run_record

    exp = catalogue()[exp_id]
    # as a run recorded before harness.invocation: tags_extra gives a run its command where a test needs one
    opts = RunOptions(seed=seed, epochs=epochs, max_train_images=max_images, precision=precision, invocation="")
    n_val = int(n_available * exp.data.val_fraction)
    split = n_available - n_val
    overrides = effective_overrides(opts, exp.train.epochs, split)
    data_ns = SimpleNamespace(fingerprint=data, root=Path(f"/data/{data[:4]}"), train_x=range(n_available), test_x=range(N_TEST))
    trained = capped_phases(exp.train.phases, epochs) if epochs else exp.train.epochs
    job = Job(exp, data_ns, tracker, opts, seed, torch.device("cpu"), config_hash(exp, overrides, seed, data), exp_id, trained,
              overrides=overrides, train_images=split)
    n_train = min(max_images or split, split)
    prep = SimpleNamespace(n_train=n_train, val_is_test=n_val == 0, val_x=range(n_val), test_x=range(N_TEST))
    tags, params, files = run_record(job, prep, 1000, together=together)
    if legacy:  # as recorded before runs were identified by what they trained
        tags.pop("harness.execution")
        params.pop("data.n_train_available")
        tags["harness.capped"] = str(epochs is not None or max_images is not None).lower()
        tags["harness.config_hash"] = config_hash(exp, opts.overrides(), seed, data)
        params["override.epochs"], params["override.max_train_images"] = epochs or "none", max_images or "none"
    for name in drop:  # a recipe parameter older versions did not record (data.crop_style), or tags they lacked
        params.pop(name, None)
        tags.pop(name, None)
    params.update(extra or {})  # the recipe edited by adding a parameter (model.args.dropout)
    tags.update(tags_extra or {})
    if lr is not None:  # the recipe edited (its TOML changed under the same id)
        params["train.phases.0.lr"] = lr
    rid = tracker.start_run(exp_id, tags, params | {"together": together}, files)
    assert len(val_curve) == trained
    for e, v in enumerate(val_curve):
        per_epoch = {"test_acc_epoch": test_curve[e]} if test_curve is not None else {}
        tracker.log_metrics(rid, {"val_acc": v, "epoch_time_s": epoch_s, "train_loss": 2.0 - e / 10, "val_loss": 2.0 - e / 20, **per_epoch}, e)
    right = int(round(acc * N_TEST / 100))
    labels = [i % 10 for i in range(N_TEST)]
    preds = [y if i < right else (y + 1) % 10 for i, y in enumerate(labels)]
    tracker.log_metrics(rid, {"test_acc": acc, "train_time_s": epoch_s * trained, "images_per_s": 100.0,
                              "test_acc_eval_mode": acc, **{f"test_acc_{c}": acc for c in CLASSES}}, trained)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        pd.DataFrame({"label": labels, "pred": preds}).to_csv(f"{tmp}/test_predictions.csv", index=False)
        cm = pd.crosstab(pd.Series(labels, name="true"), pd.Series(preds, name="pred"))
        cm.index, cm.columns = CLASSES, CLASSES
        cm.to_csv(f"{tmp}/confusion_matrix.csv")
        tracker.log_artifacts(rid, tmp)
    tracker.terminate(rid, "FINISHED")
    return rid


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, empty_store):
    import shutil

    from harness.tracking import Tracker

    tmp = tmp_path_factory.mktemp("mixed")
    shutil.copyfile(empty_store, tmp / "mlflow.db")  # (conftest: the schema built once)
    store = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(Path(__file__).resolve().parents[1])
        t = Tracker(store)
        ids = {}
        # tutorial-base validates on the test set: its best epoch (+15) is not what a user stopping would get
        ids["force_old"] = write_run(t, "tutorial-base", 0, 55.0, [70.0, 55.0], 20)  # seed 0, then trained again with --force
        for seed, acc in ((0, 60.0), (1, 61.0), (2, 62.0)):
            ids[f"tb{seed}"] = write_run(t, "tutorial-base", seed, acc, [acc + 15, acc], 20)
        ids["bf16"] = write_run(t, "tutorial-base", 0, 50.0, [52.0, 50.0], 15, precision="bf16")
        ids["cap_epochs"] = write_run(t, "tutorial-base", 0, 40.0, [40.0], 20, epochs=1)
        ids["cap_images"] = write_run(t, "tutorial-base", 0, 45.0, [47.0, 45.0], 10, max_images=400)
        ids["no_cap"] = write_run(t, "tutorial-base", 3, 63.0, [78.0, 63.0], 20, epochs=5, max_images=10_000)  # caps nothing
        # the same, recorded before the fix (tagged capped, hashed with its overrides): matched by what it trained
        ids["legacy"] = write_run(t, "tutorial-base", 4, 64.0, [79.0, 64.0], 20, epochs=2, max_images=600, legacy=True)
        ids["edited"] = write_run(t, "tutorial-base", 0, 20.0, [20.0, 20.0], 20, lr=0.5)
        ids["legacy_cap"] = write_run(t, "tutorial-base", 1, 44.0, [46.0, 44.0], 10, max_images=400, legacy=True)
        for seed, acc in ((0, 70.0), (1, 71.0), (2, 72.0)):  # validates on test too; trained stacked
            ids[f"fs{seed}"] = write_run(t, "fastai-simplenet", seed, acc, [acc - 10, acc - 10, acc - 10, acc], 12, together=3)
        ids["fs3"] = write_run(t, "fastai-simplenet", 3, 71.0, [61.0, 61.0, 61.0, 71.0], 12)  # one more seed, one-by-one: same row
        # a held-out split: the best validation epoch within the budget; one seed
        ids["medium"] = write_run(t, "medium-three-conv", 0, 65.0, [50.0 + e for e in range(30)], 10)
        ids["b_tb"] = write_run(t, "tutorial-base", 0, 30.0, [31.0, 30.0], 20, data=DATA_B)
        ids["b_fs"] = write_run(t, "fastai-simplenet", 0, 35.0, [33.0, 33.0, 33.0, 35.0], 12, data=DATA_B)
    return {"store": store, "tmp": tmp, "ids": ids}


def report(mixed, *extra, name="r"):
    out, csv = mixed["tmp"] / f"{name}.html", mixed["tmp"] / f"{name}.csv"
    r = CliRunner().invoke(main, ["report", "--tracking-uri", mixed["store"], "--out", str(out), "--csv", str(csv), *extra])
    if r.exit_code != 0:
        return r, None
    read = lambda p: pd.read_csv(p, keep_default_na=False)
    return r, {"html": out.read_text(), "csv": read(csv).set_index("row"), "tests": read(mixed["tmp"] / f"{name}-tests.csv"),
               "budgets": read(mixed["tmp"] / f"{name}-budgets.csv").set_index(["minutes", "scored_on"])}


@pytest.fixture(scope="module")
def default(mixed):
    r, rep = report(mixed)
    assert r.exit_code == 0, r.output
    return rep


def table(html, tid):
    start = html.index(f'id="{tid}"')
    return html[start: html.index("</table>", start)]


def html_rows(html, tid):
    return [re.sub(r"<[^>]+>", " ", tr) for tr in table(html, tid).split("<tr")[2:]]


ROWS = {  # label -> (n seeds, data, precision, capped)
    "tutorial-base": (5, DATA_A, "fp32", False),  # seeds 0-4; the no-op caps of seeds 3 and 4 are the recipe itself
    "tutorial-base · bf16": (1, DATA_A, "bf16", False),
    "tutorial-base · train.phases.0.lr=0.5": (1, DATA_A, "fp32", False),  # the recipe's learning rate edited: its own row, named by it
    "tutorial-base · 1/2 epochs": (1, DATA_A, "fp32", True),
    "tutorial-base · 400 images": (2, DATA_A, "fp32", True),  # a real cap, recorded before and after the fix
    "tutorial-base · data bbbb2222": (1, DATA_B, "fp32", False),
    "fastai-simplenet": (4, DATA_A, "fp32", False),  # 3 stacked seeds and 1 one-by-one
    "fastai-simplenet · data bbbb2222": (1, DATA_B, "fp32", False),
    "medium-three-conv": (1, DATA_A, "fp32", False),
}


def test_one_row_per_comparable_setup_and_one_sample_per_seed(default, mixed):
    csv, html = default["csv"], default["html"]
    assert mixed["ids"]["edited"] in csv.loc["tutorial-base · train.phases.0.lr=0.5", "run_ids"]
    assert set(csv.index) == set(ROWS)
    for label, (n, data, precision, capped) in ROWS.items():
        assert csv.loc[label, "n"] == n, label
        assert csv.loc[label, "data"] == data and csv.loc[label, "precision"] == precision and bool(csv.loc[label, "capped"]) == capped, label
    # the --force rerun replaced seed 0's first run: mean over seeds 0-4 of the latest runs only
    assert csv.loc["tutorial-base", "test_acc_mean"] == pytest.approx(62.0)
    assert csv.loc["tutorial-base", "seeds"] == "0, 1, 2, 3, 4" and csv.loc["tutorial-base", "superseded"] == 1
    assert mixed["ids"]["force_old"] not in csv.loc["tutorial-base", "run_ids"]
    sup = table(html, "superseded")
    assert mixed["ids"]["force_old"] in sup and mixed["ids"]["tb0"] in sup
    summary = table(html, "summary")
    for label, (n, *_rest) in ROWS.items():
        assert f"<b>{label}" in summary
    # execution modes told apart
    assert csv.loc["fastai-simplenet", "execution"] == "3 stacked, 1 one-by-one" and csv.loc["tutorial-base", "execution"] == "one-by-one"
    assert csv.loc["fastai-simplenet · data bbbb2222", "execution"] == "one-by-one"


def test_the_top_says_what_the_store_holds(default):
    html = default["html"]
    contents = html[html.index('id="contents"'): html.index("</p>", html.index('id="contents"'))]
    assert "fp32 (" in contents and "bf16 (1 run)" in contents
    assert "1 of 2 epochs (1 run)" in contents and "400 training images (2 runs)" in contents and "none (" in contents
    assert "stacked (3 runs)" in contents and "one-by-one" in contents
    sets = html_rows(html, "data-sets")
    assert len(sets) == 2 and DATA_A in sets[0] and "compared" in sets[0] and DATA_B in sets[1] and "--data bbbb2222" in sets[1]


def test_tests_compare_one_data_set_and_say_what_was_left_out(default, mixed):
    tests, html = default["tests"], default["html"]
    compared = {"tutorial-base", "tutorial-base · bf16", "fastai-simplenet", "medium-three-conv", "tutorial-base · train.phases.0.lr=0.5"}
    assert set(tests["best"]) == {"fastai-simplenet"} and {o[:21] if "spec" in o else o for o in tests["other"]} == compared - {"fastai-simplenet"}
    left = table(html, "left-out")
    assert mixed["ids"]["b_tb"][:8] in left and mixed["ids"]["cap_epochs"][:8] in left and mixed["ids"]["tb1"][:8] not in left
    for label in ("tutorial-base · data bbbb2222", "fastai-simplenet · data bbbb2222"):
        assert label in left and not bool(default["csv"].loc[label, "compared"])
    assert left.count("another data set") == 2 and left.count("capped") >= 2
    assert default["csv"].loc["tutorial-base · 1/2 epochs", "verdict"] == "not compared"


def test_a_difference_is_real_only_with_seeds_measured(default):
    tests = default["tests"].set_index("other")
    # 4 vs 5 seeds: Welch over seeds decides
    tb = tests.loc["tutorial-base"]
    assert tb["verdict"] == "real" and float(tb["p_seeds"]) < 0.05 and tb["settle"] == ""
    # one seed: McNemar says the two runs differ (b = 50, c = 0), and the verdict says that is all
    med = tests.loc["medium-three-conv"]
    assert med["verdict"] == "two runs differ; recipes untested" and int(med["b"]) == 50 and int(med["c"]) == 0
    # the command that settles it adds seeds after this report was read: `--repeats auto` (report/looked.py), one loop
    # over every compared row (a loop over the pair alone would decide at its own level, not the family's);
    # alone in its run options (a loop compares two in one command): the fewest seeds the test uses, the short side only
    every = ("harness run fastai-simplenet medium-three-conv tutorial-base --repeats auto --data-dir /data/aaaa; "
             "harness run tutorial-base --repeats 3 --precision bf16 --data-dir /data/aaaa")
    assert med["p_seeds"] == "" and med["settle"] == every
    bf = tests.loc["tutorial-base · bf16"]
    assert bf["verdict"] == "two runs differ; recipes untested" and bf["settle"] == every
    csv = default["csv"]
    assert csv.loc["tutorial-base", "verdict"] == "real" and csv.loc["medium-three-conv", "verdict"] == "two runs differ; recipes untested"
    # the best is the best run, not a ranking of recipes, while a compared row has one seed
    assert csv.loc["fastai-simplenet", "verdict"] == "best run (seeds untested)"
    sig = table(default["html"], "significance")
    assert sig.count('<span class="tag real">real</span>') == 1 and "fastai-simplenet medium-three-conv tutorial-base --repeats auto" in sig
    basis = default["html"][default["html"].index('id="basis"'):]
    assert "not a ranking of recipes" in basis[:1500] and "--repeats auto" in basis[:1500]


def test_budget_table_selects_epochs_on_held_out_data_only(default):
    b = default["budgets"]
    # 1 min: tutorial-base's first epoch scored 75-79 on the *test* set, but validating on test it
    # gets its last epoch in the budget (61); fastai-simplenet likewise gets its last (71)
    t1 = b.loc[(1, "test set")]
    assert t1["best"] == "fastai-simplenet" and float(t1["acc"]) == pytest.approx(71.0)
    assert "validates on the test set" in t1["selected"] and t1["runner_up"] == "tutorial-base"
    assert float(t1["runner_acc"]) == pytest.approx(62.0) and t1["verdict"] == "beats it beyond seed noise"
    # medium-three-conv validates on its own split: ranked apart, never beside a test accuracy.
    # 1 min holds 6 of its 10 s epochs (best 55); 5 min all 30 (best 79); one seed, no runner-up
    v1, v5 = b.loc[(1, "validation split (20%, random)")], b.loc[(5, "validation split (20%, random)")]
    assert v1["best"] == "medium-three-conv" and float(v1["acc"]) == pytest.approx(55.0) and v1["runner_up"] == ""
    assert v5["best"] == "medium-three-conv" and float(v5["acc"]) == pytest.approx(79.0)
    # recorded without test_acc_epoch: its chosen epoch's score is the split that chose it, marked biased
    assert v5["selected"].startswith("best validation epoch, scored on the same split (biased upward") and v5["verdict"] == "only candidate"
    assert b.loc[(5, "test set"), "best"] == "fastai-simplenet"  # 79 on a validation split outranks nothing on the test set
    assert all("medium-three-conv" not in str(b.loc[(m, "test set"), c]) for m in (1, 5, 15, 60) for c in ("best", "runner_up"))
    html_b = html_rows(default["html"], "budgets")
    assert "test set" in html_b[0] and "fastai-simplenet" in html_b[0] and "71.00" in html_b[0] and "validates on the test set" in html_b[0]
    assert "validation split" in html_b[1] and "medium-three-conv" in html_b[1] and "55.00" in html_b[1]
    assert "medium-three-conv" in html_b[3] and "79.00" in html_b[3] and "biased upward" in html_b[3]
    assert all("data bbbb2222" not in row for row in html_b)


def test_data_chooses_the_data_set_compared(mixed):
    r, rep = report(mixed, "--data", "bbbb22", name="b")
    assert r.exit_code == 0, r.output
    tests = rep["tests"]
    assert len(tests) == 1 and tests.loc[0, "best"] == "fastai-simplenet · data bbbb2222"
    assert tests.loc[0, "other"] == "tutorial-base · data bbbb2222" and "recipes untested" in tests.loc[0, "verdict"]
    assert not bool(rep["csv"].loc["fastai-simplenet", "compared"])
    assert "fastai-simplenet · data bbbb2222" in rep["budgets"].loc[(1, "test set"), "best"]


def test_an_unknown_data_set_is_a_one_line_error(mixed, tmp_path):
    r, _ = report(mixed, "--data", "cccc", name="c")
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert DATA_A in r.output and DATA_B in r.output and "--data cccc" in r.output
    assert not (mixed["tmp"] / "c.html").exists()


@pytest.mark.slow
def test_done_when_single_seed_runs_on_two_data_sets_and_precisions(synthetic_root, store, tmp_path):
    """The issue's scenario, trained for real (tiny): tutorial-base on one data set, `--epochs 2`
    on that 2-epoch recipe (skipped as identical), on a second data set, a --force rerun and a bf16
    run give separate rows of n = 1, and a report of single-seed runs calls no difference real."""
    from tests.conftest import make_synthetic

    other = make_synthetic(tmp_path / "other", seed=1)
    common = ["--tracking-uri", store, "--no-progress"]
    run = lambda *a: CliRunner().invoke(main, ["run", *map(str, a), *common])
    for args, expect in ((["tutorial-base", "tutorial-c16", "--data-dir", synthetic_root], "finished"),
                         (["tutorial-base", "--epochs", 2, "--data-dir", synthetic_root], "identical finished run exists"),
                         (["tutorial-base", "--data-dir", other], "finished"),
                         (["tutorial-base", "--force", "--data-dir", synthetic_root], "finished"),
                         (["tutorial-base", "--precision", "bf16", "--data-dir", synthetic_root], "finished")):
        r = run(*args)
        assert r.exit_code == 0 and expect in r.output, (args, r.output)
    out, csv = tmp_path / "r.html", tmp_path / "r.csv"
    r = CliRunner().invoke(main, ["report", *common[:2], "--out", str(out), "--csv", str(csv)])
    assert r.exit_code == 0, r.output
    rows = pd.read_csv(csv, keep_default_na=False).set_index("row")
    fp_other = [d for d in rows["data"] if d != rows.loc["tutorial-base", "data"]]
    assert set(rows.index) == {"tutorial-base", "tutorial-base · bf16", f"tutorial-base · data {fp_other[0][:8]}", "tutorial-c16"}
    assert (rows["n"] == 1).all() and rows.loc["tutorial-base", "superseded"] == 1
    tests = pd.read_csv(tmp_path / "r-tests.csv", keep_default_na=False)
    assert len(tests) == 2 and not tests["verdict"].isin(["real", "within noise"]).any()
    assert tests["verdict"].str.endswith("recipes untested").all() and tests["settle"].str.contains("--repeats").all()
    # rows of one set of run options: `--repeats auto` (seeds added after this report are chosen by looking)
    assert tests["settle"].str.contains("--repeats auto").any()
    html = out.read_text()
    for tid in ("summary", "significance", "neighbours"):
        assert '<span class="tag real">' not in table(html, tid), tid
    assert "best run (seeds untested)" in table(html, "summary") and "the best run, not a ranking of recipes" in html
