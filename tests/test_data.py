import hashlib
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from harness.cli import main
from harness.data.loader import (FOLDER, NORMALIZATIONS, TensorLoader, augment_crop_flip, balanced_subset, download_cifar10,
                          load_cifar10, normalize, resolve_data_dir, split_train_val)
from harness.errors import HarnessError

from .conftest import CLASSES, make_synthetic


def test_synthetic_loads_with_counts_and_classes(synthetic_root):
    d = load_cifar10(resolve_data_dir(synthetic_root))
    assert d.train_x.shape == (600, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (200, 3, 32, 32)
    assert d.classes == CLASSES
    assert sorted(d.train_y.unique().tolist()) == list(range(10))


def test_pixel_order_is_rgb_planes(tmp_path):
    x = np.zeros((10, 3, 32, 32), np.uint8)
    x[0, 0, 0, 1] = 200  # red, row 0, column 1
    x[0, 2, 31, 0] = 100  # blue, last row, column 0
    from harness.data.loader import write_cifar10

    write_cifar10(tmp_path, x, np.arange(10), x, np.arange(10), CLASSES)
    d = load_cifar10(tmp_path / FOLDER)
    img = next(i for i in range(10) if d.train_y[i] == 0)
    assert d.train_x[img, 0, 0, 1] == 200 and d.train_x[img, 2, 31, 0] == 100
    assert d.train_x[img].sum() == 300


def test_real_subset(real_root):
    d = load_cifar10(resolve_data_dir(real_root))
    assert len(d.train_x) == 5170 and len(d.test_x) == 1017
    assert sorted(d.train_y.unique().tolist()) == list(range(10))
    assert d.test_y[0].item() == 3 and d.classes[3] == "cat"
    # the official first test image (a cat) is mostly mid-tone: a plane-order bug would scramble it
    assert 60 < d.test_x[0].float().mean() < 160


def test_folder_or_parent_and_env(synthetic_root, monkeypatch):
    assert resolve_data_dir(synthetic_root) == synthetic_root / FOLDER
    assert resolve_data_dir(synthetic_root / FOLDER) == synthetic_root / FOLDER
    monkeypatch.setenv("HARNESS_DATA_DIR", str(synthetic_root))
    assert resolve_data_dir(None) == synthetic_root / FOLDER


def test_fingerprint_depends_on_content_not_location(synthetic_root, tmp_path):
    a = load_cifar10(synthetic_root / FOLDER).fingerprint
    shutil.copytree(synthetic_root, tmp_path / "copy")
    assert load_cifar10(tmp_path / "copy" / FOLDER).fingerprint == a
    other = make_synthetic(tmp_path / "other", seed=1)
    assert load_cifar10(other / FOLDER).fingerprint != a


@pytest.mark.parametrize("case", ["missing", "truncated", "garbage", "labels_range", "shape", "no_labels", "meta"])
def test_bad_batches_name_the_file(synthetic_root, tmp_path, case):
    root = tmp_path / "bad"
    shutil.copytree(synthetic_root / FOLDER, root)
    target = root / "data_batch_3"
    if case == "missing":
        target.unlink()
    elif case == "truncated":
        target.write_bytes(target.read_bytes()[:1000])
    elif case == "garbage":
        target.write_bytes(b"this is not a pickle at all")
    else:
        d = pickle.loads(target.read_bytes(), encoding="bytes")
        if case == "labels_range":
            d[b"labels"][0] = 10
        elif case == "shape":
            d[b"data"] = d[b"data"][:, :100]
        elif case == "no_labels":
            del d[b"labels"]
        elif case == "meta":
            target = root / "batches.meta"
            d = {b"label_names": [b"a", b"b"]}
        target.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(HarnessError) as e:
        load_cifar10(root)
    msg = str(e.value)
    assert target.name in msg and "\n" not in msg


def test_wrong_folder_is_one_line(tmp_path):
    with pytest.raises(HarnessError, match="holds no CIFAR-10"):
        resolve_data_dir(tmp_path)
    with pytest.raises(HarnessError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope")


def test_cli_wrong_data_dir_one_line_nonzero(tmp_path, store):
    r = CliRunner().invoke(main, ["run", "tutorial-base", "--data-dir", str(tmp_path / "nope"), "--tracking-uri", store])
    assert r.exit_code != 0
    assert r.output.strip().count("\n") == 0 and "Traceback" not in r.output
    assert "--data-dir" in r.output


def _archive(synthetic_root, tmp_path):
    tgz = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(synthetic_root / FOLDER, arcname=FOLDER)
    return tgz, hashlib.md5(tgz.read_bytes()).hexdigest()


def test_download_verifies_md5_and_extracts(synthetic_root, tmp_path):
    tgz, md5 = _archive(synthetic_root, tmp_path)
    out = download_cifar10(tmp_path / "cache", url=tgz.as_uri(), md5=md5)
    assert len(load_cifar10(out).train_x) == 600
    with pytest.raises(HarnessError, match="MD5"):
        download_cifar10(tmp_path / "cache2", url=tgz.as_uri(), md5="0" * 32)
    assert not (tmp_path / "cache2" / FOLDER).exists()


def test_default_cache_downloads_and_offline_names_data_dir(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HARNESS_CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing listens there
    with pytest.raises(HarnessError) as e:
        resolve_data_dir(None)
    assert "--data-dir" in str(e.value) and "\n" not in str(e.value)


def test_augmentation_keeps_shape_labels_is_seeded_and_moves_pixels(synthetic_root):
    d = load_cifar10(synthetic_root / FOLDER)
    mean, std = NORMALIZATIONS["cs598"]
    x = normalize(d.train_x[:64], mean, std, "cpu")
    y = d.train_y[:64]
    pv = -torch.tensor(mean) / torch.tensor(std)
    mk = lambda: TensorLoader(x, y, 16, augmentation="crop4+flip", pad_values=pv, seed=3)
    (a, ya), (b, yb) = mk().epoch(0), mk().epoch(0)
    assert a.shape == x.shape and torch.equal(a, b) and torch.equal(ya, yb)
    c, _ = mk().epoch(1)
    assert not torch.equal(a, c)
    plain, yp = TensorLoader(x, y, 16, seed=3).epoch(0)
    assert torch.equal(yp, ya)  # same order: augmentation never touches labels
    assert (a != plain).float().mean() > 0.3


def _seed_giving(dy, dx, flip):
    """A generator seed whose first draws are offset (dy, dx) and the given flip."""
    for seed in range(2000):
        g = torch.Generator().manual_seed(seed)
        d = torch.randint(0, 9, (1,), generator=g).item(), torch.randint(0, 9, (1,), generator=g).item()
        if d == (dy, dx) and (torch.rand(1, generator=g).item() < 0.5) == flip:
            return seed
    pytest.fail(f"no seed gives offset {(dy, dx)} flip={flip}")


def test_crop_and_flip_geometry():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    pv = torch.full((3,), -7.0)
    # offset (0, 0) shifts the image down-right by 4: the top-left corner is padding, i.e.
    # black before normalisation (-mean/std after)
    out = augment_crop_flip(x[:1], 4, "zeros", pv, torch.Generator().manual_seed(_seed_giving(0, 0, False)))
    assert (out[0, :, :4, :4] == -7).all() and torch.equal(out[0, :, 4:, 4:], x[0, :, :28, :28])
    # a centred crop with flip is a plain horizontal mirror
    out = augment_crop_flip(x[:1], 4, "reflect", None, torch.Generator().manual_seed(_seed_giving(4, 4, True)))
    assert torch.equal(out[0], x[0].flip(2))
    # reflect padding copies image pixels, never a constant
    out = augment_crop_flip(x[:1], 4, "reflect", None, torch.Generator().manual_seed(_seed_giving(0, 0, False)))
    assert torch.equal(out[0, :, 4, 4:], x[0, :, 0, :28]) and torch.equal(out[0, :, 3, 4:], x[0, :, 1, :28])


def test_split_is_reproducible_disjoint_and_sized():
    y = torch.arange(1000) % 10
    tr, va = split_train_val(y, 0.2, seed=5)
    assert len(va) == 200 and len(tr) == 800 and not set(tr.tolist()) & set(va.tolist())
    tr2, va2 = split_train_val(y, 0.2, seed=5)
    assert torch.equal(va, va2)
    assert not torch.equal(va, split_train_val(y, 0.2, seed=6)[1])
    _, vs = split_train_val(y, 0.2, seed=5, stratified=True)
    assert torch.bincount(y[vs]).tolist() == [20] * 10


def test_balanced_subset():
    y = torch.cat([torch.full((n,), c) for c, n in enumerate([100, 100, 100, 100, 100, 100, 100, 100, 100, 5])])
    idx = balanced_subset(y, 200, seed=0)
    counts = torch.bincount(y[idx], minlength=10).tolist()
    assert len(idx) == 200 and counts[9] == 5 and max(counts) - min(counts[:9]) <= 1
