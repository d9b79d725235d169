"""`harness report`: one self-contained HTML comparison built from the run store alone.

Reads runs with mlflow.search_runs (through tracking) plus their artifacts, so it works on
runs made elsewhere or earlier. Charts are embedded as base64 PNG; no external resources.
"""

from __future__ import annotations

import datetime as dt
import functools
import tempfile
from pathlib import Path

import pandas as pd

from ..errors import HarnessError
from ..tracking import TAG, Tracker, ui_link
from ..tracking.report_runs import deleted_runs_df, log_report
from .budget import BUDGETS_MIN, METRICS, budget_table, mean_curve, seed_curve
from .charts import CLASS_PREFIX, SMALL, charts, time_to_accuracy_chart
from .datasets import choose_data, compared_rows, data_sets, store_contents, timing_device
from .decided import decided_section, decisions_frame
from .looked import auto_command, looked_rows, mark_looked
from .rows import attach_apart, build_rows, load_runs
from .stats import ALPHA, MIN_SEEDS, best_basis, compare_neighbours, compare_to_best, family, pareto_front, ranked_rows


def _writable_target(path: str, what: str) -> Path:
    """Fail before any work (and leave nothing behind) when `path` cannot be written."""
    p = Path(path)
    try:
        if p.is_dir():
            raise HarnessError(f"{what} {p} is a folder; give a file name")
        p.parent.mkdir(parents=True, exist_ok=True)
        probe = p.with_name(p.name + ".tmp")
        probe.write_bytes(b"")
        probe.unlink()
    except HarnessError:
        raise
    except OSError as e:
        reason = {FileExistsError: "a file stands where a folder is needed", NotADirectoryError: "a file stands where a folder is needed",
                  PermissionError: "permission denied"}.get(type(e), e.strerror or type(e).__name__)
        raise HarnessError(f"{what} {p}: cannot write there ({reason})") from None
    return p


