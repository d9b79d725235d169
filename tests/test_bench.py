import math
import re
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from harness.cli import main
from harness.data.loader import load_cifar10, resolve_data_dir
from harness.models import create_model
from harness.training.recipe_data import prepare_data
from harness.recipes.catalogue import load_catalogue
from harness.training.loop import build_optimizer, loss_function, lr_at, train_one_epoch

CAT = load_catalogue()


@pytest.mark.slow
def test_bench_prints_the_comparison_lines(store):
    # the smallest measurement bench accepts (1 round, 1 timed step after its 2 warm-up ones, also
    # per recipe of the whole-suite estimate, 64-image overhead epochs): what is checked here is
    # what it prints, not the numbers
    r = CliRunner().invoke(main, ["bench", "--steps", "1", "--rounds", "1", "--overhead-images", "64"])
    assert r.exit_code == 0, r.output
    for case in ("tutorial-base@4", "medium-vgg-bn@20"):
        assert re.search(rf"^{re.escape(case)} seed-style \d+ img/s \| harness \d+ img/s \| speedup \d+\.\d\dx \(median of 1 round in turn, .*: \d+\.\d\dx\)$", r.output, re.M), r.output
    assert re.search(r"tracking overhead .*: [+-]\d+\.\d%", r.output)
    for case, policy in (("tutorial-base@4", 1), ("medium-vgg-bn@20", None)):
        line = re.search(rf"^{re.escape(case)} threads: alone 1 thread \d+ img/s \| (\d+) threads \d+ img/s; beside a busy process "
                         rf"1 thread \d+ img/s \| \d+ threads \d+ img/s; policy: (\d+) \((aten|onednn) convolutions", r.output, re.M)
        assert line, r.output
        assert int(line.group(2)) == (policy or int(line.group(1)))
        assert line.group(3) == ("aten" if case == "tutorial-base@4" else "onednn")
    assert "whole-suite estimate (harness loop, fp32, full CIFAR-10 at each recipe; 1 timed step a recipe):" in r.output  # says how little it timed
    assert all(eid in r.output for eid in CAT)  # the whole-suite estimate lists every experiment


class FastaiCosAnneal:
    """fastai 0.7's CosAnneal as a state machine (sgdr.py): `iteration` counts batches since
    the fit call began, `cycle_iter` within the cycle; calc_lr runs once before each batch."""

    def __init__(self, lr: float, nb: int):
        self.lr, self.nb, self.iteration, self.cycle_iter = lr, nb, 0, 0

    def next_lr(self) -> float:
        if self.iteration < self.nb / 20:
            out = self.lr / 100
            self.cycle_iter += 1
        else:
            out = self.lr / 2 * (math.cos(math.pi * self.cycle_iter / self.nb) + 1)
            self.cycle_iter += 1
            if self.cycle_iter == self.nb:
                self.cycle_iter = 0
        self.iteration += 1
        return out


def test_sgdr_follows_fastai_cos_anneal_over_a_whole_fit():
    """Every step of fit(lr, 3, cycle_len=1) after a constant fit(lr, 2): warm-up at lr/100 for the
    first nb/20 iterations of the fit only, then the cosine restarted each epoch."""
    from harness.recipes.spec import Phase

    phases = [Phase(2, 0.1, "constant"), Phase(3, 0.1, "sgdr")]
    nb = 45
    cos = FastaiCosAnneal(0.1, nb)
    for epoch in range(2, 5):
        for step in range(nb):
            assert lr_at(phases, epoch, step, nb) == pytest.approx(cos.next_lr(), rel=1e-12), (epoch, step)
    assert lr_at(phases, 2, 0, nb) == pytest.approx(0.001) and lr_at(phases, 2, 2, nb) == pytest.approx(0.001)
    assert lr_at(phases, 2, 3, nb) == pytest.approx(0.05 * (1 + math.cos(math.pi * 3 / nb)))  # 45/20 = 2.25: steps 0..2 warm
    assert lr_at(phases, 3, 0, nb) == pytest.approx(0.1)  # the next cycle restarts at lr, no warm-up
    assert lr_at(phases, 0, 10, nb) == 0.1


