"""`harness run` and `harness run-all`: the experiments chosen, the options checked before anything is
written, then the runs handed to the executor the options name (local, --jobs pool, Ray, or the
--repeats auto loop over any of them), and one line for what did not finish."""

from __future__ import annotations

import fnmatch
import time

import click

from ..errors import UsageError
from .common import MAX_SEED, fail, flushes_denormals, friendly
from .options import AUTO_FLAGS, run_options


def _execute(experiments, data_dir, tracking_uri, experiment_name, device, seed, repeats, epochs, max_train_images, precision, force, no_progress,
             no_system_metrics, threads, together, jobs, executor, ray_address, cpus_per_run, gpus_per_run, max_repeats=None, budget=None,
             alpha=None, margin=None):
    from ..data.loader import load_cifar10, resolve_data_dir
    from ..training.environment import resolve_device
    from ..runs.job import RunOptions, new_invocation
    from ..executors.schedule import longest_first
    from ..executors.signals import sigterm_is_ctrl_c
    from ..tracking import Tracker

    started = time.monotonic()  # --budget: the command's wall time counts from here
    sigterm_is_ctrl_c()  # Slurm, Kubernetes and `timeout` stop a job with SIGTERM: a run ends resumable

    auto, repeats = _auto_options(len(experiments), repeats, force, max_repeats, budget, alpha, margin)
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
    outcomes = _train(experiments, data, tracker, opts, auto, jobs, ray_opts, started)
    _say_outcomes(outcomes, tracker)


def _auto_options(n_experiments, repeats, force, max_repeats, budget, alpha, margin):
    """(AutoOptions or None, the most seeds a recipe may get): --repeats auto's flags checked, and
    refused without it."""
    auto_given = [f"--{k.replace('_', '-')}" for k, v in zip(AUTO_FLAGS, (max_repeats, budget, alpha, margin)) if v is not None]
    if repeats != "auto":
        if auto_given:
            raise UsageError(f"{', '.join(auto_given)} only apply with --repeats auto")
        return None, repeats
    from ..auto.budget import parse_budget
    from ..auto.loop import AutoOptions

    auto = AutoOptions(max_repeats=max_repeats or 10, budget_s=parse_budget(budget), alpha=0.05 if alpha is None else alpha,
                       margin=0.5 if margin is None else margin)
    if force:
        raise UsageError("--force retrains seeds; --repeats auto decides from the seeds the store holds (drop --force)")
    auto.check(n_experiments)
    return auto, auto.max_repeats


def _train(experiments, data, tracker, opts, auto, jobs, ray_opts, started):
    """The runs, handed to the executor the options name; their outcomes."""
    if auto is not None:
        from ..auto.wiring import run_auto_command

        return run_auto_command(experiments, data, tracker, opts, auto, jobs, ray_opts, echo=click.echo, started=started)
    if ray_opts is not None:
        from ..executors.ray import run_many_ray

        return run_many_ray(experiments, data, tracker, opts, ray_opts, echo=click.echo)
    if jobs > 1:
        from ..executors.pool import run_pool

        return run_pool(experiments, data, tracker, opts, jobs, echo=click.echo)
    from ..executors.local import run_many

    return run_many(experiments, data, tracker, opts, echo=click.echo)


def _say_outcomes(outcomes, tracker):
    """The summary table, where to look at the runs, and one failing line for what did not finish."""
    from ..executors.local import summary_table

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
        fail("; ".join(([f"{len(failed)} run(s) failed: {', '.join(o.experiment_id for o in failed)}"] if failed else [])
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
    from ..training.environment import all_cores

    return max(1, min(all_cores(), runs))


def _ray_options(executor, address, cpus, gpus):
    """RayOptions for --executor ray (Ray itself checked now, before anything is written), else None."""
    if executor != "ray":
        given = [name for name, v in (("--ray-address", address), ("--cpus-per-run", cpus), ("--gpus-per-run", gpus)) if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} only apply with --executor ray")
        return None
    from ..executors.ray import RayOptions, require_ray

    require_ray()
    return RayOptions(address=address, cpus_per_run=1.0 if cpus is None else cpus, gpus_per_run=gpus or 0.0)


@click.command("run")
@click.argument("ids", nargs=-1, required=True)
@run_options
@friendly
@flushes_denormals
def run_cmd(ids, **kw):
    """Train the experiments IDS (see `harness list`) or the specs at these paths (a recipe of
    your own, e.g. ./my-net.toml), one MLflow run each."""
    from ..recipes.catalogue import load_catalogue, select_targets

    _execute(select_targets(load_catalogue(), ids), **kw)


@click.command("run-all")
@click.option("--only", multiple=True, help="Glob of ids to include (repeatable), e.g. 'fastai-*'.")
@click.option("--skip", multiple=True, help="Glob of ids to leave out (repeatable).")
@click.option("--experiments", "user_dir", type=click.Path(file_okay=False), default=None,
              help="A folder of your own recipes (*.toml) to train beside the documented ones.")
@run_options
@friendly
@flushes_denormals
def run_all_cmd(only, skip, user_dir, **kw):
    """Train every experiment in experiments/ (and --experiments DIR); finished ones are skipped, killed ones resumed."""
    from ..recipes.catalogue import load_catalogue, with_folder

    cat = load_catalogue()
    if user_dir is not None:
        cat = with_folder(cat, user_dir)
    chosen = [e for i, e in cat.items() if (not only or any(fnmatch.fnmatch(i, p) for p in only)) and not any(fnmatch.fnmatch(i, p) for p in skip)]
    if not chosen:
        raise UsageError(f"--only/--skip leave no experiment (known: {', '.join(cat)})")
    _execute(chosen, **kw)


# --------------------------------------------------------------------------- new
