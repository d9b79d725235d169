"""harness: reproduce the CNNs of five CIFAR-10 write-ups as tracked MLflow runs."""

import os

# OpenMP threads that sleep rather than spin while they wait: no measurable cost alone, and less
# CPU lost beside a second busy process (two --jobs, a test suite's two workers: 10-15% of a
# test file's CPU, 2.3x under OMP_WAIT_POLICY=ACTIVE). Here, not in the CLI only, so that a
# run trained from Python (`import harness` first) computes as a command's does. libgomp reads it
# when torch loads it, so it only counts before torch is imported; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
