"""The main job's schedule, measured (issue 23; not a test: pytest does not collect it).

    python -m tests.measure_suite run OUT [run-all options]   # the main job into a fresh store in OUT
    python -m tests.measure_suite show OUT [--speedup S]      # what a measured OUT says

`run` trains `harness run-all` (its defaults: one job per core) into OUT/mlflow.db, with
/proc/stat sampled every 2 s into OUT/stat.log, and then shows it. Run it on an otherwise idle
machine: utilisation counts every process's busy time, not only the suite's.

`show` prints, for the suite in OUT:
- its wall time and the machine's core utilisation over it: busy core-seconds / (cores x wall),
  from /proc/stat, with the same per 5 minutes to show where cores idled;
- every run's time, threads per epoch and one-thread work (epochs trained on t threads count
  their time x the speed-up of t threads, measured inside the run when it trained on both);
- the ideal schedule for these runs on this machine, as the issue defines it: the larger of the
  longest run at its best thread count and the total one-thread work over the cores, and the
  ratio wall / ideal (target <= 1.10) beside utilisation (target >= 0.90);
- what 2, 8 and 32 cores should expect: the same scheduler (longest first, `--jobs` = cores,
  threads follow free cores) simulated on the measured works, with the speed-up of t threads
  extrapolated from the 2-thread one by Amdahl's law. An estimate, and labelled so.
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
    parallel: bool  # the recipe's policy takes every core (not a small batch-4/20 recipe)
    work1: float = 0.0  # one-thread seconds
    notes: list[str] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return self.end - self.start


def load_runs(out: Path) -> list[Run]:
    from mlflow.tracking import MlflowClient

    from harness.recipes.catalogue import load_catalogue
    from harness.recipes.network import build_model
    from harness.training.environment import SMALL_STEP_MACS, macs_per_image

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    catalogue = load_catalogue()
    runs = []
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        if r.info.status != "FINISHED":
            continue
        eid = r.data.tags["harness.experiment_id"]
        hist = {k: sorted(client.get_metric_history(r.info.run_id, k), key=lambda m: m.step) for k in ("epoch_time_s", "threads")}
        recipe = catalogue[eid]
        parallel = macs_per_image(build_model(recipe)) * recipe.train.batch_size >= SMALL_STEP_MACS
        runs.append(Run(eid, r.info.start_time / 1e3, r.info.end_time / 1e3, [m.value for m in hist["epoch_time_s"]],
                        [int(m.value) for m in hist["threads"]] or [1] * len(hist["epoch_time_s"]), parallel))
    return sorted(runs, key=lambda r: r.start)


def measured_speedup(runs: list[Run]) -> float | None:
    """Median one-thread epoch over median two-thread epoch, from runs that trained on both."""
    ratios = []
    for r in runs:
        one = [s for s, t in zip(r.epoch_s, r.threads) if t == 1]
        two = [s for s, t in zip(r.epoch_s, r.threads) if t == 2]
        if len(one) >= 2 and len(two) >= 2:
            ratios.append(statistics.median(one) / statistics.median(two))
    return statistics.median(ratios) if ratios else None


def amdahl(s2: float):
    """The speed-up of t threads from that of 2, by Amdahl's law (an extrapolation)."""
    p = min(1.0, max(0.0, 2 * (1 - 1 / s2)))
    return lambda t: 1 / ((1 - p) + p / t)


# ---- the ideal, and the scheduler simulated ----------------------------------------------------

def simulate(runs: list[Run], cores: int, speed) -> tuple[float, float]:
    """Wall and utilisation of `run-all` on `cores` (jobs = cores): runs start longest first and,
    once the queue is empty, split the free cores (instantly here: the real one waits an epoch)."""
    queue = sorted(runs, key=lambda r: -r.work1)
    jobs = min(cores, len(runs))
    running: dict[str, list] = {}
    t = busy = 0.0
    while queue or running:
        while queue and len(running) < jobs:
            r = queue.pop(0)
            running[r.id] = [r.work1, r.parallel]
        share = max(1, cores // (jobs if queue else len(running)))
        rates = {k: (speed(share) if par else 1.0, share if par else 1) for k, (_, par) in running.items()}
        dt = min(left / rates[k][0] for k, (left, _) in running.items())
        t += dt
        busy += dt * min(cores, sum(th for _, th in rates.values()))
        for k in list(running):
            running[k][0] -= dt * rates[k][0]
            if running[k][0] <= 1e-9:
                del running[k]
    return t, busy / (cores * t)


def show(out: Path, s2_given: float | None, echo=print) -> None:
    wall = dict(kv.split("=") for kv in (out / "wall.txt").read_text().split())
    t0, t1 = float(wall["start"]), float(wall["end"])
    runs = load_runs(out)
    rows = read_samples(out / "stat.log")
    cores = os.cpu_count()
    s2 = measured_speedup(runs)
    source = "measured in this suite's runs" if s2 else "given"
    s2 = s2 or s2_given
    speed = amdahl(s2) if s2 else None
    echo(f"suite: {len(runs)} finished runs, wall {t1 - t0:,.0f} s, exit {wall['rc']}")
    echo(f"  core utilisation over the suite: {utilisation(rows, t0, t1):.1%} (busy core-s / ({cores} cores x wall), /proc/stat)")
    steps = [t0 + 300 * i for i in range(int((t1 - t0) // 300) + 1)] + [t1]
    echo("  per 5 min: " + " ".join(f"{utilisation(rows, a, b):.0%}" for a, b in zip(steps, steps[1:]) if b - a > 30))
    echo(f"  2-thread speed-up of a parallel recipe: {s2:.2f}x ({source})" if s2 else "  2-thread speed-up: unknown (pass --speedup)")
    echo(f"{'run':26} {'start s':>8} {'wall s':>8} {'train s':>8} {'threads':>12} {'1-thread work s':>16}")
    for r in runs:
        trained = sum(r.epoch_s)
        work = sum(s * (speed(t) if speed and t > 1 else 1) for s, t in zip(r.epoch_s, r.threads))
        r.work1 = work + (r.wall - trained)
        th = "/".join(str(t) for t in sorted(set(r.threads)))
        echo(f"{r.id:26} {r.start - t0:8.0f} {r.wall:8.0f} {trained:8.0f} {th:>12} {r.work1:16.0f}")
    total = sum(r.work1 for r in runs)
    longest = max(runs, key=lambda r: r.work1)
    best = longest.work1 / (speed(cores) if speed and longest.parallel else 1)
    ideal = max(best, total / cores)
    echo(f"total one-thread work {total:,.0f} s; over {cores} cores {total / cores:,.0f} s; "
         f"longest run {longest.id} at its best ({cores if longest.parallel else 1} threads) {best:,.0f} s")
    echo(f"ideal schedule {ideal:,.0f} s; wall / ideal = {(t1 - t0) / ideal:.3f} (target <= 1.10)")
    if speed:
        for n in (2, 8, 32):
            w, u = simulate(runs, n, speed)
            echo(f"  estimate for {n:2d} cores (simulated scheduler, Amdahl from 2 threads; runs only, not start-up): "
                 f"{w:,.0f} s, utilisation {u:.0%}")


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


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.measure_suite", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["run", "show"])
    p.add_argument("out", type=Path)
    p.add_argument("--speedup", type=float, default=None, help="2-thread speed-up, when no run in OUT measured one")
    a, rest = p.parse_known_args(argv)
    if a.mode == "run":
        run(a.out, rest or ["--data-dir", str(SUBSET)])
    show(a.out, a.speedup)


if __name__ == "__main__":
    main(sys.argv[1:])
