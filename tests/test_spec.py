"""Malformed specs fail with one line naming the file and the key."""

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.recipes.catalogue import load_catalogue, load_spec
from harness.recipes.spec import config_hash, flatten

GOOD = (Path(__file__).resolve().parents[1] / "experiments" / "tutorial-base.toml").read_text()


def write(tmp_path, text, name="tutorial-base"):
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("edit, key", [
    (lambda s: s.replace('title = ', 'colour = "red"\ntitle = '), "colour"),
    (lambda s: s.replace('batch_size = 4\n', ''), "train.batch_size"),
    (lambda s: s.replace('batch_size = 4', 'batch_size = "four"'), "train.batch_size"),
    (lambda s: s.replace('name = "tutorial_net"', 'name = "resnet50"'), "model"),
    (lambda s: s.replace('name = "sgd"', 'name = "lamb"'), "train.optimizer.name"),
    (lambda s: s.replace('schedule = "constant"', 'schedule = "onecycle"'), "train.phases.schedule"),
    (lambda s: s.replace('normalization = "half"', 'normalization = "imagenet"'), "data.normalization"),
    (lambda s: s.replace('lr = 0.001', 'lr = true'), "train.phases.lr"),
    (lambda s: s.replace('assumed = []', 'assumed = ["train.warmup"]'), "assumed"),
    (lambda s: s.replace('id = "tutorial-base"', 'id = "other"'), "id"),
    (lambda s: s.replace('checkpoint = "last"', 'checkpoint = "best_val_loss"'), "train.checkpoint"),
    (lambda s: s.replace('args = { c1 = 6, c2 = 16 }', 'args = { c1 = 6, depth = 3 }'), "model"),
])
def test_malformed_spec_is_one_line_with_file_and_key(tmp_path, edit, key):
    p = write(tmp_path, edit(GOOD))
    with pytest.raises(HarnessError) as e:
        load_spec(p)
    msg = str(e.value)
    assert str(p) in msg and key in msg and "\n" not in msg


def test_invalid_toml(tmp_path):
    with pytest.raises(HarnessError, match="invalid TOML"):
        load_spec(write(tmp_path, GOOD + "\n[[[ nonsense"))


def test_a_15th_experiment_is_one_file(tmp_path):
    write(tmp_path, GOOD)
    write(tmp_path, GOOD.replace('id = "tutorial-base"', 'id = "tutorial-c64"').replace("c1 = 6", "c1 = 64"), "tutorial-c64")
    cat = load_catalogue(tmp_path)
    assert set(cat) == {"tutorial-base", "tutorial-c64"} and cat["tutorial-c64"].model.args["c1"] == 64


def test_every_assumed_value_names_a_key_and_undocumented_ones_are_marked():
    cat = load_catalogue()
    # cs598's lr, weight decay and batch size are its repository's defaults: sourced, not assumed
    assert set(cat["cs598-vgg-bn-aug"].assumed) == {"eval.batch_size", "model.init"}
    assert "train.batch_size" in cat["medium-vgg-bn"].assumed  # "batch sizes ... were too small", no code
    assert all("data.pad_mode" not in cat[f"fastai-{m}"].assumed for m in ("simplenet", "convnet", "convbnnet"))
    assert "train.phases.0.epochs" in cat["skl-cnn"].assumed
    assert cat["tutorial-base"].assumed == []


def test_schedules_follow_the_writeups():
    cat = load_catalogue()
    ph = cat["fastai-convbnnet"].train.phases
    assert [(p.epochs, p.lr, p.schedule) for p in ph] == [(2, 0.03, "constant"), (4, 0.1, "sgdr")]
    assert cat["medium-vgg-bn"].train.checkpoint == "best_val_loss" and cat["medium-vgg-bn"].data.val_fraction == 0.2
    assert cat["skl-cnn"].published.confusion_matrix[3][5] == 162


def test_config_hash_tracks_what_changes_training():
    cat = load_catalogue()
    e = cat["tutorial-base"]
    h = config_hash(e, {}, 0, "abc")
    assert h == config_hash(e, {}, 0, "abc")
    assert len({h, config_hash(e, {}, 1, "abc"), config_hash(e, {"epochs": 1}, 0, "abc"), config_hash(e, {}, 0, "abd"),
                config_hash(cat["tutorial-c16"], {}, 0, "abc")}) == 5


def test_flatten_names_nested_keys():
    f = flatten(load_catalogue()["fastai-convnet"].training_dict())
    assert f["train.phases.1.schedule"] == "sgdr" and f["train.optimizer.momentum"] == 0.9 and f["model.args.layers"] == [3, 20, 40, 80]


def test_catalogue_found_from_any_working_folder(tmp_path, monkeypatch):
    """Outside the repository (no experiments/ in the working folder) the package's own
    catalogue is used: the folder beside the package, wherever the package's files moved to."""
    from harness.recipes.catalogue import experiments_dir, load_catalogue

    monkeypatch.chdir(tmp_path)
    assert (experiments_dir() / "tutorial-base.toml").is_file()
    assert "tutorial-base" in load_catalogue()
