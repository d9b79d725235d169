"""Is a difference real? Each comparison the report makes, corrected per family (Holm)."""

from __future__ import annotations

import pandas as pd

from ..tracking import TAG
from .mathstats import holm, mcnemar, paired_bootstrap
from .rows import Row

ALPHA = 0.05


def paired_compare(a: Row, b: Row, preds: dict[str, pd.DataFrame]) -> dict:
    """a (the higher) against b on the same test images, first run of each, plus seed spread."""
    entry = {"best": a.key, "other": b.key, "diff": a.stats["mean"] - b.stats["mean"], "b": None, "c": None, "p": None, "ci": None}
    pa, pb = preds.get(a.runs["run_id"].iloc[0]), preds.get(b.runs["run_id"].iloc[0])
    same_data = a.runs[f"tags.{TAG}data_fingerprint"].iloc[0] == b.runs[f"tags.{TAG}data_fingerprint"].iloc[0]
    if pa is not None and pb is not None and same_data and len(pa) == len(pb) and (pa["label"].to_numpy() == pb["label"].to_numpy()).all():
        ca = (pa["pred"] == pa["label"]).to_numpy()
        cb = (pb["pred"] == pb["label"]).to_numpy()
        entry["b"], entry["c"], entry["p"] = mcnemar(ca, cb)
        entry["ci"] = paired_bootstrap(ca, cb)
    entry["spread"] = max([s for s in (a.stats["std"], b.stats["std"]) if s is not None], default=None)
    entry["p_holm"] = entry["p"]  # until holm_family() adjusts it among its family
    return entry


def _verdict(entry: dict) -> str:
    real = entry["p_holm"] is not None and entry["p_holm"] < ALPHA
    if entry["spread"] is not None and entry["diff"] < 2 * entry["spread"]:
        real = False  # inside the seed-to-seed spread: not a ranking
    return "real" if real else ("within noise" if entry["p"] is not None or entry["spread"] is not None else "untested")


def holm_family(entries: list[dict]) -> list[dict]:
    for e, adj in zip(entries, holm([e["p"] for e in entries])):
        e["p_holm"] = adj
        e["verdict"] = _verdict(e)
    return entries


def ranked_rows(rows: list[Row]) -> list[Row]:
    """Uncapped rows by accuracy (capped ones only when nothing else exists)."""
    ranked = [r for r in rows if not r.capped] or rows
    return sorted(ranked, key=lambda r: -r.stats["mean"])


def compare_to_best(rows: list[Row], preds: dict[str, pd.DataFrame]) -> list[dict]:
    ranked = ranked_rows(rows)
    return holm_family([paired_compare(ranked[0], r, preds) for r in ranked[1:]])


def compare_neighbours(rows: list[Row], preds: dict[str, pd.DataFrame]) -> list[dict]:
    """Each rank against the next one down: where the ordering itself is inside the noise."""
    ranked = ranked_rows(rows)
    return holm_family([paired_compare(a, b, preds) for a, b in zip(ranked, ranked[1:])])


def pareto_front(points: list[tuple[str, float, float]]) -> set[str]:
    """Names not dominated in (lower time, higher accuracy)."""
    front = set()
    for name, t, a in points:
        if not any((t2 <= t and a2 >= a) and (t2 < t or a2 > a) for _, t2, a2 in points):
            front.add(name)
    return front