def _write_text(path: Path, text: str, what: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # readers never see half a file
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise HarnessError(f"{what} {path}: cannot write ({e.strerror or type(e).__name__})") from None


def build_report(uri: str | None, experiment_name: str, out: str, csv_path: str | None, ui_url: str, warn=lambda msg: None,
                 data: str | None = None, log_to_mlflow: bool = False, say=lambda msg: None, alpha: float | None = None,
                 margin: float | None = None) -> Path:
    """The report of the store's finished runs; `data`: the data set (fingerprint or a unique
    prefix) whose rows the tests and the budget table compare (default: datasets.data_sets' first);
    `log_to_mlflow`: also log the HTML as the artifact of a report run in the experiment."""
    out_path = _writable_target(out, "--out")
    csv_target = _writable_target(csv_path, "--csv") if csv_path else None
    tracker = Tracker(uri, experiment_name, create=False)
    df = load_runs(tracker)
    # a run counts once it logged its final metrics (test accuracy and training time, logged together)
    finished = df[(df["status"] == "FINISHED") & df["metrics.test_acc"].notna() & df["metrics.train_time_s"].notna()]
    others = df.drop(finished.index)
    if finished.empty:
        raise HarnessError(f"no finished runs in experiment {experiment_name!r} of {tracker.uri} ({len(others)} unfinished)")
    rows = build_rows(finished)
    gone = deleted_runs_df(tracker)  # deleted runs: counted nowhere, but their plans were run (looked.py)
    attach_apart(rows, finished, gone[(gone["status"] == "FINISHED")] if not gone.empty else gone, "deleted")
    attach_apart(rows, finished, others[others["status"] == "FAILED"], "failed")  # a diverged seed was trained as planned
    sets = data_sets(rows)
    chosen = choose_data(sets, data)
    compared, left_out = compared_rows(rows, chosen)
    if len(sets) > 1:  # the advice to train more seeds must name the data set
        folder = next(d["dirs"] for d in sets if d["fingerprint"] == chosen)
        for r in compared:
            r.stats["settle_data_dir"] = folder if "," not in folder and folder != "?" else "DIR"
    ctx = _gather(tracker, rows, compared, warn)
    ctx.update(_compare(rows, compared, ctx))
    ctx["decided"] = decided_section(compared, alpha, margin)  # anytime-valid verdicts, at the loop's alpha/margin (decided.py)
    mark_looked(ctx, compared)  # more seeds: `--repeats auto`; seeds chosen by looking: no fixed-n verdicts (looked.py)
    table = _summary(rows, compared, ctx, lambda rid: ui_link(ui_url, tracker.experiment_id, rid))
    ctx.update(table=table, data_sets=sets, chosen_data=chosen, left_out=left_out, contents=store_contents(rows),
               superseded=_superseded(rows, lambda rid: ui_link(ui_url, tracker.experiment_id, rid)),
               unfinished=_unfinished(others, lambda rid: ui_link(ui_url, tracker.experiment_id, rid)),
               missing=_missing(finished), n_runs=len(df), n_finished=len(finished), n_counted=sum(r.stats["n"] for r in rows))
    _write_text(out_path, _render(ctx, tracker, experiment_name, ui_url), "--out")
    if csv_target:
        _write_csvs(csv_target, table, ctx["tests"], ctx["budgets"])
        _write_text(sibling(csv_target, "decisions"), decisions_frame(ctx["decided"]).to_csv(index=False), "--csv")
    if log_to_mlflow:
        ctx["report_run"] = log_report(tracker, out_path, tags={"harness.report_rows": len(rows), "harness.report_runs": len(finished)})
        say(f"report logged to MLflow as run {ctx['report_run']}: {ui_link(ui_url, tracker.experiment_id, ctx['report_run'])}")
    return out_path


def _gather(tracker: Tracker, rows: list, compared: list, warn) -> dict:
    """Artifacts and histories: predictions of each compared row's first run (the paired tests),
    each row's first confusion matrix and loss history, and every counted run's validation curve."""
    preds, cms, histories, classes, curves = {}, {}, {}, [], {}
    lost: dict[str, list[str]] = {}  # run id -> artifacts that could not be read
    counted = [rid for r in compared for rid in r.runs["run_id"]]
    hist = {k: tracker.metric_histories(counted, k) for k in METRICS}  # a few queries, not one per run and metric
    with tempfile.TemporaryDirectory() as tmp:
        for i, r in enumerate(rows):
            first = r.runs["run_id"].iloc[0]
            if r in compared:
                p = tracker.download_artifact(first, "test_predictions.csv", f"{tmp}/{first}")
                if p:
                    preds[first] = pd.read_csv(p)
                else:
                    lost.setdefault(first, []).append("test_predictions.csv")
            if r in compared:  # the time views and the budget table compare these only
                curves[r.key] = [seed_curve({k: hist[k][rid] for k in METRICS}) for rid in r.runs["run_id"]]
            if i >= SMALL:  # loss curves and confusion matrices are drawn for the first SMALL rows
                continue
            c = tracker.download_artifact(first, "confusion_matrix.csv", f"{tmp}/{first}")
            if c:
                cms[first] = pd.read_csv(c, index_col=0)
                classes = classes or list(cms[first].columns)
            else:
                lost.setdefault(first, []).append("confusion_matrix.csv")
            histories[first] = {k: tracker.metric_history(first, k) for k in ("train_loss", "val_loss")}
    names = {rid: n for r in rows for rid, n in zip(r.runs["run_id"], r.runs.get("tags.mlflow.runName", r.runs["run_id"]))}
    missing = [{"run_id": rid, "name": names.get(rid, rid), "files": ", ".join(f)} for rid, f in lost.items()]
    if missing:
        warn(f"artifacts missing for {len(missing)} run(s), whose significance tests and confusion matrices are left out: "
             + "; ".join(f"{m['name']} ({m['run_id']}): {m['files']}" for m in missing))
    if not classes:
        classes = sorted({c[len(CLASS_PREFIX):] for r in rows for c in r.runs.columns if c.startswith(CLASS_PREFIX) and c != "metrics.test_acc_eval_mode"})
    return {"preds": preds, "cms": cms, "histories": histories, "classes": classes, "curves": curves, "missing_artifacts": missing}


def _compare(rows: list, compared: list, ctx: dict) -> dict:
    # every verdict of the page: one family, all pairs; a pair with a row chosen by looking has no valid Welch test (looked.py)
    looked = looked_rows(compared)
    fam = family(ranked_rows(compared), ctx["preds"], looked)
    tests = compare_to_best(compared, ctx["preds"], fam)
    device, timed = timing_device(compared)  # times are compared on one device only
    front = pareto_front([(r.key, r.stats["train_time"], r.stats["mean"]) for r in timed])
    figs = charts(rows, ctx["histories"], ctx["cms"], ctx["classes"], timed, front)
    figs["time_to_accuracy"] = time_to_accuracy_chart(timed, {k: mean_curve(v) for k, v in ctx["curves"].items()}, BUDGETS_MIN, device)
    return {"tests": tests, "neighbours": compare_neighbours(compared, ctx["preds"], fam), "family_size": len(fam), "figs": figs,
            "budgets": budget_table(timed, ctx["curves"], looked=looked, settle=auto_command(compared)), "basis": best_basis(compared, tests), "front": front,
            "timed_device": device, "untimed": [{"row": r.key, "device": r.ckey.device or "unrecorded"} for r in compared if r not in timed]}


def _summary(rows: list, compared: list, ctx: dict, link) -> list[dict]:
    verdict = {t["other"]: t["verdict"] for t in ctx["tests"]}
    looked = set(ctx["decided"].get("looked_rows", ()))  # their t intervals do not hold under the stopping (looked.py)
    basis = ctx["basis"]
    table = []
    for r in rows:
        s = r.stats
        if r.key == basis["best"]:
            # "best" only where it is ahead of every other row beyond seed noise
            v = "best" if basis.get("beyond") else "highest mean (within seed noise)" if basis["measured"] else "best run (seeds untested)"
        else:
            v = verdict.get(r.key, ("only row compared" if len(compared) == 1 else "-") if r in compared else "not compared")
        table.append({
            "id": r.experiment_id, "key": r.key, "source": r.source, "params": r.params, "capped": r.capped, "user": r.user,
            "published": r.published, "published_mean": s["published_mean"], "mean": s["mean"], "std": s["std"], "n": s["n"],
            "ci95": s["ci95"], "ci95_looked": bool(s["ci95"]) and r.key in looked, "diff": s["diff"], "published_interval": s["published_interval"], "eval_mode": s["eval_mode"],
            "mean_eval_mode": s["mean_eval_mode"], "train_time": s["train_time"], "images_per_s": s["images_per_s"], "device": s["device"],
            "epochs": s["epochs"], "recipe_epochs": s["recipe_epochs"], "n_train": s["n_train"], "seeds": s["seeds"], "precision": s["precision"],
            "data": s["data"], "execution": s["execution"], "val_on": s["val_on"], "compared": r in compared,
            "pareto": r.key in ctx["front"], "verdict": v, "superseded": len(r.superseded),
            "runs": [(rid, link(rid)) for rid in r.runs["run_id"]],
        })
    return table


def _superseded(rows: list, link) -> list[dict]:
    return [{"row": r.key, "seed": int(x["_seed"]), "run_id": x["run_id"], "link": link(x["run_id"]),
             "kept": r.runs.loc[r.runs["_seed"] == x["_seed"], "run_id"].iloc[0]}
            for r in rows for _, x in r.superseded.iterrows()]


def _unfinished(others: pd.DataFrame, link) -> list[dict]:
    return [{"id": x.get(f"tags.{TAG}experiment_id"), "run_id": x["run_id"], "status": x["status"], "link": link(x["run_id"]),
             "reason": x.get(f"tags.{TAG}failure_reason") if isinstance(x.get(f"tags.{TAG}failure_reason"), str) else
             ("still running, or killed without notice: `harness run` resumes it" if x["status"] == "RUNNING" else
              "marked finished without its final metrics (test accuracy, training time): not counted" if x["status"] == "FINISHED" else "")}
            for _, x in others.iterrows()]


def _missing(finished: pd.DataFrame) -> list[str]:
    from .keys import catalogue_specs

    known = list(catalogue_specs())  # the catalogue's ids ([] where it cannot be read), read once for the labels
    present = set(finished[f"tags.{TAG}experiment_id"])
    return [k for k in known if k not in present]


@functools.cache
def _environment():
    """The templates' environment, made once per process (Jinja then compiles a template once,
    and again only when its file changes)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("harness", "templates"), autoescape=select_autoescape(["html", "j2"]))
    env.filters["pct"] = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"
    return env


def _render(ctx: dict, tracker: Tracker, experiment_name: str, ui_url: str) -> str:
    return _environment().get_template("report.html.j2").render(
        title="CIFAR-10 write-ups, reproduced", generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M"), uri=tracker.uri,
        experiment_name=experiment_name, best=ctx["basis"]["best"], small=SMALL, n_rows=len(ctx["table"]), front=sorted(ctx["front"]), alpha=ALPHA, min_seeds=MIN_SEEDS,
        ui_url=ui_url, experiment_link=ui_link(ui_url, tracker.experiment_id), user_keys=[t["key"] for t in ctx["table"] if t["user"]],
        **{k: v for k, v in ctx.items() if k not in ("preds", "cms", "histories", "curves", "classes", "front")})


def _ci(t: dict, i: int):
    return None if not t["ci95"] else round(t["ci95"][i], 4)


SUMMARY_COLS = ["key", "id", "data", "precision", "epochs", "recipe_epochs", "n_train", "capped", "user", "compared", "source", "params", "published_mean",
                "mean", "std", "ci95_looked", "n", "seeds", "superseded", "execution", "eval_mode", "mean_eval_mode", "diff", "train_time", "images_per_s", "device", "pareto", "verdict"]
TEST_COLS = ["best", "other", "diff", "runs", "b", "c", "p", "n_best", "n_other", "p_seeds", "p_holm", "verdict", "settle"]
BUDGET_COLS = ["minutes", "scored_on", "best", "acc", "n", "selected", "runner_up", "runner_acc", "runner_n", "p", "p_holm", "verdict"]


def sibling(path: Path, part: str) -> Path:
    """r.csv -> r-tests.csv: the report's other tables beside its summary CSV."""
    return path.with_name(f"{path.stem}-{part}{path.suffix or '.csv'}")


def _write_csvs(target: Path, table: list[dict], tests: list[dict], budgets: list[dict]) -> None:
    summary = pd.DataFrame([{k: t[k] for k in SUMMARY_COLS} | {"ci95_low": _ci(t, 0), "ci95_high": _ci(t, 1), "run_ids": " ".join(rid for rid, _ in t["runs"])}
                            for t in table]).rename(
        columns={"key": "row", "user": "user_recipe", "mean": "test_acc_mean", "std": "test_acc_std", "diff": "diff_to_published", "train_time": "train_time_s",
                 "published_mean": "published_acc_mean"})
    _write_text(target, summary.to_csv(index=False), "--csv")
    _write_text(sibling(target, "tests"), pd.DataFrame([{k: t.get(k) for k in TEST_COLS} for t in tests], columns=TEST_COLS).to_csv(index=False), "--csv")
    _write_text(sibling(target, "budgets"), pd.DataFrame([{k: b.get(k) for k in BUDGET_COLS} for b in budgets], columns=BUDGET_COLS).to_csv(index=False),
                "--csv")
