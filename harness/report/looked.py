"""Were the compared rows' seed counts chosen by looking? A fixed-n test (Welch over seeds,
stats.py) holds only for a number of seeds fixed before any result was read. Two records say
otherwise, both read from the runs themselves:

- a loop chose them: a run tagged harness.repeats=auto (`--repeats auto`, auto/state.py);
- a person may have: a row whose counted runs were trained by more than one command (tag
  harness.invocation, one id per command). The second command started after the first's results
  could be read: adding seeds where a report said "untested" and reading it again is choosing n
  by looking (about 15% false positives at a nominal 5% for looks from 3 to 10 seeds). A stopped
  command run again, or two drivers sharing the work, look the same; the report takes the safe
  reading. Runs recorded before the tag existed count together as one earlier command, so an old
  store of runs alone is read as before, and old runs plus new seeds count as two commands.

Where seeds were chosen by looking, the fixed-n p-values are hidden and the Decided section's
anytime-valid verdicts (decided.py) are the ones that hold. Either way, the advice to train more
seeds is `--repeats auto`: seeds added after reading a report are chosen by looking.
"""

from __future__ import annotations

import pandas as pd

from ..tracking import TAG
from .keys import settle_flags
from .rows import Row
from .stats import MIN_SEEDS

LOOKED = "fixed-n test, not valid for seeds chosen by looking: see Decided"
INVOCATION = f"tags.{TAG}invocation"
BEFORE = "(recorded before harness.invocation)"  # the command of runs that predate the tag


def _col(k: str) -> str:
    return f"tags.{TAG}{k}"


def loop_record(compared: list[Row]) -> dict:
    """What `--repeats auto` recorded on the compared rows' runs (auto/state.py): whether a loop
    chose any of their seeds (tag harness.repeats=auto), and the alpha, margin and stop reason of
    the latest loop, so the report decides as the loop did."""
    runs = pd.concat([r.runs for r in compared], ignore_index=True) if compared else pd.DataFrame()
    if runs.empty or _col("repeats") not in runs or not (runs[_col("repeats")] == "auto").any():
        return {"looked": False}
    out = {"looked": True}
    rec = runs[runs[_col("auto_alpha")].notna()] if _col("auto_alpha") in runs else runs.iloc[:0]
    if not rec.empty:
        last = rec.sort_values("start_time").iloc[-1]
        out.update(alpha=float(last[_col("auto_alpha")]), margin=float(last[_col("auto_margin")]))
        stop = last.get(_col("auto_stop"))
        out["stop"] = stop if isinstance(stop, str) else None
    return out


def commands(row: Row) -> int:
    """How many commands trained the row's counted runs (those that predate the tag: one)."""
    if row.runs.empty:
        return 0
    ids = row.runs[INVOCATION] if INVOCATION in row.runs else pd.Series([None] * len(row.runs))
    return len({v if isinstance(v, str) and v else BEFORE for v in ids})


def added_later(compared: list[Row]) -> dict[str, int]:
    """Each compared row trained by more than one command, with how many."""
    return {r.key: n for r in compared if (n := commands(r)) > 1}


def looked_record(compared: list[Row]) -> dict:
    """loop_record, plus `later`: the rows whose seeds came from more than one command, and
    `looked` when either a loop or a later command chose seed counts."""
    rec = loop_record(compared)
    later = added_later(compared)
    return rec | {"by_loop": rec["looked"], "later": later, "looked": rec["looked"] or bool(later)}


def why_looked(rec: dict) -> str:
    """Why the fixed-n tests do not hold here, in a clause."""
    parts = ["seed counts chosen by `--repeats auto`"] if rec.get("by_loop") else []
    if rec.get("later"):
        parts.append("seeds added by a later command (" + ", ".join(f"{k}: {n} commands" for k, n in rec["later"].items())
                     + "), so their number may have been chosen after reading a result")
    return "; ".join(parts)


def mark_looked(ctx: dict, compared: list[Row]) -> None:
    """The advice to train more seeds points at `--repeats auto` (seeds added after reading this
    report are chosen by looking). On a store whose seed counts were chosen by looking, by a loop
    or a later command (ctx["decided"]), the fixed-n Welch tests (stats.py) are not valid: their
    p-values are hidden, their "real"/"within noise" labels say so, and "best" rests on the
    decided section."""
    by_key = {r.key: r for r in compared}
    looked = ctx["decided"].get("looked")
    for t in ctx.get("tests", []) + ctx.get("neighbours", []):
        if looked and t.get("seeds_measured"):
            t.update(p_seeds=None, p_holm=None, verdict=LOOKED)
        if t.get("settle"):
            t["settle"] = auto_command([by_key[k] for k in (t["best"], t["other"]) if k in by_key])
    basis = ctx.get("basis") or {}
    if basis.get("settle"):
        basis["settle"] = auto_command(compared)
    if looked and basis.get("measured"):
        basis.update(beyond=False, text=f"{why_looked(ctx['decided'])}: the fixed-n tests do not hold, see Decided for the verdicts")


def auto_command(rows: list[Row]) -> str:
    """The `--repeats auto` command(s) that continue deciding between `rows`, one per set of run
    options (rows trained with different options are different configurations). A set with one
    recipe (a loop needs two to compare) gets `--repeats MIN_SEEDS`, the fewest the Decided
    section's test can use; its verdicts hold however the seeds were chosen."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        flags = settle_flags(r.ckey, int(r.stats["cap"]) if r.stats.get("cap") else None) if r.ckey else ""
        if r.stats.get("settle_data_dir"):
            flags = f"{flags} --data-dir {r.stats['settle_data_dir']}".strip()
        group = groups.setdefault(flags, [])
        if r.experiment_id not in [g.experiment_id for g in group]:
            group.append(r)
    out = []
    for flags, group in groups.items():
        if len(group) == 1 and group[0].stats["n"] >= MIN_SEEDS:
            continue  # alone and already measured: nothing for it to train
        how = "--repeats auto" if len(group) > 1 else f"--repeats {MIN_SEEDS}"
        out.append(" ".join(x for x in ("harness run", *(g.experiment_id for g in group), how, flags) if x))
    return "; ".join(out)
