"""Networks registered by name (timm/fvcore style): duplicates rejected, unknown names
answered with the list of known ones."""

from __future__ import annotations

import inspect
import typing
from typing import Callable

import torch
import torch.nn as nn

from ..errors import HarnessError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def deco(fn: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


MAX_WIDTH = 1 << 14  # channels or units per layer; the widest documented layer has 3,072
MAX_LAYERS = 32
MAX_WEIGHTS = 200_000_000  # ~0.8 GB of fp32 weights; the largest documented network has 5.9M


def _check_args(name: str, fn: Callable, kwargs: dict) -> None:
    """Every argument is a layer width (int) or a list of widths: each must be 1..MAX_WIDTH,
    checked before anything is built (c1 = -6 or 10**12 would fail deep inside torch, or
    allocate until the machine gives up)."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    for key, value in kwargs.items():
        if key not in sig.parameters:
            raise HarnessError(f"model {name!r}: unknown argument {key!r} (known: {', '.join(sig.parameters) or 'none'})")
        want = hints.get(key, int)
        items = value if typing.get_origin(want) is list else [value]
        if typing.get_origin(want) is list and (not isinstance(value, list) or not value):
            raise HarnessError(f"model {name!r}: argument {key!r} must be a non-empty list of layer widths, found {value!r}")
        for v in items:
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_WIDTH:
                raise HarnessError(f"model {name!r}: argument {key!r} must be {'widths' if items is value else 'a width'} "
                                   f"between 1 and {MAX_WIDTH}, found {value!r}")
        if items is value:
            if len(value) > MAX_LAYERS:
                raise HarnessError(f"model {name!r}: argument {key!r} lists {len(value)} layers (at most {MAX_LAYERS})")
            # adjacent widths bound the weights of a dense or 3x3 layer between them
            if 9 * sum(a * b for a, b in zip(value, value[1:])) > MAX_WEIGHTS:
                raise HarnessError(f"model {name!r}: argument {key!r} = {value} would need more than {MAX_WEIGHTS:,} weights")


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in _REGISTRY:
        raise HarnessError(f"unknown model {name!r} (known: {', '.join(list_models())})")
    _check_args(name, _REGISTRY[name], kwargs)
    try:
        return _REGISTRY[name](**kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise HarnessError(f"model {name!r}: bad arguments {kwargs} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def apply_init(model: nn.Module, init: str) -> nn.Module:
    """Re-create the initialisation of an older PyTorch where it differs from today's.
    "torch<=0.4": `_BatchNorm.reset_parameters` drew the weight uniformly from [0, 1] (bias 0);
    from 0.5 on it is 1. Conv and Linear were uniform(+-1/sqrt(fan_in)) then and are now
    (kaiming_uniform with a = sqrt(5) gives the same bound), so only BatchNorm changes."""
    if init == "current":
        return model
    if init != "torch<=0.4":
        raise HarnessError(f"unknown init {init!r} (known: current, torch<=0.4)")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.uniform_(0, 1)
                m.bias.zero_()
    return model


def check_forward(name: str, model: nn.Module, training: bool = False) -> torch.Tensor:
    """A dry forward pass on two 32x32 images, 10 finite logits each: arguments that construct
    but do not fit together (the tutorial net's hard-coded 16 * 5 * 5), or a user's network of
    the wrong shape, are caught when the spec is read. `training`: in training mode and with
    gradients, as the loop calls it (a network may return auxiliary outputs only then)."""
    mode = " in training mode" if training else ""
    was_training = model.training
    model.train(training)
    try:
        with torch.set_grad_enabled(training):
            out = model(torch.zeros(2, 3, 32, 32))
    except Exception as e:  # a user's network can raise anything
        raise HarnessError(f"model {name!r}: does not run{mode} on 32x32 images ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise HarnessError(f"model {name!r}:{mode} returns {type(out).__name__} for 2 images, expected a tensor of 10 logits each")
    if tuple(out.shape) != (2, 10):
        raise HarnessError(f"model {name!r}:{mode} gives outputs of shape {tuple(out.shape)} for 2 images, expected (2, 10)")
    if not training and not torch.isfinite(out).all():  # (training mode on constant images: batch statistics of nothing)
        raise HarnessError(f"model {name!r}:{mode} gives non-finite outputs (nan or inf) for 2 images")
    return out


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
