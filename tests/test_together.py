"""Seeds trained together are the seeds trained one by one.

Tolerance: vmap turns each network's convolutions into one grouped convolution and its matmuls
into batched ones, whose kernels add the same products in another order; each op then differs
by a few float32 ulps (relative ~1e-7), which a few dozen SGD/Adam steps amplify to about 1e-6
on losses and weights here. We allow 1e-5 absolute (weights and losses are O(0.01-1)) and nothing
else: dropout masks, data order and augmentation must be bit-for-bit the sequential run's, or
the difference would be O(1) within a step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.recipes.catalogue import load_catalogue
from harness.models import apply_init, create_model
from harness.training.together import Stack, optimizer_state_of, stacked_optimizer_state, why_sequential
from harness.training.environment import choose_conv
from harness.training.loop import build_optimizer, loss_function

from .test_runner import cli

CATALOGUE = load_catalogue()
CPU = torch.device("cpu")
TOGETHER = [i for i, e in CATALOGUE.items() if why_sequential(e, create_model(e.model.name, **e.model.args), CPU) is None]
TOL = 1e-5


def build(exp, seed):
    torch.manual_seed(seed)
    model = apply_init(create_model(exp.model.name, **exp.model.args), exp.model.init)
    return model, torch.get_rng_state()


def sequential(exp, seed, xs, ys, lr):
    """One network alone, as one_run trains it: global generator seeded, dropout from it."""
    model, _ = build(exp, seed)
    model.train()
    opt = build_optimizer(model, exp.train.optimizer, lr)
    loss_fn, losses = loss_function(exp.train.loss), []
    for x, y in zip(xs, ys):
        loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, opt, torch.tensor(losses), torch.get_rng_state()


def test_the_recipes_that_train_together():
    # the overhead-bound recipes stack; the compute-bound ones and cs598's Adam quirk do not
    assert {"tutorial-base", "medium-three-conv", "skl-cnn", "fastai-simplenet"} <= set(TOGETHER)
    assert "medium-vgg-bn" not in TOGETHER and "cs598-vgg-bn-aug" not in TOGETHER


@pytest.mark.parametrize("exp_id", TOGETHER + [pytest.param("medium-vgg-bn", marks=pytest.mark.slow)])
def test_each_seed_matches_its_sequential_run(exp_id, monkeypatch):
    """Seeds 0..2 for 24 steps (4 for the VGG: BatchNorm + Dropout2d + Dropout, stacked here
    although the policy trains it one by one; a mask drawn from another network's generator or
    another network's BatchNorm statistics fail within those 4; 12 cost this test 3x the CPU),
    with each recipe's own optimizer and loss, on the convolutions a run of the recipe trains
    with (configure_backend sets them per run: a run trained earlier in this process may have
    left ATen's, on which the stacked grouped convolution differs from one by one by more than TOL)."""
    exp = CATALOGUE[exp_id]
    conv = choose_conv(create_model(exp.model.name, **exp.model.args), exp.train.batch_size, torch.device("cpu"))
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", conv != "aten")
    n, steps, batch = 3, 4 if exp_id == "medium-vgg-bn" else 24, min(exp.train.batch_size, 32)
    lr = exp.train.phases[0].lr
    g = torch.Generator().manual_seed(99)
    xs = torch.randn(steps, n, batch, 3, 32, 32, generator=g)
    ys = torch.randint(0, 10, (steps, n, batch), generator=g)
    alone = [sequential(exp, s, xs[:, s], ys[:, s], lr) for s in range(n)]
    built = [build(exp, s) for s in range(n)]
    stack = Stack([b[0] for b in built], [b[1] for b in built])
    opt = build_optimizer(stack.holder, exp.train.optimizer, lr)
    loss_fn, losses = loss_function(exp.train.loss), []
    for x, y in zip(xs, ys):
        step_losses, _ = stack.forward_loss(x, y, loss_fn)
        opt.zero_grad(set_to_none=True)
        step_losses.sum().backward()
        opt.step()
        losses.append(step_losses.detach())
    losses = torch.stack(losses).T
    for s, (model, seq_opt, seq_losses, rng) in enumerate(alone):
        assert torch.allclose(losses[s], seq_losses, atol=TOL, rtol=0), (s, (losses[s] - seq_losses).abs().max())
        mine = copy.deepcopy(model)
        stack.unstack_into(s, mine)
        for (k, a), b in zip(mine.state_dict().items(), model.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), atol=TOL, rtol=0), (s, k, (a.float() - b.float()).abs().max())
        # the network's generator is where the sequential run's global one is: same draws next
        assert torch.equal(stack.rng_state(s), rng)
        # its optimizer state, as its own optimizer's (another network's would be off by O(1)).
        # Momentum buffers are sums of gradients, each a sum of thousands of products that largely
        # cancel, and a ReLU whose input sits within an ulp of 0 may switch: measured up to 1.7%
        # of the largest entry (tutorial-c32's first conv) while weights still agree to 1e-5
        ours = optimizer_state_of(opt, s, n)["state"]
        for j, st in seq_opt.state_dict()["state"].items():
            for k, v in st.items():
                tol = 5e-2 * v.float().abs().max().item() + 1e-12
                assert torch.allclose(ours[j][k].float(), v.float(), atol=tol, rtol=0), (s, j, k, (ours[j][k] - v).abs().max(), tol)
    # and back: N networks' optimizer states stack into the group's
    again = stacked_optimizer_state([optimizer_state_of(opt, s, n) for s in range(n)])
    for j, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            assert torch.equal(again["state"][j][k], v)


def runs_by_seed(store):
    c = MlflowClient(store)
    out = {}
    for r in c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id]):
        steps = [m.value for m in sorted(c.get_metric_history(r.info.run_id, "train_loss_step"), key=lambda m: m.step)]
        out[(r.data.tags["harness.experiment_id"], r.data.tags["harness.seed"])] = (r, steps)
    return out


