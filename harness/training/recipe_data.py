"""The data one recipe trains on: its split, its cap, normalised once on the device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.loader import NORMALIZATIONS, Cifar10, TensorLoader, balanced_subset, normalize, split_train_val
from ..recipes.spec import Experiment


@dataclass
class Prepared:
    train: TensorLoader
    val_x: torch.Tensor
    val_y: torch.Tensor
    val_is_test: bool
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_train: int
    train_idx: torch.Tensor | None = None  # which training images (of the loaded set) each split holds
    val_idx: torch.Tensor | None = None


def train_split_size(exp: Experiment, data: Cifar10) -> int:
    """How many images the recipe's training split holds before any cap (the same for every seed)."""
    return len(split_train_val(data.train_y, exp.data.val_fraction, 0, exp.data.val_split == "stratified")[0])


def prepare_data(exp: Experiment, data: Cifar10, seed: int, max_train_images: int | None, device: torch.device) -> Prepared:
    mean, std = NORMALIZATIONS[exp.data.normalization]
    y = data.train_y
    tr_idx, va_idx = split_train_val(y, exp.data.val_fraction, seed, exp.data.val_split == "stratified")
    if max_train_images is not None:
        keep = balanced_subset(y[tr_idx], max_train_images, seed)
        tr_idx = tr_idx[keep]
    x_tr = normalize(data.train_x[tr_idx], mean, std, device)
    y_tr = y[tr_idx].to(device)
    pad_values = (-torch.tensor(mean) / torch.tensor(std)).to(device)
    loader = TensorLoader(x_tr, y_tr, exp.train.batch_size, shuffle=True, augmentation=exp.data.augmentation,
                          pad_mode=exp.data.pad_mode, pad_values=pad_values, seed=seed, crop_style=exp.data.crop_style)
    test_x = normalize(data.test_x, mean, std, device)
    test_y = data.test_y.to(device)
    if len(va_idx):
        val_x, val_y, val_is_test = normalize(data.train_x[va_idx], mean, std, device), y[va_idx].to(device), False
    else:  # as the write-ups without a split do: validate on the test set
        val_x, val_y, val_is_test = test_x, test_y, True
    return Prepared(loader, val_x, val_y, val_is_test, test_x, test_y, len(tr_idx), tr_idx, va_idx)
