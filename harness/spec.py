"""Experiment specs: one TOML file per documented model, validated into typed dataclasses.

Every defect is reported as one line naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .data import AUGMENTATIONS, NORMALIZATIONS, PAD_MODES
from .errors import HarnessError, UsageError

OPTIMIZERS = ("sgd", "adam")
LOSSES = ("cross_entropy", "nll")
SCHEDULES = ("constant", "sgdr")
CHECKPOINTS = ("last", "best_val_loss")
VAL_SPLITS = ("random", "stratified")


@dataclass
class Source:
    seed: str  # file name in shared/seeds
    author: str
    site: str
    shows: str


@dataclass
class ModelSpec:
    name: str
    args: dict = field(default_factory=dict)


@dataclass
class DataSpec:
    normalization: str
    augmentation: str = "none"
    pad_mode: str = "zeros"
    val_fraction: float = 0.0
    val_split: str = "random"


@dataclass
class OptimizerSpec:
    name: str
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class Phase:
    """`epochs` epochs at `lr`: constant, or SGDR (cosine from lr to 0 within each epoch, restarted each epoch)."""

    epochs: int
    lr: float
    schedule: str = "constant"


@dataclass
class TrainSpec:
    loss: str
    optimizer: OptimizerSpec
    batch_size: int
    phases: list[Phase]
    checkpoint: str = "last"

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)


@dataclass
class Published:
    test_accuracy: list[float] = field(default_factory=list)  # percent, every published repeat
    best_epoch_accuracy: float | None = None
    micro_f1: float | None = None
    confusion_matrix: list[list[int]] | None = None
    note: str = ""


@dataclass
class Experiment:
    id: str
    title: str
    source: Source
    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    published: Published
    assumed: list[str] = field(default_factory=list)

    def training_dict(self) -> dict:
        """What determines training (not titles or published numbers): the config-hash input."""
        return {"model": dataclasses.asdict(self.model), "data": dataclasses.asdict(self.data), "train": dataclasses.asdict(self.train)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def published_mean(self) -> float | None:
        acc = self.published.test_accuracy
        return sum(acc) / len(acc) if acc else None


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts/lists -> dotted keys (`train.phases.0.lr`), for MLflow params."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(i, dict) for i in v):
            for i, item in enumerate(v):
                out.update(flatten(item, f"{key}.{i}."))
        else:
            out[key] = v
    return out


def config_hash(exp: Experiment, overrides: dict, seed: int, data_fingerprint: str) -> str:
    blob = json.dumps({"spec": exp.training_dict(), "overrides": overrides, "seed": seed, "data": data_fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    fields = {f.name: f for f in dataclasses.fields(cls)}
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


def load_spec(path: str | Path) -> Experiment:
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
        if not 0 <= exp.data.val_fraction < 1:
            raise _SpecError("data.val_fraction", "must be in [0, 1)")
        if exp.train.checkpoint == "best_val_loss" and exp.data.val_fraction == 0:
            # without a held-out split, "best" would be chosen on the test set
            raise _SpecError("train.checkpoint", "best_val_loss needs data.val_fraction > 0")
        for a in exp.assumed:
            if not _key_exists(raw, a):
                raise _SpecError("assumed", f"{a!r} names no key of this spec")
        from .models import check_forward, create_model

        try:
            check_forward(exp.model.name, create_model(exp.model.name, **exp.model.args))
        except HarnessError as e:
            raise _SpecError("model", str(e)) from None
    except _SpecError as e:
        raise HarnessError(f"{path}: {e}") from None
    return exp


def experiments_dir() -> Path:
    """`experiments/` of the working directory when present, else the one beside the package."""
    cwd = Path.cwd() / "experiments"
    if cwd.is_dir():
        return cwd
    return Path(__file__).resolve().parent.parent / "experiments"


def load_catalogue(directory: str | Path | None = None) -> dict[str, Experiment]:
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
        exp = load_spec(p)
        if exp.id in out:
            raise HarnessError(f"{p}: id {exp.id!r} is already defined by another spec in {d}")
        out[exp.id] = exp
    return out


def select(catalogue: dict[str, Experiment], ids: typing.Iterable[str]) -> list[Experiment]:
    chosen = []
    for i in ids:
        if i not in catalogue:
            raise UsageError(f"unknown experiment {i!r} (known: {', '.join(catalogue)})")
        chosen.append(catalogue[i])
    return chosen
