"""The report's figures, as base64 PNG so the HTML stays one self-contained file.

Past a size a chart is drawn as several figures of GROUP rows each (a list of images), so 200
rows give readable bars and labels rather than one 20,000-pixel figure; lines and points are told
apart by labels and a palette that never repeats within a figure (at most PALETTE lines each).
Loss curves and confusion matrices are drawn for the first SMALL rows (the report says so; each
run's own are in MLflow).
Time-based charts take only the rows timed on one device (build.py chooses it)."""

from __future__ import annotations

import base64
import math

import numpy as np
import pandas as pd

from .budget import held_out
from .rows import Row

CLASS_PREFIX = "metrics.test_acc_"
GROUP = 40  # rows per bar chart or heatmap figure
SMALL = 12  # panels of the small multiples (loss curves, confusion matrices): the first SMALL rows; every run's are in MLflow
PALETTE = 10  # lines per time-to-accuracy figure: tab10 does not repeat
LABELLED = 25  # above this many points the Pareto chart names the front's points only


def b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def chunks(rows: list, size: int) -> list[list]:
    return [rows[i : i + size] for i in range(0, len(rows), size)] or [[]]


def charts(rows: list[Row], histories: dict[str, dict[str, list]], cms: dict[str, pd.DataFrame], classes: list[str],
           timed: list[Row] | None = None, front: set[str] | None = None) -> dict[str, list[str]]:
    """Each figure of the report, as a list of images. `timed`: the rows the time charts compare
    (compared rows on one device; default all), `front`: their Pareto front (as the tables give it)."""
    import seaborn as sns

    from .stats import pareto_front

    sns.set_theme(style="whitegrid", context="notebook")  # the report's look; run artifacts stay plain matplotlib
    timed = rows if timed is None else timed
    front = pareto_front([(r.key, r.stats["train_time"], r.stats["mean"]) for r in timed]) if front is None else front
    out = {"accuracy": [accuracy_chart(g) for g in chunks(rows, GROUP)],
           "time": [time_chart(g) for g in chunks(timed, GROUP)] if timed else [],
           "pareto": [pareto_chart(timed, front)] if timed else [],
           "per_class": [per_class_chart(g, classes) for g in chunks(rows, GROUP)],
           "loss": [loss_chart(rows[:SMALL], histories)]}
    have = [r for r in rows[:SMALL] if r.runs["run_id"].iloc[0] in cms]
    out["confusion"] = [confusion_chart(have, cms)] if have else []
    return out


