"""The report's figures, as base64 PNG so the HTML stays one self-contained file."""

from __future__ import annotations

import base64
import math

import numpy as np
import pandas as pd

from .budget import held_out
from .rows import Row
from .stats import pareto_front

CLASS_PREFIX = "metrics.test_acc_"


def b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def charts(rows: list[Row], histories: dict[str, dict[str, list]], cms: dict[str, pd.DataFrame], classes: list[str]) -> dict[str, str]:
    import matplotlib.pyplot as plt
    import seaborn as sns

    from ..plots import confusion_figure, loss_curve_figure, png_bytes

    sns.set_theme(style="whitegrid", context="notebook")  # the report's look; run artifacts stay plain matplotlib
    out = {}
    names = [r.key for r in rows]
    palette = sns.color_palette("tab20", len(rows))

    # measured vs published
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.5))
    y = np.arange(len(rows))
    err = [[r.stats["mean"] - r.stats["ci95"][0] if r.stats["ci95"] else 0 for r in rows],
           [r.stats["ci95"][1] - r.stats["mean"] if r.stats["ci95"] else 0 for r in rows]]
    ax.barh(y - 0.2, [r.stats["mean"] for r in rows], 0.4, xerr=err, label="measured (mean, 95% t-interval over seeds)", color="#4C72B0", capsize=3)
    ax.barh(y + 0.2, [r.stats["published_mean"] or 0 for r in rows], 0.4, label="published (mean of repeats)", color="#DD8452")
    for i, r in enumerate(rows):
        for p in r.published:
            ax.plot(p, i + 0.2, "k|", ms=9)
    ax.set_yticks(y, [f"{n} (n={r.stats['n']})" for n, r in zip(names, rows)])
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy (%)")
    ax.legend(loc="lower right", fontsize=8)
    out["accuracy"] = b64(png_bytes(fig))

    # train time
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.5))
    ax.barh(y, [r.stats["train_time"] for r in rows], color=palette)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("train time (s, log scale; training only, excluding evaluation)")
    out["time"] = b64(png_bytes(fig))

    # accuracy vs time with the Pareto front
    pts = [(r.key, r.stats["train_time"], r.stats["mean"]) for r in rows]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for (name, t, a), r, col in zip(pts, rows, palette):
        ax.errorbar(t, a, yerr=r.stats["std"] or 0, fmt="o", color=col, ms=8 if name in front else 5, capsize=3)
        ax.annotate(name, (t, a), xytext=(4, 4), textcoords="offset points", fontsize=7, weight="bold" if name in front else "normal")
    fr = sorted((t, a) for n, t, a in pts if n in front)
    if fr:
        ax.step([t for t, _ in fr], [a for _, a in fr], where="post", color="crimson", lw=1.2, label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("train time (s, log)")
    ax.set_ylabel("test accuracy (%)")
    out["pareto"] = b64(png_bytes(fig))

    # per-class heatmap
    cols = [f"{CLASS_PREFIX}{c}" for c in classes]
    mat = pd.DataFrame([[r.runs[c].mean() if c in r.runs else np.nan for c in cols] for r in rows], index=names, columns=classes)
    fig, ax = plt.subplots(figsize=(10, 0.4 * len(rows) + 1.8))
    sns.heatmap(mat, annot=True, fmt=".0f", cmap="viridis", vmin=0, vmax=100, ax=ax, cbar_kws={"label": "test accuracy (%)"}, annot_kws={"size": 7})
    ax.set_xlabel("")
    out["per_class"] = b64(png_bytes(fig))

    # loss curves, small multiples
    n = len(rows)
    ncol = 4
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 2.8 * nrow), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        h = histories.get(r.runs["run_id"].iloc[0], {})
        tr, va = h.get("train_loss", []), h.get("val_loss", [])
        val_on = str(r.runs.get("params.data.val_on", pd.Series(["validation"])).iloc[0])
        loss_curve_figure([s + 1 for s, _ in tr], [v for _, v in tr], [v for _, v in va], r.key, "test" if val_on == "test" else "validation", ax=ax)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    out["loss"] = b64(png_bytes(fig))

    # confusion matrices, small multiples
    have = [r for r in rows if r.runs["run_id"].iloc[0] in cms]
    if have:
        nrow = math.ceil(len(have) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.9 * nrow), squeeze=False)
        for ax, r in zip(axes.flat, have):
            cm = cms[r.runs["run_id"].iloc[0]]
            short = [c[:5] for c in cm.columns]
            confusion_figure(cm.to_numpy(), short, r.key, ax=ax)
        for ax in list(axes.flat)[len(have):]:
            ax.axis("off")
        out["confusion"] = b64(png_bytes(fig))
    return out


def time_to_accuracy_chart(rows: list[Row], curves: dict[str, tuple[np.ndarray, np.ndarray]], budgets_min) -> str:
    """Validation accuracy (the test set where the write-up validates on it) against cumulative
    training time, one line per experiment (seeds averaged per epoch), budgets marked; a line
    scored on a validation split is dashed and says so (not comparable with the test set's)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from ..plots import png_bytes

    fig, ax = plt.subplots(figsize=(10, 6))
    palette = sns.color_palette("tab20", len(rows))
    for r, col in zip(rows, palette):
        t, a = curves.get(r.key, (np.array([]), np.array([])))
        if len(t):  # solid: scored on the test set; dashed: on the recipe's own validation split
            split = held_out(r)
            ax.plot(t, a, "--o" if split else "-o", color=col, ms=3, lw=1.4, label=f"{r.key} ({'validation split' if split else 'test set'})")
    for m in budgets_min:
        ax.axvline(60 * m, color="#999", ls="--", lw=0.8)
        ax.text(60 * m, 0.98, f" {m} min", transform=ax.get_xaxis_transform(), fontsize=8, color="#555", va="top", ha="left")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative training time (s, log scale; training only, on the measured device)")
    ax.set_ylabel("accuracy on the images each recipe validates on (%)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    return b64(png_bytes(fig))
