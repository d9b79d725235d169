"""`harness bench`: the write-ups' loop and the harness loop measured side by side in one process.

(a) seed-style: a Dataset that makes a PIL image per sample, converts it to a float tensor and
normalises it (what torchvision's ToTensor + Normalize do), a DataLoader with shuffle and 2
workers, `loss.item()` every step; (b) the harness loop: resident tensors, whole-batch
augmentation, device-side accumulation. Same model init, optimizer, batch size and steps.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.loader import NORMALIZATIONS, Cifar10, load_cifar10, resolve_data_dir
from ..recipes.network import build_model
from ..training.environment import all_cores, choose_conv, choose_threads, configure_backend, device_name, macs_per_image
from ..training.recipe_data import prepare_data
from ..recipes.catalogue import load_catalogue, select
from ..recipes.spec import Experiment
from ..training.loop import build_optimizer, loss_function, train_one_epoch

WARMUP = 20
CPU = torch.device("cpu")
ROUNDS = 3  # the loops measured in turn this many times; the median is printed


def warmup_steps(steps: int) -> int:
    return max(2, min(WARMUP, steps))


class SeedStyleDataset(Dataset):
    """torchvision.datasets.CIFAR10 + ToTensor + Normalize, without importing torchvision."""

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, mean, std):
        self.x = x_uint8.permute(0, 2, 3, 1).contiguous().numpy()  # HWC, as the official class keeps it
        self.y = y.tolist()
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.x[i])
        t = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div(255)
        return (t - self.mean) / self.std, self.y[i]


def synthetic_cifar(n_train: int, n_test: int = 100, seed: int = 0) -> Cifar10:
    g = torch.Generator().manual_seed(seed)
    mk = lambda n: (torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.randint(0, 10, (n,), generator=g))
    (tx, ty), (vx, vy) = mk(n_train), mk(n_test)
    return Cifar10(tx, ty, vx, vy, [f"c{i}" for i in range(10)], root=__import__("pathlib").Path("synthetic"))


def _model_and_opt(exp: Experiment, seed: int = 0, device: torch.device = CPU):
    torch.manual_seed(seed)
    model = build_model(exp).to(device)
    return model, build_optimizer(model, exp.train.optimizer, exp.train.phases[0].lr), loss_function(exp.train.loss)


def seed_style_rate(exp: Experiment, data: Cifar10, steps: int, device: torch.device = CPU) -> float:
    mean, std = NORMALIZATIONS[exp.data.normalization]
    bs = exp.train.batch_size
    model, opt, loss_fn = _model_and_opt(exp, device=device)
    loader = DataLoader(SeedStyleDataset(data.train_x, data.train_y, mean, std), batch_size=bs, shuffle=True, num_workers=2, persistent_workers=True)
    model.train()
    done, t0, it = 0, None, iter(loader)
    warm = warmup_steps(steps)
    while done < warm + steps:
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        x, y = x.to(device), y.to(device)  # as the write-ups do on a GPU
        if done == warm:
            t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        _ = loss.item()  # as the write-ups do: running_loss += loss.item()
        done += 1
    dt = time.perf_counter() - t0
    del it, loader
    return steps * bs / dt


def harness_rate(exp: Experiment, data: Cifar10, steps: int, precision: str = "fp32", device: torch.device = CPU) -> float:
    prep = prepare_data(exp, data, 0, None, device)
    model, opt, loss_fn = _model_and_opt(exp, device=device)
    per_epoch = len(prep.train)

    def batches(n):
        e = 0
        while n > 0:
            k = min(n, per_epoch)
            for i, b in enumerate(prep.train.batches(e)):
                if i == k:
                    break
                yield b
            n -= k
            e += 1

    warm = warmup_steps(steps)
    train_one_epoch(model, batches(warm), warm, opt, loss_fn, precision=precision)  # ends synchronised
    t0 = time.perf_counter()
    stats = train_one_epoch(model, batches(steps), steps, opt, loss_fn, precision=precision)
    return stats.images / (time.perf_counter() - t0)


def tracking_overhead(exp: Experiment, data: Cifar10, pairs: int = 8, device: torch.device = CPU) -> tuple[float, float, float, float, float]:
    """One training whose epochs come in pairs, one logged (as the runner logs: epoch metrics
    plus ~100 step points in one batch) and one not. Within a pair the logged epoch goes
    second, then first (ABBA), so a shared machine's drift cancels instead of biasing the
    sign. Returns (median overhead %, its quartiles %, median seconds of an unlogged epoch,
    median seconds of the logging call itself)."""
    from ..tracking import Tracker

    prep = prepare_data(exp, data, 0, None, device)
    steps = len(prep.train)
    model, opt, loss_fn = _model_and_opt(exp, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/bench.db", "bench")
        run_id = tracker.start_run("bench", {}, {"bench": 1})
        train_one_epoch(model, prep.train.batches(0), steps, opt, loss_fn)  # warm-up epoch
        epoch = 0

        def timed_epoch(logged: bool) -> tuple[float, float]:
            nonlocal epoch
            epoch += 1
            t0 = time.perf_counter()
            s = train_one_epoch(model, prep.train.batches(epoch), steps, opt, loss_fn)
            cost = 0.0
            if logged:
                t1 = time.perf_counter()
                tracker.log_metrics(run_id, {"train_loss": s.loss, "train_acc": s.acc, "val_loss": s.loss, "val_acc": s.acc,
                                             "lr": s.lr, "epoch_time_s": s.time_s, "epoch_images_per_s": s.images / s.time_s},
                                    epoch, {"train_loss_step": [(epoch * steps + i, v) for i, v in s.step_losses]})
                cost = time.perf_counter() - t1
            return time.perf_counter() - t0, cost

        plain, ratios, log_cost = [], [], []
        for k in range(pairs):
            order = (False, True) if k % 2 == 0 else (True, False)
            times = {logged: timed_epoch(logged) for logged in order}
            plain.append(times[False][0])
            log_cost.append(times[True][1])
            ratios.append(times[True][0] / times[False][0] - 1)
        tracker.terminate(run_id, "FINISHED")
    q1, _, q3 = statistics.quantiles([100.0 * r for r in ratios], n=4)
    return 100.0 * statistics.median(ratios), q1, q3, statistics.median(plain), statistics.median(log_cost)


def apply_policy(exp: Experiment, device: torch.device = CPU) -> tuple[int, str]:
    """Set the threads and convolution implementation the runner would train `exp` with."""
    model, _, _ = _model_and_opt(exp, device=device)
    threads, conv = choose_threads(model, exp.train.batch_size, device), choose_conv(model, exp.train.batch_size, device)
    configure_backend(device, threads, conv)
    return threads, conv


def write_ups_default(device: torch.device = CPU) -> None:
    """PyTorch as the write-ups run it: default threads (every core), default convolutions."""
    configure_backend(device, all_cores(), "onednn")


def loops_side_by_side(exp: Experiment, data: Cifar10, steps: int, precision: str, device: torch.device = CPU,
                       rounds: int = ROUNDS) -> dict[str, list[float]]:
    """img/s of the seed-style loop as the write-ups run it, the same loop on 1 thread, and the
    harness loop on its policy, `rounds` times in turn: a shared 2-core machine's drift then
    shows as spread instead of biasing one side."""
    out: dict[str, list[float]] = {"seed": [], "seed1": [], "harness": []}
    for _ in range(rounds):
        write_ups_default(device)
        out["seed"].append(seed_style_rate(exp, data, steps, device))
        configure_backend(device, 1, "onednn")
        out["seed1"].append(seed_style_rate(exp, data, steps, device))
        apply_policy(exp, device)
        out["harness"].append(harness_rate(exp, data, steps, precision, device))
    write_ups_default(device)
    return out


def thread_policy(exp: Experiment, data: Cifar10, steps: int) -> tuple[dict[tuple[int, bool], float], int, str]:
    """The harness loop's img/s at 1 thread and at every core, alone and beside a second busy
    process (a spinning Python, as a second run-all or anything else would be); and the
    policy's threads and convolutions for the recipe."""
    out = {}
    pick, conv = apply_policy(exp)
    for busy in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for threads in sorted({1, all_cores()}):
                configure_backend(torch.device("cpu"), threads, conv)
                out[(threads, busy)] = harness_rate(exp, data, steps)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    write_ups_default()
    return out, pick, conv