def accuracy_chart(rows: list[Row]) -> str:
    import matplotlib.pyplot as plt

    from ..plots import png_bytes

    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.5))
    y = np.arange(len(rows))
    err = [[r.stats["mean"] - r.stats["ci95"][0] if r.stats["ci95"] else 0 for r in rows],
           [r.stats["ci95"][1] - r.stats["mean"] if r.stats["ci95"] else 0 for r in rows]]
    ax.barh(y - 0.2, [r.stats["mean"] for r in rows], 0.4, xerr=err, label="measured (mean, 95% t-interval over seeds)", color="#4C72B0", capsize=3)
    ax.barh(y + 0.2, [r.stats["published_mean"] or 0 for r in rows], 0.4, label="published (mean of repeats)", color="#DD8452")
    for i, r in enumerate(rows):
        for p in r.published:
            ax.plot(p, i + 0.2, "k|", ms=9)
    ax.set_yticks(y, [f"{r.key} (n={r.stats['n']})" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy (%)")
    ax.legend(loc="lower right", fontsize=8)
    return b64(png_bytes(fig))


def time_chart(rows: list[Row]) -> str:
    import matplotlib.pyplot as plt

    from ..plots import png_bytes

    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ax.barh(y, [r.stats["train_time"] for r in rows], color="#4C72B0")  # one colour: the axis names each bar
    ax.set_yticks(y, [r.key for r in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("train time (s, log scale; training only, excluding evaluation)")
    return b64(png_bytes(fig))


def pareto_chart(rows: list[Row], front: set[str]) -> str:
    """Accuracy against train time of `rows` (the compared rows on one device) and their front:
    front points red and named; others grey, named only while few enough to read."""
    import matplotlib.pyplot as plt

    from ..plots import png_bytes

    fig, ax = plt.subplots(figsize=(10, 6))
    for r in rows:
        on = r.key in front
        t, a = r.stats["train_time"], r.stats["mean"]
        ax.errorbar(t, a, yerr=r.stats["std"] or 0, fmt="o", color="crimson" if on else "#888", ms=7 if on else 4, capsize=3, alpha=1 if on else 0.6)
        if on or len(rows) <= LABELLED:
            ax.annotate(r.key, (t, a), xytext=(4, 4), textcoords="offset points", fontsize=7, weight="bold" if on else "normal")
    fr = sorted((r.stats["train_time"], r.stats["mean"]) for r in rows if r.key in front)
    if fr:
        ax.step([t for t, _ in fr], [a for _, a in fr], where="post", color="crimson", lw=1.2, label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("train time (s, log)")
    ax.set_ylabel("test accuracy (%)")
    return b64(png_bytes(fig))


def per_class_chart(rows: list[Row], classes: list[str]) -> str:
    import matplotlib.pyplot as plt
    import seaborn as sns

    from ..plots import png_bytes

    cols = [f"{CLASS_PREFIX}{c}" for c in classes]
    mat = pd.DataFrame([[r.runs[c].mean() if c in r.runs else np.nan for c in cols] for r in rows], index=[r.key for r in rows], columns=classes)
    fig, ax = plt.subplots(figsize=(10, 0.4 * len(rows) + 1.8))
    sns.heatmap(mat, annot=True, fmt=".0f", cmap="viridis", vmin=0, vmax=100, ax=ax, cbar_kws={"label": "test accuracy (%)"}, annot_kws={"size": 7})
    ax.set_xlabel("")
    return b64(png_bytes(fig))


def loss_chart(rows: list[Row], histories: dict[str, dict[str, list]]) -> str:
    import matplotlib.pyplot as plt

    from ..plots import loss_curve_figure, png_bytes

    ncol = 4
    fig, axes = plt.subplots(math.ceil(len(rows) / ncol) or 1, ncol, figsize=(4 * ncol, 2.8 * (math.ceil(len(rows) / ncol) or 1)), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        h = histories.get(r.runs["run_id"].iloc[0], {})
        tr, va = h.get("train_loss", []), h.get("val_loss", [])
        val_on = str(r.runs.get("params.data.val_on", pd.Series(["validation"])).iloc[0])
        loss_curve_figure([s + 1 for s, _ in tr], [v for _, v in tr], [v for _, v in va], r.key, "test" if val_on == "test" else "validation", ax=ax)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    return b64(png_bytes(fig))


def confusion_chart(rows: list[Row], cms: dict[str, pd.DataFrame]) -> str:
    import matplotlib.pyplot as plt

    from ..plots import confusion_figure, png_bytes

    ncol = 4
    nrow = math.ceil(len(rows) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.9 * nrow), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        cm = cms[r.runs["run_id"].iloc[0]]
        confusion_figure(cm.to_numpy(), [c[:5] for c in cm.columns], r.key, ax=ax)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    return b64(png_bytes(fig))


def time_to_accuracy_chart(rows: list[Row], curves: dict[str, tuple[np.ndarray, np.ndarray]], budgets_min, device: str = "") -> list[str]:
    """Validation accuracy (the test set where the write-up validates on it) against cumulative
    training time, one line per row (seeds averaged per epoch), budgets marked, PALETTE lines a
    figure; a line scored on a validation split is dashed and says so (not comparable with the test set's)."""
    drawn = [r for r in rows if len(curves.get(r.key, ((),))[0])]
    return [_time_to_accuracy(g, curves, budgets_min, device) for g in chunks(drawn, PALETTE)] if drawn else []


def _time_to_accuracy(rows: list[Row], curves: dict, budgets_min, device: str) -> str:
    import matplotlib.pyplot as plt
    import seaborn as sns

    from ..plots import png_bytes

    fig, ax = plt.subplots(figsize=(10, 6))
    for r, col in zip(rows, sns.color_palette("tab10", len(rows))):
        t, a = curves[r.key]
        split = held_out(r)  # solid: scored on the test set; dashed: on the recipe's own validation split
        ax.plot(t, a, "--o" if split else "-o", color=col, ms=3, lw=1.4, label=f"{r.key} ({'validation split' if split else 'test set'})")
    for m in budgets_min:
        ax.axvline(60 * m, color="#999", ls="--", lw=0.8)
        ax.text(60 * m, 0.98, f" {m} min", transform=ax.get_xaxis_transform(), fontsize=8, color="#555", va="top", ha="left")
    ax.set_xscale("log")
    ax.set_xlabel(f"cumulative training time (s, log scale; training only, on {device or 'the measured device'})")
    ax.set_ylabel("accuracy on the images each recipe validates on (%)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    return b64(png_bytes(fig))
