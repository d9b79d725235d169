"""CIFAR-10 held as tensors (no torchvision): splits, normalisation, augmentation, batches.

The files themselves are cifar_files.py's concern. The whole set is loaded once as uint8, normalised once on the target device, and served
as `randperm` slices with whole-batch augmentation (airbench style): no per-image Python
work, no DataLoader workers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# the file layer, re-exported: `from harness.data import load_cifar10` keeps working
from .cifar_files import (FOLDER, META_FILE, TEST_FILE, TRAIN_FILES, Cifar10, download_cifar10,  # noqa: F401
                          load_cifar10, resolve_data_dir, write_cifar10)
from ..errors import HarnessError

NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "cs598": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "fastai": ((0.4914, 0.48216, 0.44653), (0.24703, 0.24349, 0.26159)),
}
AUGMENTATIONS = ("none", "crop4+flip")
PAD_MODES = ("zeros", "reflect", "symmetric")


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


def symmetric_index(n: int, pad: int, device=None) -> torch.Tensor:
    """Source index of each of the n + 2*pad positions under OpenCV's BORDER_REFLECT, which
    repeats the edge pixel: dcba|abcd|dcba (PyTorch's "reflect" is dcb|abcd|cba)."""
    i = torch.arange(-pad, n + pad, device=device)
    i = torch.where(i < 0, -i - 1, i)
    return torch.where(i >= n, 2 * n - i - 1, i)


def augment_crop_flip(x: torch.Tensor, pad: int, pad_mode: str, pad_values: torch.Tensor | None, generator: torch.Generator,
                      crop_style: str = "torchvision") -> torch.Tensor:
    """Random pad-and-crop plus horizontal flip of a whole normalised batch.

    Zero padding means black pixels *before* normalisation (as torchvision pads the PIL
    image), i.e. per-channel value -mean/std here; `pad_values` carries that. Crop offsets are
    0..2*pad (torchvision's RandomCrop) or 0..2*pad-1 (fastai 0.7: floor(u * 2*pad)).
    """
    n, c, h, w = x.shape
    if pad_mode == "reflect":
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    elif pad_mode == "symmetric":
        rows, cols = symmetric_index(h, pad, x.device), symmetric_index(w, pad, x.device)
        padded = x[:, :, rows][:, :, :, cols]
    else:
        padded = x.new_empty(n, c, h + 2 * pad, w + 2 * pad)
        padded[:] = pad_values.view(1, c, 1, 1) if pad_values is not None else 0
        padded[:, :, pad : pad + h, pad : pad + w] = x
    dev = x.device
    span = 2 * pad + 1 if crop_style == "torchvision" else 2 * pad
    dy = torch.randint(0, span, (n,), generator=generator, device=generator.device).to(dev)
    dx = torch.randint(0, span, (n,), generator=generator, device=generator.device).to(dev)
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
                 seed: int = 0, drop_last: bool = False, crop_style: str = "torchvision"):
        if augmentation not in AUGMENTATIONS:
            raise HarnessError(f"unknown augmentation {augmentation!r} (known: {', '.join(AUGMENTATIONS)})")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augmentation = augmentation
        self.pad_mode = pad_mode
        self.pad_values = pad_values
        self.crop_style = crop_style
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
            chunks = [augment_crop_flip(x[i : i + 8192], 4, self.pad_mode, self.pad_values, g, self.crop_style) for i in range(0, len(x), 8192)]
            x = torch.cat(chunks) if chunks else x
        return x, y

    def batches(self, epoch: int):
        x, y = self.epoch(epoch)
        for i in range(len(self)):
            yield x[i * self.batch_size : (i + 1) * self.batch_size], y[i * self.batch_size : (i + 1) * self.batch_size]

    def __iter__(self):
        return self.batches(0)
