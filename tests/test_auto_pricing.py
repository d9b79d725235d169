"""What a further seed is priced on (auto/budget.py): only walls of seeds timed on the kind of
machine that trains it, and a margin where a recipe has none yet (issue 28, review items 4, 5)."""

from __future__ import annotations

from types import SimpleNamespace

from harness.auto.budget import timed_here
from harness.auto.state import Seeds
from harness.auto.wiring import ray_device

GPU, CPU = "cuda:NVIDIA H100 80GB HBM3", "cpu:Intel(R) Xeon(R) Processor, 2 cores"


def test_a_ray_cpu_task_is_not_priced_on_gpu_timed_seeds():
    """A store whose seeds a GPU trained (40 s) beside one a CPU trained (1,200 s): a Ray loop of
    CPU tasks priced on all of them started seeds 10-50x longer than it thought. The driver knows
    the kind of device a task asks for (a GPU or not), and only that kind's walls price it."""
    seeds = {"vgg": Seeds(wall={0: 40.0, 1: 42.0, 2: 1200.0}, device={0: GPU, 1: GPU, 2: CPU})}
    assert ray_device(SimpleNamespace(gpus_per_run=0.0)) == "cpu" and ray_device(SimpleNamespace(gpus_per_run=0.5)) == "cuda"
    assert timed_here(seeds, ray_device(SimpleNamespace(gpus_per_run=0.0))) == {"vgg": [1200.0]}
    assert timed_here(seeds, ray_device(SimpleNamespace(gpus_per_run=1.0))) == {"vgg": [40.0, 42.0]}
    assert timed_here(seeds, CPU) == {"vgg": [1200.0]}  # the local loop: the exact device name
    assert timed_here(seeds, "cpu:another CPU, 8 cores") == {"vgg": []}


def test_an_untimed_recipe_is_priced_with_a_margin_until_its_first_seed_is_timed():
    """Priced from the other recipes' walls, a recipe's estimate fell to 0.70 of its wall on the
    main job's real times (leave-one-out), and a budget would start a seed it then overran. An
    untimed recipe's estimate carries UNTIMED_MARGIN over the model; a timed one is its mean wall."""
    from harness.auto.budget import UNTIMED_MARGIN, calibrate, seed_costs
    from harness.executors.schedule import expected_work
    from harness.recipes.catalogue import load_catalogue
    from harness.runs.job import RunOptions

    cat = load_catalogue()
    exps = [cat[i] for i in ("fastai-simplenet", "medium-three-conv", "medium-vgg-bn")]
    opts = RunOptions()
    work = {e.id: expected_work(e, 5170, opts) for e in exps}
    walls = {"fastai-simplenet": [2.2, 2.4], "medium-three-conv": [80.5]}
    cost = seed_costs(exps, 5170, opts, walls)
    fixed, rate = calibrate({i: (sum(w) / len(w), work[i]) for i, w in walls.items()}, work["medium-vgg-bn"])
    assert UNTIMED_MARGIN >= 1.45 and cost["medium-vgg-bn"] == UNTIMED_MARGIN * (work["medium-vgg-bn"] / rate + fixed)
    assert cost["fastai-simplenet"] == 2.3 and cost["medium-three-conv"] == 80.5
