"""What the store holds (data sets, precisions, caps, execution modes) and which rows the report
compares: significance tests and the budget table use the rows of one data set (the one with the
most finished runs, or `--data FINGERPRINT`), and of those the uncapped ones; every row left out
is listed with the reason."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from ..errors import UsageError
from ..tracking import TAG
from .rows import Row


def data_sets(rows: list[Row]) -> list[dict]:
    """Each data set of the store: fingerprint, folders it was read from, counted runs and
    experiments, test images; most counted runs first (ties: the most recent)."""
    out: dict[str, dict] = {}
    for r in rows:
        d = out.setdefault(r.data, {"fingerprint": r.data, "runs": 0, "experiments": set(), "dirs": set(), "n_test": set(), "latest": 0})
        d["runs"] += r.stats["n"]
        d["experiments"].add(r.experiment_id)
        d["dirs"].update(str(x) for x in r.runs.get(f"tags.{TAG}data_dir", pd.Series(dtype=object)).dropna())
        d["n_test"].update(str(x) for x in r.runs.get("params.data.n_test", pd.Series(dtype=object)).dropna())
        d["latest"] = max(d["latest"], int(r.runs["start_time"].max().timestamp()) if "start_time" in r.runs else 0)
    listed = sorted(out.values(), key=lambda d: (-d["runs"], -d["latest"], d["fingerprint"]))
    for d in listed:
        d["experiments"] = len(d["experiments"])
        d["dirs"] = ", ".join(sorted(d["dirs"])) or "?"
        d["n_test"] = ", ".join(sorted(d["n_test"])) or "?"
    return listed


def choose_data(sets: list[dict], asked: str | None) -> str:
    """The fingerprint to compare on: `asked` (a fingerprint or a unique prefix of one), else
    the data set with the most finished runs (ties: the most recent)."""
    if not asked:
        return sets[0]["fingerprint"]
    match = [d["fingerprint"] for d in sets if d["fingerprint"].startswith(asked.strip().lower())]
    if len(match) != 1:
        known = ", ".join(f"{d['fingerprint']} ({d['runs']} run{'' if d['runs'] == 1 else 's'})" for d in sets)
        what = "matches several data sets" if match else "is not a data set of this store"
        raise UsageError(f"--data {asked} {what} (known: {known})")
    return match[0]


def compared_rows(rows: list[Row], data: str) -> tuple[list[Row], list[dict]]:
    """(the rows the tests and the budget table compare, [{row, reason}] for the others)."""
    on_data = [r for r in rows if r.data == data]
    uncapped = [r for r in on_data if not r.capped]
    chosen = uncapped or on_data
    left = []
    for r in rows:
        if r.data != data:
            left.append({"row": r.key, "runs": r.stats["n"], "run_ids": list(r.runs["run_id"]),
                         "reason": f"trained on another data set ({r.data[:8]}; compare it with --data {r.data[:8]})"})
        elif r not in chosen:
            left.append({"row": r.key, "runs": r.stats["n"], "run_ids": list(r.runs["run_id"]),
                         "reason": "capped (trained less than its recipe) while uncapped rows exist"})
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
