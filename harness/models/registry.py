"""Networks registered by name (timm/fvcore style): duplicates rejected, unknown names
answered with the list of known ones."""

from __future__ import annotations

from typing import Callable

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


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in _REGISTRY:
        raise HarnessError(f"unknown model {name!r} (known: {', '.join(list_models())})")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as e:
        raise HarnessError(f"model {name!r}: bad arguments {kwargs} ({e})") from None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
