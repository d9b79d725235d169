"""The catalogue: experiments/*.toml read into validated Experiment specs.

Every defect is reported as one line naming the file and the full dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..data.loader import AUGMENTATIONS, NORMALIZATIONS, PAD_MODES
from ..errors import HarnessError, UsageError
from .network import check_network, resolve_code
from .spec import (CHECKPOINTS, CROP_STYLES, EVAL_MODES, INITS, LOSSES, OPTIMIZERS, ROUNDINGS, SCHEDULES, VAL_SPLITS,
                   Experiment)

# --------------------------------------------------------------------------- validation

_CHOICES = {
    "data.normalization": tuple(NORMALIZATIONS),
    "data.augmentation": AUGMENTATIONS,
    "data.pad_mode": PAD_MODES,
    "data.val_split": VAL_SPLITS,
    "train.loss": LOSSES,
    "train.optimizer.name": OPTIMIZERS,
    "train.checkpoint": CHECKPOINTS,
    "train.phases.schedule": SCHEDULES,
    "model.init": INITS,
    "data.crop_style": CROP_STYLES,
    "eval.mode": EVAL_MODES,
    "published.rounding": ROUNDINGS,
}


class _SpecError(Exception):
    def __init__(self, key: str, msg: str):
        super().__init__(f"{key}: {msg}")
        self.key = key


def _typename(t) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _check(value, tp, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(value, inner[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _SpecError(key, f"expected a table, found {type(value).__name__}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise _SpecError(key, f"expected a list, found {type(value).__name__}")
        return [_check(v, args[0], f"{key}[{i}]" if not dataclasses.is_dataclass(args[0]) else key) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _SpecError(key, f"expected a table, found {type(value).__name__}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _SpecError(key, f"expected a number, found {value!r}")
        if not math.isfinite(value) or abs(value) > 1e15:
            raise _SpecError(key, f"expected a finite number, found {value!r}")
        return float(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise _SpecError(key, f"expected true or false, found {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _SpecError(key, f"expected an integer, found {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _SpecError(key, f"expected a string, found {value!r}")
        return value
    raise _SpecError(key, f"unsupported type {_typename(tp)}")  # pragma: no cover


def _build(cls, table: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("toml", True)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise _SpecError(f"{prefix}.{unknown[0]}" if prefix else unknown[0], f"unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _SpecError(key, "missing key")
            continue
        value = _check(table[name], hints[name], key)
        choices = _CHOICES.get(key.split("[")[0])
        if choices and value not in choices:
            raise _SpecError(key, f"unknown value {value!r} (known: {', '.join(choices)})")
        kwargs[name] = value
    return cls(**kwargs)


def _key_exists(raw: dict, dotted: str) -> bool:
    node = raw
    for part in dotted.split("."):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return False
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def load_spec(path: str | Path, user: bool = False) -> Experiment:
    """One spec, checked; `user`: a recipe of the user's own (source and published optional,
    tagged as the user's), as opposed to one of the documented catalogue."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise HarnessError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError as e:
        raise HarnessError(f"{path}: not UTF-8 text (byte {e.start}); TOML specs must be UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise HarnessError(f"{path}: invalid TOML ({e})") from None
    except RecursionError:
        raise HarnessError(f"{path}: invalid TOML (nested too deeply)") from None
    try:
        exp = _build(Experiment, raw)
        if exp.id != path.stem:
            raise _SpecError("id", f"{exp.id!r} differs from the file name {path.stem!r}")
        if not exp.train.phases:
            raise _SpecError("train.phases", "at least one phase is needed")
        for p in exp.train.phases:
            if not 1 <= p.epochs <= 100_000 or not p.lr > 0:
                raise _SpecError("train.phases", "each phase needs 1 <= epochs <= 100000 and lr > 0")
        if not 1 <= exp.train.batch_size <= 1_000_000:
            raise _SpecError("train.batch_size", "must be between 1 and 1000000")
        opt = exp.train.optimizer
        if not 0 <= opt.momentum < 1 or not 0 <= opt.weight_decay < 1:
            raise _SpecError("train.optimizer", "momentum and weight_decay must be in [0, 1)")
        clamp = opt.step_clamp
        if clamp is not None and (opt.name != "adam" or clamp.after_epoch < 0 or not 1 <= clamp.reset_to < clamp.limit):
            raise _SpecError("train.optimizer.step_clamp", "needs the adam optimizer, after_epoch >= 0 and 1 <= reset_to < limit")
        if not 1 <= exp.eval.batch_size <= 1_000_000:
            raise _SpecError("eval.batch_size", "must be between 1 and 1000000")
        if not 0 < exp.published.precision <= 10:
            raise _SpecError("published.precision", "must be in (0, 10]")
        if not 0 <= exp.data.val_fraction < 1:
            raise _SpecError("data.val_fraction", "must be in [0, 1)")
        if exp.train.checkpoint == "best_val_loss" and exp.data.val_fraction == 0:
            # without a held-out split, "best" would be chosen on the test set
            raise _SpecError("train.checkpoint", "best_val_loss needs data.val_fraction > 0")
        for a in exp.assumed:
            if not _key_exists(raw, a):
                raise _SpecError("assumed", f"{a!r} names no key of this spec")
        if not user and exp.source is None:
            raise _SpecError("source", "missing key (a documented recipe names its write-up)")
        if user:
            exp.user_spec = str(path.resolve())
        try:
            exp.code = resolve_code(exp.model, path.resolve().parent)
            check_network(exp)  # built and run forward once before any run exists
        except HarnessError as e:
            key, _, rest = str(e).partition(": ")
            raise (_SpecError(key, rest) if key.startswith("model.") else _SpecError("model", str(e))) from None
    except _SpecError as e:
        raise HarnessError(f"{path}: {e}") from None
    return exp


def experiments_dir() -> Path:
    """`experiments/` of the working directory when present, else the one beside the package."""
    cwd = Path.cwd() / "experiments"
    if cwd.is_dir():
        return cwd
    return Path(__file__).resolve().parents[2] / "experiments"  # the repository root, beside harness/


def load_catalogue(directory: str | Path | None = None, user: bool = False) -> dict[str, Experiment]:
    """Every spec of a folder (default: the documented catalogue); `user`: a folder of the user's own recipes."""
    d = Path(directory) if directory else experiments_dir()
    if not d.is_dir():
        raise HarnessError(f"experiments folder {d} not found")
    out: dict[str, Experiment] = {}
    try:
        # `.TOML` too: a spec is never ignored for the case of its suffix
        paths = sorted(p for p in d.iterdir() if p.suffix.lower() == ".toml" and not p.name.startswith("."))
    except OSError as e:
        raise HarnessError(f"experiments folder {d}: cannot read ({e.strerror or type(e).__name__})") from None
    for p in paths:
        exp = load_spec(p, user=user)
        if exp.id in out:
            raise HarnessError(f"{p}: id {exp.id!r} is already defined by another spec in {d}")
        out[exp.id] = exp
    return out


def _is_catalogue(path: Path) -> bool:
    return path.resolve().parent == experiments_dir().resolve()


def add_user_specs(catalogue: dict[str, Experiment], specs: typing.Iterable[Experiment]) -> dict[str, Experiment]:
    """The catalogue and the user's recipes beside it; an id of the catalogue's is refused."""
    out = dict(catalogue)
    for exp in specs:
        if exp.id in out and exp.user_spec and out[exp.id].user_spec == exp.user_spec:
            continue  # the same file named twice
        if exp.id in out:
            theirs = out[exp.id].user_spec or f"the documented recipe in {experiments_dir()}"
            raise UsageError(f"{exp.user_spec}: id {exp.id!r} is already taken by {theirs}; give your recipe an id of its own")
        out[exp.id] = exp
    return out


def with_folder(catalogue: dict[str, Experiment], directory: str | Path) -> dict[str, Experiment]:
    """`run-all --experiments DIR`: that folder's specs beside the catalogue."""
    d = Path(directory)
    if d.is_dir() and d.resolve() == experiments_dir().resolve():
        return catalogue
    return add_user_specs(catalogue, load_catalogue(d, user=True).values())


def is_spec_path(target: str) -> bool:
    """`harness run` takes ids and paths: a path ends in .toml or has a "/" in it."""
    return target.lower().endswith(".toml") or "/" in target


def select_targets(catalogue: dict[str, Experiment], targets: typing.Iterable[str]) -> list[Experiment]:
    """Ids of the catalogue and paths of the user's specs, in the order given."""
    chosen, users = [], []
    for t in targets:
        if not is_spec_path(t):
            chosen.append(t)
            continue
        p = Path(t)
        if not p.is_file():
            raise UsageError(f"{t}: no such spec file")
        if _is_catalogue(p):
            chosen.append(load_spec(p).id)
            continue
        exp = load_spec(p, user=True)
        users.append(exp)
        chosen.append(exp.id)
    full = add_user_specs(catalogue, users)
    return select(full, chosen)


def select(catalogue: dict[str, Experiment], ids: typing.Iterable[str]) -> list[Experiment]:
    chosen = []
    for i in ids:
        if i not in catalogue:
            raise UsageError(f"unknown experiment {i!r} (known: {', '.join(catalogue)}; or give a spec's path, e.g. ./my-net.toml)")
        chosen.append(catalogue[i])
    return chosen
