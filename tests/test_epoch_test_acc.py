"""The per-epoch test accuracy (test_acc_epoch) that the budget table scores an epoch chosen on the
validation split with (issue 27, item 3) is measured without touching training: eval mode, no RNG
drawn, BatchNorm's running statistics untouched. Training one recipe and seed with it and without
it gives bit-identical numbers, one-by-one and stacked."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from harness.cli import main

pytestmark = pytest.mark.slow
HISTORIES = ("train_loss", "train_acc", "val_loss", "val_acc")


def train(root, tmp, name, monkeypatch, *extra):
    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp / f"state-{name}"))
    store = f"sqlite:///{tmp}/{name}.db"
    r = CliRunner().invoke(main, ["run", "medium-three-conv", "--data-dir", str(root), "--tracking-uri", store, "--epochs", "2",
                                  "--max-train-images", "160", "--threads", "1", "--no-progress", *extra])
    assert r.exit_code == 0, r.output
    c = MlflowClient(store)
    runs = c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id], order_by=["params.seed"])
    out = []
    for run in sorted(runs, key=lambda x: int(x.data.params["seed"])):
        hist = {k: [m.value for m in sorted(c.get_metric_history(run.info.run_id, k), key=lambda m: m.step)] for k in (*HISTORIES, "test_acc_epoch")}
        out.append((run.data.metrics, hist))
    return out


@pytest.mark.parametrize("extra", [(), ("--repeats", "2", "--together", "always")], ids=["one-by-one", "stacked"])
def test_training_is_bit_identical_with_and_without_the_per_epoch_test_accuracy(synthetic_root, store, tmp_path, monkeypatch, extra):
    import harness.runs.group_run as group_run
    import harness.runs.one_run as one_run

    with_it = train(synthetic_root, tmp_path, "with", monkeypatch, *extra)
    monkeypatch.setattr(one_run, "epoch_test_acc", lambda *a, **k: {})
    monkeypatch.setattr(group_run, "epoch_test_acc", lambda *a, **k: {})
    without = train(synthetic_root, tmp_path, "without", monkeypatch, *extra)
    assert len(with_it) == len(without) == (2 if extra else 1)
    for (m1, h1), (m2, h2) in zip(with_it, without):
        assert len(h1["test_acc_epoch"]) == 2 and h2["test_acc_epoch"] == []  # recorded each epoch, only with it
        for k in HISTORIES:
            assert h1[k] == h2[k], k  # exactly equal, not approximately
        for k in ("test_acc", "test_loss", "test_acc_eval_mode", "test_loss_eval_mode"):
            assert m1[k] == m2[k], k
