"""CIFAR-10 from the official python-format batches, held as tensors (no torchvision).

The whole set is loaded once as uint8, normalised once on the target device, and served
as `randperm` slices with whole-batch augmentation (airbench style): no per-image Python
work, no DataLoader workers.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import HarnessError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "cs598": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "fastai": ((0.4914, 0.48216, 0.44653), (0.24703, 0.24349, 0.26159)),
}
AUGMENTATIONS = ("none", "crop4+flip")
PAD_MODES = ("zeros", "reflect")


@dataclass
class Cifar10:
    """The loaded set: images as uint8 (N, 3, 32, 32), labels as int64 (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    root: Path

    @property
    def fingerprint(self) -> str:
        """Hash of the arrays themselves, so a copy in another folder has the same id."""
        h = hashlib.sha256()
        for t in (self.train_x, self.train_y, self.test_x, self.test_y):
            h.update(t.numpy().tobytes())
        h.update("\n".join(self.classes).encode())
        return h.hexdigest()[:16]


# --------------------------------------------------------------------------- locating


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "harness" / "cifar10"


def _is_batches_folder(p: Path) -> bool:
    return (p / META_FILE).exists() or (p / TEST_FILE).exists() or (p / TRAIN_FILES[0]).exists()


def resolve_data_dir(data_dir: str | os.PathLike | None, download: bool = True) -> Path:
    """The `cifar-10-batches-py` folder to read.

    `data_dir` (or HARNESS_DATA_DIR) may be that folder or its parent. With neither, the
    per-user cache is used and filled from the official archive when empty.
    """
    given = data_dir if data_dir is not None else os.environ.get("HARNESS_DATA_DIR") or None
    if given is not None:
        p = Path(given).expanduser().resolve()  # recorded with every run: make it unambiguous
        if not p.exists():
            raise HarnessError(f"data dir {p} does not exist (pass --data-dir pointing at cifar-10-batches-py or its parent)")
        if not p.is_dir():
            raise HarnessError(f"data dir {p} is not a folder (pass --data-dir pointing at cifar-10-batches-py or its parent)")
        if (p / FOLDER).is_dir():
            return p / FOLDER
        if _is_batches_folder(p):
            return p
        raise HarnessError(
            f"data dir {p} holds no CIFAR-10 python batches (expected {FOLDER}/ or {META_FILE}, "
            f"{TRAIN_FILES[0]}..5, {TEST_FILE})"
        )
    cache = default_cache_dir()
    if (cache / FOLDER / META_FILE).exists():
        return cache / FOLDER
    if not download:
        raise HarnessError(f"no CIFAR-10 in {cache}; pass --data-dir DIR with a local cifar-10-batches-py")
    download_cifar10(cache)
    return cache / FOLDER


def download_cifar10(dest: Path, url: str | None = None, md5: str = CIFAR10_MD5) -> Path:
    """Fetch the official archive, verify its MD5, extract into `dest`."""
    from tqdm import tqdm

    url = url or os.environ.get("HARNESS_CIFAR10_URL") or CIFAR10_URL
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix="cifar10-", suffix=".tar.gz", dir=dest)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=30) as resp, os.fdopen(fd, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-10") as bar:
                    while chunk := resp.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise HarnessError(
                f"cannot download CIFAR-10 from {url} ({reason}); offline? pass --data-dir DIR with a local cifar-10-batches-py"
            ) from None
        if digest.hexdigest() != md5:
            raise HarnessError(f"downloaded archive has MD5 {digest.hexdigest()}, expected {md5}; not extracting it")
        try:
            with tarfile.open(tmp, "r:gz") as tar:
                tar.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise HarnessError(f"cannot extract {url}: {e}") from None
        if not (dest / FOLDER / META_FILE).exists():
            raise HarnessError(f"archive from {url} has no {FOLDER}/{META_FILE}")
        return dest / FOLDER
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- reading


def _unpickle(path: Path) -> dict:
    if not path.exists():
        raise HarnessError(f"{path}: missing (a CIFAR-10 python folder has {META_FILE}, {', '.join(TRAIN_FILES)}, {TEST_FILE})")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, MemoryError) as e:
        raise HarnessError(f"{path}: corrupt or truncated pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise HarnessError(f"{path}: expected a dict, found {type(d).__name__}")
    # files pickled with byte-string keys read back as str under latin1; accept both
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _read_batch(path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    for key in ("data", "labels"):
        if key not in d:
            raise HarnessError(f"{path}: no '{key}' entry (found {sorted(d)})")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise HarnessError(f"{path}: 'data' must be uint8 of shape (N, 3072), found {data.dtype} {data.shape}")
    if labels.ndim != 1 or len(labels) != len(data):
        raise HarnessError(f"{path}: {len(labels)} labels for {len(data)} images")
    if not np.issubdtype(labels.dtype, np.integer):
        raise HarnessError(f"{path}: labels must be integers, found {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise HarnessError(f"{path}: labels out of range 0..{n_classes - 1} (found {labels.min()}..{labels.max()})")
    # rows are R-plane, G-plane, B-plane of 32x32: a reshape gives CHW directly
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(root: str | os.PathLike) -> Cifar10:
    """Read a `cifar-10-batches-py` folder; every defect is reported as one HarnessError line."""
    root = Path(root)
    meta = _unpickle(root / META_FILE)
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != 10:
        raise HarnessError(f"{root / META_FILE}: 'label_names' must list 10 class names")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    parts = [_read_batch(root / f, len(classes)) for f in TRAIN_FILES]
    tx, ty = _read_batch(root / TEST_FILE, len(classes))
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if len(x) == 0 or len(tx) == 0:
        raise HarnessError(f"{root}: no images in the training or test batches")
    return Cifar10(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(tx), torch.from_numpy(ty), classes, root)


def write_cifar10(root: str | os.PathLike, train_x, train_y, test_x, test_y, classes, filenames: bool = True) -> Path:
    """Write arrays in the official format (5 train batches + test); used to make test data."""
    root = Path(root) / FOLDER
    root.mkdir(parents=True, exist_ok=True)

    def dump(name, x, y, label):
        d = {b"batch_label": label.encode(), b"labels": [int(v) for v in y], b"data": np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.uint8)}
        if filenames:
            d[b"filenames"] = [f"img_{i}.png".encode() for i in range(len(x))]
        with open(root / name, "wb") as f:
            pickle.dump(d, f, protocol=2)

    for i, idx in enumerate(np.array_split(np.arange(len(train_x)), 5)):
        dump(TRAIN_FILES[i], np.asarray(train_x)[idx], np.asarray(train_y)[idx], f"training batch {i + 1} of 5")
    dump(TEST_FILE, np.asarray(test_x), np.asarray(test_y), "testing batch 1 of 1")
    with open(root / META_FILE, "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in classes], b"num_cases_per_batch": len(test_x), b"num_vis": 3072}, f, protocol=2)
    return root


# --------------------------------------------------------------------------- splits


def split_train_val(labels: torch.Tensor, fraction: float, seed: int, stratified: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val). `random` mirrors the seed's shuffled-index split; `stratified`
    takes the same fraction from every class. Both depend only on `seed`."""
    n = len(labels)
    if fraction <= 0:
        return torch.arange(n), torch.empty(0, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    if not stratified:
        perm = torch.randperm(n, generator=g)
        k = int(np.floor(fraction * n))
        return perm[k:].sort().values, perm[:k].sort().values
    tr, va = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(np.floor(fraction * len(idx)))
        va.append(idx[:k])
        tr.append(idx[k:])
    return torch.cat(tr).sort().values, torch.cat(va).sort().values


def balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """About n indices with the classes as equal as the data allows (reproducible)."""
    if n >= len(labels):
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed + 7919)
    classes = labels.unique()
    per = [(labels == c).nonzero().flatten() for c in classes]
    per = [p[torch.randperm(len(p), generator=g)] for p in per]
    take, remaining, left = [0] * len(per), n, list(range(len(per)))
    while remaining > 0 and left:
        share = max(1, remaining // len(left))
        for i in list(left):
            k = min(share, len(per[i]) - take[i], remaining)
            take[i] += k
            remaining -= k
            if take[i] == len(per[i]):
                left.remove(i)
            if remaining == 0:
                break
    return torch.cat([p[:k] for p, k in zip(per, take)]).sort().values


# --------------------------------------------------------------------------- tensors on device


def normalize(x_uint8: torch.Tensor, mean, std, device, dtype=torch.float32) -> torch.Tensor:
    """uint8 NCHW -> normalised float on `device`, done once for the whole set."""
    x = x_uint8.to(device, non_blocking=True).to(dtype).div_(255)
    m = torch.tensor(mean, device=device, dtype=dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device, dtype=dtype).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)


def augment_crop_flip(x: torch.Tensor, pad: int, pad_mode: str, pad_values: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """Random pad-and-crop plus horizontal flip of a whole normalised batch.

    Zero padding means black pixels *before* normalisation (as torchvision pads the PIL
    image), i.e. per-channel value -mean/std here; `pad_values` carries that.
    """
    n, c, h, w = x.shape
    if pad_mode == "reflect":
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    else:
        padded = x.new_empty(n, c, h + 2 * pad, w + 2 * pad)
        padded[:] = pad_values.view(1, c, 1, 1) if pad_values is not None else 0
        padded[:, :, pad : pad + h, pad : pad + w] = x
    dev = x.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
    flip = torch.rand(n, generator=generator, device=generator.device).to(dev) < 0.5
    ar = torch.arange(h, device=dev)
    rows = (dy[:, None] + ar)[:, None, :, None]  # (n,1,h,1)
    cols = (dx[:, None] + ar)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # (n,1,1,w)
    ni = torch.arange(n, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    # one gather does crop and flip together
    return padded[ni, ci, rows, cols]


class TensorLoader:
    """Shuffled batches from a resident tensor; each epoch's order and augmentation come from
    a generator seeded by (seed, epoch), so a resumed run sees exactly the same batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = True,
                 augmentation: str = "none", pad_mode: str = "zeros", pad_values: torch.Tensor | None = None,
                 seed: int = 0, drop_last: bool = False):
        if augmentation not in AUGMENTATIONS:
            raise HarnessError(f"unknown augmentation {augmentation!r} (known: {', '.join(AUGMENTATIONS)})")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augmentation = augmentation
        self.pad_mode = pad_mode
        self.pad_values = pad_values
        self.seed = seed
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole epoch's (images, labels) in batch order, augmented."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        x, y = self.x, self.y
        if self.shuffle:
            perm = torch.randperm(len(x), generator=g).to(x.device)
            x, y = x[perm], y[perm]
        if self.augmentation == "crop4+flip":
            chunks = [augment_crop_flip(x[i : i + 8192], 4, self.pad_mode, self.pad_values, g) for i in range(0, len(x), 8192)]
            x = torch.cat(chunks) if chunks else x
        return x, y

    def batches(self, epoch: int):
        x, y = self.epoch(epoch)
        for i in range(len(self)):
            yield x[i * self.batch_size : (i + 1) * self.batch_size], y[i * self.batch_size : (i + 1) * self.batch_size]

    def __iter__(self):
        return self.batches(0)
