"""The loop's state is what the store holds: for each recipe, its finished seeds of exactly this
configuration (the config hash a run of that seed would carry: recipe, caps, precision, data),
their test accuracies and wall times. Killing the loop and running the command again reads the
same state; the executors' claims keep a seed from being trained twice, by this driver or another."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..data.cifar_files import Cifar10
from ..recipes.spec import Experiment, config_hash
from ..runs.job import RunOptions, effective_overrides
from ..tracking import TAG, Tracker
from ..training.recipe_data import train_split_size


@dataclass
class Seeds:
    """One recipe's finished seeds in the loop's range: seed -> test accuracy, seed -> wall s."""

    acc: dict[int, float] = field(default_factory=dict)
    wall: dict[int, float] = field(default_factory=dict)

    @property
    def values(self) -> np.ndarray:
        return np.array([self.acc[s] for s in sorted(self.acc)], dtype=float)


def seed_hashes(exp: Experiment, data: Cifar10, opts: RunOptions, seeds: range) -> dict[str, int]:
    """config hash -> seed, for each seed of `seeds` as this command would train it."""
    overrides = effective_overrides(opts, exp.train.epochs, train_split_size(exp, data))
    return {config_hash(exp, overrides, s, data.fingerprint): s for s in seeds}


def read_state(tracker: Tracker, experiments: list[Experiment], hashes: dict[str, dict[str, int]]) -> dict[str, Seeds]:
    """Each recipe's finished seeds (`hashes`: recipe id -> seed_hashes), from one search of the store."""
    out = {e.id: Seeds() for e in experiments}
    df = tracker.search_runs_df()
    col = f"tags.{TAG}config_hash"
    if df.empty or col not in df or "metrics.test_acc" not in df:
        return out
    done = df[(df["status"] == "FINISHED") & df["metrics.test_acc"].notna()]
    done = done.sort_values("start_time")  # a seed's latest finished run counts (as in the report)
    for eid, by_hash in hashes.items():
        mine = done[done[col].isin(list(by_hash))]
        for _, run in mine.iterrows():
            seed = by_hash[run[col]]
            out[eid].acc[seed] = float(run["metrics.test_acc"])
            end, start = run.get("end_time"), run.get("start_time")
            out[eid].wall[seed] = float((end - start).total_seconds()) if isinstance(end, pd.Timestamp) and isinstance(start, pd.Timestamp) else float("nan")
    return out
