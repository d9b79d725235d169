"""`harness report`: one self-contained HTML comparison built from the run store alone.

Reads runs with mlflow.search_runs (through tracking.py) plus their artifacts, so it works on
runs made elsewhere or earlier. Charts are embedded as base64 PNG; no external resources.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import HarnessError
from .tracking import TAG, Tracker

CLASS_PREFIX = "metrics.test_acc_"
BOOTSTRAP = 2000
ALPHA = 0.05


@dataclass
class Row:
    """One experiment (uncapped and capped runs are separate rows)."""

    experiment_id: str
    capped: bool
    runs: pd.DataFrame
    published: list[float]
    source: str = ""
    params: int | None = None
    stats: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.experiment_id + (" (capped)" if self.capped else "")

    @property
    def acc(self) -> np.ndarray:
        return self.runs["metrics.test_acc"].to_numpy(dtype=float)


def _num(v):
    try:
        f = float(v)
        return None if math.isnan(f) else f
    except (TypeError, ValueError):
        return None


def _b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


# --------------------------------------------------------------------------- loading


def load_runs(tracker: Tracker) -> pd.DataFrame:
    df = tracker.search_runs_df()
    if df.empty:
        raise HarnessError(f"no runs in experiment {tracker.experiment_name!r} of {tracker.uri}; run `harness run-all` first")
    for col in (f"tags.{TAG}experiment_id", f"tags.{TAG}capped", f"tags.{TAG}failure_reason", "metrics.test_acc"):
        if col not in df:
            df[col] = np.nan
    df = df[df[f"tags.{TAG}experiment_id"].notna()].copy()
    if df.empty:
        raise HarnessError(f"experiment {tracker.experiment_name!r} holds no harness runs")
    df["capped"] = df[f"tags.{TAG}capped"].astype(str).str.lower().eq("true")
    return df


def build_rows(finished: pd.DataFrame) -> list[Row]:
    rows = []
    for (eid, capped), g in finished.groupby([f"tags.{TAG}experiment_id", "capped"], sort=True):
        pub = json.loads(g[f"tags.{TAG}published_accuracy"].dropna().iloc[0]) if f"tags.{TAG}published_accuracy" in g and g[f"tags.{TAG}published_accuracy"].notna().any() else []
        params = _num(g["params.params"].iloc[0]) if "params.params" in g else None
        r = Row(eid, bool(capped), g.sort_values("start_time"), pub, str(g.get(f"tags.{TAG}source", pd.Series([""])).iloc[0]), int(params) if params else None)
        acc = r.acc
        r.stats = {
            "n": len(acc),
            "mean": float(acc.mean()),
            "std": float(acc.std(ddof=1)) if len(acc) > 1 else None,
            "published_mean": float(np.mean(pub)) if pub else None,
            "train_time": float(g["metrics.train_time_s"].mean()),
            "images_per_s": float(g["metrics.images_per_s"].mean()),
            "device": str(g.get(f"tags.{TAG}device", pd.Series(["?"])).iloc[0]),
            "epochs": str(g.get("params.epochs", pd.Series(["?"])).iloc[0]),
            "recipe_epochs": str(g.get("params.recipe_epochs", pd.Series(["?"])).iloc[0]),
            "n_train": str(g.get("params.data.n_train", pd.Series(["?"])).iloc[0]),
            "seeds": ", ".join(str(s) for s in g.get(f"tags.{TAG}seed", pd.Series([])).tolist()),
        }
        r.stats["published_interval"] = _published_interval(g, pub)
        r.stats["diff"] = distance_to_interval(r.stats["mean"], r.stats["published_interval"])
        r.stats["eval_mode"] = str(g.get(f"tags.{TAG}eval_mode", pd.Series(["eval"])).fillna("eval").iloc[0])
        std_acc = g["metrics.test_acc_eval_mode"].to_numpy(dtype=float) if "metrics.test_acc_eval_mode" in g else np.array([np.nan])
        r.stats["mean_eval_mode"] = float(np.nanmean(std_acc)) if not np.isnan(std_acc).all() else None
        rows.append(r)
    # uncapped first, then by accuracy
    rows.sort(key=lambda r: (r.capped, -r.stats["mean"]))
    return rows


def _published_interval(g: pd.DataFrame, pub: list[float]) -> tuple[float, float] | None:
    col = f"tags.{TAG}published_interval"
    if col in g and g[col].notna().any():
        iv = json.loads(g[col].dropna().iloc[0])
        if iv:
            return float(iv[0]), float(iv[1])
    return (min(pub), max(pub)) if pub else None  # runs recorded before intervals: the printed values


def distance_to_interval(value: float, interval: tuple[float, float] | None) -> float | None:
    """Δ to published: 0 inside the interval the printed numbers admit, else the signed
    distance to its nearest bound."""
    if interval is None:
        return None
    lo, hi = interval
    return 0.0 if lo <= value <= hi else (value - hi if value > hi else value - lo)


# --------------------------------------------------------------------------- statistics


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """Exact McNemar test on paired correctness: (b, c, two-sided p)."""
    from scipy.stats import binomtest

    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    return b, c, float(p)


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% interval of accuracy(a) - accuracy(b), resampling test images (in points of %)."""
    rng = np.random.default_rng(seed)
    d = correct_a.astype(float) - correct_b.astype(float)
    idx = rng.integers(0, len(d), size=(n, len(d)))
    means = 100.0 * d[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_compare(a: Row, b: Row, preds: dict[str, pd.DataFrame]) -> dict:
    """a (the higher) against b on the same test images, first run of each, plus seed spread."""
    entry = {"best": a.key, "other": b.key, "diff": a.stats["mean"] - b.stats["mean"], "b": None, "c": None, "p": None, "ci": None}
    pa, pb = preds.get(a.runs["run_id"].iloc[0]), preds.get(b.runs["run_id"].iloc[0])
    same_data = a.runs[f"tags.{TAG}data_fingerprint"].iloc[0] == b.runs[f"tags.{TAG}data_fingerprint"].iloc[0]
    if pa is not None and pb is not None and same_data and len(pa) == len(pb) and (pa["label"].to_numpy() == pb["label"].to_numpy()).all():
        ca = (pa["pred"] == pa["label"]).to_numpy()
        cb = (pb["pred"] == pb["label"]).to_numpy()
        entry["b"], entry["c"], entry["p"] = mcnemar(ca, cb)
        entry["ci"] = paired_bootstrap(ca, cb)
    spread = max([s for s in (a.stats["std"], b.stats["std"]) if s is not None], default=None)
    entry["spread"] = spread
    real = entry["p"] is not None and entry["p"] < ALPHA
    if spread is not None and entry["diff"] < 2 * spread:
        real = False  # inside the seed-to-seed spread: not a ranking
    entry["verdict"] = "real" if real else ("within noise" if entry["p"] is not None or spread is not None else "untested")
    return entry


def ranked_rows(rows: list[Row]) -> list[Row]:
    """Uncapped rows by accuracy (capped ones only when nothing else exists)."""
    ranked = [r for r in rows if not r.capped] or rows
    return sorted(ranked, key=lambda r: -r.stats["mean"])


def compare_to_best(rows: list[Row], preds: dict[str, pd.DataFrame]) -> list[dict]:
    ranked = ranked_rows(rows)
    return [paired_compare(ranked[0], r, preds) for r in ranked[1:]]


def compare_neighbours(rows: list[Row], preds: dict[str, pd.DataFrame]) -> list[dict]:
    """Each rank against the next one down: where the ordering itself is inside the noise."""
    ranked = ranked_rows(rows)
    return [paired_compare(a, b, preds) for a, b in zip(ranked, ranked[1:])]


def pareto_front(points: list[tuple[str, float, float]]) -> set[str]:
    """Names not dominated in (lower time, higher accuracy)."""
    front = set()
    for name, t, a in points:
        if not any((t2 <= t and a2 >= a) and (t2 < t or a2 > a) for _, t2, a2 in points):
            front.add(name)
    return front


# --------------------------------------------------------------------------- charts


def charts(rows: list[Row], histories: dict[str, dict[str, list]], cms: dict[str, pd.DataFrame], classes: list[str]) -> dict[str, str]:
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .plots import confusion_figure, loss_curve_figure, png_bytes

    out = {}
    names = [r.key for r in rows]
    palette = sns.color_palette("tab20", len(rows))

    # measured vs published
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r.stats["mean"] for r in rows], 0.4, xerr=[r.stats["std"] or 0 for r in rows], label="measured (mean ± std over seeds)", color="#4C72B0", capsize=3)
    ax.barh(y + 0.2, [r.stats["published_mean"] or 0 for r in rows], 0.4, label="published (mean of repeats)", color="#DD8452")
    for i, r in enumerate(rows):
        for p in r.published:
            ax.plot(p, i + 0.2, "k|", ms=9)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy (%)")
    ax.legend(loc="lower right", fontsize=8)
    out["accuracy"] = _b64(png_bytes(fig))

    # train time
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.5))
    ax.barh(y, [r.stats["train_time"] for r in rows], color=palette)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("train time (s, log scale; training only, excluding evaluation)")
    out["time"] = _b64(png_bytes(fig))

    # accuracy vs time with the Pareto front
    pts = [(r.key, r.stats["train_time"], r.stats["mean"]) for r in rows]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for (name, t, a), r, col in zip(pts, rows, palette):
        ax.errorbar(t, a, yerr=r.stats["std"] or 0, fmt="o", color=col, ms=8 if name in front else 5, capsize=3)
        ax.annotate(name, (t, a), xytext=(4, 4), textcoords="offset points", fontsize=7, weight="bold" if name in front else "normal")
    fr = sorted((t, a) for n, t, a in pts if n in front)
    if fr:
        ax.step([t for t, _ in fr], [a for _, a in fr], where="post", color="crimson", lw=1.2, label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("train time (s, log)")
    ax.set_ylabel("test accuracy (%)")
    out["pareto"] = _b64(png_bytes(fig))

    # per-class heatmap
    cols = [f"{CLASS_PREFIX}{c}" for c in classes]
    mat = pd.DataFrame([[r.runs[c].mean() if c in r.runs else np.nan for c in cols] for r in rows], index=names, columns=classes)
    fig, ax = plt.subplots(figsize=(10, 0.4 * len(rows) + 1.8))
    sns.heatmap(mat, annot=True, fmt=".0f", cmap="viridis", vmin=0, vmax=100, ax=ax, cbar_kws={"label": "test accuracy (%)"}, annot_kws={"size": 7})
    ax.set_xlabel("")
    out["per_class"] = _b64(png_bytes(fig))

    # loss curves, small multiples
    n = len(rows)
    ncol = 4
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 2.8 * nrow), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        h = histories.get(r.runs["run_id"].iloc[0], {})
        tr, va = h.get("train_loss", []), h.get("val_loss", [])
        val_on = str(r.runs.get("params.data.val_on", pd.Series(["validation"])).iloc[0])
        loss_curve_figure([s + 1 for s, _ in tr], [v for _, v in tr], [v for _, v in va], r.key, "test" if val_on == "test" else "validation", ax=ax)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    out["loss"] = _b64(png_bytes(fig))

    # confusion matrices, small multiples
    have = [r for r in rows if r.runs["run_id"].iloc[0] in cms]
    if have:
        nrow = math.ceil(len(have) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.9 * nrow), squeeze=False)
        for ax, r in zip(axes.flat, have):
            cm = cms[r.runs["run_id"].iloc[0]]
            short = [c[:5] for c in cm.columns]
            confusion_figure(cm.to_numpy(), short, r.key, ax=ax)
        for ax in list(axes.flat)[len(have):]:
            ax.axis("off")
        out["confusion"] = _b64(png_bytes(fig))
    return out


