"""What makes two finished runs comparable: their comparability key, computed from what each run
recorded (tags and params), not from its config hash, so runs made before a hashing change, with
a cap that capped nothing, or on another machine are matched by what they trained.

A key is one experiment under one effective training setup: data set (fingerprint, which covers
the test images too), epochs actually trained, training images actually used, precision, the
recipe's own training parameters, and the device it trained on. A parameter one run recorded and
another did not is a difference (absent is a value of its own: an older version that did not
record it may have trained otherwise). Runs with different keys are never pooled; within one key
a seed counts once (its latest finished run), and the seed's other runs are superseded; a run
that recorded no seed at all is a sample of its own (never merged with another seedless run).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pandas as pd

from ..tracking import TAG

EXEC = f"tags.{TAG}execution"
FP = f"tags.{TAG}data_fingerprint"
DEVICE = f"tags.{TAG}device"
ABSENT = "(absent)"  # a spec parameter the run did not record
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
    device: str = ""  # the device tag (CPU model or GPU name): times are only comparable on one
    # the parameters behind `spec` (name, value; ABSENT where the run did not record it), for labels
    spec_items: tuple = field(default=(), compare=False, hash=False)

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
        if field == "device":
            return self.device or "device unrecorded"
        return f"spec {self.spec[:8]}"


FIELDS = ("data", "precision", "epochs", "n_train", "spec", "code", "device")
SPEC_PREFIXES = ("params.model.", "params.data.", "params.train.", "params.eval.")


def _int(v) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def _str(v, default: str) -> str:
    return v if isinstance(v, str) and v else default


def spec_columns(runs: pd.DataFrame) -> list[str]:
    """The recipe's training parameters that any one of `runs` recorded. A parameter some runs
    lack stays: absent is a value of its own (a recipe edited by adding `model.args.dropout`, or a
    run from a version that did not record `data.crop_style`, is a setup of its own)."""
    cols = [c for c in runs.columns if c.startswith(SPEC_PREFIXES) and c not in _NOT_SPEC]
    return [c for c in cols if runs[c].notna().any()]


# what run_key reads besides the recipe's parameters, and what execution reads
KEY_COLUMNS = (f"tags.{TAG}experiment_id", FP, DEVICE, CODE, "params.epochs", "params.recipe_epochs", "params.data.n_train",
               "params.data.n_train_available", "params.override.max_train_images", "params.precision")
EXECUTION_COLUMNS = (EXEC, "params.together")


def run_key(run: pd.Series | dict, spec_cols: list[str] | None = None) -> Key:
    """The key of one run (a row of the runs DataFrame, or that row as a dict of KEY_COLUMNS and
    `spec_cols`); `spec_cols`: the parameters that identify its recipe (spec_columns of its
    experiment's runs; default: all a Series recorded)."""
    if spec_cols is None:
        spec_cols = [k for k in run.index if k.startswith(SPEC_PREFIXES) and k not in _NOT_SPEC and isinstance(run.get(k), str)]
    spec_items = tuple(sorted((k.removeprefix("params."), run[k] if isinstance(run.get(k), str) else ABSENT) for k in spec_cols))
    n_train, available = _int(run.get("params.data.n_train")), _int(run.get("params.data.n_train_available"))
    cap = _int(run.get("params.override.max_train_images"))
    if available is not None:
        images_capped = n_train is not None and n_train < available
    else:  # recorded before the split's size was, on a data set no newer run saw: a cap that took all it asked for capped
        # (a cap above the split's size left fewer); only a cap exactly at the split's size is misread
        images_capped = cap is not None and n_train is not None and n_train >= cap
    return Key(str(run[f"tags.{TAG}experiment_id"]), _str(run.get(FP), "unknown"), _int(run.get("params.epochs")),
               _int(run.get("params.recipe_epochs")), n_train, images_capped, _str(run.get("params.precision"), "fp32"),
               spec_digest(spec_items), _str(run.get(CODE), ""), _str(run.get(DEVICE), ""), spec_items)


def spec_digest(items) -> str:
    """The digest of the parameters a run recorded (ABSENT ones left out: the set recorded already
    tells a run that lacks one from a run that has it), so a run's key does not depend on what
    other runs of the store recorded."""
    return hashlib.sha256(json.dumps([[f"params.{k}", v] for k, v in sorted(items) if v != ABSENT]).encode()).hexdigest()[:16]


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
    """(the latest finished run of each seed, the seeds' earlier runs: superseded), both sorted by
    seed. A run that recorded no seed (neither tag nor param) is kept as a sample of its own, with
    `_seed` NaN: which seed it trained is unknown, so it supersedes nothing and is superseded by nothing."""
    none = pd.Series(index=runs.index, dtype=object)
    seed = pd.to_numeric(runs.get(f"tags.{TAG}seed", none), errors="coerce")
    seed = seed.fillna(pd.to_numeric(runs.get("params.seed", none), errors="coerce"))  # the param where the tag was lost
    when = runs["end_time"].fillna(runs["start_time"]) if "end_time" in runs else runs["start_time"]
    # ordered on these three columns alone, then the wide frame taken once (a report has hundreds of
    # rows), by position: a frame whose index repeats a label (two searches concatenated) keeps each run once
    order = pd.DataFrame({"_seed": seed, "_when": when, "start_time": runs["start_time"]}).reset_index(drop=True)
    order = order.sort_values(["_seed", "_when", "start_time"], na_position="last")
    known = order[order["_seed"].notna()]
    latest = known.groupby("_seed", sort=True).tail(1).index.append(order[order["_seed"].isna()].index)
    superseded = known.index[~known.index.isin(latest)]
    runs = runs.assign(_seed=seed)
    return runs.iloc[latest], runs.iloc[superseded]


def catalogue_specs() -> dict[str, tuple]:
    """The spec items (as run_key reads them) of each recipe the catalogue holds now ({} where it
    cannot be read). Reading it again is cheap: recipes/network.py checks each network once a process."""
    from ..errors import HarnessError
    from ..recipes.catalogue import load_catalogue
    from ..recipes.spec import flatten

    try:
        cat = load_catalogue()
    except HarnessError:
        return {}
    return {eid: tuple(sorted((k, str(v)) for k, v in flatten(exp.training_dict()).items()
                              if f"params.{k}".startswith(SPEC_PREFIXES) and f"params.{k}" not in _NOT_SPEC)) for eid, exp in cat.items()}


def spec_difference(key: Key, ref: dict[str, str] | None, varying: list[str]) -> str:
    """How `key`'s recipe parameters read against the reference values (`ref`: name -> value, the
    catalogue's recipe or the experiment's unique commonest setup; "" where they are the same), or
    without a reference, its values of the parameters that vary among the experiment's keys:
    `train.phases.0.lr=0.5`, `data.crop_style absent`."""
    mine = dict(key.spec_items)
    names = [n for n in sorted(ref) if mine.get(n, ABSENT) != ref[n]] if ref is not None else varying
    parts = [f"{n} absent" if mine.get(n, ABSENT) == ABSENT else f"{n}={mine[n]}" for n in names]
    return ", ".join(parts) if parts or ref is not None else f"spec {key.spec[:8]}"


def labels(counts: dict[Key, int], catalogue: dict[str, tuple] | None = None) -> dict[Key, str]:
    """Each key's row label: the experiment id, followed by what differs from that experiment's
    reference setup, which is labelled by its id alone: `tutorial-base`, `tutorial-base · bf16`,
    `tutorial-base · data 13a2d975`, `tutorial-base · model.args.dropout=0.3`.

    The reference recipe parameters are the catalogue's current recipe; for an id it does not
    hold, the setup with strictly the most runs (on a tie, none is bare: each names its values,
    never the newest by default). The other fields' reference: uncapped, fp32, on the data set with
    most runs, the device with most runs, with most runs itself. `catalogue`: catalogue_specs()
    (read here when not given)."""
    catalogue = catalogue_specs() if catalogue is None else catalogue
    per_data: dict[str, int] = {}
    per_device: dict[str, int] = {}
    for k, n in counts.items():
        per_data[k.data] = per_data.get(k.data, 0) + n
        per_device[k.device] = per_device.get(k.device, 0) + n
    by_exp: dict[str, list[Key]] = {}
    for k in counts:
        by_exp.setdefault(k.experiment_id, []).append(k)
    out = {}
    for eid, ks in by_exp.items():
        ref = max(ks, key=lambda k: (not k.capped, k.precision == "fp32", per_data[k.data], per_device[k.device], counts[k], k.data, k.device, k.spec))
        ref_spec = _reference_spec(catalogue.get(eid), ks, counts)
        names = sorted({n for k in ks for n, _ in k.spec_items})
        varying = [n for n in names if len({dict(k.spec_items).get(n, ABSENT) for k in ks}) > 1]
        for k in ks:
            parts = []
            for f in FIELDS:
                if f == "spec":
                    parts.append(spec_difference(k, ref_spec, varying))
                elif getattr(k, f) != getattr(ref, f):
                    parts.append(k.part(f))
            out[k] = " · ".join([eid, *(p for p in parts if p)])
    return _unique(out)


def _reference_spec(cat: tuple | None, ks: list[Key], counts: dict[Key, int]) -> dict[str, str] | None:
    """The recipe parameters labelled by the bare id: the catalogue's (`cat`), else a unique commonest."""
    if cat is not None:
        names = {n for k in ks for n, _ in k.spec_items}
        full = dict(cat)
        return {n: full.get(n, ABSENT) for n in names | set(full)}
    per_spec: dict[str, int] = {}
    for k in ks:
        per_spec[k.spec] = per_spec.get(k.spec, 0) + counts[k]
    if len(per_spec) == 1:
        return dict(ks[0].spec_items)
    ranked = sorted(per_spec.values(), reverse=True)
    if ranked[0] == ranked[1]:
        return None
    top = max(per_spec, key=per_spec.get)
    return dict(next(k for k in ks if k.spec == top).spec_items)


def _unique(out: dict[Key, str]) -> dict[Key, str]:
    """Two keys never share a label (a difference the parts above cannot name: add the digest)."""
    seen: dict[str, int] = {}
    for v in out.values():
        seen[v] = seen.get(v, 0) + 1
    return {k: (f"{v} · spec {k.spec[:8]}" if seen[v] > 1 else v) for k, v in out.items()}


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
