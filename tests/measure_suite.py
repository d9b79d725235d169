"""The main job's schedule, measured (issues 23, 27; not a test: pytest does not collect it).

    python -m tests.measure_suite run OUT [run-all options]   # the main job into a fresh store in OUT
    python -m tests.measure_suite show OUT [--speedup S]      # what a measured OUT says
    python -m tests.measure_suite estimate [--speedup S]      # the scheduler simulated on #23's measured works
    python -m tests.measure_suite compare OUT OTHER           # every metric of every run, bit for bit

`run` trains `harness run-all` (its defaults: one job per core) into OUT/mlflow.db, with
/proc/stat sampled every 2 s into OUT/stat.log, and then shows it. Run it on an otherwise idle
machine: utilisation counts every process's busy time, not only the suite's.

`show` prints, for the suite in OUT:
- its wall time and the machine's core utilisation over it: busy core-seconds / (cores x wall),
  from /proc/stat, with the same per 5 minutes to show where cores idled;
- every run's time, threads per epoch and one-thread work (epochs trained on t threads count
  their time x the speed-up of t threads, measured inside the run when it trained on both);
- the ideal schedule for these runs on this machine, as issue 23 defines it: the larger of the
  longest run at its best thread count and the total one-thread work over the cores, and the
  ratio wall / ideal (target <= 1.10) beside utilisation (target >= 0.90);
- the same for the ideal at the runs' own thread counts (fixed per recipe since issue 27: a run of
  T threads holds T cores): the larger of the longest run and the core-seconds over the cores;
- what 2, 8 and 32 cores should expect: the pool's scheduler (executors/schedule.plan: longest
  first, each run on its recipe's threads for that many cores, packed without oversubscribing)
  simulated on the measured works, with the speed-up of t threads extrapolated from the 2-thread
  one by Amdahl's law. An estimate, and labelled so.

`compare` checks issue 27's "the same numbers whatever the schedule" on two measured suites (say
one on an idle machine and one beside a busy process, or with other --jobs): for every recipe and
seed, every recorded value of every metric that is not a time or a system reading must be equal,
bit for bit (float equality, step by step); it prints each difference and exits 1 on any.

`estimate` does the last on the one-thread works of #23's idle measurement (2,378 s): cs598 and
medium-vgg-bn and skl-cnn as measured, the other runs' 461 s shared by their expected work plus a
fixed cost each (reconstructed: #23 kept the totals, not every run). An estimate, and labelled so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_S = 2.0
SUBSET = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-subset").resolve()  # the README's --data-dir
EXPERIMENT = "cifar10-harness"


# ---- the machine's busy time, from /proc/stat -------------------------------------------------

def cpu_line() -> str:
    with open("/proc/stat") as f:
        return f.readline().strip()


def sample_cpu(path: Path, stop: threading.Event) -> None:
    """Append `unix-time cpu user nice system idle iowait irq softirq steal ...` every SAMPLE_S."""
    with open(path, "a") as out:
        while True:
            out.write(f"{time.time():.3f} {cpu_line()}\n")
            out.flush()
            if stop.wait(SAMPLE_S):
                out.write(f"{time.time():.3f} {cpu_line()}\n")
                return


def read_samples(path: Path) -> list[tuple[float, int, int]]:
    """(time, busy jiffies, all jiffies) per sample; idle and iowait are not busy, steal is."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        t, ticks = float(parts[0]), [int(x) for x in parts[2:10]]
        idle = ticks[3] + ticks[4]
        rows.append((t, sum(ticks) - idle, sum(ticks)))
    return rows


def utilisation(rows, t0: float, t1: float) -> float:
    inside = [r for r in rows if t0 - SAMPLE_S <= r[0] <= t1 + SAMPLE_S]
    a, b = inside[0], inside[-1]
    return (b[1] - a[1]) / max(1, b[2] - a[2])


# ---- the runs, from the store ------------------------------------------------------------------

