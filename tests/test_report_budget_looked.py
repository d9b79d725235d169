"""The budget table's "beats it beyond seed noise" holds its error rate however the seeds were
chosen (issue 28, review item 1). Simulated through budget_entry itself, no training: two identical
recipes (seed std 0.8); a person runs `--repeats 3`, reads the table, and adds a seed a side and
reads it again up to 10 seeds, stopping at "beats it". From the second look on the rows are
chosen by looking (looked.looked_rows: more than one plan trained them), so the table shows no
fixed-n p-value for them; the false "beats it" rate is that of the first look alone, <= alpha.
Without that, the same loop calls identical recipes different in about 15% of stores."""

from __future__ import annotations

import numpy as np

from harness.report.budget import ALPHA, LAST, TEST_SET, budget_entry
from harness.report.looked import LOOKED

STORES, CAP = 3000, 10


def _entry(a, b, n, looked):
    return budget_entry(60, TEST_SET, [(a[:n].mean(), "A", list(a[:n]), LAST), (b[:n].mean(), "B", list(b[:n]), LAST)], looked)


def test_adding_seeds_until_it_beats_holds_alpha():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(STORES):
        a, b = rng.normal(60, 0.8, CAP), rng.normal(60, 0.8, CAP)
        for n in range(3, CAP + 1):
            e = _entry(a, b, n, set() if n == 3 else {"A", "B"})  # the first plan alone, then a later one
            if e["verdict"] == "beats it beyond seed noise":
                hits += 1
                break
    rate = hits / STORES
    se = np.sqrt(ALPHA * (1 - ALPHA) / STORES)
    assert rate <= ALPHA + 2 * se, f"false 'beats it' in {rate:.3f} of A/A stores, nominal {ALPHA}"


def test_a_looked_row_shows_no_p_value_and_counts_as_one_in_the_family():
    a, b, c = [60.0, 60.1, 59.9, 60.2], [50.0, 50.2, 49.9, 50.1], [40.0, 40.1, 39.8, 40.2]
    scored = [(np.mean(x), k, x, LAST) for k, x in (("A", a), ("B", b), ("C", c))]
    looked = budget_entry(60, TEST_SET, scored, {"B"})
    assert (looked["p"], looked["p_holm"], looked["verdict"]) == (None, None, LOOKED)
    fixed = budget_entry(60, TEST_SET, scored, {"C"})  # A vs B both fixed: tested, C's pairs p = 1 in the family of 3
    assert fixed["verdict"] == "beats it beyond seed noise" and fixed["p_holm"] == min(1.0, 3 * fixed["p"])


def test_untested_advice_is_the_auto_command():
    e = budget_entry(60, TEST_SET, [(60.0, "A", [60.0], LAST), (59.0, "B", [59.0], LAST)], set(), "harness run a b --repeats auto")
    assert e["verdict"].startswith("untested") and "--repeats auto" in e["verdict"]
