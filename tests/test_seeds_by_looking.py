"""Seeds chosen by looking without a loop: a person reads the report, adds seeds where it says
"untested" and reads it again. Each run records the command that trained it (harness.invocation);
a row whose counted seeds came from more than one command gets the anytime-valid verdicts (the
Decided section), never a fixed-n Welch p-value (report/looked.py). Stores of runs that predate
the tag read as before; the advice to add seeds is `--repeats auto`."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from harness.report.looked import LOOKED
from harness.runs.job import RunOptions, new_invocation

REPO = Path(__file__).resolve().parents[1]
SPREAD = (0.3, -0.2, 0.1, -0.4)


@pytest.fixture(autouse=True)
def _schema_built_once(tmp_path, empty_store):
    """Each test's store (tmp_path/mlflow.db, made by _store) starts as a copy of the session's
    empty one (conftest.empty_store): MLflow's schema migrations cost seconds per new store."""
    import shutil

    shutil.copyfile(empty_store, tmp_path / "mlflow.db")


def _store(tmp_path, monkeypatch, commands: dict[str, list], means: dict[str, float] | None = None) -> str:
    """Recipes 10 points apart (`means`; default tutorial-base 50, fastai-simplenet 60), a run per
    entry of commands[recipe]: seed i trained by the command commands[recipe][i], an id, or
    (id, plan) with the seeds that command set out to train (harness.plan, as RunOptions.plan
    records it); None: a run recorded before harness.invocation existed."""
    from harness.tracking import Tracker

    from .test_report_mixtures import catalogue, write_run

    monkeypatch.chdir(REPO)
    store = f"sqlite:///{tmp_path}/mlflow.db"
    t = Tracker(store, "cifar10-harness")
    cat = catalogue()
    for exp_id, mean in (means or {"tutorial-base": 50.0, "fastai-simplenet": 60.0}).items():
        for s, cmd in enumerate(commands[exp_id]):
            inv, plan = cmd if isinstance(cmd, tuple) else (cmd, None)
            tags = ({"harness.invocation": inv} if inv else {}) | ({"harness.plan": plan} if plan else {})
            write_run(t, exp_id, s, mean + SPREAD[s], [40.0] * cat[exp_id].train.epochs, 1.0, tags_extra=tags or None)
    return store


def _report(store, tmp_path):
    from harness.report import build_report

    out = build_report(store, "cifar10-harness", str(tmp_path / "r.html"), str(tmp_path / "r.csv"), "http://x")
    return out.read_text(), pd.read_csv(tmp_path / "r-tests.csv", keep_default_na=False)


LATER = {"tutorial-base": ["c1", "c2", "c2", "c2"], "fastai-simplenet": ["c1"] * 4}  # seed 0 of tutorial-base by one command, 1-3 by another


