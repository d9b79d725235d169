"""What the store holds (data sets, precisions, caps, execution modes) and which rows the report
compares: significance tests and the budget table use the rows of one data set (by default the
one with the most rows to compare, then the most finished runs; or `--data FINGERPRINT`), and of
those the uncapped ones, or where all are capped, those capped alike. Runs whose data set was not
recorded are never compared. Every row left out is listed with the reason."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from ..errors import UsageError
from ..tracking import TAG
from .rows import Row


UNKNOWN = "unknown"  # keys.run_key's data set of a run that recorded no fingerprint


def data_sets(rows: list[Row]) -> list[dict]:
    """Each data set of the store: fingerprint, folders it was read from, counted runs and
    experiments, test images, rows a comparison on it would hold; the default choice first (the
    most rows to compare, then the most counted runs, then the most recent; never an unrecorded one)."""
    out: dict[str, dict] = {}
    for r in rows:
        d = out.setdefault(r.data, {"fingerprint": r.data, "runs": 0, "experiments": set(), "dirs": set(), "n_test": set(), "latest": 0})
        d["runs"] += r.stats["n"]
        d["experiments"].add(r.experiment_id)
        d["dirs"].update(str(x) for x in r.runs.get(f"tags.{TAG}data_dir", pd.Series(dtype=object)).dropna())
        d["n_test"].update(str(x) for x in r.runs.get("params.data.n_test", pd.Series(dtype=object)).dropna())
        d["latest"] = max(d["latest"], int(r.runs["start_time"].max().timestamp()) if "start_time" in r.runs else 0)
    for d in out.values():
        d["comparable"] = len(compared_rows(rows, d["fingerprint"])[0])
    listed = sorted(out.values(), key=lambda d: (d["fingerprint"] == UNKNOWN, -d["comparable"], -d["runs"], -d["latest"], d["fingerprint"]))
    for d in listed:
        d["experiments"] = len(d["experiments"])
        d["dirs"] = ", ".join(sorted(d["dirs"])) or "?"
        d["n_test"] = ", ".join(sorted(d["n_test"])) or "?"
    return listed


def choose_data(sets: list[dict], asked: str | None) -> str:
    """The fingerprint to compare on: `asked` (a fingerprint or a unique prefix of one), else
    the first of data_sets (the most rows to compare, then the most finished runs)."""
    if not asked:
        return sets[0]["fingerprint"]
    match = [d["fingerprint"] for d in sets if d["fingerprint"].startswith(asked.strip().lower())]
    if len(match) != 1:
        known = ", ".join(f"{d['fingerprint']} ({d['runs']} run{'' if d['runs'] == 1 else 's'})" for d in sets)
        what = "matches several data sets" if match else "is not a data set of this store"
        raise UsageError(f"--data {asked} {what} (known: {known})")
    return match[0]


def _cap(r: Row) -> tuple[int | None, int | None]:
    """(epochs it was cut to, training images it was cut to); None where not cut."""
    k = r.ckey
    epochs = k.epochs if k.epochs is not None and k.recipe_epochs is not None and k.epochs < k.recipe_epochs else None
    return epochs, (k.n_train if k.images_capped else None)


def _fits(r: Row, cap: tuple[int | None, int | None]) -> bool:
    """Whether `r` trained what `--epochs E --max-train-images I` (cap) gives its recipe: cut to
    the same values, or not cut where its recipe is within them already."""
    (e, i), (ce, ci), k = _cap(r), cap, r.ckey
    epochs_ok = e == ce or (e is None and ce is not None and k.epochs is not None and k.epochs <= ce)
    images_ok = i == ci or (i is None and ci is not None and k.n_train is not None and k.n_train <= ci)
    return epochs_ok and images_ok


def _cap_text(cap: tuple[int | None, int | None]) -> str:
    return ", ".join([f"{cap[0]} epochs"] * (cap[0] is not None) + [f"{cap[1]} training images"] * (cap[1] is not None)) or "uncapped"


def compared_rows(rows: list[Row], data: str) -> tuple[list[Row], list[dict]]:
    """(the rows the tests and the budget table compare, [{row, reason}] for the others): the
    uncapped rows of data set `data`; where all of them are capped, those capped alike (the cap
    most of them fit). A data set that was not recorded compares nothing."""
    on_data = [r for r in rows if r.data == data and data != UNKNOWN]
    chosen, cap = [r for r in on_data if not r.capped], None
    if not chosen and on_data:
        caps = sorted({_cap(r) for r in on_data}, key=lambda c: (c[0] is None, c[0] or 0, c[1] is None, c[1] or 0))
        cap = max(caps, key=lambda c: sum(_fits(r, c) for r in on_data))
        chosen = [r for r in on_data if _fits(r, cap)]
    left = []
    for r in rows:
        if r.data == UNKNOWN:
            reason = "its data set was not recorded (no data fingerprint tag): which images it saw is unknown"
        elif r.data != data:
            reason = f"trained on another data set ({r.data[:8]}; compare it with --data {r.data[:8]})"
        elif r in chosen:
            continue
        elif cap is None:
            reason = "capped (trained less than its recipe) while uncapped rows exist"
        else:
            reason = f"capped otherwise ({_cap_text(_cap(r))}) than the rows compared ({_cap_text(cap)})"
        left.append({"row": r.key, "runs": r.stats["n"], "run_ids": list(r.runs["run_id"]), "reason": reason})
    return chosen, left


def store_contents(rows: list[Row]) -> dict[str, str]:
    """One line each: the precisions, caps and execution modes of the counted runs."""
    prec, caps, modes = Counter(), Counter(), Counter()
    for r in rows:
        n, k = r.stats["n"], r.ckey
        prec[k.precision] += n
        if not k.capped:
            caps["none"] += n
        else:
            parts = []
            if k.epochs is not None and k.recipe_epochs is not None and k.epochs < k.recipe_epochs:
                parts.append(f"{k.epochs} of {k.recipe_epochs} epochs")
            if k.images_capped:
                parts.append(f"{k.n_train} training images")
            caps[", ".join(parts)] += n
        for m in r.runs.get("_execution", pd.Series(dtype=object)):
            modes[m] += 1
    line = lambda c: "; ".join(f"{k} ({v} run{'s' if v != 1 else ''})" for k, v in c.most_common())
    return {"precisions": line(prec), "caps": line(caps), "execution": line(modes)}


def timing_device(rows: list[Row]) -> tuple[str, list[Row]]:
    """(the device the time-based views compare on, the rows timed on it): times from different
    machines are not comparable, so train time, accuracy per second, the budget table and the
    Pareto front take the rows of one device: the one with most rows (then most runs, then name)."""
    per: dict[str, list[Row]] = {}
    for r in rows:
        per.setdefault(r.ckey.device if r.ckey else "", []).append(r)
    if not per:
        return "", []
    device = min(per, key=lambda d: (-len(per[d]), -sum(r.stats["n"] for r in per[d]), d))
    return device, per[device]
