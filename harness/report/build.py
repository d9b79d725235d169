"""`harness report`: one self-contained HTML comparison built from the run store alone.

Reads runs with mlflow.search_runs (through tracking) plus their artifacts, so it works on
runs made elsewhere or earlier. Charts are embedded as base64 PNG; no external resources.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import pandas as pd

from ..errors import HarnessError
from ..tracking import TAG, Tracker, ui_link
from .budget import BUDGETS_MIN, budget_table, mean_curve, seed_curve
from .charts import CLASS_PREFIX, charts, time_to_accuracy_chart
from .rows import build_rows, load_runs
from .stats import ALPHA, compare_neighbours, compare_to_best, pareto_front


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


def build_report(uri: str | None, experiment_name: str, out: str, csv_path: str | None, ui_url: str, warn=lambda msg: None) -> Path:
    from jinja2 import Environment, PackageLoader, select_autoescape

    from ..recipes.catalogue import load_catalogue

    out_path = _writable_target(out, "--out")
    csv_target = _writable_target(csv_path, "--csv") if csv_path else None
    tracker = Tracker(uri, experiment_name, create=False)
    df = load_runs(tracker)
    finished = df[(df["status"] == "FINISHED") & df["metrics.test_acc"].notna()]
    others = df[df["status"] != "FINISHED"]
    rows = build_rows(finished)
    if not rows:
        raise HarnessError(f"no finished runs in experiment {experiment_name!r} of {tracker.uri} ({len(others)} unfinished)")

    preds, cms, histories, classes, curves = {}, {}, {}, [], {}
    lost: dict[str, list[str]] = {}  # run id -> artifacts that could not be read
    names = dict(zip(finished["run_id"], finished.get("tags.mlflow.runName", finished["run_id"])))
    with tempfile.TemporaryDirectory() as tmp:
        for r in rows:
            for run_id in r.runs["run_id"]:
                p = tracker.download_artifact(run_id, "test_predictions.csv", f"{tmp}/{run_id}")
                if p:
                    preds[run_id] = pd.read_csv(p)
                else:
                    lost.setdefault(run_id, []).append("test_predictions.csv")
            first = r.runs["run_id"].iloc[0]
            c = tracker.download_artifact(first, "confusion_matrix.csv", f"{tmp}/{first}")
            if c:
                cms[first] = pd.read_csv(c, index_col=0)
                classes = classes or list(cms[first].columns)
            else:
                lost.setdefault(first, []).append("confusion_matrix.csv")
            histories[first] = {k: tracker.metric_history(first, k) for k in ("train_loss", "val_loss")}
            curves[r.key] = [seed_curve({k: tracker.metric_history(rid, k) for k in ("epoch_time_s", "val_acc")}) for rid in r.runs["run_id"]]
    missing_artifacts = [{"run_id": rid, "name": names.get(rid, rid), "files": ", ".join(f)} for rid, f in lost.items()]
    if missing_artifacts:
        warn(f"artifacts missing for {len(missing_artifacts)} run(s), whose significance tests and confusion matrices are left out: "
             + "; ".join(f"{m['name']} ({m['run_id']}): {m['files']}" for m in missing_artifacts))
    if not classes:
        classes = sorted(c[len(CLASS_PREFIX):] for c in finished.columns if c.startswith(CLASS_PREFIX))

    tests = compare_to_best(rows, preds)
    neighbours = compare_neighbours(rows, preds)
    figs = charts(rows, histories, cms, classes)
    figs["time_to_accuracy"] = time_to_accuracy_chart(rows, {k: mean_curve(v) for k, v in curves.items()}, BUDGETS_MIN)
    budgets = budget_table(rows, curves)
    pts = [(r.key, r.stats["train_time"], r.stats["mean"]) for r in rows]
    front = pareto_front(pts)
    verdict = {t["other"]: t["verdict"] for t in tests}
    best = next((t["best"] for t in tests), rows[0].key)

    try:
        known = list(load_catalogue())
    except HarnessError:
        known = []
    present = set(finished[f"tags.{TAG}experiment_id"])
    missing = [k for k in known if k not in present]
    exp_id = tracker.experiment_id
    link = lambda run_id: ui_link(ui_url, exp_id, run_id)

    table = []
    for r in rows:
        s = r.stats
        table.append({
            "id": r.experiment_id, "key": r.key, "source": r.source, "params": r.params, "capped": r.capped, "user": r.user,
            "published": r.published, "published_mean": s["published_mean"], "mean": s["mean"], "std": s["std"], "n": s["n"],
            "ci95": s["ci95"], "diff": s["diff"], "published_interval": s["published_interval"], "eval_mode": s["eval_mode"],
            "mean_eval_mode": s["mean_eval_mode"], "train_time": s["train_time"], "images_per_s": s["images_per_s"], "device": s["device"],
            "epochs": s["epochs"], "recipe_epochs": s["recipe_epochs"], "n_train": s["n_train"], "seeds": s["seeds"],
            "pareto": r.key in front, "verdict": "best" if r.key == best else verdict.get(r.key, "-"),
            "runs": [(rid, link(rid)) for rid in r.runs["run_id"]],
        })
    unfinished = [{"id": x.get(f"tags.{TAG}experiment_id"), "run_id": x["run_id"], "status": x["status"], "link": link(x["run_id"]),
                   "reason": x.get(f"tags.{TAG}failure_reason") if isinstance(x.get(f"tags.{TAG}failure_reason"), str) else
                   ("still running, or killed without notice: `harness run` resumes it" if x["status"] == "RUNNING" else "")}
                  for _, x in others.iterrows()]

    env = Environment(loader=PackageLoader("harness", "templates"), autoescape=select_autoescape(["html", "j2"]))
    env.filters["pct"] = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"
    html = env.get_template("report.html.j2").render(
        title="CIFAR-10 write-ups, reproduced", generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M"), uri=tracker.uri,
        experiment_name=experiment_name, table=table, tests=tests, neighbours=neighbours, figs=figs, unfinished=unfinished, missing=missing,
        best=best, front=sorted(front), alpha=ALPHA, n_runs=len(df), n_finished=len(finished), ui_url=ui_url,
        experiment_link=ui_link(ui_url, exp_id),
        missing_artifacts=missing_artifacts, budgets=budgets, user_keys=[r.key for r in rows if r.user],
    )
    _write_text(out_path, html, "--out")
    if csv_target:
        cols = ["id", "capped", "user", "source", "params", "published_mean", "mean", "std", "n", "eval_mode", "mean_eval_mode", "diff", "train_time", "images_per_s", "device", "epochs", "n_train", "verdict"]
        pd.DataFrame([{k: t[k] for k in cols} | {"run_ids": " ".join(rid for rid, _ in t["runs"])} for t in table]).rename(
            columns={"user": "user_recipe", "mean": "test_acc_mean", "std": "test_acc_std", "diff": "diff_to_published", "train_time": "train_time_s", "published_mean": "published_acc_mean"}
        ).to_csv(csv_target, index=False)
    return out_path
