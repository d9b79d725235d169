"""The report's rows: finished runs grouped by comparability key (keys.py), one run per seed,
with the statistics of their seeds and the published interval they are compared with."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import HarnessError
from ..tracking import TAG, Tracker
from .keys import EXECUTION_COLUMNS, KEY_COLUMNS, Key, execution, infer_available, labels, one_per_seed, run_key, spec_columns
from .mathstats import t_interval

@dataclass(eq=False)  # rows are compared by identity (`row in compared`)
class Row:
    """One experiment under one comparability key (keys.py): one finished run per seed."""

    experiment_id: str
    capped: bool
    runs: pd.DataFrame
    published: list[float]
    source: str = ""
    params: int | None = None
    stats: dict = field(default_factory=dict)
    label: str = ""
    user: bool = False  # a recipe of the user's own (tag harness.user_recipe), beside the documented ones
    ckey: Key | None = None
    superseded: pd.DataFrame = field(default_factory=pd.DataFrame)
    deleted: pd.DataFrame = field(default_factory=pd.DataFrame)  # finished runs of this key deleted in the UI (plans only: looked.py)
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)  # FAILED runs of this key (a seed a rerun fails again: looked.py)

    @property
    def key(self) -> str:
        return self.label or self.experiment_id + (" (capped)" if self.capped else "")

    @property
    def data(self) -> str:
        return self.ckey.data if self.ckey else "unknown"

    @property
    def acc(self) -> np.ndarray:
        return self.runs["metrics.test_acc"].to_numpy(dtype=float)

    @property
    def seeds(self) -> list[int | None]:
        """Each counted run's seed; None for a run that recorded none (a sample of its own)."""
        return [None if pd.isna(s) else int(s) for s in self.runs["_seed"]] if "_seed" in self.runs else []


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
    for col in (f"tags.{TAG}experiment_id", f"tags.{TAG}capped", f"tags.{TAG}failure_reason", "metrics.test_acc", "metrics.train_time_s",
                "metrics.images_per_s"):
        if col not in df:
            df[col] = np.nan
    df = df[df[f"tags.{TAG}experiment_id"].notna()].copy()
    if df.empty:
        raise HarnessError(f"experiment {tracker.experiment_name!r} holds no harness runs")
    df["capped"] = df[f"tags.{TAG}capped"].astype(str).str.lower().eq("true")
    return df


def _records(runs: pd.DataFrame, *column_lists) -> list[dict]:
    """Each run as a dict of the named columns it has (what run_key and execution read): a
    fraction of iterrows' cost on a store's hundreds of columns."""
    cols = list(dict.fromkeys(c for cs in column_lists for c in cs if c in runs.columns))
    return runs[cols].to_dict("records")


def build_rows(finished: pd.DataFrame) -> list[Row]:
    """One row per comparability key; n counts distinct seeds (a seed's latest finished run)."""
    finished = infer_available(finished.copy())
    spec_cols = {eid: spec_columns(g) for eid, g in finished.groupby(f"tags.{TAG}experiment_id")}
    finished["_key"] = [run_key(x, spec_cols[x[f"tags.{TAG}experiment_id"]]) for x in _records(finished, KEY_COLUMNS, *spec_cols.values())]
    groups = [(k, *one_per_seed(all_runs)) for k, all_runs in finished.groupby("_key", sort=False)]
    names = labels({k: len(g) for k, g, _ in groups})
    rows = []
    for k, g, superseded in groups:
        g = g.assign(_execution=[execution(x) for x in _records(g, EXECUTION_COLUMNS)])
        pub = json.loads(g[f"tags.{TAG}published_accuracy"].dropna().iloc[0]) if f"tags.{TAG}published_accuracy" in g and g[f"tags.{TAG}published_accuracy"].notna().any() else []
        params = _num(g["params.params"].iloc[0]) if "params.params" in g else None
        r = Row(k.experiment_id, k.capped, g, pub, str(g.get(f"tags.{TAG}source", pd.Series([""])).iloc[0]), int(params) if params else None,
                label=names[k], ckey=k, superseded=superseded)
        r.user = f"tags.{TAG}user_recipe" in g and g[f"tags.{TAG}user_recipe"].astype(str).eq("true").any()
        acc = r.acc
        modes = g["_execution"].value_counts()
        r.stats = {
            "n": len(acc),
            "mean": float(acc.mean()),
            "std": float(acc.std(ddof=1)) if len(acc) > 1 else None,
            "ci95": t_interval(acc),
            "published_mean": float(np.mean(pub)) if pub else None,
            "train_time": float(g["metrics.train_time_s"].mean()),
            "images_per_s": float(g["metrics.images_per_s"].mean()),
            "device": ", ".join(dict.fromkeys(str(d) for d in g.get(f"tags.{TAG}device", pd.Series(["?"])).fillna("?"))),
            "epochs": "?" if k.epochs is None else str(k.epochs),
            "recipe_epochs": "?" if k.recipe_epochs is None else str(k.recipe_epochs),
            "n_train": "?" if k.n_train is None else str(k.n_train),
            "precision": k.precision,
            "data": k.data,
            "seeds": ", ".join("?" if s is None else str(s) for s in r.seeds),
            "execution": modes.index[0] if len(modes) == 1 else ", ".join(f"{c} {m}" for m, c in modes.items()),
            "val_on": str(g.get("params.data.val_on", pd.Series(["?"])).fillna("?").iloc[0]),
            "cap": _num(g.get("params.override.max_train_images", pd.Series([None])).iloc[0]),
        }
        r.stats["published_interval"] = _published_interval(g, pub)
        r.stats["diff"] = distance_to_interval(r.stats["mean"], r.stats["published_interval"])
        r.stats["eval_mode"] = str(g.get(f"tags.{TAG}eval_mode", pd.Series(["eval"])).fillna("eval").iloc[0])
        std_acc = g["metrics.test_acc_eval_mode"].to_numpy(dtype=float) if "metrics.test_acc_eval_mode" in g else np.array([np.nan])
        r.stats["mean_eval_mode"] = float(np.nanmean(std_acc)) if not np.isnan(std_acc).all() else None
        rows.append(r)
    # uncapped first, then by accuracy
    rows.sort(key=lambda r: (r.capped, -r.stats["mean"], r.key))
    return rows


def attach_apart(rows: list[Row], finished: pd.DataFrame, deleted: pd.DataFrame, attr: str = "deleted") -> None:
    """Give each row, as its `attr`, the runs of its key that it does not count: `deleted`, the
    finished runs deleted in the MLflow UI (`mlflow runs delete`), whose plan was run and its
    results could be read before a later plan chose how many seeds to add; `failed`, the FAILED
    runs, seeds a rerun fails again (diverged), trained as planned (looked.py). Keys as
    build_rows gives them (each experiment's spec columns from the runs it counts)."""
    if deleted.empty or not rows:
        return
    eid = f"tags.{TAG}experiment_id"
    both = infer_available(pd.concat([finished.assign(_deleted=False), deleted.assign(_deleted=True)], ignore_index=True))
    spec_cols = {e: spec_columns(g) for e, g in finished.groupby(eid)}
    by_key = {r.ckey: r for r in rows}
    gone = both[both["_deleted"].astype(bool)].drop(columns=["_deleted"])
    for _, x in gone.iterrows():
        r = by_key.get(run_key(x, spec_cols.get(x[eid], spec_columns(gone[gone[eid] == x[eid]]))))
        if r is not None:
            have = getattr(r, attr)
            setattr(r, attr, pd.concat([have, x.to_frame().T], ignore_index=True) if not have.empty else x.to_frame().T.reset_index(drop=True))


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
