"""The recipes do what their authors did: fastai's padding, crop and optimizer restarts, cs598's
evaluation in training mode and Adam step clamp, old PyTorch's BatchNorm init, printed precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from harness.recipes.catalogue import load_catalogue
from harness.cli import main
from harness.data.loader import augment_crop_flip, symmetric_index
from harness.models import apply_init, create_model
from harness.report import distance_to_interval
from harness.recipes.spec import Phase, Published
from harness.training.loop import clamp_adam_steps, evaluate, starts_phase, train_one_epoch

CAT = load_catalogue()
CAP = ["--epochs", "1", "--max-train-images", "256", "--no-progress"]


# --------------------------------------------------------------------------- fastai padding and crop


def test_symmetric_padding_repeats_the_edge_pixel_like_opencv_border_reflect():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    padded = x[:, :, symmetric_index(4, 4)][:, :, :, symmetric_index(4, 4)]
    # cv2.BORDER_REFLECT is numpy's "symmetric": fedcba|abcdefgh|hgfedcb
    torch.testing.assert_close(padded[0, 0], torch.from_numpy(np.pad(np.arange(16.0).reshape(4, 4), 4, mode="symmetric")).float())
    assert padded[0, 0, 4, :5].tolist() == [3.0, 2.0, 1.0, 0.0, 0.0]  # d c b a | a: the edge repeats
    assert padded[0, 0, 4, -5:].tolist() == [3.0, 3.0, 2.0, 1.0, 0.0]


def crop_offsets(crop_style: str, pad_mode: str, n: int = 3000) -> set[int]:
    """Every row offset the augmentation drew, found by matching each output to the padded image."""
    x = torch.randn(1, 1, 32, 32).expand(n, 1, 32, 32).contiguous()
    g = torch.Generator().manual_seed(0)
    out = augment_crop_flip(x, 4, pad_mode, torch.zeros(1), g, crop_style)
    if pad_mode == "symmetric":
        idx = symmetric_index(32, 4)
        padded = x[0, 0][idx][:, idx]
    else:
        padded = torch.nn.functional.pad(x[0, 0], (4, 4, 4, 4))
    found = set()
    for img in out[:, 0]:
        hits = [dy for dy in range(9) for dx in range(9) for w in (padded[dy : dy + 32, dx : dx + 32],)
                if torch.equal(img, w) or torch.equal(img, w.flip(1))]
        assert hits, "output is no crop of the padded image"
        found.update(hits)
    return found


def test_fastai_crop_offsets_are_0_to_7_and_torchvision_0_to_8():
    assert crop_offsets("fastai0.7", "symmetric") == set(range(8))
    assert crop_offsets("torchvision", "zeros") == set(range(9))


def test_fastai_recipes_pad_and_crop_as_fastai_and_the_others_as_torchvision():
    for eid, exp in CAT.items():
        if exp.data.augmentation == "none":
            continue
        if eid.startswith("fastai-"):
            assert (exp.data.pad_mode, exp.data.crop_style) == ("symmetric", "fastai0.7"), eid
        else:
            assert (exp.data.pad_mode, exp.data.crop_style) == ("zeros", "torchvision"), eid


# --------------------------------------------------------------------------- fastai: a new optimizer per fit()


def test_phase_starts():
    phases = [Phase(2, 0.1), Phase(4, 0.1, "sgdr")]
    assert [starts_phase(phases, e) for e in range(6)] == [False, False, True, False, False, False]


@pytest.mark.parametrize("fresh", [True, False])
def test_momentum_restarts_at_each_fit_call_only_where_the_recipe_says(synthetic_root, store, monkeypatch, tmp_path, fresh):
    import harness.runs.one_run as runner

    seen = []
    real = runner.train_one_epoch

    def spy(model, batches, steps, optimizer, *a, **k):
        seen.append(len(optimizer.state))  # parameters with a momentum buffer when the epoch starts
        return real(model, batches, steps, optimizer, *a, **k)

    monkeypatch.setattr(runner, "train_one_epoch", spy)
    exps = tmp_path / "experiments"
    exps.mkdir()
    text = open(load_path("fastai-simplenet")).read()
    if not fresh:
        text = text.replace("fresh_optimizer_per_phase = true", "fresh_optimizer_per_phase = false")
    (exps / "fastai-simplenet.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["run", "fastai-simplenet", "--data-dir", str(synthetic_root), "--tracking-uri", store,
                                  "--epochs", "3", "--max-train-images", "512", "--no-progress"])
    assert r.exit_code == 0, r.output
    n_params = 4  # two linear layers: weight and bias each
    assert seen == ([0, n_params, 0] if fresh else [0, n_params, n_params])


def load_path(eid: str) -> str:
    from harness.recipes.catalogue import experiments_dir

    return str(experiments_dir() / f"{eid}.toml")


# --------------------------------------------------------------------------- cs598: evaluation in training mode


def test_train_mode_evaluation_uses_batch_statistics_and_dropout_and_leaves_running_stats():
    torch.manual_seed(0)
    model = create_model("vgg_bn_net")
    for m in model.modules():  # running statistics unlike any batch's, as after real training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(9.0)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    e1 = evaluate(model, x, y, nn.functional.cross_entropy, batch_size=64)
    e2 = evaluate(model, x, y, nn.functional.cross_entropy, batch_size=8)
    torch.testing.assert_close(e1.probs, e2.probs)  # eval mode: batch size does not matter
    t_big = evaluate(model, x, y, nn.functional.cross_entropy, batch_size=64, mode="train")
    t_small = evaluate(model, x, y, nn.functional.cross_entropy, batch_size=8, mode="train")
    assert not torch.allclose(t_big.probs, e1.probs, atol=1e-3)  # batch statistics, dropout
    assert not torch.allclose(t_big.probs, t_small.probs, atol=1e-3)  # depends on the batch size
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)  # running stats put back
    assert not model.training


@pytest.mark.slow
def test_cs598_logs_both_protocols_and_tutorial_logs_equal_ones(synthetic_root, store):
    for eid in ("cs598-vgg-bn-aug", "tutorial-base"):
        r = CliRunner().invoke(main, ["run", eid, "--data-dir", str(synthetic_root), "--tracking-uri", store, "--epochs", "1",
                                      "--max-train-images", "128", "--no-progress"])
        assert r.exit_code == 0, r.output
    c = MlflowClient(store)
    runs = {r.data.tags["harness.experiment_id"]: r for r in c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id])}
    cs, tut = runs["cs598-vgg-bn-aug"].data, runs["tutorial-base"].data
    assert cs.tags["harness.eval_mode"] == "train" and tut.tags["harness.eval_mode"] == "eval"
    assert cs.params["eval.mode"] == "train" and cs.params["eval.batch_size"] == "1000"
    # dropout on and each test batch's own statistics give another loss than eval mode
    assert cs.metrics["test_loss"] != cs.metrics["test_loss_eval_mode"]
    assert tut.metrics["test_acc"] == tut.metrics["test_acc_eval_mode"] and tut.metrics["test_loss"] == tut.metrics["test_loss_eval_mode"]


# --------------------------------------------------------------------------- cs598: Adam step clamp


def test_adam_step_clamp_keeps_every_step_counter_within_1000_to_1024():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    batches = [(x, y)] * 1200
    seen = []

    def clamp():
        clamp_adam_steps(opt, 1024, 1000)

    train_one_epoch(model, iter(batches[:1100]), 1100, opt, nn.functional.cross_entropy)  # before the clamp starts
    assert {float(s["step"]) for s in opt.state.values()} == {1100.0}
    for _ in range(3):
        train_one_epoch(model, iter(batches[:100]), 100, opt, nn.functional.cross_entropy, before_step=clamp)
        seen += [float(s["step"]) for s in opt.state.values()]
    assert 1000 <= min(seen) and max(seen) <= 1024
    # and it matters: Adam's step is scaled by sqrt(1 - beta2**t) / (1 - beta1**t)
    assert np.sqrt(1 - 0.999**1000) == pytest.approx(0.795, abs=1e-3)


def test_cs598_spec_clamps_as_written():
    c = CAT["cs598-vgg-bn-aug"].train.optimizer.step_clamp
    assert (c.after_epoch, c.limit, c.reset_to) == (16, 1024, 1000)
    assert CAT["cs598-vgg-bn-aug"].eval.mode == "train"


@pytest.mark.slow
def test_runner_applies_the_clamp_after_its_epoch(synthetic_root, store, monkeypatch):
    import harness.runs.one_run as runner

    calls = []
    real = runner.train_one_epoch

    def spy(*a, **k):
        calls.append(a[8] is not None)  # before_step: the clamp
        return real(*a, **k)

    monkeypatch.setattr(runner, "train_one_epoch", spy)
    from harness.recipes.spec import StepClamp

    exp = CAT["cs598-vgg-bn-aug"]
    monkeypatch.setattr(exp.train.optimizer, "step_clamp", StepClamp(after_epoch=0, limit=1024, reset_to=1000))
    import harness.recipes.catalogue as catalogue

    monkeypatch.setattr(catalogue, "load_catalogue", lambda *a: CAT)
    r = CliRunner().invoke(main, ["run", "cs598-vgg-bn-aug", "--data-dir", str(synthetic_root), "--tracking-uri", store,
                                  "--epochs", "2", "--max-train-images", "64", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert calls == [False, True]


# --------------------------------------------------------------------------- old BatchNorm init


def test_torch04_init_draws_batchnorm_weights_in_0_1():
    torch.manual_seed(0)
    now = create_model("vgg_bn_net")
    old = apply_init(create_model("vgg_bn_net"), "torch<=0.4")
    for a, b in zip(now.modules(), old.modules()):
        if isinstance(a, nn.BatchNorm2d):
            assert torch.all(a.weight == 1)
            assert 0 <= b.weight.min() and b.weight.max() <= 1 and b.weight.std() > 0.2
            assert torch.all(b.bias == 0)
    assert CAT["cs598-vgg-bn-aug"].model.init == "torch<=0.4" and "model.init" in CAT["cs598-vgg-bn-aug"].assumed


# --------------------------------------------------------------------------- published precision


def test_published_intervals_follow_how_the_numbers_were_printed():
    assert CAT["medium-tutorial-net"].published.interval() == (63.0, 64.0)  # %2d%%: truncated
    lo, hi = CAT["tutorial-base"].published.interval()
    assert (lo, hi) == pytest.approx((53.435, 53.445))
    lo, hi = CAT["tutorial-c128"].published.interval()
    assert (lo, hi) == pytest.approx((58.725, 62.735))  # three repeats of one recipe
    assert Published([]).interval() is None


def test_delta_to_published_is_zero_inside_and_the_distance_to_the_nearest_bound_outside():
    assert distance_to_interval(63.7, (63.0, 64.0)) == 0.0
    assert distance_to_interval(62.5, (63.0, 64.0)) == pytest.approx(-0.5)
    assert distance_to_interval(65.0, (63.0, 64.0)) == pytest.approx(1.0)
    assert distance_to_interval(50.0, None) is None


def test_confusion_matrix_and_f1_equal_sklearns():
    from sklearn.metrics import confusion_matrix, f1_score

    from harness.runs.finish import confusion, f1_scores

    rng = np.random.default_rng(0)
    for k, n, never in ((10, 500, None), (10, 300, 3), (4, 50, 0)):
        y = rng.integers(0, k, n)
        pred = np.where(rng.random(n) < 0.4, y, rng.integers(0, k, n))
        if never is not None:
            pred[pred == never] = (never + 1) % k  # a class never predicted
        cm = confusion(y, pred, k)
        np.testing.assert_array_equal(cm, confusion_matrix(y, pred, labels=list(range(k))))
        macro, micro = f1_scores(cm)
        assert macro == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
        assert micro == pytest.approx(f1_score(y, pred, average="micro"))
