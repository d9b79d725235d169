"""Is a difference real? Every verdict of the page is one family: all pairs of compared rows.

A difference between recipes is called real only when the seed-to-seed spread was measured:
at least MIN_SEEDS seeds a side, tested over the seeds (Welch). With fewer, the McNemar test on
the test images still says whether two *runs* differ, and the verdict says that this is all it
compares and which command would settle it.

The best row is chosen because its mean is highest; testing it against the k - 1 others as if it
had been fixed in advance calls some pair real in 8-14% of stores of equal rows. So the family
is every pair of compared rows (k(k-1)/2 tests, Holm over all of them): whichever rows turn out
best or neighbours, and however the best was chosen, the chance that any verdict of the page
calls equal recipes different is at most ALPHA (tests/test_report_fwer.py simulates it)."""

from __future__ import annotations

import pandas as pd

from .keys import settle_flags
import numpy as np

from .mathstats import holm, holm_array, mcnemar, mcnemar_matrix, paired_bootstrap, welch_matrix, welch_p
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


def first_run(r: Row) -> str:
    """The id of a row's first run (its lowest seed): the run whose predictions it is paired on.
    One cell (`iat`), not a column then a cell, which cost 4x more per pair of a large family."""
    return r.runs.iat[0, r.runs.columns.get_loc("run_id")]


def paired_compare(a: Row, b: Row, preds: dict[str, pd.DataFrame], p_seeds: float | None = None) -> dict:
    """a (the higher) against b: McNemar and a paired bootstrap on the same test images (each
    row's lowest seed), and Welch over the seeds where both rows have MIN_SEEDS of them."""
    entry = {"best": a.key, "other": b.key, "diff": a.stats["mean"] - b.stats["mean"], "b": None, "c": None, "p": None, "ci": None,
             "n_best": a.stats["n"], "n_other": b.stats["n"], "p_seeds": None}
    ra, rb = first_run(a), first_run(b)
    entry["runs"] = f"{ra[:8]} vs {rb[:8]}"
    pa, pb = preds.get(ra), preds.get(rb)
    if pa is not None and pb is not None and a.data == b.data and len(pa) == len(pb) and (pa["label"].to_numpy() == pb["label"].to_numpy()).all():
        ca = (pa["pred"] == pa["label"]).to_numpy()
        cb = (pb["pred"] == pb["label"]).to_numpy()
        entry["b"], entry["c"], entry["p"] = mcnemar(ca, cb)
        entry["ci"] = paired_bootstrap(ca, cb)
    entry["spread"] = max([s for s in (a.stats["std"], b.stats["std"]) if s is not None], default=None)
    entry["seeds_measured"] = seeds_measured(a, b)
    if entry["seeds_measured"]:  # `p_seeds`: already computed (pair_pvalues), else here
        entry["p_seeds"] = p_seeds if p_seeds is not None and not np.isnan(p_seeds) else welch_p(list(a.acc), list(b.acc))
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


def _correct(r: Row, preds: dict[str, pd.DataFrame]) -> np.ndarray | None:
    p = preds.get(first_run(r))
    return None if p is None else (p["pred"] == p["label"]).to_numpy()


def pair_pvalues(rows: list[Row], preds: dict[str, pd.DataFrame], looked: frozenset[str] | set[str] = frozenset()) -> np.ndarray:
    """The p-value each pair's verdict rests on (k x k, NaN where untested): Welch over seeds where
    both rows have MIN_SEEDS of them, else McNemar on the two rows' first runs where their
    predictions cover the same test images of one data set. `looked`: rows whose seed counts were
    chosen by looking (report/looked.py): a Welch p-value of theirs is not valid, and counts as 1
    (never rejected; Holm stays valid for the rest, the family keeping its size)."""
    k = len(rows)
    p = np.full((k, k), np.nan)
    if k < 2:
        return p
    measured = np.array([r.stats["n"] >= MIN_SEEDS for r in rows])
    welch = welch_matrix([r.acc for r in rows])
    both = measured[:, None] & measured[None, :]
    p[both] = welch[both]
    chosen = np.array([r.key in looked for r in rows])
    p[both & (chosen[:, None] | chosen[None, :])] = 1.0
    need = ~both & ~np.eye(k, dtype=bool)
    if need.any():
        correct = [_correct(r, preds) for r in rows]
        labels = [preds[first_run(r)]["label"].to_numpy() if c is not None else None for r, c in zip(rows, correct)]
        # rows whose predictions are on identical test images (same data set, same labels) are paired
        groups: dict[tuple, list[int]] = {}
        for i, (r, c, y) in enumerate(zip(rows, correct, labels)):
            if c is not None:
                groups.setdefault((r.data, len(y), y.tobytes()), []).append(i)
        for idx in groups.values():
            mc = mcnemar_matrix(np.array([correct[i] for i in idx]))
            sub = np.ix_(idx, idx)
            p[sub] = np.where(need[sub], mc, p[sub])
    return p


class Family:
    """Every tested pair of `rows` (by identity): the raw p-value each verdict rests on and its
    Holm adjustment over all of them, the one family every verdict of the page is drawn from."""

    def __init__(self, rows: list[Row], preds: dict[str, pd.DataFrame], looked: frozenset[str] | set[str] = frozenset()):
        p = pair_pvalues(rows, preds, looked)
        iu = np.triu_indices(len(rows), 1)
        adj = holm_array(p[iu])
        self.raw, self.adj = {}, {}
        for i, j, a in zip(*iu, adj):
            for x, y in ((i, j), (j, i)):
                self.raw[(id(rows[x]), id(rows[y]))] = float(p[i, j])
                if not np.isnan(a):
                    self.adj[(id(rows[x]), id(rows[y]))] = float(a)

    def __len__(self) -> int:
        return len(self.adj) // 2

    def entries(self, pairs: list[tuple[Row, Row]], preds: dict[str, pd.DataFrame]) -> list[dict]:
        out = []
        for a, b in pairs:
            e = paired_compare(a, b, preds, self.raw.get((id(a), id(b))))
            e["p_holm"] = self.adj.get((id(a), id(b))) if e["p_test"] is not None else None
            e["verdict"] = _verdict(e)
            out.append(e)
        return out


def family(rows: list[Row], preds: dict[str, pd.DataFrame], looked: frozenset[str] | set[str] = frozenset()) -> Family:
    return Family(rows, preds, looked)


def compare_to_best(rows: list[Row], preds: dict[str, pd.DataFrame], fam: Family | None = None) -> list[dict]:
    """The best row against each other one, adjusted within the family of all pairs (`fam`:
    family(ranked_rows(rows), preds), computed here when not given)."""
    ranked = ranked_rows(rows)
    if not ranked:
        return []
    fam = Family(ranked, preds) if fam is None else fam
    return fam.entries([(ranked[0], r) for r in ranked[1:]], preds)


def compare_neighbours(rows: list[Row], preds: dict[str, pd.DataFrame], fam: Family | None = None) -> list[dict]:
    """Each rank against the next one down: where the ordering itself is inside the noise (same family)."""
    ranked = ranked_rows(rows)
    fam = Family(ranked, preds) if fam is None else fam
    return fam.entries(list(zip(ranked, ranked[1:])), preds)


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
                "text": f"ahead of every other row beyond seed noise ({MIN_SEEDS}+ seeds each, Welch, Holm over all pairs of compared rows)", "settle": ""}
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