@pytest.mark.parametrize("eid, n", [("tutorial-base", 200), ("fastai-convbnnet", 600), pytest.param("medium-vgg-bn", 100, marks=pytest.mark.slow)])
def test_fast_loop_trains_exactly_like_a_plain_loop(synthetic_root, eid, n):
    """Same seed and data order: the harness loop (device-side bookkeeping, foreach optimizer,
    schedule) must give the losses of the plainest PyTorch loop."""
    exp = CAT[eid]
    data = load_cifar10(resolve_data_dir(synthetic_root))
    prep = prepare_data(exp, data, seed=0, max_train_images=n, device=torch.device("cpu"))
    steps = len(prep.train)
    torch.manual_seed(0)
    fast = create_model(exp.model.name, **exp.model.args)
    torch.manual_seed(0)
    plain = create_model(exp.model.name, **exp.model.args)
    opt = build_optimizer(fast, exp.train.optimizer, exp.train.phases[0].lr)
    epoch = 2 if exp.train.phases[-1].schedule == "sgdr" else 0  # an SGDR epoch for the fastai recipe
    sched = (lambda i: lr_at(exp.train.phases, epoch, i, steps)) if exp.train.phases[-1].schedule == "sgdr" else None
    torch.manual_seed(1)
    stats = train_one_epoch(fast, prep.train.batches(epoch), steps, opt, loss_function(exp.train.loss), sched)

    o = exp.train.optimizer
    ref_opt = torch.optim.SGD(plain.parameters(), lr=exp.train.phases[0].lr, momentum=o.momentum, weight_decay=o.weight_decay)
    criterion = F.nll_loss if exp.train.loss == "nll" else F.cross_entropy
    ref = []
    torch.manual_seed(1)
    plain.train()
    cos = FastaiCosAnneal(exp.train.phases[-1].lr, steps)  # epoch 2 opens the fit(..., cycle_len=1) call
    for i, (x, y) in enumerate(prep.train.batches(epoch)):
        if sched:
            lr = cos.next_lr()
            for g in ref_opt.param_groups:
                g["lr"] = lr
        ref_opt.zero_grad()
        loss = criterion(plain(x), y)
        loss.backward()
        ref_opt.step()
        ref.append(loss.item())
    assert steps <= 100  # one logged point per step, so the lists compare step by step
    torch.testing.assert_close(torch.tensor([v for _, v in stats.step_losses]), torch.tensor(ref), rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(fast.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_thread_policy_picks_one_thread_for_the_small_recipes_and_the_machines_share_for_the_rest():
    from harness.training.environment import all_cores, choose_threads

    big = min(all_cores(), max(2, all_cores() // 2), 8)  # 2 of 2 cores, else half of them, at most 8

    cpu = torch.device("cpu")
    small = {"tutorial-base", "tutorial-c16", "tutorial-c32", "tutorial-c128", "skl-cnn", "medium-tutorial-net",
             "medium-three-conv", "fastai-simplenet"}
    for eid, exp in CAT.items():
        model = create_model(exp.model.name, **exp.model.args)
        assert choose_threads(model, exp.train.batch_size, cpu) == (1 if eid in small else big), eid
        assert choose_threads(model, exp.train.batch_size, cpu, override=3) == 3


def test_conv_policy_picks_atens_convolution_only_below_its_measured_size():
    from harness.training.environment import ATEN_CONV_MACS, choose_conv, macs_per_image

    cpu = torch.device("cpu")
    for eid, exp in CAT.items():
        model = create_model(exp.model.name, **exp.model.args)
        tiny = macs_per_image(model) * exp.train.batch_size < ATEN_CONV_MACS
        assert choose_conv(model, exp.train.batch_size, cpu) == ("aten" if tiny else "onednn"), eid
        assert tiny == (eid == "tutorial-base"), eid  # the one recipe measured faster on ATen's


def test_runs_record_the_threads_they_trained_on(synthetic_root, store):
    """Also the convolution implementation, set per run: a process that trained tutorial-base
    on ATen's convolutions trains the next recipe on oneDNN's again."""
    for eid, extra in (("tutorial-base", []), ("fastai-convnet", ["--threads", "2"])):
        r = CliRunner().invoke(main, ["run", eid, "--data-dir", str(synthetic_root), "--tracking-uri", store, "--epochs", "1",
                                      "--max-train-images", "128", "--no-progress", "--no-system-metrics", *extra])
        assert r.exit_code == 0, r.output
        assert torch.backends.mkldnn.enabled == (eid != "tutorial-base")
    from mlflow.tracking import MlflowClient

    c = MlflowClient(store)
    runs = {x.data.tags["harness.experiment_id"]: x for x in c.search_runs([c.get_experiment_by_name("cifar10-harness").experiment_id])}
    assert runs["tutorial-base"].data.params["threads"] == "1" and runs["fastai-convnet"].data.params["threads"] == "2"
    assert runs["tutorial-base"].data.params["conv"] == "aten" and runs["fastai-convnet"].data.params["conv"] == "onednn"


@pytest.mark.slow
def test_bench_repeats_prints_one_by_one_against_stacked_and_the_fixed_cost(store, monkeypatch):
    """Runs the real measurement, including the five `harness run` commands of the fixed cost, each
    a process of its own forked from the tests' fork server (tests/forkserver.py) instead of a
    fresh interpreter: what is checked here is that they run and what the line says, not the
    numbers, and a fresh interpreter's imports cost about 5 CPU-seconds a command."""
    import harness.bench.repeats as repeats

    from . import forkserver

    started = []

    def forked(cmd, cwd, capture_output, text):
        assert cmd[:3] == [sys.executable, "-m", "harness.cli"], cmd  # what fixed_costs starts: `python -m harness.cli ...`
        started.append(cmd[3:])
        return forkserver.run(cmd[3:], cwd=cwd, capture_output=capture_output, text=text, timeout=300)

    monkeypatch.setattr(repeats, "subprocess", SimpleNamespace(run=forked))
    r = CliRunner().invoke(main, ["bench", "--repeats", "2", "--steps", "1"])  # the smallest it accepts
    assert r.exit_code == 0, r.output
    for case in ("tutorial-base@4", "medium-three-conv@20"):
        assert re.search(rf"^{re.escape(case)} x 2 seeds: sequential \d+ img/s per network \| together \d+ img/s per network \| "
                         rf"speedup \d+\.\d\dx \(1 thread\)$", r.output, re.M), r.output
    assert re.search(r"^fixed cost of a run outside training .*: new store \d+\.\d s \| existing store \d+\.\d s \| rerun that skips "
                     r"\d+\.\d s \| each further run in one process -?\d+\.\d s$", r.output, re.M), r.output
    assert [c[:2] for c in started] == [["run", "fastai-simplenet"]] * 5 and sum("--force" in c for c in started) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has the GPU")
def test_bench_on_a_gpu_this_machine_lacks_is_one_line():
    r = CliRunner().invoke(main, ["bench", "--device", "cuda", "--steps", "2"])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and "no CUDA device" in r.output, r.output
