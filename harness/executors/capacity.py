"""Whether a Ray cluster can take the runs: before they start (a request no node can meet is one
line at once) and while they train (nodes that could take them may all leave)."""

from __future__ import annotations

import time

from ..errors import UsageError


def infeasible(ray, cpus: float, gpus: float) -> str | None:
    """Why no node alive can take a run asking for `cpus` and `gpus` (None: one can), naming
    what the largest node offers."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return None
    best = max(nodes, key=lambda r: (r.get("GPU", 0) >= gpus, r.get("CPU", 0), r.get("GPU", 0)), default={})
    return (f"no node of the Ray cluster can take a run asking for {cpus:g} CPU(s) and {gpus:g} GPU(s): its largest node "
            f"offers {best.get('CPU', 0):g} CPU(s) and {best.get('GPU', 0):g} GPU(s) ({len(nodes)} node(s) alive)")


def check_feasible(ray, cpus: float, gpus: float) -> None:
    """A request no node of the cluster can meet would wait forever: one line at once instead."""
    why = infeasible(ray, cpus, gpus)
    if why:
        raise UsageError(f"{why}; lower --cpus-per-run / --gpus-per-run")


class CapacityWatch:
    """Mid-run, the nodes that could take the runs may all leave (a lost worker, a cluster shrunk):
    Ray would keep the tasks waiting, silently, forever. Checked every CHECK_S: the first time no
    node alive can take a run is said at once (a node that comes back resumes them); still so
    after the outage window ($HARNESS_OUTAGE_WINDOW_S), the driver stops as on Ctrl-C, its runs
    left resumable, rather than wait on a cluster that is not coming back."""

    CHECK_S = 10.0

    def __init__(self, ray, cpus: float, gpus: float, window_s: float, echo, clock=None):
        self.ray, self.cpus, self.gpus, self.window_s, self.echo = ray, cpus, gpus, window_s, echo
        self.clock = clock or time.monotonic
        self.checked, self.since = self.clock(), None

    def stranded(self) -> str | None:
        """None while the runs can be placed (or not yet for the window); else why the driver stops."""
        now = self.clock()
        if now - self.checked < self.CHECK_S:
            return None
        self.checked = now
        try:
            why = infeasible(self.ray, self.cpus, self.gpus)
        except Exception:  # the head itself unreachable for a moment: Ray's own retries cover it
            return None
        if why is None:
            if self.since is not None:
                self.echo("a node that can take the runs is back; they go on")
            self.since = None
            return None
        if self.since is None:
            self.since = now
            self.echo(f"{why}; the runs wait up to {self.window_s:g} s for one (HARNESS_OUTAGE_WINDOW_S), then stop resumable")
        if now - self.since >= self.window_s:
            return f"{why} for {now - self.since:.0f} s"
        return None
