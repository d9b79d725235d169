"""Seeds trained together: the N networks of one recipe's repeats as one vmapped model.

`torch.func.stack_module_state` stacks the N networks' weights along a new first dimension and
`vmap(functional_call)` runs them as one batched model (convolutions become grouped ones), each
network on its own batch (its own data order and augmentation draws). The sum of the N losses
gives each network exactly its own gradient, and SGD / Adam are element-wise, so one optimizer
over the stacked weights is N optimizers. What is not automatic is randomness: a sequential run
draws its dropout masks from the global generator, seeded by its seed and advanced by its
weight initialisation. Here each network has its own generator in exactly that state, the masks
are drawn from it outside vmap in the order the sequential forward pass would draw them (the
same `bernoulli_` on the same shape), and handed to the network as buffers. Inside vmap no
randomness is allowed at all (vmap's default), so a recipe that draws anything else fails loudly
instead of training differently.

What is equal to a sequential run is stated in tests/test_together.py: step losses and final
weights within float tolerance (vmap's grouped kernels sum in another order).
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

from .environment import SMALL_STEP_MACS, macs_per_image
from ..recipes.spec import Experiment

# modules whose batched forward is exact and whose state is weights and BatchNorm statistics
STACKABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
             nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Sequential, nn.ModuleList, nn.LogSoftmax, nn.Softmax, nn.Identity)
PER_NETWORK_STATE = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def why_sequential(exp: Experiment, model: nn.Module, device: torch.device) -> str | None:
    """Why the recipe's seeds cannot be trained together (exactly, usefully), or None if they
    can; whether they are is then measured (stacking_rates)."""
    if device.type != "cpu":
        return "not measured on GPUs yet"
    if exp.train.optimizer.step_clamp is not None:
        return "its Adam step-count quirk is per network"
    if macs_per_image(model) * exp.train.batch_size >= SMALL_STEP_MACS:
        return "compute-bound: stacking gains nothing"
    for name, m in model.named_modules():
        if name and not isinstance(m, STACKABLE):
            return f"{type(m).__name__} is not stackable"
    return None


def stacking_rates(exp: Experiment, n: int, steps: int, device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    """(one network alone, n networks stacked): images per second per network, i.e. the images
    every network trained divided by the wall time, measured side by side on random batches
    after a warm-up, at the current thread setting. Both do the same arithmetic, so the ratio
    is what stacking saves in per-step overhead (or loses to vmap's own)."""
    from .loop import build_optimizer, loss_function

    loss_fn, b = loss_function(exp.train.loss), exp.train.batch_size
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(n, b, 3, 32, 32, generator=g).to(device)
    ys = torch.randint(0, 10, (n, b), generator=g).to(device)
    models = [_create(exp, s, device) for s in range(n)]
    single = copy.deepcopy(models[0])
    opt = build_optimizer(single, exp.train.optimizer, exp.train.phases[0].lr)
    stack = Stack(models, [torch.get_rng_state()] * n)
    sopt = build_optimizer(stack.holder, exp.train.optimizer, exp.train.phases[0].lr)

    def alone():
        loss = loss_fn(single(xs[0]).float(), ys[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def stacked():
        losses, _ = stack.forward_loss(xs, ys, loss_fn)
        sopt.zero_grad(set_to_none=True)
        losses.sum().backward()
        sopt.step()

    single.train()
    rates = []
    for fn, nets in ((alone, 1), (stacked, n)):
        for _ in range(max(2, steps // 10)):
            fn()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        rates.append(nets * steps * b / (time.perf_counter() - t0))
    return rates[0], rates[1]


def _create(exp: Experiment, seed: int, device: torch.device) -> nn.Module:
    from ..models import apply_init
    from ..recipes.network import build_model

    torch.manual_seed(seed)
    return apply_init(build_model(exp), exp.model.init).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _MaskDropout(nn.Module):
    """Dropout whose masks (already scaled by 1/(1-p), as F.dropout scales them) arrive as
    buffers, one per call in a forward pass (a module may be called twice)."""

    def __init__(self, calls: int):
        super().__init__()
        for k in range(calls):
            self.register_buffer(f"mask_{k}", torch.empty(0), persistent=False)
        self.calls = 0

    def forward(self, x):
        if not self.training:
            return x
        mask = getattr(self, f"mask_{self.calls}")
        self.calls += 1
        return x * mask


class Stack:
    """N networks of one architecture, trained as one. `rng_states`: each network's generator
    state (the global one of its sequential run, after its initialisation)."""

    def __init__(self, models: list[nn.Module], rng_states: list[torch.Tensor]):
        self.n = len(models)
        self.draws = _dropout_draws(models[0])  # [(module name, call, p, feature, shape fn)]
        self.base = copy.deepcopy(models[0])
        calls = {}
        for name, *_ in self.draws:
            calls[name] = calls.get(name, 0) + 1
        for name, k in calls.items():
            parent, _, leaf = name.rpartition(".")
            setattr(self.base.get_submodule(parent) if parent else self.base, leaf, _MaskDropout(k))
        self.base = self.base.to("meta")
        params, self.buffers = stack_module_state(models)
        self.holder = nn.Module()  # the stacked weights as parameters, for an ordinary optimizer
        self.params = {}
        for i, (k, v) in enumerate(params.items()):
            self.holder.register_parameter(f"p{i}", nn.Parameter(v.detach().clone()))
            self.params[k] = getattr(self.holder, f"p{i}")
        self.generators = [torch.Generator().set_state(s) for s in rng_states]
        self._shapes: dict[int, list[tuple]] = {}
        self._probe = models[0]

    def forward_loss(self, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
        """(losses [N], outputs [N, B, classes]) of one training step; x is [N, B, ...]."""
        masks = self._masks(x.shape[1:], x.device)

        def one(p, b, m, xi, yi):
            for mod in self.base.modules():
                if isinstance(mod, _MaskDropout):
                    mod.calls = 0
            out = functional_call(self.base, (p, {**b, **m}), (xi,))
            return loss_fn(out.float(), yi), out

        self.base.train()
        return vmap(one)(self.params, self.buffers, masks, x, y)

    def _masks(self, shape: torch.Size, device: torch.device) -> dict[str, torch.Tensor]:
        if not self.draws:
            return {}
        if shape not in self._shapes:
            self._shapes[shape] = _call_shapes(self._probe, shape)
        out: dict[str, list[torch.Tensor]] = {}
        for g in self.generators:  # per network, in its forward pass's order
            for (name, k, p, feature), s in zip(self.draws, self._shapes[shape]):
                size = (s[0], s[1]) + (1,) * (len(s) - 2) if feature else s
                noise = torch.empty(size).bernoulli_(1 - p, generator=g).div_(1 - p)
                out.setdefault(f"{name}.mask_{k}", []).append(noise)
        # drawn on the CPU, as a sequential CPU run draws them (a CUDA run would draw from the
        # CUDA generator instead: why runs on a GPU stay sequential, see why_sequential)
        return {k: torch.stack(v).to(device) for k, v in out.items()}

    # ---------------------------------------------------------------- one network out of N

    def unstack_into(self, i: int, model: nn.Module) -> None:
        state = {k: v[i].detach() for k, v in self.params.items()} | {k: v[i] for k, v in self.buffers.items()}
        model.load_state_dict(state)

    def load_network(self, i: int, weights: dict, rng_state: torch.Tensor) -> None:
        with torch.no_grad():
            for k, v in self.params.items():
                v[i].copy_(weights[k])
            for k, v in self.buffers.items():
                v[i].copy_(weights[k])
        self.generators[i].set_state(rng_state)

    def rng_state(self, i: int) -> torch.Tensor:
        return self.generators[i].get_state()


def optimizer_state_of(optimizer: torch.optim.Optimizer, i: int, n: int) -> dict:
    """Network i's part of the stacked optimizer, as its own sequential optimizer's state_dict."""
    sd = optimizer.state_dict()
    state = {j: {k: (v[i].clone() if k in PER_NETWORK_STATE else v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
             for j, s in sd["state"].items()}
    return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}


def stacked_optimizer_state(per_network: list[dict]) -> dict:
    """The inverse of optimizer_state_of: N networks' optimizer states as one."""
    first = per_network[0]
    state = {j: {k: (torch.stack([sd["state"][j][k] for sd in per_network]) if k in PER_NETWORK_STATE else v) for k, v in s.items()}
             for j, s in first["state"].items()}
    return {"state": state, "param_groups": copy.deepcopy(first["param_groups"])}


def _dropout_draws(model: nn.Module) -> list[tuple[str, int, float, bool]]:
    """Every dropout call of one training forward pass, in order: (module, call, p, feature)."""
    order: list[tuple[str, int, float, bool]] = []
    counts: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            def hook(mod, inputs, name=name):
                k = counts.get(name, 0)
                counts[name] = k + 1
                order.append((name, k, mod.p, isinstance(mod, nn.Dropout2d)))
            hooks.append(m.register_forward_pre_hook(hook))
    _dry_run(model, (2, 3, 32, 32), hooks)
    return order


def _call_shapes(model: nn.Module, shape: torch.Size) -> list[tuple]:
    """The input shape of every dropout call, in order, for one network's batch of `shape`."""
    shapes: list[tuple] = []
    hooks = [m.register_forward_pre_hook(lambda mod, inputs: shapes.append(tuple(inputs[0].shape)))
             for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d))]
    _dry_run(model, tuple(shape), hooks)
    return shapes


def _dry_run(model: nn.Module, shape: tuple, hooks: list) -> None:
    """A forward pass in eval mode on zeros (no randomness drawn, no statistics changed); the
    pre-hooks still see every dropout call."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