@pytest.mark.slow
def test_run_together_writes_the_runs_of_run_one_by_one(synthetic_root, tmp_path, monkeypatch, store):
    """End to end: the same command with --together always and never gives, per seed, an ordinary
    FINISHED run with the same step losses, test accuracy and artifacts. Two seeds make a group;
    each run's own cost (its store writes, model and artifacts) is most of this test's CPU, so
    it trains 8 runs of 40 images (12 of 100 before: 2x the CPU, nothing more checked)."""
    ids, args = ["tutorial-base", "medium-three-conv"], ["--repeats", "2", "--epochs", "2", "--max-train-images", "40",
                                                         "--data-dir", synthetic_root, "--no-progress", "--no-system-metrics"]
    stores = {}
    for mode in ("together", "alone"):
        (tmp_path / mode).mkdir()
        monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / mode / "state"))
        stores[mode] = f"sqlite:///{tmp_path / mode}/mlflow.db"
        r = cli("run", *ids, *args, "--tracking-uri", stores[mode], "--together", "always" if mode == "together" else "never")
        assert r.exit_code == 0, r.output
    together, alone = runs_by_seed(stores["together"]), runs_by_seed(stores["alone"])
    assert sorted(together) == sorted(alone) == sorted((i, str(s)) for i in ids for s in range(2))
    for key, (run, steps) in together.items():
        other, other_steps = alone[key]
        assert run.info.status == "FINISHED" and run.data.params["together"] == "2" and other.data.params["together"] == "1"
        assert len(steps) == len(other_steps) and max(abs(a - b) for a, b in zip(steps, other_steps)) < TOL, key
        assert abs(run.data.metrics["test_acc"] - other.data.metrics["test_acc"]) < 0.5, key  # a float tie may flip one image
        assert run.data.tags["harness.config_hash"] == other.data.tags["harness.config_hash"]
        # one configuration, but not bit-identical: each run says how it trained (the report shows it)
        assert run.data.tags["harness.execution"] == "stacked" and other.data.tags["harness.execution"] == "one-by-one"
        c = MlflowClient(stores["together"])
        assert {"config.json", "test_predictions.csv", "confusion_matrix.png"} <= {a.path for a in c.list_artifacts(run.info.run_id)}
        assert len(c.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")) == 1


@pytest.mark.slow
def test_a_group_interrupted_mid_way_resumes_as_a_group_and_ends_as_if_never_stopped(synthetic_root, tmp_path, monkeypatch, store):
    import harness.runs.group_run as group_run

    """A group of two seeds (a group as any other) of 40 images, Ctrl-C in its second of three epochs."""
    ids, args = ["medium-three-conv"], ["--repeats", "2", "--epochs", "3", "--max-train-images", "40", "--data-dir", synthetic_root,
                                        "--no-progress", "--no-system-metrics"]
    stores = {}
    for mode in ("together", "alone"):
        (tmp_path / mode).mkdir()
        stores[mode] = f"sqlite:///{tmp_path / mode}/mlflow.db"
    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "together" / "state"))
    real, calls = group_run.epoch_metrics, []

    def ctrl_c_in_epoch_2(stats, val, epoch, steps):
        calls.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt
        return real(stats, val, epoch, steps)

    monkeypatch.setattr(group_run, "epoch_metrics", ctrl_c_in_epoch_2)
    r = cli("run", *ids, *args, "--tracking-uri", stores["together"], "--together", "always")
    assert r.exit_code == 130 and "KILLED" in r.output, r.output
    monkeypatch.setattr(group_run, "epoch_metrics", real)
    r = cli("run", *ids, *args, "--tracking-uri", stores["together"], "--together", "always")
    assert r.exit_code == 0 and "resuming together after epoch 1/3" in r.output, r.output
    monkeypatch.setenv("HARNESS_STATE_DIR", str(tmp_path / "alone" / "state"))
    assert cli("run", *ids, *args, "--tracking-uri", stores["alone"], "--together", "never").exit_code == 0
    together, alone = runs_by_seed(stores["together"]), runs_by_seed(stores["alone"])
    c = MlflowClient(stores["together"])
    for key, (run, steps) in together.items():
        assert run.info.status == "FINISHED"
        assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "epoch_time_s")) == [0, 1, 2]  # each epoch once
        other_steps = alone[key][1]
        assert len(steps) == len(other_steps) and max(abs(a - b) for a, b in zip(steps, other_steps)) < TOL, key


