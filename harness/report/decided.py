"""The report's "decided" section: every pair of compared rows judged by the anytime-valid test
(sequential.py), which holds however the seeds were chosen (by `--repeats auto`, or by a person
who read an earlier report and trained more), and its CSV (FILE-decisions.csv)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .looked import LOOKED, auto_command, loop_record, looked_record, mark_looked  # noqa: F401 (re-exported: the report's callers)
from .rows import Row
from .sequential import ALPHA, MARGIN, MIN_SEEDS, decide, se_floor

# m: the family's size (pairs corrected over); threshold: the e-value a pair needs, m / alpha
DECISION_COLS = ["row_a", "row_b", "verdict", "n_a", "n_b", "n_paired", "e_value", "diff", "diff_lo", "diff_hi", "seeds_needed", "m", "threshold"]


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def decided_section(compared: list[Row], alpha: float | None = None, margin: float | None = None) -> dict:
    """The top group, each pair's verdict (a_better, b_better, tied, undecided) with its e-value,
    anytime-valid interval of a - b and seeds a side, whether the question is answered, and the
    seeds and train time each row used. Rows ordered by mean, so a pair reads higher row first.
    `alpha`, `margin`: given (`harness report --alpha/--margin`), else the latest loop's, else the defaults.
    `looked` (with `by_loop`, `later`, `short`, and `looked_rows`: which rows): whether seed counts were
    chosen by looking (looked.py)."""
    rec = looked_record(compared)
    given = alpha is not None or margin is not None
    alpha = alpha if alpha is not None else rec.get("alpha", ALPHA)
    margin = margin if margin is not None else rec.get("margin", MARGIN)
    section = _section(compared, alpha, margin)
    section.update(looked=rec["looked"], by_loop=rec["by_loop"], later=rec["later"], short=rec["short"], looked_rows=rec["rows"], failed=rec["failed"],
                   loop_stop=rec.get("stop"),
                   level_from="given" if given else "the loop's" if "alpha" in rec else "default")
    return section


def _section(compared: list[Row], alpha: float, margin: float) -> dict:
    rows = sorted(compared, key=lambda r: -r.stats["mean"])
    if len(rows) < 2:
        return {"pairs": [], "top": [r.key for r in rows], "answered": False, "recipes": [], "alpha": alpha, "margin": margin, "m": 0,
                "why": "fewer than two rows compared: nothing to decide"}
    # each pair on the seeds both rows have (a run without a seed tag pairs with nothing)
    d = decide({r.key: {s: a for s, a in zip(r.seeds, r.acc) if s is not None} for r in rows}, alpha, margin, se_floor(_n_test(rows)))
    pairs = [{"row_a": p.a, "row_b": p.b, "verdict": p.verdict, "n_a": p.n_a, "n_b": p.n_b, "n_paired": p.n_paired, "e_value": p.e_value,
              "diff": p.diff,
              "diff_lo": _finite(p.lo), "diff_hi": _finite(p.hi), "seeds_needed": p.seeds_needed, "m": d.m, "threshold": d.m / alpha,
              "needed": (p.a in d.top and p.b in d.top)}  # a pair the top-group question still needs
             for p in d.pairs]
    few = [r.key for r in rows if r.stats["n"] < MIN_SEEDS]
    if d.answered:
        why = "answered: every row outside the top group is decided below another, and every pair inside it is decided"
    else:
        open_pairs = sum(p["verdict"] == "undecided" and p["needed"] for p in pairs)
        why = (f"open: {open_pairs} pair(s) in the top group undecided at alpha {alpha}"
               + (f"; {len(few)} row(s) have fewer than {MIN_SEEDS} seeds, the fewest the test can use" if few else "")
               + ". `--repeats auto` with the same options continues from the seeds the store holds "
                 "(it stops at --max-repeats or --budget; an open pair at the cap stays open)")
    recipes = [{"row": r.key, "n": r.stats["n"], "mean": r.stats["mean"], "train_s": float(np.nansum(r.runs["metrics.train_time_s"].to_numpy(float))),
                "top": r.key in d.top, "below": d.below.get(r.key)} for r in rows]
    return {"pairs": pairs, "top": d.top, "answered": d.answered, "why": why, "recipes": recipes, "alpha": alpha, "margin": margin, "m": d.m}


def _n_test(rows: list[Row]) -> int | None:
    """The test images the compared rows were scored on (one data set: the same for all)."""
    col = "params.data.n_test"
    vals = [int(v) for r in rows if col in r.runs for v in r.runs[col] if isinstance(v, str) and v.isdigit()]
    return min(vals) if vals else None


def decisions_frame(section: dict) -> pd.DataFrame:
    """One line per pair compared (FILE-decisions.csv): n_a, n_b the seeds each row has, n_paired
    the seeds both have (what the test uses: seed s of a against seed s of b), diff_lo/diff_hi the
    anytime-valid interval of a - b in accuracy points (empty where too few seeds are paired)."""
    return pd.DataFrame([{k: p.get(k) for k in DECISION_COLS} for p in section["pairs"]], columns=DECISION_COLS)
