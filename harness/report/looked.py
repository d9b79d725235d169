"""Were a row's seed counts chosen by looking? A fixed-n test (Welch over seeds, stats.py) holds
only for a number of seeds fixed before any result was read. The runs' own records say where
they may not have been, row by row:

- a loop chose them: a run tagged harness.repeats=auto, which `--repeats auto` sets on the runs it
  trains (auto/state.py), not on those it only read;
- more than one plan trained the row: each run records its command (harness.invocation) and the
  seeds that command set out to train (harness.plan, runs/job.RunOptions.plan). A later plan
  started when the earlier results could be read: adding seeds where a report said "untested"
  and reading it again is choosing n by looking (about 15% false positives at a nominal 5% for
  looks from 3 to 10 seeds). The runs a later run of their seed replaced count too (`--force`
  re-draws seeds; its plan is its own), and so do finished runs deleted in the MLflow UI (read apart,
  rows.attach_apart: deleting a plan's runs and training another after reading them is looking;
  runs removed for good by `mlflow gc` leave no trace). The same plan run again (a stopped command rerun, two
  drivers sharing it) is one plan. Runs recorded before harness.plan count by their command, and
  runs recorded before harness.invocation together as one earlier command, so an old store of
  runs alone is read as before, and old runs plus new seeds count as two;
- the plan ended short: the row lacks some of the seeds its command set out to train (stopped
  early by a person watching the results, or the command still runs). A seed whose run FAILED
  (a rerun fails the same way: it diverged) was trained as planned: it is accounted for, and the
  Decided section names it apart.

A pair shows its fixed-n p-values only where neither row was chosen by looking; elsewhere they
are hidden and the Decided section's anytime-valid verdicts (decided.py) are the ones that hold.
Either way, the advice to train more seeds is `--repeats auto`: seeds added after reading a
report are chosen by looking.
"""

from __future__ import annotations

import re

import pandas as pd

from ..tracking import TAG
from .rows import Row
from .stats import MIN_SEEDS

LOOKED = "fixed-n test, not valid for seeds chosen by looking: see Decided"
INVOCATION = f"tags.{TAG}invocation"
PLAN = f"tags.{TAG}plan"
BEFORE = "(recorded before harness.invocation)"  # the command of runs that predate the tag
SEEDS = re.compile(r"seeds (\d+)-(\d+)")  # RunOptions.plan: the seeds a command set out to train


def _col(k: str) -> str:
    return f"tags.{TAG}{k}"


def _text(v) -> str | None:
    return v if isinstance(v, str) and v else None


def _every_run(row: Row) -> pd.DataFrame:
    """The row's counted runs, those a later run of their seed replaced, and its deleted ones."""
    extra = [f for f in (row.superseded, row.deleted) if not f.empty]
    return pd.concat([row.runs, *extra], ignore_index=True) if extra else row.runs


def loop_record(compared: list[Row]) -> dict:
    """What `--repeats auto` recorded on the compared rows' runs (auto/state.py): whether a loop
    trained any of their seeds (tag harness.repeats=auto), and the alpha, margin and stop reason
    of the latest loop that read them, so the report decides as the loop did."""
    runs = pd.concat([_every_run(r) for r in compared], ignore_index=True) if compared else pd.DataFrame()
    out = {"looked": bool(not runs.empty and _col("repeats") in runs and (runs[_col("repeats")] == "auto").any())}
    rec = runs[runs[_col("auto_alpha")].notna()] if _col("auto_alpha") in runs else runs.iloc[:0]
    if not rec.empty:
        last = rec.sort_values("start_time").iloc[-1]
        out.update(alpha=float(last[_col("auto_alpha")]), margin=float(last[_col("auto_margin")]))
        stop = last.get(_col("auto_stop"))
        out["stop"] = stop if isinstance(stop, str) else None
    return out


def _plans(runs: pd.DataFrame) -> list[str]:
    """Each run's plan: its harness.plan; a run recorded before that tag, its command alone; one
    recorded before harness.invocation, BEFORE."""
    inv = runs[INVOCATION] if INVOCATION in runs else pd.Series([None] * len(runs), dtype=object)
    plan = runs[PLAN] if PLAN in runs else pd.Series([None] * len(runs), dtype=object)
    return [_text(p) or (f"command {i}" if _text(i) else BEFORE) for p, i in zip(plan, inv)]


def commands(row: Row) -> int:
    """How many plans trained the row's runs (the runs a later run of the same seed replaced
    included: `--force` after reading a report re-draws the seeds it retrains)."""
    return len(set(_plans(_every_run(row))))


