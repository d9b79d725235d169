"""`--repeats auto` on the command's executor: the rounds of loop.py handed to the local
executor (one process, or `--jobs N` worker processes) or to Ray, and the command's summary."""

from __future__ import annotations

import time
from dataclasses import replace

from ..data.cifar_files import Cifar10
from ..recipes.spec import Experiment
from ..runs.job import Outcome, RunOptions
from ..tracking import Tracker
from .budget import fmt_duration
from .loop import AutoOptions, run_auto, seeds_per_recipe
from .state import loop_tags


def _contiguous(seeds: list[int]) -> list[tuple[int, int]]:
    """[3, 4, 7] -> [(3, 2), (7, 1)]: (first seed, how many) runs of consecutive seeds."""
    out: list[tuple[int, int]] = []
    for s in sorted(seeds):
        if out and out[-1][0] + out[-1][1] == s:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((s, 1))
    return out


def executor_for(experiments: list[Experiment], data: Cifar10, tracker: Tracker, opts: RunOptions, jobs: int, ray_opts, echo):
    """(a function that trains a round's [(experiment, seed)], the workers a round should keep busy)."""
    if ray_opts is not None:
        from ..executors.ray import connect, require_ray, run_many_ray, code_env

        ray = require_ray()
        connect(ray, ray_opts.address, code_env(experiments))
        try:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1) // max(ray_opts.cpus_per_run, 0.01)))
        except Exception:  # a cluster that cannot say: one round's worth per recipe
            workers = 1
        return (lambda todo: run_many_ray(experiments, data, tracker, opts, ray_opts, echo=echo, todo=todo)), workers
    if jobs > 1:
        from ..executors.pool import run_pool

        return (lambda todo: run_pool(experiments, data, tracker, opts, jobs, echo=echo, todo=todo)), jobs
    from ..executors.local import run_many

    def one_process(todo: list[tuple[Experiment, int]]) -> list[Outcome]:
        out = []
        by_id = {e.id: e for e, _ in todo}
        for eid, exp in by_id.items():
            for first, n in _contiguous([s for e, s in todo if e.id == eid]):
                out += run_many([exp], data, tracker, replace(opts, seed=first, repeats=n), echo=echo)
        return out

    return one_process, 1


def local_device(opts: RunOptions) -> str:
    """The device name (harness.device) this machine's runs record: only seeds timed on it price
    the loop's next seeds. (Ray's workers may differ: there, ray_device.)"""
    from ..training.environment import device_name, resolve_device

    return device_name(resolve_device(opts.device))


def ray_device(ray_opts) -> str:
    """The kind of device a Ray task trains on, as far as the driver knows (budget.timed_here):
    a GPU where each run asks for one, else a CPU; which model, the cluster decides."""
    return "cuda" if ray_opts.gpus_per_run > 0 else "cpu"


def pool_shape(experiments: list[Experiment], opts: RunOptions) -> tuple[dict[str, int], int]:
    """What run_pool packs: each recipe's run width (the cores its threads hold) and the cores."""
    from ..executors.schedule import run_width
    from ..training.environment import all_cores

    cores = all_cores()
    per_run = replace(opts, bars=False)  # as run_pool sees it
    return {e.id: run_width(e, per_run, cores) for e in experiments}, cores


def run_auto_command(experiments: list[Experiment], data: Cifar10, tracker: Tracker, opts: RunOptions, auto: AutoOptions, jobs: int,
                     ray_opts, echo=print, started: float | None = None) -> list[Outcome]:
    """The loop on the chosen executor; prints the seeds and time each recipe used. `started`:
    when the command began (time.monotonic; the budget counts from there), else now."""
    started = time.monotonic() if started is None else started
    opts = replace(opts, loop_tags=loop_tags(auto.alpha, auto.margin))  # each run says a loop chose its seeds
    execute, workers = executor_for(experiments, data, tracker, opts, jobs, ray_opts, echo)
    widths, cores = pool_shape(experiments, opts) if ray_opts is None and jobs > 1 else (None, 0)
    result = run_auto(experiments, data, tracker, opts, replace(auto, workers=workers, widths=widths, cores=cores), execute, echo=echo,
                      start=started, device=ray_device(ray_opts) if ray_opts is not None else local_device(opts))
    echo("seeds and time per recipe: " + "; ".join(f"{i} {n} seed(s), {fmt_duration(t)}" for i, (n, t) in seeds_per_recipe(result).items()))
    for p in result.decisions.pairs:
        if p.verdict != "undecided" or (p.a in result.decisions.top and p.b in result.decisions.top):
            what = {"a_better": f"{p.a} better", "b_better": f"{p.b} better", "tied": f"tied within {auto.margin} points",
                    "undecided": f"undecided at alpha {auto.alpha}" + (f" (about {p.seeds_needed} more seed(s) a side)" if p.seeds_needed else "")}
            echo(f"  {p.a} vs {p.b}: {what[p.verdict]}; difference {p.diff:+.2f}, anytime-valid interval {p.lo:+.2f}..{p.hi:+.2f}, "
                 f"e-value {p.e_value:.3g}, n {p.n_a}/{p.n_b}")
    return result.outcomes
