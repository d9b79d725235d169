"""The report's rows: finished runs grouped by experiment (capped and uncapped apart), with
the statistics of their seeds and the published interval they are compared with."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import HarnessError
from ..tracking import TAG, Tracker
from .mathstats import t_interval

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
    user: bool = False  # a recipe of the user's own (tag harness.user_recipe), beside the documented ones
    code: str = ""  # the network code's hash where one id has runs of several versions of it

    @property
    def key(self) -> str:
        return self.experiment_id + (f" (code {self.code[:8]})" if self.code else "") + (" (capped)" if self.capped else "")

    @property
    def acc(self) -> np.ndarray:
        return self.runs["metrics.test_acc"].to_numpy(dtype=float)


def _num(v):
    try:
        f = float(v)
        return None if math.isnan(f) else f
    except (TypeError, ValueError):
        return None


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
    # a user's network: each version of its code is a configuration of its own, never pooled as seeds
    code = df[f"tags.{TAG}model_code_sha256"] if f"tags.{TAG}model_code_sha256" in df else pd.Series("", index=df.index)
    df["code"] = code.fillna("").astype(str)
    return df


def build_rows(finished: pd.DataFrame) -> list[Row]:
    rows = []
    if "code" not in finished:
        finished = finished.assign(code="")
    versions = finished.groupby(f"tags.{TAG}experiment_id")["code"].nunique()
    for (eid, capped, code), g in finished.groupby([f"tags.{TAG}experiment_id", "capped", "code"], sort=True):
        pub = json.loads(g[f"tags.{TAG}published_accuracy"].dropna().iloc[0]) if f"tags.{TAG}published_accuracy" in g and g[f"tags.{TAG}published_accuracy"].notna().any() else []
        params = _num(g["params.params"].iloc[0]) if "params.params" in g else None
        r = Row(eid, bool(capped), g.sort_values("start_time"), pub, str(g.get(f"tags.{TAG}source", pd.Series([""])).iloc[0]), int(params) if params else None)
        r.code = code if versions[eid] > 1 else ""
        r.user = f"tags.{TAG}user_recipe" in g and g[f"tags.{TAG}user_recipe"].astype(str).eq("true").any()
        acc = r.acc
        r.stats = {
            "n": len(acc),
            "mean": float(acc.mean()),
            "std": float(acc.std(ddof=1)) if len(acc) > 1 else None,
            "ci95": t_interval(acc),
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
