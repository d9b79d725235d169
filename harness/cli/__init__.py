"""`harness` command line. User mistakes end as one line and a non-zero exit, never a traceback.

- `common.py`: one line for a HarnessError, exit 130 for Ctrl-C, subnormals flushed for training commands
- `options.py`: the options `run` and `run-all` share; --repeats N|auto
- `run.py`: `harness run` and `harness run-all`, checked and handed to an executor
- `recipes.py`: `harness list` and `harness new`
- `report.py`: `harness report` and `harness bench`
- `__main__.py`: `python -m harness.cli`
"""

from __future__ import annotations

import click

# (harness/__init__.py, imported first, sets OpenMP's passive waits before torch loads)
from .recipes import list_cmd, new_cmd
from .report import bench_cmd, report_cmd
from .run import run_all_cmd, run_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="harness")
def main():
    """Train the CNNs of five CIFAR-10 write-ups as MLflow runs and compare them.

    Typical use: `harness run-all`, then `harness report`, then `mlflow ui`.
    """


# --------------------------------------------------------------------------- list


for command in (list_cmd, run_cmd, run_all_cmd, new_cmd, report_cmd, bench_cmd):  # the order `harness --help` lists them in
    main.add_command(command)
