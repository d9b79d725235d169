"""Figures shared by the run artifacts and the report (headless Agg backend), in plain
matplotlib: every run draws them, and importing seaborn cost each run process about 1 s."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.textpath import TextToPath  # noqa: E402


def confusion_figure(cm: np.ndarray, classes: list[str], title: str = "", ax=None):
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 5.4))
    im = ax.imshow(cm, cmap="Blues", aspect="auto")
    if own:
        ax.figure.colorbar(im, ax=ax)
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    if cm.shape[0] <= 10:  # the counts, dark on light cells and light on dark ones
        top = cm.max() or 1
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7, color="white" if v > 0.6 * top else "black",
                    in_layout=False)  # inside the matrix: tight_layout need not measure each count
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if own:
        _confusion_margins(ax.figure, classes, int(cm.max()))
    return ax.figure


def _text_width_in(text: str, size: float) -> float:
    return TextToPath().get_text_width_height_descent(text, FontProperties(size=size), ismath=False)[0] / 72


def _confusion_margins(fig, classes: list[str], top: int) -> None:
    """Margins from the longest class name (left and below) and the colour bar's largest count
    (right), as tight_layout would set them: tight_layout measures every text on the figure,
    the 100 counts too, and was a third of a small run's figures (0.07 of 0.23 CPU-s)."""
    w, h = fig.get_size_inches()
    label = max((_text_width_in(c, 7) for c in classes), default=0.0)
    bar = _text_width_in(f"{top}", 10)  # the colour bar's ticks, at matplotlib's default size
    fig.subplots_adjust(left=(label + 0.42) / w, bottom=(label + 0.42) / h, right=1 - (bar + 0.15) / w, top=1 - 0.3 / h)


def loss_curve_figure(epochs: list[int], train: list[float], val: list[float] | None, title: str = "", val_label: str = "validation", ax=None):
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.8))
    ax.grid(True, alpha=0.3)
    ax.plot(epochs, train, marker="o", ms=3, label="train")
    if val:
        ax.plot(epochs[: len(val)], val, marker="o", ms=3, label=val_label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax.figure


def save_png(fig, path, tight: bool = True) -> None:
    """`tight=False` for a figure laid out already (confusion_figure's own)."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
