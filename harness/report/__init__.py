"""`harness report`: one self-contained HTML comparison of the runs in a store.

- keys.py: which runs are comparable (the comparability key from what each run recorded), one run per seed, row labels.
- rows.py: runs read from the store and grouped into rows, one per experiment and key.
- datasets.py: the data sets, precisions and caps a store holds, and which rows the tests compare.
- mathstats.py: the statistics themselves (t interval, McNemar, bootstrap, Holm, Welch).
- stats.py: is a difference between rows real?
- sequential.py: anytime-valid verdicts (e-values, confidence sequences) that hold however the seeds were chosen.
- decided.py: the "decided" section: every pair by the anytime-valid test, and FILE-decisions.csv.
- looked.py: were seed counts chosen by looking (a loop, or seeds added by a later command)? Then no fixed-n verdicts.
- budget.py: which recipe for a time budget.
- charts.py: the report's figures as inline PNGs.
- build.py: the HTML page and its CSV.
"""

from .build import build_report
from .rows import distance_to_interval

__all__ = ["build_report", "distance_to_interval"]
