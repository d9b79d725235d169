"""What makes two finished runs comparable: their comparability key, computed from what each run
recorded (tags and params), not from its config hash, so runs made before a hashing change, with
a cap that capped nothing, or on another machine are matched by what they trained.

A key is one experiment under one effective training setup: data set (fingerprint, which covers
the test images too), epochs actually trained, training images actually used, precision, and the
recipe's own training parameters. Runs with different keys are never pooled; within one key a
seed counts once (its latest finished run), and the seed's other runs are superseded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pandas as pd

from ..tracking import TAG

EXEC = f"tags.{TAG}execution"
FP = f"tags.{TAG}data_fingerprint"
CODE = f"tags.{TAG}model_code_sha256"  # a user's network: each version of its code is a key of its own
# params that describe the data a run saw rather than the recipe (they are in the key by themselves)
_NOT_SPEC = ("params.data.n_train", "params.data.n_val", "params.data.n_test", "params.data.val_on", "params.data.n_train_available",
             "params.model.code_sha256")  # a user's code: the key's own `code` field


@dataclass(frozen=True)
class Key:
    experiment_id: str
    data: str  # data fingerprint
    epochs: int | None  # epochs trained
    recipe_epochs: int | None
    n_train: int | None  # training images used
    images_capped: bool
    precision: str
    spec: str  # digest of the recipe's training parameters as recorded
    code: str = ""  # SHA-256 of a user's network code ("" for the documented networks)

    @property
    def capped(self) -> bool:
        return self.images_capped or (self.epochs is not None and self.recipe_epochs is not None and self.epochs < self.recipe_epochs)

    def part(self, field: str) -> str:
        """How this key reads on the field it differs in from another key of its experiment."""
        if field == "data":
            return f"data {self.data[:8]}"
        if field == "precision":
            return self.precision
        if field == "epochs":
            return f"{self.epochs}/{self.recipe_epochs} epochs" if self.capped and self.epochs != self.recipe_epochs else f"{self.epochs} epochs"
        if field == "n_train":
            return f"{self.n_train} images"
        if field == "code":
            return f"code {self.code[:8]}"
        return f"spec {self.spec[:8]}"


FIELDS = ("data", "precision", "epochs", "n_train", "spec", "code")


def _int(v) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def _str(v, default: str) -> str:
    return v if isinstance(v, str) and v else default


def spec_columns(runs: pd.DataFrame) -> list[str]:
    """The recipe's training parameters that every one of `runs` recorded: a parameter a newer
    version added (absent from older runs) does not split runs that trained alike."""
    cols = [c for c in runs.columns if c.startswith(("params.model.", "params.data.", "params.train.", "params.eval.")) and c not in _NOT_SPEC]
    return [c for c in cols if runs[c].notna().all()]


def run_key(run: pd.Series, spec_cols: list[str] | None = None) -> Key:
    """The key of one run (a row of the runs DataFrame); `spec_cols`: the parameters that
    identify its recipe (spec_columns of its experiment's runs; default: all it recorded)."""
    if spec_cols is None:
        spec_cols = [k for k in run.index if k.startswith(("params.model.", "params.data.", "params.train.", "params.eval.")) and k not in _NOT_SPEC]
    spec_items = sorted((k, str(run[k])) for k in spec_cols if isinstance(run.get(k), str))
    n_train, available = _int(run.get("params.data.n_train")), _int(run.get("params.data.n_train_available"))
    cap = _int(run.get("params.override.max_train_images"))
    if available is not None:
        images_capped = n_train is not None and n_train < available
    else:  # recorded before the split's size was, on a data set no newer run saw: a cap that took all it asked for capped
        # (a cap above the split's size left fewer); only a cap exactly at the split's size is misread
        images_capped = cap is not None and n_train is not None and n_train >= cap
    return Key(str(run[f"tags.{TAG}experiment_id"]), _str(run.get(FP), "unknown"), _int(run.get("params.epochs")),
               _int(run.get("params.recipe_epochs")), n_train, images_capped, _str(run.get("params.precision"), "fp32"),
               hashlib.sha256(json.dumps(spec_items).encode()).hexdigest()[:16], _str(run.get(CODE), ""))


def infer_available(runs: pd.DataFrame) -> pd.DataFrame:
    """Fill `data.n_train_available` (the training split's size before any cap) for runs recorded
    before it was: a data set's training images are n_train_available + n_val of any newer run on
    it, and an older run's split is that less its own n_val. Without a newer run on the data set,
    run_key falls back on the cap itself."""
    col, n_val = "params.data.n_train_available", "params.data.n_val"
    if col not in runs or n_val not in runs or FP not in runs:
        return runs
    avail, val = pd.to_numeric(runs[col], errors="coerce"), pd.to_numeric(runs[n_val], errors="coerce")
    total = (avail + val).groupby(runs[FP]).max()
    guess = runs[FP].map(total) - val
    runs = runs.copy()
    runs[col] = runs[col].where(avail.notna(), guess.map(lambda v: None if pd.isna(v) else str(int(v))))
    return runs


def execution(run: pd.Series) -> str:
    """How the run trained: one-by-one, or stacked with other seeds (the tag; the `together` param before it)."""
    tag = run.get(EXEC)
    if isinstance(tag, str) and tag:
        return tag
    return "stacked" if (_int(run.get("params.together")) or 1) > 1 else "one-by-one"


def one_per_seed(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the latest finished run of each seed, the seeds' earlier runs: superseded), both sorted by seed."""
    runs = runs.copy()
    none = pd.Series(index=runs.index, dtype=object)
    seed = pd.to_numeric(runs.get(f"tags.{TAG}seed", none), errors="coerce")
    runs["_seed"] = seed.fillna(pd.to_numeric(runs.get("params.seed", none), errors="coerce")).fillna(-1)  # the param where the tag was lost
    runs["_when"] = runs["end_time"].fillna(runs["start_time"]) if "end_time" in runs else runs["start_time"]
    runs = runs.sort_values(["_seed", "_when", "start_time"])
    latest = runs.groupby("_seed", sort=True).tail(1)
    superseded = runs.drop(latest.index)
    return latest.drop(columns=["_when"]), superseded.drop(columns=["_when"])


def labels(counts: dict[Key, int]) -> dict[Key, str]:
    """Each key's row label: the experiment id, followed by what differs from that experiment's
    reference key (uncapped, fp32, on the data set with most runs, with most runs itself), which
    is labelled by its id alone: `tutorial-base`, `tutorial-base · bf16`, `tutorial-base · data 13a2d975`."""
    per_data: dict[str, int] = {}
    for k, n in counts.items():
        per_data[k.data] = per_data.get(k.data, 0) + n
    by_exp: dict[str, list[Key]] = {}
    for k in counts:
        by_exp.setdefault(k.experiment_id, []).append(k)
    out = {}
    for eid, ks in by_exp.items():
        ref = max(ks, key=lambda k: (not k.capped, k.precision == "fp32", per_data[k.data], counts[k], k.data))
        for k in ks:
            out[k] = " · ".join([eid, *(k.part(f) for f in FIELDS if getattr(k, f) != getattr(ref, f))])
    return out


def settle_flags(key: Key, cap: int | None) -> str:
    """The run options that train more seeds of this key (for `--repeats 3` advice)."""
    flags = []
    if key.capped and key.epochs is not None and key.recipe_epochs is not None and key.epochs < key.recipe_epochs:
        flags.append(f"--epochs {key.epochs}")
    if key.images_capped and (cap or key.n_train):
        flags.append(f"--max-train-images {cap or key.n_train}")
    if key.precision != "fp32":
        flags.append(f"--precision {key.precision}")
    return " ".join(flags)
