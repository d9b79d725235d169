"""`harness` command line. User mistakes end as one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import fnmatch
import functools
import json
import sys
import time

import os

# OpenMP threads that sleep rather than spin while they wait: no measurable cost alone, and
# less lost to a second busy process (set before torch loads libgomp; a user's value wins)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402

from .errors import HarnessError, UsageError  # noqa: E402


MAX_SEED = 2**31 - 1  # seeds feed torch, NumPy (< 2**32) and per-epoch generators (seed * 1_000_003 + epoch)


def _fail(msg: str, code: int = 1):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def friendly(fn):
    """Turn HarnessError into one line; Ctrl-C into exit 130 with a hint."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HarnessError as e:
            _fail(str(e), getattr(e, "exit_code", 1))
        except KeyboardInterrupt as e:
            # the runner says what the interrupt left behind (a run marked KILLED, or nothing yet)
            click.echo(f"\ninterrupted: {e}" if str(e) else "\ninterrupted: no run had been created yet; nothing was recorded", err=True)
            sys.exit(130)

    return wrapper


def flushes_denormals(fn):
    """A training command: subnormals as zero from before its first tensor (the catalogue builds
    networks), so PyTorch's pool threads, started by it, inherit the flag (training/environment.py)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .training.environment import flushing_denormals

        with flushing_denormals():
            return fn(*args, **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="harness")
def main():
    """Train the CNNs of five CIFAR-10 write-ups as MLflow runs and compare them.

    Typical use: `harness run-all`, then `harness report`, then `mlflow ui`.
    """


# --------------------------------------------------------------------------- list


@main.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--experiments-dir", type=click.Path(file_okay=False), default=None, help="Folder of *.toml specs (default: ./experiments).")
@click.option("--experiments", "user_dir", type=click.Path(file_okay=False), default=None, help="A folder of your own recipes, listed beside the catalogue.")
@friendly
def list_cmd(fmt, experiments_dir, user_dir):
    """List the experiments of the catalogue: parameters, published accuracy, CPU threads and convolutions, source."""
    import torch

    from .recipes.catalogue import load_catalogue, with_folder
    from .training.environment import choose_conv, choose_threads, macs_per_image
    from .models import count_params
    from .recipes.network import build_model
    from .training.together import why_sequential

    cat = load_catalogue(experiments_dir)
    if user_dir is not None:
        cat = with_folder(cat, user_dir)
    rows = []
    for exp in cat.values():
        model = build_model(exp)
        rows.append({"id": exp.id, "title": exp.title, "source": exp.source.seed if exp.source else f"yours: {exp.user_spec}", "params": count_params(model),
                     "published_accuracy": exp.published.test_accuracy,
                     "mmacs_per_step": round(macs_per_image(model) * exp.train.batch_size / 1e6, 1),
                     "cpu_threads": choose_threads(model, exp.train.batch_size, torch.device("cpu")),
                     "cpu_conv": choose_conv(model, exp.train.batch_size, torch.device("cpu")),
                     "repeats": why_sequential(exp, model, torch.device("cpu")) or "stackable"})
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no experiments found")
        return
    head = ("id", "params", "published", "M MACs/step", "CPU threads, conv", "seeds stack (--together)", "source", "title")
    table = [(r["id"], f"{r['params']:,}", ", ".join(f"{a:g}%" for a in r["published_accuracy"]) or "-", f"{r['mmacs_per_step']:,.0f}",
              f"{r['cpu_threads']}, {r['cpu_conv']}", "yes" if r["repeats"] == "stackable" else f"no: {r['repeats']}", r["source"], r["title"])
             for r in rows]
    w = [max(len(str(x[i])) for x in [head, *table]) for i in range(7)]
    for r in [head, *table]:
        click.echo(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}  {r[4]:>{w[4]}}  {r[5]:<{w[5]}}  {r[6]:<{w[6]}}  {r[7]}")
    click.echo("\nSeeds that stack train together as one vmapped model: equal to one-by-one runs step by step over short horizons,\n"
               "statistically equivalent over a run, not bit-identical (summation order differs); each run's tag harness.execution\n"
               "says which way it trained, and the report shows it.")


# --------------------------------------------------------------------------- run / run-all


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


def _execute(experiments, data_dir, tracking_uri, experiment_name, device, seed, repeats, epochs, max_train_images, precision, force, no_progress,
             no_system_metrics, threads, together, jobs, executor, ray_address, cpus_per_run, gpus_per_run, max_repeats=None, budget=None,
             alpha=None, margin=None):
    from .data.loader import load_cifar10, resolve_data_dir
    from .training.environment import resolve_device
    from .runs.job import RunOptions, new_invocation
    from .executors.local import run_many, summary_table
    from .executors.schedule import longest_first
    from .executors.signals import sigterm_is_ctrl_c
    from .tracking import Tracker

    started = time.monotonic()  # --budget: the command's wall time counts from here
    sigterm_is_ctrl_c()  # Slurm, Kubernetes and `timeout` stop a job with SIGTERM: a run ends resumable

    auto_given = [f"--{k.replace('_', '-')}" for k, v in zip(AUTO_FLAGS, (max_repeats, budget, alpha, margin)) if v is not None]
    if repeats != "auto" and auto_given:
        raise UsageError(f"{', '.join(auto_given)} only apply with --repeats auto")
    auto = None
    if repeats == "auto":
        from .auto.budget import parse_budget
        from .auto.loop import AutoOptions

        auto = AutoOptions(max_repeats=max_repeats or 10, budget_s=parse_budget(budget), alpha=0.05 if alpha is None else alpha,
                           margin=0.5 if margin is None else margin)
        if force:
            raise UsageError("--force retrains seeds; --repeats auto decides from the seeds the store holds (drop --force)")
        auto.check(len(experiments))
        repeats = auto.max_repeats
    if seed + repeats - 1 > MAX_SEED:
        raise UsageError(f"--seed {seed} with --repeats {repeats} goes past the largest seed {MAX_SEED}")
    opts = RunOptions(seed=seed, repeats=repeats, epochs=epochs, max_train_images=max_train_images, force=force,
                      device=device, precision=precision, progress=not no_progress, system_metrics=not no_system_metrics, threads=threads,
                      together=together, invocation=new_invocation())
    ray_opts = _ray_options(executor, ray_address, cpus_per_run, gpus_per_run)
    if ray_opts is not None and (jobs or 1) > 1:
        raise UsageError("--jobs applies to the local executor; with --executor ray each run is a task (see --cpus-per-run)")
    dev = resolve_device(device)  # a missing CUDA is a usage error: say so before touching the store
    jobs = _jobs(jobs, dev, len(experiments) * repeats, together) if ray_opts is None else 1
    data = load_cifar10(resolve_data_dir(data_dir))
    experiments = longest_first(experiments, len(data.train_x), opts)
    tracker = Tracker(tracking_uri, experiment_name)
    click.echo(f"{len(experiments)} experiment(s) x {f'up to {repeats}' if auto else repeats} seed(s) on {len(data.train_x)} train / "
               f"{len(data.test_x)} test images from {data.root}; store {tracker.uri}, experiment {experiment_name!r}"
               + (f"; {jobs} at once" if jobs > 1 else ""))
    if auto is not None:
        from .auto.wiring import run_auto_command

        outcomes = run_auto_command(experiments, data, tracker, opts, auto, jobs, ray_opts, echo=click.echo, started=started)
    elif ray_opts is None and jobs > 1:
        from .executors.pool import run_pool

        outcomes = run_pool(experiments, data, tracker, opts, jobs, echo=click.echo)
    elif ray_opts is None:
        outcomes = run_many(experiments, data, tracker, opts, echo=click.echo)
    else:
        from .executors.ray import run_many_ray

        outcomes = run_many_ray(experiments, data, tracker, opts, ray_opts, echo=click.echo)
    click.echo("")
    click.echo(summary_table(outcomes))
    if tracker.uri.startswith(("http://", "https://")):
        where = ""
    else:
        where = "`mlflow ui` here, then " if tracker.uri == "sqlite:///mlflow.db" else f"`mlflow ui --backend-store-uri {tracker.uri}`, then "
    click.echo(f"\nruns: {where}{tracker.ui_url()}   report: `harness report`")
    failed = [o for o in outcomes if o.status == "failed"]
    stopped = [o for o in outcomes if o.status == "resumable"]
    if failed or stopped:
        _fail("; ".join(([f"{len(failed)} run(s) failed: {', '.join(o.experiment_id for o in failed)}"] if failed else [])
                        + ([f"{len(stopped)} run(s) stopped and resumable (run the same command again): "
                            f"{', '.join(o.experiment_id for o in stopped)}"] if stopped else [])))


def _jobs(asked, device, runs: int, together: str) -> int:
    """--jobs, or its default: one process per core for CPU runs (the small recipes train on one
    thread each, measured 1.85x for 7 recipes x 5 seeds on 2 cores), one where a GPU or stacked
    seeds already keep the hardware busy."""
    if asked is not None:
        return asked
    if device.type != "cpu" or together == "always":
        return 1
    from .training.environment import all_cores

    return max(1, min(all_cores(), runs))


def _ray_options(executor, address, cpus, gpus):
    """RayOptions for --executor ray (Ray itself checked now, before anything is written), else None."""
    if executor != "ray":
        given = [name for name, v in (("--ray-address", address), ("--cpus-per-run", cpus), ("--gpus-per-run", gpus)) if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --executor ray")
        return None
    from .executors.ray import RayOptions, require_ray

    require_ray()
    return RayOptions(address=address, cpus_per_run=1.0 if cpus is None else cpus, gpus_per_run=gpus or 0.0)


@main.command("run")
@click.argument("ids", nargs=-1, required=True)
@run_options
@friendly
@flushes_denormals
def run_cmd(ids, **kw):
    """Train the experiments IDS (see `harness list`) or the specs at these paths (a recipe of
    your own, e.g. ./my-net.toml), one MLflow run each."""
    from .recipes.catalogue import load_catalogue, select_targets

    _execute(select_targets(load_catalogue(), ids), **kw)


@main.command("run-all")
@click.option("--only", multiple=True, help="Glob of ids to include (repeatable), e.g. 'fastai-*'.")
@click.option("--skip", multiple=True, help="Glob of ids to leave out (repeatable).")
@click.option("--experiments", "user_dir", type=click.Path(file_okay=False), default=None,
              help="A folder of your own recipes (*.toml) to train beside the documented ones.")
@run_options
@friendly
@flushes_denormals
def run_all_cmd(only, skip, user_dir, **kw):
    """Train every experiment in experiments/ (and --experiments DIR); finished ones are skipped, killed ones resumed."""
    from .recipes.catalogue import load_catalogue, with_folder

    cat = load_catalogue()
    if user_dir is not None:
        cat = with_folder(cat, user_dir)
    chosen = [e for i, e in cat.items() if (not only or any(fnmatch.fnmatch(i, p) for p in only)) and not any(fnmatch.fnmatch(i, p) for p in skip)]
    if not chosen:
        raise UsageError(f"--only/--skip leave no experiment (known: {', '.join(cat)})")
    _execute(chosen, **kw)


# --------------------------------------------------------------------------- new


@main.command("new")
@click.argument("name")
@click.option("--like", "like", default="tutorial-base", show_default=True, help="The documented recipe to start from (see `harness list`).")
@click.option("--dir", "folder", type=click.Path(file_okay=False), default=".", show_default=True, help="Where to write the two files.")
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
@friendly
def new_cmd(name, like, folder, force):
    """Start a recipe of your own: NAME.toml (a documented recipe's protocol) and its network as
    plain PyTorch in a .py file beside it; `harness run NAME.toml` trains it at once."""
    from .recipes.catalogue import load_catalogue, select
    from .recipes.scaffold import write_new

    [exp] = select(load_catalogue(), [like])
    spec, code = write_new(name, exp, folder, force)
    click.echo(f"wrote {spec} and {code}; edit the network, then `harness run {spec}` and `harness report`")


# --------------------------------------------------------------------------- report


@main.command("report")
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
    from .report import build_report

    path = build_report(tracking_uri, experiment_name, out, csv_path, mlflow_ui_url, warn=lambda m: click.echo(f"warning: {m}", err=True),
                        data=data, log_to_mlflow=log_to_mlflow, say=click.echo, alpha=alpha, margin=margin)
    click.echo(f"report written to {path}")


# --------------------------------------------------------------------------- bench


@main.command("bench")
@click.option("--model", "models", multiple=True, help="Experiment id(s) to measure (default: tutorial-base and medium-vgg-bn).")
@click.option("--steps", type=click.IntRange(min=1), default=200, show_default=True, help="Timed steps per case (after warm-up).")
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
def bench_cmd(models, steps, data_dir, precision, no_suite, overhead_images, repeats, device):
    """Seed-style DataLoader loop vs the harness loop, side by side, plus tracking overhead."""
    from .training.environment import resolve_device

    where = resolve_device(device)
    if repeats is not None:
        from .bench.repeats import run_repeats_bench

        run_repeats_bench(list(models) or ["tutorial-base", "medium-three-conv"], repeats, steps, echo=click.echo, device=where)
        return
    from .bench.loops import run_bench

    run_bench(list(models) or ["tutorial-base", "medium-vgg-bn"], steps, data_dir, precision, not no_suite, overhead_images, echo=click.echo,
              device=where)


if __name__ == "__main__":  # pragma: no cover
    main()