@dataclass
class Run:
    id: str
    start: float
    end: float
    epoch_s: list[float]
    threads: list[int]
    step_macs: float  # the recipe's multiply-accumulates per training step (what its thread count follows)
    train1: float = 0.0  # one-thread seconds of training
    fixed: float = 0.0  # seconds outside training (start-up, final evaluation, artifacts): not faster on more threads
    notes: list[str] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return self.end - self.start

    @property
    def work1(self) -> float:
        return self.train1 + self.fixed


def step_macs(recipe) -> float:
    from harness.recipes.network import build_model
    from harness.training.environment import macs_per_image

    return macs_per_image(build_model(recipe)) * recipe.train.batch_size


def load_runs(out: Path) -> list[Run]:
    from mlflow.tracking import MlflowClient

    from harness.recipes.catalogue import load_catalogue

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    catalogue = load_catalogue()
    runs = []
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        if r.info.status != "FINISHED":
            continue
        eid = r.data.tags["harness.experiment_id"]
        hist = {k: sorted(client.get_metric_history(r.info.run_id, k), key=lambda m: m.step) for k in ("epoch_time_s", "threads")}
        threads = [int(m.value) for m in hist["threads"]] or [int(r.data.params.get("threads", 1))] * len(hist["epoch_time_s"])
        runs.append(Run(eid, r.info.start_time / 1e3, r.info.end_time / 1e3, [m.value for m in hist["epoch_time_s"]], threads,
                        step_macs(catalogue[eid])))
    return sorted(runs, key=lambda r: r.start)


def measured_speedup(runs: list[Run]) -> float | None:
    """Median one-thread epoch over median two-thread epoch, from runs that trained on both
    (issue 23's runs did; since issue 27 a run's threads are fixed, so none does)."""
    ratios = []
    for r in runs:
        one = [s for s, t in zip(r.epoch_s, r.threads) if t == 1]
        two = [s for s, t in zip(r.epoch_s, r.threads) if t == 2]
        if len(one) >= 2 and len(two) >= 2:
            ratios.append(statistics.median(one) / statistics.median(two))
    return statistics.median(ratios) if ratios else None


S2_MEASURED = 1.78  # the VGG's 2-thread speed-up, measured in #23 (cs598's own epochs; `harness bench` 111 -> 191 img/s)


def amdahl(s2: float):
    """The speed-up of t threads from that of 2, by Amdahl's law (an extrapolation)."""
    p = min(1.0, max(0.0, 2 * (1 - 1 / s2)))
    return lambda t: 1 / ((1 - p) + p / t)


# ---- the ideal, and the scheduler simulated ----------------------------------------------------

def threads_at(run: Run, cores: int) -> int:
    """The threads the run's recipe takes on a machine of `cores` (environment.choose_threads's rule)."""
    from harness.training.environment import threads_for

    return threads_for(run.step_macs, "cpu", cores)


def ideals(runs: list[Run], cores: int, speed) -> tuple[float, float]:
    """(issue 23's ideal: the longest run at its best thread count or the one-thread work over the
    cores, whichever is larger; the ideal at the runs' own thread counts: the longest run or the
    core-seconds they hold over the cores)."""
    best = max(r.train1 / (speed(cores) if r.step_macs >= SMALL else 1) + r.fixed for r in runs)
    ideal23 = max(best, sum(r.work1 for r in runs) / cores)
    held = [(r.train1 / speed(threads_at(r, cores)) + r.fixed, threads_at(r, cores)) for r in runs]
    return ideal23, max(max(d for d, _ in held), sum(d * t for d, t in held) / cores)


def simulate(runs: list[Run], cores: int, speed) -> tuple[float, float]:
    """Wall and utilisation of `run-all` on `cores` (jobs = cores): the pool's own rule
    (schedule.plan) on the runs' durations at their recipes' threads there."""
    from harness.executors.schedule import plan, width

    order = sorted(runs, key=lambda r: -r.work1)
    threads = [threads_at(r, cores) for r in order]
    durations = [r.train1 / speed(t) + r.fixed for r, t in zip(order, threads)]
    placed = plan(durations, [width(t, cores) for t in threads], cores)
    wall = max(p.end for p in placed)
    return wall, sum(p.cores * (p.end - p.start) for p in placed) / (cores * wall)


SMALL = 100e6  # environment.SMALL_STEP_MACS (kept here so `estimate` reads without torch's start-up first)


