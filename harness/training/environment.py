"""Where a run executes: the device, the backend settings, and what identifies the code."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
from pathlib import Path

import torch

from ..errors import UsageError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device available (torch %s)" % torch.__version__)
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: MPS is not available on this machine")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unknown device {name!r} (known: auto, cpu, cuda, mps)")
    return torch.device(name)


# Below this much work per training step (multiply-accumulates of the convolutions and linear
# layers, forward, whole batch) a recipe trains on one intra-op thread. Measured on 2 cores
# (`harness bench` prints it): such steps gain 0.8-1.3x from a second thread when the machine
# is idle and lose 3.5-60x when another process is busy (OpenMP threads wait on each other
# across preempted cores: tutorial-base@4 trained at 45 img/s on 2 threads against 2,789 on 1
# beside a second harness). Above it (the fastai batch-256 nets from 188 M, the VGG from 2.7 G)
# a second core pays 1.5-2x. The batch-4/20 recipes are 2.6-76 M.
SMALL_STEP_MACS = 100e6


def all_cores() -> int:
    # PyTorch's own default can be lower inside containers
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def macs_per_image(model: torch.nn.Module) -> int:
    """Multiply-accumulates of the convolutions and linear layers for one 32x32 image."""
    total = [0]

    def hook(m, _inputs, out):
        per_output = m.in_features if isinstance(m, torch.nn.Linear) else (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        total[0] += out.numel() // out.shape[0] * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total[0]


# The most intra-op threads a big recipe takes. The VGG's second thread measured 1.78x here
# (2 cores); Amdahl's law from that gives 4.3x on 8 threads (53% of each thread's worth) and 6.6x
# on 32 (21%): past 8 a run's threads do more as other runs' cores than as its own.
MAX_RUN_THREADS = 8


def threads_for(step_macs: float, device_type: str, cores: int) -> int:
    """The rule of choose_threads, on numbers: 1 for a step under SMALL_STEP_MACS on the CPU; a
    big one takes the whole machine on 2 cores (one thread would leave the VGG 1.78x slower,
    longer than a whole 2-core suite packs), else half the cores, so that two big runs (the two
    VGGs, a recipe's seeds) train side by side, and at most MAX_RUN_THREADS. Simulated on the main
    job (tests/measure_suite.py estimate): this beats every core and a fixed 4 or 8 on 4-32 cores,
    for one seed and for five. Not measured above 2 cores."""
    if device_type == "cpu" and step_macs < SMALL_STEP_MACS:
        return 1
    return max(1, min(cores, max(2, cores // 2), MAX_RUN_THREADS))


def choose_threads(model: torch.nn.Module, batch_size: int, device: torch.device, override: int | None = None, cores: int | None = None) -> int:
    """Intra-op threads for a run, fixed for its whole life and recorded (param `threads`): the
    user's number (`--threads N`), else from the recipe and the machine only (threads_for). Never
    from what else runs: a run's thread count changes its arithmetic (the order of its sums), so
    a recipe and seed give the same numbers on one machine however they are scheduled
    (executors/schedule.py packs runs by these counts instead). `cores`: another machine's
    (estimates), else this one's."""
    if override:
        return override
    return threads_for(macs_per_image(model) * batch_size, device.type, cores or all_cores())


# Below this much work per training step, PyTorch's own convolution (im2col + one GEMM per
# image) beats oneDNN's, whose per-call setup outweighs such tiny convolutions. Measured with
# the harness loop on 1 thread (2-core AMD EPYC with AVX-512, torch 2.13, `harness bench`
# prints both): tutorial-base@4 (2.6 M MACs/step) 1.17x faster on ATen's; tutorial-c16@4 (7 M)
# 0.90x, tutorial-c32@4 (13 M) 0.74x, medium-tutorial-net@20 (13 M) 0.68x, the VGG 0.45x.
ATEN_CONV_MACS = 5e6


def choose_conv(model: torch.nn.Module, batch_size: int, device: torch.device) -> str:
    """The convolution implementation a run trains with (recorded as the param `conv`):
    "aten" below ATEN_CONV_MACS per step on the CPU, else "onednn" there; the device's own
    library elsewhere."""
    if device.type != "cpu":
        return {"cuda": "cudnn"}.get(device.type, device.type)
    if not torch.backends.mkldnn.is_available():
        return "aten"
    return "aten" if macs_per_image(model) * batch_size < ATEN_CONV_MACS else "onednn"


# Subnormal floats (below 1.2e-38) cost x86 cores tens of times a normal operation. Weight decay
# drives the weights of dead units (and Adam's moments of them) geometrically through that range:
# in the main job, cs598-vgg-bn-aug's epochs slowed from 20 s to over 90 s after epoch 35, when 30%
# of its weights and Adam moments were subnormal (fc_layer.1: 53%). Flushing them to zero (FTZ/DAZ)
# changes no accuracy a float32 network can show and keeps every epoch at full speed; GPUs train
# so by default. The flag is per thread and a new thread inherits it: harness/__init__.py starts
# PyTorch's pool with it before any tensor work, `flushing_denormals` sets it on the main thread while
# a run trains, and each run checks that it holds on all its threads (a process that started
# torch's pool before importing the harness would not have it there).
FLUSH_DENORMAL = torch.set_flush_denormal(True)  # False where the CPU has no FTZ/DAZ (not x86 with SSE3)
torch.set_flush_denormal(False)


@contextlib.contextmanager
def flushing_denormals():
    """Subnormals as zero on this thread (and the pool's threads it creates) while a run trains."""
    torch.set_flush_denormal(FLUSH_DENORMAL)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def start_flushing_pool() -> None:
    """Start PyTorch's pool (all cores) with the flag, if nothing started it yet: for a process
    that trains in-process beside other tensor work (the tests' own), as a command's pool does."""
    with flushing_denormals():
        before = torch.get_num_threads()
        torch.set_num_threads(all_cores())
        torch.ones(1 << 22) * 1.0  # a parallel region: the threads start here, inheriting the flag
        torch.set_num_threads(before)


def denormals_flushed(threads: int) -> bool:
    """Whether subnormals are flushed on every thread a run computes on (recorded as the param
    `flush_denormal`): on `threads` threads, a pointwise op (split over threads only from a few
    million elements) turns 1e-40 into 0, and a matrix product of 1e-20s (each product subnormal,
    their sum not) is 0 everywhere. Some 20 ms."""
    if not FLUSH_DENORMAL:
        return False
    before = torch.get_num_threads()
    torch.set_num_threads(max(threads, 1))
    try:
        x, m = torch.full((1 << 22,), 1e-40), torch.full((512, 512), 1e-20)
        return bool((x * 1.0).count_nonzero().item() == 0 and (m @ m).count_nonzero().item() == 0)
    finally:
        torch.set_num_threads(before)


def configure_backend(device: torch.device, threads: int | None = None, conv: str = "onednn") -> None:
    """Set for every run, not once per process: a process trains recipes with different needs."""
    torch.set_num_threads(threads or all_cores())
    torch.backends.mkldnn.enabled = conv != "aten"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The harness's own commit (-dirty with local changes), read once per process."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's "model name", lscpu's "Model name", else the
    platform's words): on Linux platform.processor() is empty and every x86 CPU read `x86_64`."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line and line.split(":", 1)[1].strip():
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:") and line.split(":", 1)[1].strip():
                return " ".join(line.split(":", 1)[1].split())
    except (OSError, subprocess.SubprocessError):
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    """What a run's times were measured on: the GPU's name, or the CPU's model and the cores this
    process may use (`cpu:Intel(R) Xeon(R) Processor, 2 cores`). Times are only comparable
    between runs of one device name (the report compares them so)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu:{cpu_model()}, {all_cores()} cores"
    return f"{device.type}:{cpu_model()}"
