"""The rounds of `--repeats auto`. Each round: read the store (state.py), decide every pair
(report/sequential.py), plan the next seeds for the recipes whose verdict is open (cheapest per
unit of evidence first, enough to keep every worker busy), keep those that fit the budget
(budget.py), hand them to the executor, say what changed. Stops when the question is answered,
the budget is spent, every open recipe is at its cap, a failed recipe leaves its pairs open, or a
round finishes nothing (after waiting, bounded, for seeds another driver holds), and says which."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..data.cifar_files import Cifar10
from ..errors import UsageError
from ..recipes.spec import Experiment
from ..report.sequential import ALPHA, MARGIN, MIN_SEEDS, Decisions, decide, next_seeds, se_floor
from ..runs.job import Outcome, RunOptions
from ..tracking import Tracker
from .budget import fit_round, fmt_duration, round_time, seed_costs, timed_here, wave
from .state import Seeds, read_state, record_stop, seed_hashes, with_aliases

WAVE_MIN_S = 60.0  # the shortest round worth a look under a budget
ANSWERED, BUDGET, CAP, NOTHING = "answered", "budget spent", "every open recipe at its cap", "no recipe can train"
STUCK, HELD, FAILED = "runs skipped", "runs held by another process", "a recipe failed"
POLL_S = 15.0  # how often the store is read again while another process trains this loop's seeds
WAIT_MAX_S = 3600.0  # the longest such wait without a seed finishing (also capped by the budget left)
HELD_BY = ("being trained by", "claimed first by", "taken over by")  # skip reasons of a run another live process holds

# hands the executor a round: [(experiment, seed)] -> their outcomes
Execute = Callable[[list[tuple[Experiment, int]]], list[Outcome]]


@dataclass
class AutoOptions:
    max_repeats: int = 10
    budget_s: float | None = None
    alpha: float = ALPHA
    margin: float = MARGIN
    workers: int = 1
    # the --jobs pool: recipe -> cores a run holds (schedule.run_width) and the cores it packs them
    # into, so a round's time is estimated on the pool's own schedule; None: independent slots
    widths: dict[str, int] | None = None
    cores: int = 0

    def check(self, n_recipes: int) -> None:
        if self.max_repeats < MIN_SEEDS:
            raise UsageError(f"--max-repeats {self.max_repeats}: a test over seeds needs at least {MIN_SEEDS} a recipe")
        if not 0 < self.alpha < 1:
            raise UsageError(f"--alpha {self.alpha}: must be between 0 and 1")
        if self.margin < 0:
            raise UsageError(f"--margin {self.margin}: must be 0 or more (accuracy points)")
        if n_recipes < 2:
            raise UsageError("--repeats auto compares recipes: give at least two (one recipe has nothing to be decided against)")


@dataclass
class AutoResult:
    reason: str
    decisions: Decisions
    seeds: dict[str, Seeds]
    rounds: int
    elapsed_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    detail: str = ""  # what stopped it, where the reason alone does not say (a skip's reason)


def _verdict_text(p) -> str:
    sign = {"a_better": ">", "b_better": "<", "tied": "tied with"}[p.verdict]
    return f"{p.a} {sign} {p.b} (e {p.e_value:.3g}, {p.lo:+.2f}..{p.hi:+.2f})"


def run_auto(experiments: list[Experiment], data: Cifar10, tracker: Tracker, opts: RunOptions, auto: AutoOptions, execute: Execute,
             echo=print, clock=time.monotonic, sleep=time.sleep, start: float | None = None, device: str | None = None) -> AutoResult:
    """Rounds until answered, out of budget, at the cap, or a round that finished nothing and
    cannot wait for another process (AutoResult.reason, .detail). `start`: when the command began
    on `clock` (the budget counts from there), else now. `device`: the device name the seeds
    train on (harness.device): only seeds timed there price the next ones (None: any)."""
    auto.check(len(experiments))
    start = clock() if start is None else start
    by_id = {e.id: e for e in experiments}
    seeds = range(opts.seed, opts.seed + auto.max_repeats)
    hashes = with_aliases(tracker, experiments, data, opts, {e.id: seed_hashes(e, data, opts, seeds) for e in experiments})
    train_images = len(data.train_x)
    floor = se_floor(len(getattr(data, "test_x", ())))  # accuracies move in steps of one test image
    failed: dict[str, str] = {}  # recipe -> why a seed of it failed in this command (a rerun repeats such faults)
    outcomes: list[Outcome] = []
    closed_before: dict[tuple[str, str], str] = {}
    rounds, overhead, detail = 0, 0.0, ""
    while True:
        state = read_state(tracker, experiments, hashes)
        # paired by seed; a failed recipe stays in the family (its pairs undecided, m fixed)
        d = decide({i: state[i].acc for i in by_id}, auto.alpha, auto.margin, floor)
        closed = {(p.a, p.b): p for p in d.pairs if p.verdict != "undecided"}
        newly = [p for k, p in closed.items() if closed_before.get(k) != p.verdict]
        closed_before = {k: p.verdict for k, p in closed.items()}
        used = clock() - start
        left = None if auto.budget_s is None else auto.budget_s - used
        n = {i: len(state[i].acc) for i in by_id}
        echo(_state_line(rounds, d, n, used, auto.budget_s, newly))
        if d.answered:
            reason = ANSWERED
            break
        walls = timed_here({i: state[i] for i in by_id}, device)
        cost = seed_costs(experiments, train_images, opts, walls)
        plan, reason, detail = _plan(d, n, failed, cost, auto)
        if not plan:
            break
        kept, eta = fit_round(plan, cost, auto.workers, None if left is None else left - overhead, auto.widths, auto.cores)
        if not kept:
            reason = BUDGET
            break
        fits = len(kept)
        if left is not None:  # under a budget, a round no longer than a quarter of what is left: costs recalibrated, budget checked again;
            # nothing timed yet on this store: one run a worker first, which calibrates the cost model
            kept, eta = wave(kept, cost, auto.workers, max(WAVE_MIN_S, left / 4) if any(walls.values()) else 0.0, auto.widths, auto.cores)
        todo = _seeds_for(kept, state, by_id, seeds)
        echo(_round_line(rounds, todo, kept, eta, fits, len(plan)))
        began = clock()  # the round's own wall time, for _overhead
        got = execute(todo)
        outcomes += got
        after = read_state(tracker, experiments, hashes)
        overhead = max(overhead, _overhead(clock() - began, todo, after, auto))
        for o in got:
            if o.status == "failed":
                failed.setdefault(o.experiment_id, o.reason)
                echo(f"{o.experiment_id}: a seed failed ({o.reason}); it gets no more seeds in this command")
        rounds += 1
        if _count(after) == _count(state) and not any(o.status == "failed" for o in got):
            reason, detail = _no_progress(got, tracker, experiments, hashes, state, auto, start, clock, sleep, echo)
            if reason:
                break
    result = AutoResult(reason, d, state, rounds, clock() - start, outcomes, detail)
    line = stop_line(result, auto)
    missed = record_stop(tracker, state, auto.alpha, auto.margin, line, {o.run_id for o in outcomes if o.status == "finished" and o.run_id})
    echo(line)
    if missed:
        echo(f"warning: the loop's alpha, margin and stop reason could not be recorded on {len(missed)} run(s) ({missed[0]}, ...)")
    return result


def _plan(d: Decisions, n: dict[str, int], failed: dict[str, str], cost: dict[str, float], auto: AutoOptions) -> tuple[list[str], str, str]:
    """(the next round's runs, "", "") or, when there are none, ([], why the loop stops, detail).
    A failed recipe gets no more seeds (as if at its cap), so it holds no other recipe back."""
    plan = next_seeds(replace(d, open_rows=_open_without(d, failed)), {i: auto.max_repeats if i in failed else k for i, k in n.items()},
                      cost, auto.max_repeats, auto.workers)
    if plan:
        return plan, "", ""
    stuck = [i for i in d.open_rows if i in failed]
    return [], FAILED if stuck else CAP if d.open_rows else NOTHING, "; ".join(f"recipe {i} failed: {failed[i]}" for i in stuck)


def _round_line(rounds: int, todo: list, kept: list[str], eta: float, fits: int, planned: int) -> str:
    return (f"round {rounds + 1}: training {len(todo)} run(s) (" + ", ".join(f"{i} +{kept.count(i)}" for i in dict.fromkeys(kept))
            + f"), about {fmt_duration(eta)} by the cost model"
            + (f"; {fits - len(kept)} more planned for later rounds (costs measured first)" if fits > len(kept) else "")
            + (f"; {planned - fits} planned run(s) left out: they would not finish within the budget" if fits < planned else ""))


def _open_without(d: Decisions, failed: dict[str, str]) -> list[str]:
    """The open rows a further seed can still help: those with an undecided top-group pair whose
    other row did not fail (a pair with a failed row stays undecided whatever its partner gets)."""
    live = {x for p in d.pairs if p.verdict == "undecided" and p.a in d.top and p.b in d.top and p.a not in failed and p.b not in failed
            for x in (p.a, p.b)}
    return [r for r in d.open_rows if r in live]


def _count(state: dict[str, Seeds]) -> int:
    return sum(len(s.acc) for s in state.values())


def _no_progress(got: list[Outcome], tracker, experiments, hashes, state, auto: AutoOptions, start: float, clock, sleep, echo) -> tuple[str, str]:
    """A round that finished no seed: its runs were skipped. Runs another live process holds
    (a second driver on the store): wait for one of them to finish, reading the store every
    POLL_S, at most WAIT_MAX_S and never past the budget; ("", "") when one did. Anything else
    (a run the executor counts as done but the loop cannot see) would be planned again forever:
    (STUCK, the skip's reason). Out of time waiting: (HELD, the holder)."""
    skipped = [o for o in got if o.status == "skipped"]
    held = [o for o in skipped if o.reason.startswith(HELD_BY)]
    if not held:  # a skip the loop cannot see past, or a run stopped resumable (rerun the command to resume it)
        o = (skipped or [o for o in got if o.status != "finished"] or [None])[0]
        return STUCK, f"{o.experiment_id} seed {o.seed} {o.status}: {o.reason}" if o else "the executor returned no finished run"
    limit = WAIT_MAX_S if auto.budget_s is None else min(WAIT_MAX_S, auto.budget_s - (clock() - start))
    echo(f"{len(held)} run(s) of this round are held by another process ({held[0].reason}); waiting for them, "
         f"reading the store every {fmt_duration(POLL_S)} for at most {fmt_duration(limit)}")
    waited, before = 0.0, _count(state)
    while waited + POLL_S <= limit:
        sleep(POLL_S)
        waited += POLL_S
        if _count(read_state(tracker, experiments, hashes)) > before:
            return "", ""
    return HELD, f"{held[0].experiment_id} seed {held[0].seed}: {held[0].reason}; no seed finished in {fmt_duration(waited)}"


def _state_line(rounds: int, d: Decisions, n: dict[str, int], used: float, budget_s: float | None, newly: list) -> str:
    """Where the loop stands: open recipes, seeds so far, time used and left, verdicts that closed."""
    return (f"{'start' if rounds == 0 else f'round {rounds} done'}: {len(d.open_rows)} open ({', '.join(d.open_rows) or 'none'}); seeds "
            + ", ".join(f"{i} {k}" for i, k in n.items()) + f" ({sum(n.values())} in all); time {fmt_duration(used)}"
            + ("" if budget_s is None else f" of {fmt_duration(budget_s)}, {fmt_duration(budget_s - used)} left")
            + (f"; closed: {'; '.join(_verdict_text(p) for p in newly)}" if newly else ""))


def _overhead(wall: float, todo: list[tuple[Experiment, int]], after: dict[str, Seeds], auto: AutoOptions) -> float:
    """What a round cost beyond its runs (worker processes started, the store read): its wall time
    less the schedule of its runs' own wall times as the store recorded them (learnt, and kept out
    of the budget in later rounds)."""
    walls = {f"{e.id}#{s}": after[e.id].wall.get(s) for e, s in todo}
    walls = {k: w for k, w in walls.items() if w is not None and w == w}
    widths = {f"{e.id}#{s}": auto.widths[e.id] for e, s in todo} if auto.widths else None
    return max(0.0, wall - round_time(list(walls), walls, auto.workers, widths, auto.cores)) if walls else 0.0


def _seeds_for(kept: list[str], state: dict[str, Seeds], by_id: dict[str, Experiment], seeds: range) -> list[tuple[Experiment, int]]:
    """Each planned run's seed: the recipe's lowest seeds in the loop's range not finished yet
    (a killed one is resumed by the executor's claim)."""
    free = {i: iter([s for s in seeds if s not in state[i].acc]) for i in dict.fromkeys(kept)}
    return [(by_id[i], next(free[i])) for i in kept]  # in the plan's order: cheapest evidence starts first


def stop_line(r: AutoResult, auto: AutoOptions) -> str:
    d = r.decisions
    why = {ANSWERED: "the question is answered", BUDGET: "the budget is spent (no open recipe's next seed fits in what is left)",
           CAP: f"every open recipe is at its cap (--max-repeats {auto.max_repeats})", NOTHING: "no recipe can train",
           STUCK: f"a round finished no seed ({r.detail})",
           HELD: f"another process holds the open recipes' next seeds ({r.detail})",
           FAILED: f"{r.detail}; its pairs stay undecided"}[r.reason]
    verdicts = sum(p.verdict != "undecided" for p in d.pairs)
    return (f"stopped after {r.rounds} round(s), {fmt_duration(r.elapsed_s)}{budget_end(r.elapsed_s, auto.budget_s)}: {why}. "
            f"Top group: {', '.join(d.top)}; "
            f"{verdicts} of {len(d.pairs)} pair(s) decided at alpha {auto.alpha} (anytime-valid, over {d.m} pairs)"
            + (f"; still open: {', '.join(d.open_rows)}" if d.open_rows else ""))


def budget_end(elapsed_s: float, budget_s: float | None) -> str:
    """How the command's wall time ended against --budget: " (1m05s under the 15m00s budget)",
    or over it (a run that took longer than the cost model said; the runs that would not fit by
    the model were not started)."""
    if budget_s is None:
        return ""
    d = budget_s - elapsed_s
    return f" ({fmt_duration(abs(d))} {'under' if d >= 0 else 'over'} the {fmt_duration(budget_s)} budget)"


def seeds_per_recipe(r: AutoResult) -> dict[str, tuple[int, float]]:
    """recipe -> (seeds, wall seconds they took), for the command's summary."""
    return {i: (len(s.acc), float(np.nansum(list(s.wall.values())))) for i, s in r.seeds.items()}
