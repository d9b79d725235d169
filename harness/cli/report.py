"""`harness report` (the HTML comparison from the run store) and `harness bench` (the loops measured
side by side)."""

from __future__ import annotations

import click

from .common import friendly


@click.command("report")
@click.option("--tracking-uri", type=str, default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).")
@click.option("--experiment-name", default="cifar10-harness", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="reports/report.html", show_default=True)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Also write the summary table as CSV.")
@click.option("--mlflow-ui-url", default="http://127.0.0.1:5000", show_default=True, help="Base URL for links to runs.")
@click.option("--data", "data", type=str, default=None, metavar="FINGERPRINT",
              help="Data set whose rows the significance tests and budget table compare (a fingerprint or its first characters, "
                   "as the report lists them; default: the one with the most rows to compare, then the most finished runs).")
@click.option("--log-to-mlflow", is_flag=True, default=False,
              help="Also log the HTML as the artifact of a run named 'harness report' in the experiment, to open from the MLflow UI.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Family-wise error rate of the Decided section [default: the latest --repeats auto loop's, else 0.05].")
@click.option("--margin", type=click.FloatRange(min=0), default=None,
              help="Accuracy points within which two rows count as tied [default: the latest loop's, else 0.5].")
@friendly
def report_cmd(tracking_uri, experiment_name, out, csv_path, mlflow_ui_url, data, log_to_mlflow, alpha, margin):
    """Build one self-contained HTML comparison from the run store (with --csv, also FILE-tests.csv, FILE-budgets.csv and
    FILE-decisions.csv)."""
    from ..report import build_report

    path = build_report(tracking_uri, experiment_name, out, csv_path, mlflow_ui_url, warn=lambda m: click.echo(f"warning: {m}", err=True),
                        data=data, log_to_mlflow=log_to_mlflow, say=click.echo, alpha=alpha, margin=margin)
    click.echo(f"report written to {path}")


# --------------------------------------------------------------------------- bench


@click.command("bench")
@click.option("--model", "models", multiple=True, help="Experiment id(s) to measure (default: tutorial-base and medium-vgg-bn).")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True,
              help="Timed steps per case (after warm-up); the whole-suite estimate times min(steps, 30) per recipe.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Times the two loops are measured in turn (the median is printed): more on a busy machine, 1 for a quick look.")
@click.option("--data-dir", type=str, default=None, envvar="HARNESS_DATA_DIR", help="Real data (default: synthetic images; speed does not depend on pixels).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--no-suite", is_flag=True, help="Skip the per-experiment seconds-per-epoch estimate.")
@click.option("--overhead-images", type=click.IntRange(min=64), default=5000, show_default=True,
              help="Images per epoch in the tracking-overhead measurement (the runner logs once per epoch).")
@click.option("--repeats", type=click.IntRange(min=2), default=None, is_flag=False, flag_value=8,
              help="Instead: N seeds one by one vs stacked (default N 8; models tutorial-base and medium-three-conv), and a run's fixed cost.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True,
              help="Where to measure (auto: the GPU where there is one, as run-all trains).")
@friendly
def bench_cmd(models, steps, rounds, data_dir, precision, no_suite, overhead_images, repeats, device):
    """Seed-style DataLoader loop vs the harness loop, side by side, plus tracking overhead."""
    from ..training.environment import resolve_device

    where = resolve_device(device)
    if repeats is not None:
        from ..bench.repeats import run_repeats_bench

        run_repeats_bench(list(models) or ["tutorial-base", "medium-three-conv"], repeats, steps, echo=click.echo, device=where)
        return
    from ..bench.loops import run_bench

    run_bench(list(models) or ["tutorial-base", "medium-vgg-bn"], steps, data_dir, precision, not no_suite, overhead_images, echo=click.echo,
              device=where, rounds=rounds)

