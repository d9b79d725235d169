"""Is a difference real? Each comparison the report makes, corrected per family (Holm).

A difference between recipes is called real only when the seed-to-seed spread was measured:
at least MIN_SEEDS seeds a side, tested over the seeds (Welch). With fewer, the McNemar test on
the test images still says whether two *runs* differ, and the verdict says that this is all it
compares and which command would settle it."""

from __future__ import annotations

import pandas as pd

from .keys import settle_flags
from .mathstats import holm, mcnemar, paired_bootstrap, welch_p
from .rows import Row

ALPHA = 0.05
MIN_SEEDS = 3  # seeds a side before a difference between recipes can be called real

REAL, NOISE = "real", "within noise"
RUNS_DIFFER, RUNS_SAME = "two runs differ; recipes untested", "two runs within noise; recipes untested"


def settle_command(rows: list[Row]) -> str:
    """The command(s) that train MIN_SEEDS seeds of each of `rows` that has fewer, with the options
    of their runs (seeds already trained are skipped as identical; `--data-dir` where the store
    holds several data sets)."""
    by_flags: dict[str, list[str]] = {}
    for r in rows:
        if r.stats["n"] >= MIN_SEEDS:
            continue
        flags = settle_flags(r.ckey, int(r.stats["cap"]) if r.stats.get("cap") else None) if r.ckey else ""
        if r.stats.get("settle_data_dir"):
            flags = f"{flags} --data-dir {r.stats['settle_data_dir']}".strip()
        by_flags.setdefault(flags, [])
        if r.experiment_id not in by_flags[flags]:
            by_flags[flags].append(r.experiment_id)
    return "; ".join(" ".join(x for x in ("harness run", *ids, f"--repeats {MIN_SEEDS}", flags) if x) for flags, ids in by_flags.items())


def seeds_measured(*rows: Row) -> bool:
    return all(r.stats["n"] >= MIN_SEEDS for r in rows)


def paired_compare(a: Row, b: Row, preds: dict[str, pd.DataFrame]) -> dict:
    """a (the higher) against b: McNemar and a paired bootstrap on the same test images (each
    row's lowest seed), and Welch over the seeds where both rows have MIN_SEEDS of them."""
    entry = {"best": a.key, "other": b.key, "diff": a.stats["mean"] - b.stats["mean"], "b": None, "c": None, "p": None, "ci": None,
             "n_best": a.stats["n"], "n_other": b.stats["n"], "p_seeds": None}
    ra, rb = a.runs["run_id"].iloc[0], b.runs["run_id"].iloc[0]
    entry["runs"] = f"{ra[:8]} vs {rb[:8]}"
    pa, pb = preds.get(ra), preds.get(rb)
    if pa is not None and pb is not None and a.data == b.data and len(pa) == len(pb) and (pa["label"].to_numpy() == pb["label"].to_numpy()).all():
        ca = (pa["pred"] == pa["label"]).to_numpy()
        cb = (pb["pred"] == pb["label"]).to_numpy()
        entry["b"], entry["c"], entry["p"] = mcnemar(ca, cb)
        entry["ci"] = paired_bootstrap(ca, cb)
    entry["spread"] = max([s for s in (a.stats["std"], b.stats["std"]) if s is not None], default=None)
    entry["seeds_measured"] = seeds_measured(a, b)
    if entry["seeds_measured"]:
        entry["p_seeds"] = welch_p(list(a.acc), list(b.acc))
    entry["settle"] = "" if entry["seeds_measured"] else settle_command([a, b])
    entry["p_test"] = entry["p_seeds"] if entry["seeds_measured"] else entry["p"]  # what the verdict rests on
    entry["p_holm"] = entry["p_test"]  # until holm_family() adjusts it among its family
    return entry


def _verdict(entry: dict) -> str:
    significant = entry["p_holm"] is not None and entry["p_holm"] < ALPHA
    if entry["seeds_measured"]:
        return REAL if significant else NOISE
    if entry["p"] is None:
        return "untested"
    return RUNS_DIFFER if significant else RUNS_SAME


def holm_family(entries: list[dict]) -> list[dict]:
    for e, adj in zip(entries, holm([e["p_test"] for e in entries])):
        e["p_holm"] = adj
        e["verdict"] = _verdict(e)
    return entries


def ranked_rows(rows: list[Row]) -> list[Row]:
    """Uncapped rows by accuracy (capped ones only when nothing else exists)."""
    ranked = [r for r in rows if not r.capped] or rows
    return sorted(ranked, key=lambda r: -r.stats["mean"])


def compare_to_best(rows: list[Row], preds: dict[str, pd.DataFrame]) -> list[dict]:
    ranked = ranked_rows(rows)
    return holm_family([paired_compare(ranked[0], r, preds) for r in ranked[1:]]) if ranked else []


def compare_neighbours(rows: list[Row], preds: dict[str, pd.DataFrame]) -> list[dict]:
    """Each rank against the next one down: where the ordering itself is inside the noise."""
    ranked = ranked_rows(rows)
    return holm_family([paired_compare(a, b, preds) for a, b in zip(ranked, ranked[1:])])


def best_basis(rows: list[Row], tests: list[dict]) -> dict:
    """What the summary's "best" rests on: measured seed spread against every other row, or runs."""
    ranked = ranked_rows(rows)
    if not ranked:
        return {"best": None, "measured": False, "text": "", "settle": ""}
    best = ranked[0]
    if len(ranked) == 1:  # nothing to be ahead of: no best
        return {"best": None, "measured": False, "text": f"Only one row compared ({best.key}): nothing to rank, no best", "settle": ""}
    if seeds_measured(*ranked) and all(t["verdict"] == REAL for t in tests):
        return {"best": best.key, "measured": True, "beyond": True,
                "text": f"ahead of every other row beyond seed noise ({MIN_SEEDS}+ seeds each, Welch, Holm)", "settle": ""}
    if seeds_measured(*ranked):
        return {"best": best.key, "measured": True, "beyond": False, "text": "highest mean, but not beyond seed noise against every other row",
                "settle": ""}
    few = sorted({r.stats["n"] for r in ranked if r.stats["n"] < MIN_SEEDS})
    return {"best": best.key, "measured": False,
            "text": f"the best run, not a ranking of recipes: some rows have {' or '.join(map(str, few))} seed(s), and "
                    f"seed-to-seed spread (1-5 points on small data) is not measured", "settle": settle_command(ranked)}


def pareto_front(points: list[tuple[str, float, float]]) -> set[str]:
    """Names not dominated in (lower time, higher accuracy)."""
    front = set()
    for name, t, a in points:
        if not any((t2 <= t and a2 >= a) and (t2 < t or a2 > a) for _, t2, a2 in points):
            front.add(name)
    return front