GROUP = ["--repeats", "2", "--epochs", "2", "--max-train-images", "200", "--no-progress", "--no-system-metrics", "--together", "always"]


def test_a_group_that_fails_before_its_runs_are_recorded_leaves_no_runs(synthetic_root, monkeypatch, store):
    """As a run alone: nothing trained, nothing to see; a clear line and a non-zero exit."""
    import harness.runs.group_run as group_run

    def broken(*a, **k):
        raise RuntimeError("no memory for the stacked model")

    monkeypatch.setattr(group_run, "prepare_data", broken)
    r = cli("run", "tutorial-base", "--data-dir", synthetic_root, "--tracking-uri", store, *GROUP)
    assert r.exit_code == 1 and "no memory for the stacked model" in r.output and "Traceback" not in r.output, r.output
    c = MlflowClient(store)
    assert c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id]) == []  # (deleted ones are soft-deleted, as for a run alone)


def test_a_group_whose_run_was_taken_over_leaves_it_and_trains_the_others(synthetic_root, monkeypatch, store):
    """One seed's run is taken over while the group stalled: that run is left to its new owner
    (no epoch logged, not failed or killed), the other seed finishes as usual."""
    import time

    import harness.runs.group_run as group_run
    from harness.runs.claims import OWNER
    from harness.tracking import Tracker

    monkeypatch.setenv("HARNESS_STALE_AFTER_S", "0.4")  # a beat every 0.1 s
    real = group_run.evaluate
    elsewhere = "other-host/abcd1234|4242|deadbeef"

    def stolen(model, *a, **k):
        seed1 = [r for r in runs_by_seed(store).values() if r[0].data.tags["harness.seed"] == "1"][0][0]
        if seed1.data.tags[OWNER] != elsewhere:
            Tracker(store).set_tags(seed1.info.run_id, {OWNER: elsewhere})
            time.sleep(0.5)
        return real(model, *a, **k)

    monkeypatch.setattr(group_run, "evaluate", stolen)
    r = cli("run", "tutorial-base", "--data-dir", synthetic_root, "--tracking-uri", store, *GROUP)
    assert r.exit_code == 0 and "taken over by other-host" in r.output, r.output
    got = runs_by_seed(store)
    taken, kept = got[("tutorial-base", "1")][0], got[("tutorial-base", "0")][0]
    assert taken.info.status == "RUNNING" and taken.data.tags[OWNER] == elsewhere and "epoch_time_s" not in taken.data.metrics
    assert kept.info.status == "FINISHED" and "test_acc" in kept.data.metrics


def test_ctrl_c_during_a_groups_finish_leaves_no_run_running(synthetic_root, ctrl_c_during_final_writes, store):
    """The first network's final logging is complete when Ctrl-C lands (it is held until then):
    that run is FINISHED, the other network's run is KILLED, not left RUNNING, and the line says so."""
    r = cli("run", "tutorial-base", "--data-dir", synthetic_root, "--tracking-uri", store, *GROUP)
    assert r.exit_code == 130, r.output
    got = runs_by_seed(store)
    assert sorted(run.info.status for run, _ in got.values()) == ["FINISHED", "KILLED"], r.output
    assert "recorded FINISHED" in r.output and "tutorial-base-s1 of its group are marked KILLED" in r.output, r.output


def test_ctrl_c_during_the_speed_probe_says_what_became_of_the_claimed_runs(synthetic_root, monkeypatch, store):
    import harness.executors.local as local

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(local, "_slower_stacked", interrupted)
    r = cli("run", "tutorial-base", "--data-dir", synthetic_root, "--tracking-uri", store, *GROUP[:-1], "auto")
    assert r.exit_code == 130 and "measuring whether to stack" in r.output and "2 claimed run(s) were deleted" in r.output, r.output
    assert "no run of tutorial-base had been created" not in r.output
    assert runs_by_seed(store) == {}  # nothing left RUNNING (the claims were new: deleted)
