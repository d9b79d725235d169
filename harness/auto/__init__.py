"""`--repeats auto`: train seeds until the question is answered, with verdicts that hold under
that stopping (report/sequential.py). Sits above the executors: it decides which (recipe, seed)
runs a round trains and hands them to the local, `--jobs` or Ray executor.

- budget.py: `--budget 2h` read, a seed's cost estimated (the store's own times, else the
  scheduler's work model), a round fitted into what is left and, under a budget, cut into
  waves so an early estimate cannot overshoot it.
- state.py: the loop's state as the store holds it: each recipe's finished seeds of this configuration.
- loop.py: the rounds: decide, plan the next seeds, train them, say what changed; why it stopped.
- wiring.py: the rounds handed to the command's executor (one process, `--jobs`, Ray), and its summary.
"""
