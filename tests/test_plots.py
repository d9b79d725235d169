"""A run's confusion matrix is laid out from its class names and counts (plots.py's fixed
margins, not tight_layout): no label, count or colour-bar tick may fall off the picture."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from harness.plots import confusion_figure

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def texts(fig):
    for t in fig.findobj(lambda a: isinstance(a, plt.Text)):
        if t.get_visible() and t.get_text():
            yield t


@pytest.mark.parametrize("classes,top", [(CIFAR, 1000), (["a-rather-long-class-name", "b", "c"], 10_000), (["x", "y"], 0)],
                         ids=["cifar10", "long-name-large-counts", "empty"])
def test_every_text_of_a_confusion_matrix_lies_inside_the_picture(classes, top, tmp_path):
    n = len(classes)
    cm = np.random.default_rng(0).integers(0, top + 1, (n, n)) if top else np.zeros((n, n), int)
    fig = confusion_figure(cm, classes, "medium-three-conv-bn: test confusion matrix")
    fig.savefig(tmp_path / "cm.png", dpi=110)  # as save_png(tight=False) draws it
    box = fig.bbox
    for t in texts(fig):
        e = t.get_window_extent()
        assert e.x0 >= box.x0 and e.y0 >= box.y0 and e.x1 <= box.x1 and e.y1 <= box.y1, (t.get_text(), e, box)
    ax = fig.axes[0]
    for label in ax.get_yticklabels():  # the names do not run into the matrix
        assert label.get_window_extent().x1 <= ax.get_window_extent().x0 + 1, label.get_text()
    plt.close(fig)
