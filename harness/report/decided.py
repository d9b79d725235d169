"""The report's "decided" section: every pair of compared rows judged by the anytime-valid test
(sequential.py), which holds however the seeds were chosen (by `--repeats auto`, or by a person
who read an earlier report and trained more), and its CSV (FILE-decisions.csv)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .rows import Row
from .sequential import ALPHA, MARGIN, MIN_SEEDS, decide

DECISION_COLS = ["row_a", "row_b", "verdict", "n_a", "n_b", "n_paired", "e_value", "diff", "diff_lo", "diff_hi", "seeds_needed"]


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def decided_section(compared: list[Row], alpha: float = ALPHA, margin: float = MARGIN) -> dict:
    """The top group, each pair's verdict (a_better, b_better, tied, undecided) with its e-value,
    anytime-valid interval of a - b and seeds a side, whether the question is answered, and the
    seeds and train time each row used. Rows ordered by mean, so a pair reads higher row first."""
    rows = sorted(compared, key=lambda r: -r.stats["mean"])
    if len(rows) < 2:
        return {"pairs": [], "top": [r.key for r in rows], "answered": False, "recipes": [], "alpha": alpha, "margin": margin, "m": 0,
                "why": "fewer than two rows compared: nothing to decide"}
    # each pair on the seeds both rows have (a run without a seed tag pairs with nothing)
    d = decide({r.key: {s: a for s, a in zip(r.seeds, r.acc) if s is not None} for r in rows}, alpha, margin)
    pairs = [{"row_a": p.a, "row_b": p.b, "verdict": p.verdict, "n_a": p.n_a, "n_b": p.n_b, "n_paired": p.n_paired, "e_value": p.e_value,
              "diff": p.diff,
              "diff_lo": _finite(p.lo), "diff_hi": _finite(p.hi), "seeds_needed": p.seeds_needed,
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


def decisions_frame(section: dict) -> pd.DataFrame:
    """One line per pair compared (FILE-decisions.csv): n_a, n_b the seeds each row has, n_paired
    the seeds both have (what the test uses: seed s of a against seed s of b), diff_lo/diff_hi the
    anytime-valid interval of a - b in accuracy points (empty where too few seeds are paired)."""
    return pd.DataFrame([{k: p.get(k) for k in DECISION_COLS} for p in section["pairs"]], columns=DECISION_COLS)
