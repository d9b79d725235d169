"""A recipe's network, whoever wrote it: a registered one of the write-ups (harness/models) or the
user's own code (`[model] name = "package.module:Factory"`, or `file` and `name`). Every stage
that needs the network builds it here, so both kinds train, stack, bench and log the same way."""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from ..errors import HarnessError
from ..models import MAX_WEIGHTS, check_forward, create_model
from ..models import user_code
from ..models.user_code import UserCode
from .spec import Experiment, ModelSpec


def is_user_network(model: ModelSpec) -> bool:
    return bool(model.file) or ":" in model.name


def resolve_code(model: ModelSpec, spec_dir: Path) -> UserCode | None:
    """The user's code a spec names (imported and hashed now), or None for a registered network."""
    if not is_user_network(model):
        return None
    return user_code.resolve(model.name, model.file, spec_dir)


def build_model(exp: Experiment) -> nn.Module:
    """The recipe's network with its arguments, not yet initialised the old way (apply_init)."""
    if exp.code is None:
        if is_user_network(exp.model):
            raise HarnessError(f"{exp.id}: the network's code was not resolved when the spec was read")
        return create_model(exp.model.name, **exp.model.args)
    return user_code.build(exp.code, exp.model.args, MAX_WEIGHTS)


# the networks that passed check_network in this process, by what they are built from: the catalogue
# is read again by each stage of a command (a report reads it about ten times), and building and
# running its 14 networks each time cost about 0.1 CPU-s a read
_passed: set[tuple] = set()


def _identity(exp: Experiment) -> tuple:
    code = exp.code
    made_of = (code.module, code.attr, code.file, code.sha256) if code is not None else ()
    return (exp.model.name, json.dumps(exp.model.args, sort_keys=True, default=repr), made_of)


def check_network(exp: Experiment) -> None:
    """Built and run forward once on a CIFAR-shaped batch: 10 finite logits per image (a user's network
    also in training mode, with a gradient). Once per process for the same network, arguments and
    code (a user's file edited is other code: its hash differs); a failure is checked again each time."""
    key = _identity(exp)
    if key in _passed:
        return
    model = build_model(exp)
    check_forward(exp.model.name if exp.code is None else exp.code.label, model)
    if exp.code is not None:  # the documented networks are known to train
        user_code.check_learns(exp.code.label, model, check_forward(exp.code.label, model, training=True))
    _passed.add(key)