def estimates(runs: list[Run], speed, echo=print) -> None:
    for n in (2, 8, 32):
        w, u = simulate(runs, n, speed)
        i23, held = ideals(runs, n, speed)
        echo(f"  estimate for {n:2d} cores (simulated scheduler, Amdahl from 2 threads; runs only, not start-up): "
             f"{w:,.0f} s, utilisation {u:.0%}; wall / ideal (#23) = {w / i23:.3f} ({i23:,.0f} s), "
             f"wall / ideal at the runs' threads = {w / held:.3f} ({held:,.0f} s)")


def show(out: Path, s2_given: float | None, echo=print) -> None:
    wall = dict(kv.split("=") for kv in (out / "wall.txt").read_text().split())
    t0, t1 = float(wall["start"]), float(wall["end"])
    runs = load_runs(out)
    rows = read_samples(out / "stat.log")
    cores = os.cpu_count()
    s2 = measured_speedup(runs)
    source = "measured in this suite's runs" if s2 else ("given" if s2_given else "assumed: measured in #23")
    s2 = s2 or s2_given or S2_MEASURED
    speed = amdahl(s2)
    echo(f"suite: {len(runs)} finished runs, wall {t1 - t0:,.0f} s, exit {wall['rc']}")
    echo(f"  core utilisation over the suite: {utilisation(rows, t0, t1):.1%} (busy core-s / ({cores} cores x wall), /proc/stat)")
    steps = [t0 + 300 * i for i in range(int((t1 - t0) // 300) + 1)] + [t1]
    echo("  per 5 min: " + " ".join(f"{utilisation(rows, a, b):.0%}" for a, b in zip(steps, steps[1:]) if b - a > 30))
    echo(f"  2-thread speed-up of a parallel recipe: {s2:.2f}x ({source})")
    echo(f"{'run':26} {'start s':>8} {'wall s':>8} {'train s':>8} {'threads':>12} {'1-thread work s':>16}")
    for r in runs:
        trained = sum(r.epoch_s)
        r.train1 = sum(s * (speed(t) if t > 1 else 1) for s, t in zip(r.epoch_s, r.threads))
        r.fixed = r.wall - trained
        th = "/".join(str(t) for t in sorted(set(r.threads)))
        echo(f"{r.id:26} {r.start - t0:8.0f} {r.wall:8.0f} {trained:8.0f} {th:>12} {r.work1:16.0f}")
    total = sum(r.work1 for r in runs)
    i23, held = ideals(runs, cores, speed)
    echo(f"total one-thread work {total:,.0f} s; over {cores} cores {total / cores:,.0f} s")
    echo(f"ideal schedule (#23: best threads, one-thread work over the cores) {i23:,.0f} s; wall / ideal = {(t1 - t0) / i23:.3f} (target <= 1.10)")
    echo(f"ideal at the runs' own thread counts (a run of T threads holds T cores) {held:,.0f} s; wall / that = {(t1 - t0) / held:.3f}")
    estimates(runs, speed, echo)


# #23's idle measurement (2,378 s, 2 cores): one-thread seconds per run. cs598-vgg-bn-aug (1,546 s on
# 2 threads x 1.78), medium-vgg-bn and skl-cnn as measured; the other 11 runs' 461 s in all
# shared as 20 s each outside training plus their expected work (schedule.expected_work).
MEASURED_23 = {"cs598-vgg-bn-aug": 2752.0, "medium-vgg-bn": 1109.0, "skl-cnn": 229.0}
REST_23 = 461.0
FIXED_S = 20.0


def reconstructed_runs() -> list[Run]:
    from harness.executors.schedule import expected_work
    from harness.recipes.catalogue import load_catalogue
    from harness.runs.job import RunOptions

    catalogue = load_catalogue()
    work = {i: expected_work(e, 5170, RunOptions()) for i, e in catalogue.items()}
    rest = [i for i in catalogue if i not in MEASURED_23]
    rate = sum(work[i] for i in rest) / (REST_23 - FIXED_S * len(rest))  # multiply-accumulates per one-thread second
    runs = []
    for i, e in catalogue.items():
        r = Run(i, 0.0, 0.0, [], [], step_macs(e))
        r.fixed = FIXED_S
        r.train1 = MEASURED_23[i] - FIXED_S if i in MEASURED_23 else work[i] / rate
        runs.append(r)
    return runs


def estimate(s2: float | None, echo=print) -> None:
    runs = reconstructed_runs()
    s2 = s2 or S2_MEASURED
    echo(f"one-thread work of #23's idle run (reconstructed; see MEASURED_23), 2-thread speed-up {s2:.2f}x, Amdahl beyond:")
    for r in sorted(runs, key=lambda r: -r.work1):
        echo(f"  {r.id:26} {r.work1:8.0f} s   threads on 2 / 8 / 32 cores: {threads_at(r, 2)} / {threads_at(r, 8)} / {threads_at(r, 32)}")
    estimates(runs, amdahl(s2), echo)


def run(out: Path, args: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=False)
    stop = threading.Event()
    sampler = threading.Thread(target=sample_cpu, args=(out / "stat.log", stop))
    sampler.start()
    t0 = time.time()
    with open(out / "run.log", "w") as log:
        rc = subprocess.call([sys.executable, "-m", "harness.cli", "run-all", *args], cwd=out, stdout=log, stderr=subprocess.STDOUT)
    t1 = time.time()
    stop.set()
    sampler.join()
    (out / "wall.txt").write_text(f"rc={rc} start={t0} end={t1} wall={t1 - t0}\n")


TIMING = ("_time", "_s", "img_per_s", "system/", "threads")  # what a schedule may change: times, rates, readings


def run_metrics(out: Path) -> dict[tuple[str, str], dict[str, list[tuple[int, float]]]]:
    """(recipe, seed) -> metric -> [(step, value)], for the finished runs of OUT's store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    got = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        if r.info.status != "FINISHED":
            continue
        names = [k for k in r.data.metrics if not any(t in k for t in TIMING)]
        key = (r.data.tags["harness.experiment_id"], r.data.params.get("seed", "?"))
        got[key] = {k: sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)) for k in names}
    return got


def compare(a: Path, b: Path, echo=print) -> int:
    ra, rb = run_metrics(a), run_metrics(b)
    bad = 0
    for key in sorted(set(ra) | set(rb)):
        if key not in ra or key not in rb:
            echo(f"{key[0]} seed {key[1]}: finished only in {a if key in ra else b}")
            bad += 1
            continue
        ma, mb = ra[key], rb[key]
        diff = [k for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k)]
        points = sum(len(v) for v in ma.values())
        echo(f"{key[0]:26} seed {key[1]}: {len(ma)} metrics, {points} values: " + ("identical" if not diff else f"DIFFER in {', '.join(diff)}"))
        for k in diff[:5]:
            first = next(((s, x, y) for (s, x), (_, y) in zip(ma.get(k, []), mb.get(k, [])) if x != y), None)
            echo(f"    {k}: first difference at step {first[0]}: {first[1]!r} vs {first[2]!r}" if first else f"    {k}: different steps")
        bad += bool(diff)
    echo(f"{len(set(ra) & set(rb))} runs in both; {'all identical' if not bad else f'{bad} differ'}")
    return 1 if bad else 0


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.measure_suite", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["run", "show", "estimate", "compare"])
    p.add_argument("out", type=Path, nargs="?")
    p.add_argument("other", type=Path, nargs="?", help="compare: the second suite's OUT")
    p.add_argument("--speedup", type=float, default=None, help=f"2-thread speed-up, when no run in OUT measured one (default {S2_MEASURED})")
    a, rest = p.parse_known_args(argv)
    if a.mode == "estimate":
        return estimate(a.speedup)
    if a.out is None:
        p.error(f"{a.mode} needs OUT")
    if a.mode == "compare":
        if a.other is None:
            p.error("compare needs OUT and OTHER")
        sys.exit(compare(a.out, a.other))
    if a.mode == "run":
        run(a.out, rest or ["--data-dir", str(SUBSET)])
    show(a.out, a.speedup)


if __name__ == "__main__":
    main(sys.argv[1:])
