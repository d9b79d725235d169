"""The options `run` and `run-all` share, and --repeats' type (a number of seeds, or auto)."""

from __future__ import annotations

import click

from .common import MAX_SEED


class Repeats(click.ParamType):
    """--repeats: a whole number of seeds, or `auto`."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            n = int(str(value))
        except ValueError:
            n = 0
        if n < 1:
            self.fail(f"{value!r} is neither a whole number of seeds (1 or more) nor auto", param, ctx)
        return n


AUTO_FLAGS = ("max_repeats", "budget", "alpha", "margin")


def run_options(fn):
    opts = [
        click.option("--data-dir", type=str, default=None, envvar="HARNESS_DATA_DIR", help="cifar-10-batches-py or its parent (default: download to ~/.cache/harness)."),
        click.option("--tracking-uri", type=str, default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)."),
        click.option("--experiment-name", default="cifar10-harness", show_default=True, help="MLflow experiment to log into."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True),
        click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True),
        click.option("--repeats", type=Repeats(), default="1", show_default=True,
                     help="N runs with seeds S..S+N-1; auto: add seeds only where a verdict between recipes is open, until decided "
                          "(anytime-valid; see --max-repeats, --budget, --alpha, --margin)."),
        click.option("--max-repeats", type=click.IntRange(min=2), default=None, help="--repeats auto: at most N seeds a recipe [default: 10]."),
        click.option("--budget", type=str, default=None, help="--repeats auto: wall time for this command, e.g. 2h, 30m; runs that would "
                                                               "not finish within it (by the cost model) are not started."),
        click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="--repeats auto: family-wise error rate of its verdicts [default: 0.05]."),
        click.option("--margin", type=click.FloatRange(min=0), default=None,
                     help="--repeats auto: accuracy points within which two recipes count as tied [default: 0.5]."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="Cap: follow the recipe's schedule, stop after N epochs (run tagged capped)."),
        click.option("--max-train-images", type=click.IntRange(min=10), default=None, help="Train on a class-balanced subset (run tagged capped)."),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True, help="Autocast precision; fp32 keeps results comparable."),
        click.option("--force", is_flag=True, help="Train again even if an identical finished run exists."),
        click.option("--threads", type=click.IntRange(1, 1024), default=None,
                     help="Intra-op CPU threads per run (default, from the recipe and the machine: 1 for the small batch-4/20 recipes; "
                          "for the rest all of 2 cores, else half the cores, at most 8)."),
        click.option("--no-progress", is_flag=True, help="No progress bars (on a terminal) or per-epoch lines (elsewhere)."),
        click.option("--no-system-metrics", is_flag=True, help="Do not record MLflow system metrics (CPU, memory, disk, GPU) for the runs."),
        click.option("--together", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
                     help="A recipe's repeats as one stacked model (the same runs): auto where exact and measured faster here, "
                          "always where exact, never (see `harness list`)."),
        click.option("--jobs", type=click.IntRange(1, 256), default=None, envvar="HARNESS_JOBS",
                     help="Local executor: train up to N runs at once in N processes, each on its own recipe's threads, "
                          "as many as fit in the cores (default: one per CPU core, up to the number of runs; 1 on a GPU or with --together always)."),
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: one run after another in this process; ray: each (experiment, seed) a task on a Ray cluster."),
        click.option("--ray-address", type=str, default=None, help="Ray cluster to use (default: $RAY_ADDRESS, else a local Ray instance)."),
        click.option("--cpus-per-run", type=click.FloatRange(min=0.01), default=None, help="CPUs each Ray task asks for (default 1)."),
        click.option("--gpus-per-run", type=click.FloatRange(min=0), default=None, help="GPUs each Ray task asks for (default 0; fractions share one)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn
