"""CIFAR-10's official "python version" on disk: finding the folder, downloading and verifying
the archive, reading the batches (without trusting them: see safe_pickle.py) and writing
them (for test data)."""

from __future__ import annotations

import functools
import hashlib
import os
import pickle  # writing only: reading goes through safe_pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import safe_pickle
from ..errors import HarnessError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"

@dataclass
class Cifar10:
    """The loaded set: images as uint8 (N, 3, 32, 32), labels as int64 (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    root: Path

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hash of the arrays themselves, so a copy in another folder has the same id. Computed
        once per loaded set: each run asks for it three times, and for the full 60,000 images
        each time cost about 0.5 s."""
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
        try:
            p = Path(given).expanduser().resolve()  # recorded with every run: make it unambiguous
        except (ValueError, RuntimeError, OSError) as e:
            raise HarnessError(f"data dir {given!r}: not a usable path ({e})") from None
        try:
            return _given_folder(p)
        except OSError as e:  # e.g. a folder on the way that the user may not read
            raise HarnessError(f"data dir {p}: cannot read ({_os_reason(e)})") from None
    cache = default_cache_dir()
    if (cache / FOLDER / META_FILE).exists():
        return cache / FOLDER
    if not download:
        raise HarnessError(f"no CIFAR-10 in {cache}; pass --data-dir DIR with a local cifar-10-batches-py")
    download_cifar10(cache)
    return cache / FOLDER


def _given_folder(p: Path) -> Path:
    """The batches folder of a user-given path: the folder itself or its cifar-10-batches-py."""
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


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied (check the file's and its folders' read permission)"
    return e.strerror or type(e).__name__


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > safe_pickle.MAX_FILE_BYTES:
                raise HarnessError(f"{path}: {size} bytes, far more than a CIFAR-10 batch; not reading it")
            raw = f.read()
    except FileNotFoundError:
        raise HarnessError(f"{path}: missing (a CIFAR-10 python folder has {META_FILE}, {', '.join(TRAIN_FILES)}, {TEST_FILE})") from None
    except IsADirectoryError:
        raise HarnessError(f"{path}: a folder, not a CIFAR-10 batch file") from None
    except OSError as e:
        raise HarnessError(f"{path}: cannot read ({_os_reason(e)})") from None
    try:
        d = safe_pickle.loads(raw)
    except safe_pickle.UnsafePickle as e:
        raise HarnessError(f"{path}: not an official CIFAR-10 batch, refused to load it ({e})") from None
    except Exception as e:  # corrupt pickles raise nearly anything: OverflowError, KeyError, RecursionError...
        raise HarnessError(f"{path}: corrupt or truncated pickle ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(d, dict):
        raise HarnessError(f"{path}: expected a dict, found {type(d).__name__}")
    # files pickled with byte-string keys read back as str under latin1; accept both
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _read_batch(path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    for key in ("data", "labels"):
        if key not in d:
            raise HarnessError(f"{path}: no '{key}' entry (found {sorted(map(str, d))})")
    data, labels = d["data"], d["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise HarnessError(f"{path}: 'data' must be uint8 of shape (N, 3072), found {found}")
    if isinstance(labels, np.ndarray):
        labels = labels.tolist() if labels.ndim == 1 else None
    # a list of plain ints, checked before NumPy sees it (nested or huge ints would make it work hard)
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise HarnessError(f"{path}: 'labels' must be a list of integers")
    if len(labels) != len(data):
        raise HarnessError(f"{path}: {len(labels)} labels for {len(data)} images")
    if labels and (min(labels) < 0 or max(labels) >= n_classes):
        raise HarnessError(f"{path}: labels out of range 0..{n_classes - 1} (found {min(labels)}..{max(labels)})")
    labels = np.asarray(labels, dtype=np.int64)
    # rows are R-plane, G-plane, B-plane of 32x32: a reshape gives CHW directly
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(root: str | os.PathLike) -> Cifar10:
    """Read a `cifar-10-batches-py` folder; every defect is reported as one HarnessError line."""
    root = Path(root)
    meta = _unpickle(root / META_FILE)
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != 10 or not all(isinstance(n, (str, bytes)) and len(n) < 200 for n in names):
        raise HarnessError(f"{root / META_FILE}: 'label_names' must list 10 class names")
    classes = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
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