def failed_seeds(row: Row) -> list[int]:
    """The seeds of the row whose runs FAILED (a rerun fails the same way: diverged, an invalid
    spec) and that no finished run counts."""
    f = row.failed
    if f.empty:
        return []
    none = pd.Series([None] * len(f), dtype=object)
    seed = pd.to_numeric(f.get(f"tags.{TAG}seed", none), errors="coerce").fillna(pd.to_numeric(f.get("params.seed", none), errors="coerce"))
    have = {s for s in row.seeds if s is not None}
    return sorted({int(s) for s in seed.dropna()} - have)


def short_of_plan(row: Row) -> tuple[int, int] | None:
    """(seeds the row has, seeds planned) of a plan whose seeds the row does not all have: the
    command ended before its plan (a person stopping it on seeing the results chose n by
    looking; a command still running reads the same); None where none did. A seed whose run
    FAILED (failed_seeds) was trained as planned and fails again on every rerun: accounted for."""
    have = {s for s in row.seeds if s is not None} | set(failed_seeds(row))
    for plan in dict.fromkeys(_plans(_every_run(row))):
        m = SEEDS.match(plan)
        if m:
            planned = set(range(int(m[1]), int(m[2]) + 1))
            if not planned <= have:
                return len(planned & have), len(planned)
    return None


def by_loop(row: Row) -> bool:
    runs = _every_run(row)
    return bool(_col("repeats") in runs and (runs[_col("repeats")] == "auto").any())


def added_later(compared: list[Row]) -> dict[str, int]:
    """Each compared row trained by more than one plan, with how many."""
    return {r.key: n for r in compared if (n := commands(r)) > 1}


def looked_rows(compared: list[Row]) -> set[str]:
    """The compared rows whose seed counts were chosen by looking: by a loop, by more than one
    plan, or by a command that ended short of its plan."""
    return {r.key for r in compared if by_loop(r) or commands(r) > 1 or short_of_plan(r)}


def looked_record(compared: list[Row]) -> dict:
    """loop_record, plus `later` (rows of more than one plan), `short` (rows whose command ended
    short of its plan: row -> "k of n"), `rows` (every row chosen by looking), `looked`
    (any such row) and `failed` (row -> its seeds whose runs failed, accounted for in its plan)."""
    rec = loop_record(compared)
    short = {r.key: f"{k} of {n}" for r in compared if (kn := short_of_plan(r)) for k, n in [kn]}
    rows = looked_rows(compared)
    failed = {r.key: ", ".join(map(str, f)) for r in compared if (f := failed_seeds(r))}
    return rec | {"by_loop": rec["looked"], "later": added_later(compared), "short": short, "rows": sorted(rows), "looked": bool(rows),
                  "failed": failed}


def why_looked(rec: dict) -> str:
    """Why the fixed-n tests do not hold for some pairs here, in a clause."""
    parts = ["seed counts chosen by `--repeats auto`"] if rec.get("by_loop") else []
    if rec.get("later"):
        parts.append("seeds added by a later command (" + ", ".join(f"{k}: {n} commands" for k, n in rec["later"].items())
                     + "), so their number may have been chosen after reading a result")
    if rec.get("short"):
        parts.append("a command ended short of its planned seeds (" + ", ".join(f"{k}: {v} seeds" for k, v in rec["short"].items())
                     + "), so it may have been stopped on seeing the results")
    return "; ".join(parts)


def mark_looked(ctx: dict, compared: list[Row]) -> None:
    """The advice to train more seeds points at `--repeats auto` (seeds added after reading this
    report are chosen by looking). A pair with a row whose seed counts were chosen by looking
    (ctx["decided"]["looked_rows"]) has no valid fixed-n Welch test: its p-values are hidden and its
    verdict says so; pairs of rows each fixed in advance keep theirs, and "best" rests on the
    decided section where one of its tests is hidden."""
    # every pair's advice is the one loop over all compared rows: a loop over one pair would decide
    # at its own level (m = 1 pair), not the family's the report decides at (m = k(k-1)/2), and a
    # user following each pair's command in turn would meet a false "better" in 14% of stores of
    # 13 equal recipes (simulated) where this report calls none
    every = auto_command(compared)
    looked = set(ctx["decided"].get("looked_rows", ()))
    for t in ctx.get("tests", []) + ctx.get("neighbours", []):
        if t.get("seeds_measured") and (t.get("best") in looked or t.get("other") in looked):
            t.update(p_seeds=None, p_holm=None, verdict=LOOKED)
        if t.get("settle"):
            t["settle"] = every
    basis = ctx.get("basis") or {}
    if basis.get("settle"):
        basis["settle"] = auto_command(compared)
    if basis.get("measured") and any(t.get("verdict") == LOOKED for t in ctx.get("tests", [])):
        basis.update(beyond=False, text=f"{why_looked(ctx['decided'])}: the fixed-n tests of pairs with these rows do not hold, "
                                        "see Decided for the verdicts")


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
