"""Experiment specs: the typed configuration of one documented model (nanoGPT-style
dataclasses), plus its config hash. Reading and validating TOML files is catalogue.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
from dataclasses import dataclass, field

from ..models.user_code import UserCode

OPTIMIZERS = ("sgd", "adam")
LOSSES = ("cross_entropy", "nll")
SCHEDULES = ("constant", "sgdr")
CHECKPOINTS = ("last", "best_val_loss")
VAL_SPLITS = ("random", "stratified")
EVAL_MODES = ("eval", "train")
INITS = ("current", "torch<=0.4")
CROP_STYLES = ("torchvision", "fastai0.7")
ROUNDINGS = ("round", "truncate")


@dataclass
class Source:
    seed: str  # file name in shared/seeds
    author: str
    site: str
    shows: str


@dataclass
class ModelSpec:
    # a registered network, "package.module:Factory", or with `file` the factory's name in that file
    name: str
    args: dict = field(default_factory=dict)
    file: str = ""  # a .py file of the user's, relative to the spec
    # "torch<=0.4": BatchNorm weights drawn uniformly from [0, 1], as PyTorch did until 0.4
    # (conv and linear initialisation is the same then and now)
    init: str = "current"


@dataclass
class DataSpec:
    normalization: str
    augmentation: str = "none"
    pad_mode: str = "zeros"  # zeros | reflect (dcb|abcd|cba) | symmetric (OpenCV BORDER_REFLECT: dcba|abcd|dcba)
    # crop offsets for a pad p: torchvision RandomCrop draws 0..2p; fastai 0.7 floor(u * 2p), i.e. 0..2p-1
    crop_style: str = "torchvision"
    val_fraction: float = 0.0
    val_split: str = "random"


@dataclass
class StepClamp:
    """cs598's Adam workaround: from epoch `after_epoch` + 1 on (0-based `epoch > after_epoch`),
    before every optimizer step, each parameter's Adam step counter that reached `limit` is set
    back to `reset_to`. It keeps the bias correction 1 - beta2**step (and so the step size) away
    from its limit of 1: at step ~1000, sqrt(1 - 0.999**1000) = 0.80."""

    after_epoch: int
    limit: int
    reset_to: int


@dataclass
class OptimizerSpec:
    name: str
    momentum: float = 0.0
    weight_decay: float = 0.0
    step_clamp: StepClamp | None = None


@dataclass
class Phase:
    """`epochs` epochs at `lr`: constant, or SGDR (fastai 0.7's CosAnneal with cycle_len=1: cosine
    from lr to 0 within each epoch, restarted each epoch; the phase's first len/20 iterations at lr/100)."""

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
    # fastai builds a new optimizer in every fit() call: momentum buffers restart at each phase
    fresh_optimizer_per_phase: bool = False

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)


@dataclass
class EvalSpec:
    """How the write-up measured accuracy. `train` = the network left in training mode
    (dropout active, BatchNorm normalising each batch by its own statistics), which makes
    the result depend on `batch_size`."""

    mode: str = "eval"
    batch_size: int = 1000


@dataclass
class Published:
    test_accuracy: list[float] = field(default_factory=list)  # percent, every published repeat
    # how the numbers were printed: "round" to `precision` (53.44 = 53.435..53.445) or
    # "truncate" (`%2d%%`: 63 = 63.0 <= acc < 64.0)
    precision: float = 0.01
    rounding: str = "round"
    best_epoch_accuracy: float | None = None
    micro_f1: float | None = None
    confusion_matrix: list[list[int]] | None = None
    note: str = ""

    def interval(self) -> tuple[float, float] | None:
        """The accuracies the published numbers admit: every repeat's printing interval, joined."""
        if not self.test_accuracy:
            return None
        if self.rounding == "truncate":
            return min(self.test_accuracy), max(self.test_accuracy) + self.precision
        half = self.precision / 2
        return min(self.test_accuracy) - half, max(self.test_accuracy) + half


NOT_FROM_TOML = {"toml": False}  # field metadata: set by the loader, never by a spec


@dataclass
class Experiment:
    id: str
    title: str
    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    source: Source | None = None  # required of the documented catalogue, optional in a user's recipe
    published: Published = field(default_factory=Published)
    eval: EvalSpec = field(default_factory=EvalSpec)
    assumed: list[str] = field(default_factory=list)
    user_spec: str = field(default="", metadata=NOT_FROM_TOML)  # a user's recipe: the path it was read from
    code: UserCode | None = field(default=None, metadata=NOT_FROM_TOML)  # a network from the user's code

    def training_dict(self) -> dict:
        """What determines training and measurement (not titles or published numbers): the config-hash input.
        A user's network adds its code's hash: an edited network is a new configuration."""
        model = dataclasses.asdict(self.model)
        if not model["file"]:
            del model["file"]  # the documented recipes' hashes stay what they were
        else:  # "./nets.py", "nets.py" and "sub/../nets.py" name one file: one configuration
            model["file"] = posixpath.normpath(model["file"].replace("\\", "/"))
        if self.code is not None:
            model["code_sha256"] = self.code.sha256
        return {"model": model, "data": dataclasses.asdict(self.data),
                "train": dataclasses.asdict(self.train), "eval": dataclasses.asdict(self.eval)}

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
