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
from ..runs.job import RunOptions, effective_overrides, legacy_aliases
from ..tracking import TAG, Tracker
from ..training.recipe_data import train_split_size


@dataclass
class Seeds:
    """One recipe's finished seeds in the loop's range: seed -> test accuracy, seed -> wall s."""

    acc: dict[int, float] = field(default_factory=dict)
    wall: dict[int, float] = field(default_factory=dict)
    run: dict[int, str] = field(default_factory=dict)  # seed -> the run id that counts
    device: dict[int, str] = field(default_factory=dict)  # seed -> the device it was timed on (tag harness.device)

    @property
    def values(self) -> np.ndarray:
        return np.array([self.acc[s] for s in sorted(self.acc)], dtype=float)


def seed_hashes(exp: Experiment, data: Cifar10, opts: RunOptions, seeds: range) -> dict[str, int]:
    """config hash -> seed, for each seed of `seeds` as this command would train it, and the hash
    the same command gave it before effective overrides (the executor's first alias, local.make_job)."""
    overrides = effective_overrides(opts, exp.train.epochs, train_split_size(exp, data))
    out = {config_hash(exp, opts.overrides(), s, data.fingerprint): s for s in seeds}
    out.update({config_hash(exp, overrides, s, data.fingerprint): s for s in seeds})
    return out


def with_aliases(tracker: Tracker | None, experiments: list[Experiment], data: Cifar10, opts: RunOptions,
                 hashes: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """`hashes` plus the old hashes of finished runs that trained the same configuration, found
    as the executor finds them (runs/job.legacy_aliases): a seed the executor would skip as done
    is a seed the loop counts, else the loop would plan it again every round."""
    if tracker is None:
        return hashes
    df = tracker.search_runs_df()
    need = [f"tags.{TAG}{k}" for k in ("experiment_id", "seed", "data_fingerprint", "config_hash")]
    if df.empty or any(c not in df for c in need):
        return hashes
    df = df[(df["status"] == "FINISHED") & (df[need[2]] == data.fingerprint)]
    out = {i: dict(h) for i, h in hashes.items()}
    for exp in experiments:
        mine = df[df[need[0]] == exp.id]
        if mine.empty or exp.id not in out:
            continue
        train_images = train_split_size(exp, data)
        overrides = effective_overrides(opts, exp.train.epochs, train_images)
        for seed in set(out[exp.id].values()):
            rows = mine[mine[need[1]] == str(seed)]
            recorded = [({k[5:]: v for k, v in r.items() if k.startswith("tags.") and isinstance(v, str)},
                         {k[7:]: v for k, v in r.items() if k.startswith("params.") and isinstance(v, str)}) for _, r in rows.iterrows()]
            for h in legacy_aliases(recorded, overrides, exp.train.epochs, train_images, lambda o, s=seed: config_hash(exp, o, s, data.fingerprint)):
                out[exp.id].setdefault(h, seed)
    return out


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
            out[eid].run[seed] = str(run["run_id"])
            dev = run.get(f"tags.{TAG}device")
            if isinstance(dev, str):
                out[eid].device[seed] = dev
            end, start = run.get("end_time"), run.get("start_time")
            out[eid].wall[seed] = float((end - start).total_seconds()) if isinstance(end, pd.Timestamp) and isinstance(start, pd.Timestamp) else float("nan")
    return out


def loop_tags(alpha: float, margin: float) -> tuple[tuple[str, str], ...]:
    """What each run the loop trains records (RunOptions.loop_tags): its seeds were chosen by
    looking, and the level and margin the loop decided at (the report decides at the same)."""
    return (("repeats", "auto"), ("auto_alpha", repr(float(alpha))), ("auto_margin", repr(float(margin))))


def record_stop(tracker: Tracker | None, state: dict[str, Seeds], alpha: float, margin: float, stop: str,
                trained: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """At the loop's end: every run its verdicts rest on (trained by it or found in the store)
    records the level and margin the loop decided at and why it stopped (the report decides at
    the same and shows the reason); the runs it trained (`trained`: their ids, a killed seed it
    resumed included) also that a loop chose their seeds (harness.repeats=auto, set at their
    start too). A run it only read keeps its own record: a loop that trains nothing chose no
    seed. Returns the runs that could not be tagged (deleted meanwhile, the server gone): the
    verdicts stand, the report then falls back to its defaults for them."""
    if tracker is None:
        return []
    level = {f"{TAG}{k}": v for k, v in loop_tags(alpha, margin) if k != "repeats"} | {f"{TAG}auto_stop": stop[:4000]}
    chose = {f"{TAG}{k}": v for k, v in loop_tags(alpha, margin)}
    missed = []
    for s in state.values():
        for rid in s.run.values():
            try:
                tracker.set_tags(rid, level | (chose if rid in trained else {}))
            except Exception:  # advisory: a run that cannot take the record keeps its own tags
                missed.append(rid)
    return missed