SUITE_STEPS = 30  # timed steps per recipe of the whole-suite estimate (fewer where --steps asks for fewer)


def epoch_seconds(exp: Experiment, steps: int = SUITE_STEPS, device: torch.device = CPU) -> float:
    """Seconds per epoch of full CIFAR-10 (50,000 training images less the recipe's validation share)."""
    n_full = int(50_000 * (1 - exp.data.val_fraction))
    probe = synthetic_cifar(max(exp.train.batch_size * (steps + warmup_steps(steps)), 512))
    apply_policy(exp, device)
    rate = harness_rate(exp, probe, steps, device=device)
    write_ups_default(device)
    return n_full / rate


def run_bench(ids: list[str], steps: int, data_dir: str | None, precision: str, suite: bool, overhead_images: int = 5000, echo=print,
              device: torch.device = CPU, rounds: int = ROUNDS) -> None:
    """`rounds`: how many times the loops are measured in turn (the median is printed); `steps`
    also bounds the whole-suite estimate's timed steps per recipe (at most SUITE_STEPS)."""
    write_ups_default(device)
    cat = load_catalogue()
    chosen = select(cat, ids)
    if data_dir:
        data = load_cifar10(resolve_data_dir(data_dir))
    else:
        # pixels do not change speed; enough images that no case wraps an epoch
        data = synthetic_cifar(max(e.train.batch_size for e in chosen) * (steps + warmup_steps(steps)) + 64)
    echo(f"harness bench on {device_name(device)}: {torch.get_num_threads()} threads, torch {torch.__version__}, {len(data.train_x)} train images"
         f" ({'real' if data_dir else 'synthetic'}), {steps} timed steps after {warmup_steps(steps)} warm-up")
    for exp in chosen:
        r = loops_side_by_side(exp, data, steps, precision, device, rounds)
        med = {k: statistics.median(v) for k, v in r.items()}
        speedups = [b / a for a, b in zip(r["seed"], r["harness"])]
        tag = "" if precision == "fp32" else f" ({precision})"
        echo(f"{exp.id}@{exp.train.batch_size} seed-style {med['seed']:.0f} img/s | harness{tag} {med['harness']:.0f} img/s | "
             f"speedup {statistics.median(speedups):.2f}x (median of {rounds} round{'s' if rounds > 1 else ''} in turn, {min(speedups):.2f}x..{max(speedups):.2f}x; "
             f"against the seed-style loop on 1 thread, {med['seed1']:.0f} img/s: "
             f"{statistics.median(b / a for a, b in zip(r['seed1'], r['harness'])):.2f}x)")
    n = all_cores()
    for exp in chosen if device.type == "cpu" else []:  # threads are a CPU matter
        r, pick, conv = thread_policy(exp, data, steps)
        model, _, _ = _model_and_opt(exp)
        echo(f"{exp.id}@{exp.train.batch_size} threads: alone 1 thread {r[(1, False)]:.0f} img/s | {n} threads {r[(n, False)]:.0f} img/s; "
             f"beside a busy process 1 thread {r[(1, True)]:.0f} img/s | {n} threads {r[(n, True)]:.0f} img/s; policy: {pick} "
             f"({conv} convolutions, {macs_per_image(model) * exp.train.batch_size / 1e6:.0f} M MACs/step)")
    ov_exp = chosen[0]
    # logging happens once per epoch, so its share depends on the epoch's length: measure it on
    # epochs of a stated size (the default is the real subset's; full CIFAR-10 epochs are 10x longer)
    ov_data = synthetic_cifar(overhead_images)
    apply_policy(ov_exp, device)
    pct, q1, q3, sec, cost = tracking_overhead(ov_exp, ov_data, device=device)
    write_ups_default(device)
    echo(f"tracking overhead ({ov_exp.id}, paired {len(ov_data.train_x)}-image epochs of {sec:.2f}s with/without logging, "
         f"quartiles {q1:+.1f}%..{q3:+.1f}%; the logging call itself {cost * 1000:.0f} ms = {100 * cost / sec:.1f}%): {pct:+.1f}%")
    if suite:
        timed = min(steps, SUITE_STEPS)
        echo(f"whole-suite estimate (harness loop, fp32, full CIFAR-10 at each recipe; {timed} timed step{'s' * (timed != 1)} a recipe):")
        total = 0.0
        for exp in cat.values():
            s = epoch_seconds(exp, timed, device)
            total += s * exp.train.epochs
            echo(f"  {exp.id:<22} batch {exp.train.batch_size:>3}  {s:8.1f} s/epoch  x {exp.train.epochs:>2} epochs = {s * exp.train.epochs / 60:7.1f} min")
        echo(f"  total {total / 3600:.1f} h for all {len(cat)} recipes on full CIFAR-10")
