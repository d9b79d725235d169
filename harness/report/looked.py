"""Were the compared rows' seed counts chosen by looking? A fixed-n test (Welch over seeds,
stats.py) holds only for a number of seeds fixed before any result was read. Two records say
otherwise, both read from the runs themselves:

- a loop chose them: a run tagged harness.repeats=auto (`--repeats auto`, auto/state.py);
- a person may have: a row whose runs (counted, or replaced by a later run of their seed, as
  `--force` does) were trained by more than one command (tag harness.invocation, one id per command). The second command started after the first's results
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
    """How many commands trained the row's runs (those that predate the tag: one), the runs a
    later run of the same seed replaced included: `--force` after reading a report re-draws the
    seeds it retrains (or trains more of them) just as a second command adding seeds does."""
    runs = pd.concat([row.runs, row.superseded], ignore_index=True) if not row.superseded.empty else row.runs
    if runs.empty:
        return 0
    ids = runs[INVOCATION] if INVOCATION in runs else pd.Series([None] * len(runs))
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
    # every pair's advice is the one loop over all compared rows: a loop over one pair would decide
    # at its own level (m = 1 pair), not the family's the report decides at (m = k(k-1)/2), and a
    # user following each pair's command in turn would meet a false "better" in 14% of stores of
    # 13 equal recipes (simulated) where this report calls none
    every = auto_command(compared)
    looked = ctx["decided"].get("looked")
    for t in ctx.get("tests", []) + ctx.get("neighbours", []):
        if looked and t.get("seeds_measured"):
            t.update(p_seeds=None, p_holm=None, verdict=LOOKED)
        if t.get("settle"):
            t["settle"] = every
    basis = ctx.get("basis") or {}
    if basis.get("settle"):
        basis["settle"] = auto_command(compared)
    if looked and basis.get("measured"):
        basis.update(beyond=False, text=f"{why_looked(ctx['decided'])}: the fixed-n tests do not hold, see Decided for the verdicts")


def _needs(r: Row) -> tuple[int | None, int | None, str]:
    """The `--epochs`, `--max-train-images` (None: no cap) and `--precision` that train r's configuration."""
    k = r.ckey
    epochs = k.epochs if k.epochs is not None and k.recipe_epochs is not None and k.epochs < k.recipe_epochs else None
    images = (int(r.stats["cap"]) if r.stats.get("cap") else k.n_train) if k.images_capped else None
    return epochs, images, k.precision


def _fits(r: Row, epochs: int | None, images: int | None, precision: str) -> bool:
    """Whether a command with these options trains exactly r's configuration: its own caps, and
    none where it has none (`--epochs 2` caps nothing of a 2-epoch recipe; runs/job.effective_overrides)."""
    k, (e, m, p) = r.ckey, _needs(r)
    ok_e = epochs == e if e is not None else epochs is None or (k.recipe_epochs is not None and k.recipe_epochs <= epochs)
    ok_m = images == m if m is not None else images is None or (k.n_train is not None and k.n_train <= images)
    return p == precision and ok_e and ok_m


def _groups(rows: list[Row]) -> list[tuple[str, list[Row]]]:
    """`rows` in as few commands as train each exactly: (its run options, its rows)."""
    groups: list[list] = []  # [epochs, images, precision, rows]
    keyless: list[Row] = []
    for r in rows:
        if r.ckey is None:
            keyless.append(r)
            continue
        e, m, p = _needs(r)
        for g in groups:
            if (g[0] is not None and e is not None and g[0] != e) or (g[1] is not None and m is not None and g[1] != m):
                continue
            cand = (g[0] if g[0] is not None else e, g[1] if g[1] is not None else m, p)
            if all(_fits(x, *cand) for x in g[3] + [r]):
                g[:3] = cand
                if r.experiment_id not in [x.experiment_id for x in g[3]]:
                    g[3].append(r)
                break
        else:
            groups.append([e, m, p, [r]])
    out = []
    for e, m, p, members in groups:
        flags = [f"--epochs {e}" if e is not None else "", f"--max-train-images {m}" if m is not None else "",
                 f"--precision {p}" if p != "fp32" else "", f"--data-dir {members[0].stats['settle_data_dir']}" if members[0].stats.get("settle_data_dir") else ""]
        out.append((" ".join(f for f in flags if f), members))
    return out + ([("", list({r.experiment_id: r for r in keyless}.values()))] if keyless else [])


def auto_command(rows: list[Row]) -> str:
    """The `--repeats auto` command(s) that continue deciding between `rows`, as few as train each
    row's own configuration (_groups). A command of one recipe (a loop needs two to compare)
    gets `--repeats MIN_SEEDS`, the fewest the Decided section's test can use (its verdicts hold
    however the seeds were chosen), or nothing where it already has them."""
    out = []
    for flags, group in _groups(rows):
        if len(group) == 1 and group[0].stats["n"] >= MIN_SEEDS:
            continue  # alone and already measured: nothing for it to train
        how = "--repeats auto" if len(group) > 1 else f"--repeats {MIN_SEEDS}"
        out.append(" ".join(x for x in ("harness run", *(g.experiment_id for g in group), how, flags) if x))
    return "; ".join(out)
