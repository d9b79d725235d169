"""The documented networks. Importing this package registers all of them.

- registry.py: register by name, create, count parameters, check a forward pass.
- user_code.py: a network from the user's code (module:Factory, or a file), imported, hashed, checked.
- tutorial.py, medium.py, fastai.py, skl.py: the write-ups' networks, one file per source.
"""

from . import fastai, medium, skl, tutorial  # noqa: F401  (registration side effect)
from .registry import MAX_WEIGHTS, apply_init, check_forward, count_params, create_model, list_models, register_model

__all__ = ["MAX_WEIGHTS", "apply_init", "check_forward", "count_params", "create_model", "list_models", "register_model"]
