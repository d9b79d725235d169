"""`harness bench`: training loops measured side by side in one run.

- loops.py: the write-ups' DataLoader loop against the harness loop, per recipe.
- repeats.py: `--repeats N`: seeds one by one against stacked, and a run's fixed cost.
"""