# --------------------------------------------------------------------------- build


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

    from .catalogue import load_catalogue

    out_path = _writable_target(out, "--out")
    csv_target = _writable_target(csv_path, "--csv") if csv_path else None
    tracker = Tracker(uri, experiment_name, create=False)
    df = load_runs(tracker)
    finished = df[(df["status"] == "FINISHED") & df["metrics.test_acc"].notna()]
    others = df[df["status"] != "FINISHED"]
    rows = build_rows(finished)
    if not rows:
        raise HarnessError(f"no finished runs in experiment {experiment_name!r} of {tracker.uri} ({len(others)} unfinished)")

    preds, cms, histories, classes = {}, {}, {}, []
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
    missing_artifacts = [{"run_id": rid, "name": names.get(rid, rid), "files": ", ".join(f)} for rid, f in lost.items()]
    if missing_artifacts:
        warn(f"artifacts missing for {len(missing_artifacts)} run(s), whose significance tests and confusion matrices are left out: "
             + "; ".join(f"{m['name']} ({m['run_id']}): {m['files']}" for m in missing_artifacts))
    if not classes:
        classes = sorted(c[len(CLASS_PREFIX):] for c in finished.columns if c.startswith(CLASS_PREFIX))

    tests = compare_to_best(rows, preds)
    neighbours = compare_neighbours(rows, preds)
    figs = charts(rows, histories, cms, classes)
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
    link = lambda run_id: f"{ui_url.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"

    table = []
    for r in rows:
        s = r.stats
        table.append({
            "id": r.experiment_id, "key": r.key, "source": r.source, "params": r.params, "capped": r.capped,
            "published": r.published, "published_mean": s["published_mean"], "mean": s["mean"], "std": s["std"], "n": s["n"],
            "diff": s["diff"], "published_interval": s["published_interval"], "eval_mode": s["eval_mode"],
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
        missing_artifacts=missing_artifacts,
    )
    _write_text(out_path, html, "--out")
    if csv_target:
        cols = ["id", "capped", "source", "params", "published_mean", "mean", "std", "n", "eval_mode", "mean_eval_mode", "diff", "train_time", "images_per_s", "device", "epochs", "n_train", "verdict"]
        pd.DataFrame([{k: t[k] for k in cols} | {"run_ids": " ".join(rid for rid, _ in t["runs"])} for t in table]).rename(
            columns={"mean": "test_acc_mean", "std": "test_acc_std", "diff": "diff_to_published", "train_time": "train_time_s", "published_mean": "published_acc_mean"}
        ).to_csv(csv_target, index=False)
    return out_path