@pytest.fixture(scope="module")
def later_command(tmp_path_factory, empty_store):
    """The LATER store's report, built once for the two tests that read it: (html, tests CSV, summary CSV)."""
    import shutil

    tmp = tmp_path_factory.mktemp("later")
    shutil.copyfile(empty_store, tmp / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        html, tests = _report(_store(tmp, mp, LATER), tmp)
    return html, tests, pd.read_csv(tmp / "r.csv").set_index("row")


def test_seeds_added_by_a_later_command_get_the_anytime_valid_verdicts_not_welch(later_command):
    """tutorial-base: seed 0 by one command, seeds 1-3 by another (a person read the first result
    and added seeds): the fixed-n p-values are hidden, the verdict says why, Decided says which
    row and that its verdicts are the ones that hold."""
    html, tests, _ = later_command
    assert tests["verdict"].tolist() == [LOOKED] and tests["p_seeds"].tolist() == [""] and tests["p_holm"].tolist() == [""]
    looked = html[html.index('id="decided-looked"'):]
    looked = looked[: looked.index("</p>")]
    assert "Seeds were added by a later command to <b>tutorial-base</b> (2 commands)" in looked and "fastai-simplenet" not in looked
    assert "--repeats auto</code> chose" not in looked  # no loop ran here: the reason given is the later command
    basis = html[html.index('id="basis"'):][:1500]
    assert "seeds added by a later command (tutorial-base: 2 commands)" in basis and "see Decided" in basis
    assert html.index('id="decided"') < html.index("Is the difference real?")  # the verdicts that hold come first


def test_seeds_retrained_with_force_by_a_later_command_count_as_looking(tmp_path, monkeypatch):
    """`run A B --repeats 4`, read the report, then `--force` the same seeds: the counted runs all
    come from the second command, the ones they replaced from the first. Re-drawing seeds after
    reading a result is choosing by looking: the fixed-n p-values are hidden."""
    from harness.tracking import Tracker

    from .test_report_mixtures import write_run

    store = _store(tmp_path, monkeypatch, {"tutorial-base": ["c1"] * 4, "fastai-simplenet": ["c1"] * 4})
    t = Tracker(store, "cifar10-harness")
    for s in range(4):  # the --force rerun of tutorial-base's seeds, by a second command
        write_run(t, "tutorial-base", s, 50.5 + SPREAD[s], [40.0] * 2, 1.0, tags_extra={"harness.invocation": "c2"})
    html, tests = _report(store, tmp_path)
    assert tests["verdict"].tolist() == [LOOKED] and "<b>tutorial-base</b> (2 commands)" in html


def test_seeds_of_one_command_keep_their_fixed_n_verdicts(tmp_path, monkeypatch):
    html, tests = _report(_store(tmp_path, monkeypatch, {"tutorial-base": ["c1"] * 4, "fastai-simplenet": ["c1"] * 4}), tmp_path)
    assert tests["verdict"].tolist() == ["real"] and float(tests["p_seeds"][0]) < 0.05 and 'id="decided-looked"' not in html


def test_a_store_older_than_the_tag_reads_as_before_and_new_seeds_beside_it_count_as_a_second_command(tmp_path, monkeypatch):
    html, tests = _report(_store(tmp_path, monkeypatch, {"tutorial-base": [None] * 4, "fastai-simplenet": [None] * 4}), tmp_path)
    assert tests["verdict"].tolist() == ["real"] and 'id="decided-looked"' not in html
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    html, tests = _report(_store(mixed, monkeypatch, {"tutorial-base": [None, "c2", "c2", "c2"], "fastai-simplenet": [None] * 4}), mixed)
    assert tests["verdict"].tolist() == [LOOKED] and "<b>tutorial-base</b> (2 commands)" in html


def test_the_advice_for_untested_rows_is_repeats_auto(tmp_path, monkeypatch):
    """One seed a recipe: the verdict compares two runs, and the command that settles it adds
    seeds after this report was read, so it is `--repeats auto`, not a fixed `--repeats 3`."""
    html, tests = _report(_store(tmp_path, monkeypatch, {"tutorial-base": ["c1"], "fastai-simplenet": ["c1"]}), tmp_path)
    assert tests["verdict"].str.endswith("recipes untested").all()
    assert tests["settle"].tolist() == ["harness run fastai-simplenet tutorial-base --repeats auto"]
    basis = html[html.index('id="basis"'):][:3000]
    assert "To settle it: <code>harness run fastai-simplenet tutorial-base --repeats auto</code>" in basis
    assert "--repeats 3" not in re.sub(r"<code>--repeats 3</code> only for a recipe alone", "", basis)


def test_each_run_records_the_command_that_trained_it():
    """Each command has an id (RunOptions.invocation: the CLI's, else a fresh one per RunOptions)
    and a plan (the seeds it set out to train; `--force`'s its own); every run it trains records both."""
    from harness.recipes.catalogue import load_catalogue
    from harness.runs.job import Job
    from harness.runs.run_record import run_record

    a, b = new_invocation(), new_invocation()
    assert a != b and re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", a)
    # trained from Python without the CLI: each RunOptions made is a command of its own (it was
    # none, and such runs counted with every other untagged run as one command)
    python = RunOptions(seed=3, repeats=4)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", python.invocation) and python.invocation != RunOptions().invocation
    exp = load_catalogue()["tutorial-base"]
    data = SimpleNamespace(fingerprint="f" * 16, root=Path("/d"), train_x=range(10), test_x=range(10))
    prep = SimpleNamespace(n_train=10, val_is_test=True, val_x=[], test_x=range(10))
    for opts, want, plan in ((RunOptions(invocation=a), a, "seeds 0-0"), (python, python.invocation, "seeds 3-6"),
                             (RunOptions(repeats=2, force=True, invocation=b), b, f"seeds 0-1 --force {b}"), (RunOptions(invocation=""), None, None)):
        job = Job(exp, data, None, opts, 3, torch.device("cpu"), "h", "tutorial-base-s3", exp.train.epochs, overrides={}, train_images=10)
        tags, _, _ = run_record(job, prep, 1)
        assert tags.get("harness.invocation") == want and tags.get("harness.plan") == plan


def test_the_advice_trains_rows_of_one_command_in_one_loop():
    """`--epochs 2` caps a 10-epoch recipe but not a 2-epoch one: rows trained by one capped
    command are continued by one `--repeats auto` command, with the caps; a row of another
    precision needs a command of its own (one recipe: `--repeats 3`, or nothing at 3 seeds)."""
    import pandas as pd

    from harness.report.keys import Key
    from harness.report.looked import auto_command
    from harness.report.rows import Row

    def row(eid, epochs, recipe_epochs, precision="fp32", n=1):
        key = Key(eid, "d" * 16, epochs, recipe_epochs, 400, True, precision, "s")
        return Row(eid, key.capped, pd.DataFrame(), [], stats={"n": n, "cap": 400}, ckey=key)

    long, short = row("fastai-simplenet", 2, 10), row("tutorial-base", 2, 2)
    assert auto_command([long, short]) == "harness run fastai-simplenet tutorial-base --repeats auto --epochs 2 --max-train-images 400"
    assert auto_command([short, long]) == "harness run tutorial-base fastai-simplenet --repeats auto --epochs 2 --max-train-images 400"
    bf16 = row("tutorial-c16", 2, 2, "bf16")
    assert auto_command([long, short, bf16]).endswith("; harness run tutorial-c16 --repeats 3 --max-train-images 400 --precision bf16")
    assert auto_command([long, row("tutorial-c16", 2, 2, "bf16", n=3)]) == "harness run fastai-simplenet --repeats 3 --epochs 2 --max-train-images 400"
    assert auto_command([long, row("skl-cnn", 5, 10)]).count("harness run") == 2  # --epochs 2 and --epochs 5: two configurations


def _looked_paragraph(html: str) -> str:
    looked = html[html.index('id="decided-looked"'):]
    return looked[: looked.index("</p>")]


def test_a_command_stopped_short_of_its_planned_seeds_counts_as_chosen_by_looking(tmp_path, monkeypatch):
    """`harness run A B --repeats 10`, stopped with Ctrl-C after 4 seeds a recipe by a person
    reading the report as it went: one command, but the seeds it ended with were chosen by
    watching. Each run records the seeds its command set out to train (harness.plan); rows short
    of them get the anytime-valid verdicts only, and Decided says why."""
    plan = ("c1", "seeds 0-9")
    html, tests = _report(_store(tmp_path, monkeypatch, {"tutorial-base": [plan] * 4, "fastai-simplenet": [plan] * 4}), tmp_path)
    assert tests["verdict"].tolist() == [LOOKED] and tests["p_seeds"].tolist() == [""]
    looked = _looked_paragraph(html)
    assert "<b>tutorial-base</b> (4 of 10 planned seeds)" in looked and "Ctrl-C" in looked and "later command" not in looked
    # the same command run to the end of its plan: its seed count was fixed before any result
    done = tmp_path / "done"
    done.mkdir()
    html, tests = _report(_store(done, monkeypatch, {"tutorial-base": [("c1", "seeds 0-3")] * 4, "fastai-simplenet": [("c1", "seeds 0-3")] * 4}), done)
    assert tests["verdict"].tolist() == ["real"] and 'id="decided-looked"' not in html


def test_the_same_plan_run_again_is_one_command_and_another_plan_is_looking(tmp_path, monkeypatch):
    """A stopped `--repeats 4` run again to finish its seeds (or two drivers sharing it): two
    invocations of one plan, whose seed count was fixed in advance, keep the fixed-n verdicts.
    A second command of another plan (seeds added after reading the first's result) does not."""
    resumed = {"tutorial-base": [("c1", "seeds 0-3")] * 2 + [("c2", "seeds 0-3")] * 2, "fastai-simplenet": [("c1", "seeds 0-3")] * 4}
    html, tests = _report(_store(tmp_path, monkeypatch, resumed), tmp_path)
    assert tests["verdict"].tolist() == ["real"] and float(tests["p_seeds"][0]) < 0.05 and 'id="decided-looked"' not in html
    more = tmp_path / "more"
    more.mkdir()
    added = {"tutorial-base": [("c1", "seeds 0-1")] * 2 + [("c2", "seeds 0-3")] * 2, "fastai-simplenet": [("c1", "seeds 0-3")] * 4}
    html, tests = _report(_store(more, monkeypatch, added), more)
    assert tests["verdict"].tolist() == [LOOKED] and "<b>tutorial-base</b> (2 commands)" in _looked_paragraph(html)


def test_only_pairs_with_a_row_chosen_by_looking_lose_their_fixed_n_tests(tmp_path, monkeypatch):
    """Three recipes; seeds were added to tutorial-base by a later command, the two others were
    trained by one command each. The pair of those two keeps its Welch test, Holm-adjusted over
    the whole family (the looked pairs counting as never rejected: m stays 3); the pairs with
    tutorial-base show none."""
    means = {"tutorial-base": 50.0, "fastai-simplenet": 60.0, "fastai-convnet": 70.0}
    store = _store(tmp_path, monkeypatch, {"tutorial-base": ["c1", "c2", "c2", "c2"], "fastai-simplenet": ["c1"] * 4,
                                           "fastai-convnet": ["c3"] * 4}, means)
    html, tests = _report(store, tmp_path)
    assert tests["other"].tolist() == ["fastai-simplenet", "tutorial-base"]  # against the best, fastai-convnet
    assert tests["verdict"].tolist() == ["real", LOOKED] and tests["p_seeds"][1] == "" and tests["p_holm"][1] == ""
    p = float(tests["p_seeds"][0])
    assert float(tests["p_holm"][0]) == pytest.approx(min(1.0, 3 * p))  # Holm's first step over all 3 pairs
    looked = _looked_paragraph(html)
    assert "<b>tutorial-base</b> (2 commands)" in looked and "fastai-convnet" not in looked and "keep theirs" in looked


def test_a_plan_whose_runs_were_deleted_still_counts(tmp_path, monkeypatch):
    """`harness run A --repeats 3`, read the report, delete A's runs in the MLflow UI, `harness run
    A --repeats 4`: the runs counted are one complete plan, but the first plan's results were read
    before the second chose its seed count. The deleted runs (never counted) still count as a plan."""
    from harness.tracking import Tracker

    first = ("c1", "seeds 0-2")
    store = _store(tmp_path, monkeypatch, {"tutorial-base": [first] * 3, "fastai-simplenet": [("cB", "seeds 0-3")] * 4})
    t = Tracker(store, "cifar10-harness")
    for rid in t.search_runs_df().query("`tags.harness.experiment_id` == 'tutorial-base'")["run_id"]:
        t.client.delete_run(rid)
    from harness.recipes.catalogue import load_catalogue

    from .test_report_mixtures import write_run

    ep = load_catalogue()["tutorial-base"].train.epochs  # the second command: seeds 0-3, all of its plan
    for s in range(4):
        write_run(t, "tutorial-base", s, 50.0 + SPREAD[s], [40.0] * ep, 1.0, tags_extra={"harness.invocation": "c2", "harness.plan": "seeds 0-3"})
    html, tests = _report(store, tmp_path)
    assert tests["verdict"].tolist() == [LOOKED] and tests["p_seeds"].tolist() == [""]
    assert "<b>tutorial-base</b> (2 commands)" in _looked_paragraph(html)


def test_a_diverged_seed_does_not_mark_its_row_as_stopped_by_looking(tmp_path, monkeypatch):
    """`harness run A B --repeats 4`: seed 2 of tutorial-base diverged (FAILED; a rerun fails the
    same way). The plan was run to its end, its seed count fixed in advance: the fixed-n test
    stands, and the Decided section names the failed seed apart, not as a command stopped short."""
    from harness.tracking import Tracker

    plan = ("c1", "seeds 0-3")
    store = _store(tmp_path, monkeypatch, {"tutorial-base": [plan] * 4, "fastai-simplenet": [plan] * 4})
    t = Tracker(store, "cifar10-harness")
    runs = t.search_runs_df()
    diverged = runs[(runs["tags.harness.experiment_id"] == "tutorial-base") & (runs["tags.harness.seed"] == "2")]["run_id"].iloc[0]
    t.client.set_terminated(diverged, "FAILED")
    html, tests = _report(store, tmp_path)
    assert tests["verdict"].tolist() == ["real"] and tests["p_seeds"].tolist() != [""]
    assert 'id="decided-looked"' not in html
    failed = html[html.index('id="decided-failed"'):]
    assert "<b>tutorial-base</b> (seed 2)" in failed[:600]


def test_the_interval_of_a_row_chosen_by_looking_is_marked(later_command):
    """A row's fixed-n 95% t interval over seeds covers 93.7% after adding seeds until a test is
    significant: the summary marks it (a dagger and a note; CSV column ci95_looked) on the rows
    chosen by looking only."""
    html, _, summary = later_command
    assert bool(summary.loc["tutorial-base", "ci95_looked"]) and not bool(summary.loc["fastai-simplenet", "ci95_looked"])
    assert 'id="ci-looked"' in html and html.count("&dagger;</sup>") == 1
