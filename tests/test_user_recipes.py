"""A user's own network and recipe, in a folder of their own, beside the documented catalogue:
trained under the same protocol into the same store, reported with a verdict beside documented
recipes, its logged model loadable without that folder, an edited network a new configuration,
every mistake one line; `harness new` then `harness run` trains at once. Each command runs as a
user would run it: a `harness` subprocess in a folder that is not the repository."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from . import forkserver
from .conftest import make_synthetic
from .test_bad_inputs import assert_one_line as one_line  # one line, the right code, no traceback

REPO = Path(__file__).resolve().parents[1]
CAP = ["--epochs", "1", "--max-train-images", "40", "--no-progress", "--no-system-metrics"]

NETS = '''
import torch
import torch.nn as nn


class MyNet(nn.Module):
    """A small network of the user's own."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(width * 16, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))
'''

PKG_NETS = '''
import torch.nn as nn

from .blocks import block


class Wide(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(block(3, channels), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))

    def forward(self, x):
        return self.body(x)


def wide(channels: int = 12) -> nn.Module:
    return Wide(channels)
'''

PKG_BLOCKS = '''
import torch.nn as nn


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())
'''


def recipe(spec_id: str, model: str) -> str:
    """The tutorial's protocol (SGD, batch 4, no augmentation) with the user's network."""
    return textwrap.dedent(f'''\
        id = "{spec_id}"
        title = "my network"

        [model]
        {model}

        [data]
        normalization = "half"

        [train]
        loss = "cross_entropy"
        batch_size = 4

        [train.optimizer]
        name = "sgd"
        momentum = 0.9

        [[train.phases]]
        epochs = 2
        lr = 0.001
        ''')


def harness(*args, cwd: Path, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    # a process of its own in `cwd`, forked from tests/forkserver.py (the user's modules are imported in it, not in the server)
    return forkserver.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def mine(tmp_path) -> Path:
    """The user's folder: a network file, a package, and a spec for each."""
    d = tmp_path / "mine"
    (d / "mypkg").mkdir(parents=True)
    (d / "nets.py").write_text(NETS)
    (d / "mypkg" / "__init__.py").write_text("")
    (d / "mypkg" / "layers.py").write_text(PKG_NETS)
    (d / "mypkg" / "blocks.py").write_text(PKG_BLOCKS)
    (d / "mine-file.toml").write_text(recipe("mine-file", 'file = "nets.py"\nname = "MyNet"\nargs = { width = 6 }'))
    (d / "mine-mod.toml").write_text(recipe("mine-mod", 'name = "mypkg.layers:wide"'))
    return d


@pytest.fixture
def work(tmp_path) -> Path:
    """Where the user types the commands: no experiments/ here (the package's catalogue is used)."""
    w = tmp_path / "work"
    w.mkdir()
    return w


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("userdata"), n_train=200, n_test=60)


def runs(work: Path) -> list[dict]:
    """The runs of the store in `work`, as mlflow.search_runs's rows (tags.*, run_id, status, params.model*).
    Read in this process (a fresh interpreter importing MLflow for each look cost ~3 CPU-s): only
    the store is read, nothing of the user's code is imported here."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{work}/mlflow.db")
    exp = c.get_experiment_by_name("cifar10-harness")
    return [{"run_id": r.info.run_id, "status": r.info.status, **{f"tags.{k}": v for k, v in r.data.tags.items()},
             **{f"params.{k}": v for k, v in r.data.params.items() if k.startswith("model")}}
            for r in c.search_runs([exp.experiment_id], max_results=1000)]


@pytest.mark.slow
def test_a_users_networks_train_beside_documented_recipes_report_with_verdicts_and_travel(mine, work, data, tmp_path):
    """Both forms of a user's recipe beside a documented one, then the file form edited and run
    again, then one report of all of it. (Two documented recipes and a report before the edit as
    well cost ~8 CPU-s more and checked nothing more: a report alone is ~4 CPU-s.)"""
    # both forms beside a documented recipe, two seeds each, two worker processes (the user's module travels to them)
    r = harness("run-all", "--experiments", mine, "--only", "mine-*", "--only", "tutorial-base", "--repeats", "2",
                "--jobs", "2", "--data-dir", data, *CAP, cwd=work)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = runs(work)
    assert sorted((x["tags.harness.experiment_id"], x["tags.harness.seed"]) for x in got) == \
        sorted((e, s) for e in ("mine-file", "mine-mod", "tutorial-base") for s in ("0", "1"))
    assert all(x["status"] == "FINISHED" for x in got)
    by_id = {x["tags.harness.experiment_id"]: x for x in got}
    nets_sha = hashlib.sha256((mine / "nets.py").read_bytes()).hexdigest()
    assert by_id["mine-file"]["tags.harness.user_recipe"] == "true" and by_id["mine-file"]["tags.harness.model_code_sha256"] == nets_sha
    assert by_id["mine-mod"]["tags.harness.model_code"] == "mypkg.layers:wide"
    assert by_id["tutorial-base"].get("tags.harness.user_recipe") is None

    # the logged models load in a fresh process, in another folder, without the user's folder on the path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    load = ("import sys, mlflow, torch; mlflow.set_tracking_uri(sys.argv[1]); "
            "assert not any('mine' in p for p in sys.path); "
            "[print(type(m).__module__, tuple(m(torch.zeros(2, 3, 32, 32)).shape)) for m in "
            "(mlflow.pytorch.load_model(f'runs:/{rid}/model') for rid in sys.argv[2:])]")
    ids = [by_id["mine-file"]["run_id"], by_id["mine-mod"]["run_id"]]
    out = subprocess.run([sys.executable, "-c", load, f"sqlite:///{work}/mlflow.db", *ids], cwd=elsewhere, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_DISABLE_TELEMETRY="true"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[-3:-1] == ["nets (2, 10)", "mypkg.layers (2, 10)"], out.stdout

    # an edited network is a new configuration: trained again, not taken for the finished one
    (mine / "nets.py").write_text(NETS.replace("nn.ReLU()", "nn.GELU()"))
    again = harness("run", mine / "mine-file.toml", "--data-dir", data, *CAP, cwd=work)
    assert again.returncode == 0 and re.search(r"^mine-file\s+0\s+finished", again.stdout, re.M), again.stdout[-2000:] + again.stderr[-2000:]
    hashes = {x["tags.harness.config_hash"] for x in runs(work) if x["tags.harness.experiment_id"] == "mine-file" and x["tags.harness.seed"] == "0"}
    assert len(hashes) == 2

    # the report: the user's rows beside the documented one, marked, each with a verdict against the best
    rep = harness("report", "--out", tmp_path / "r.html", "--csv", tmp_path / "r.csv", cwd=work)
    assert rep.returncode == 0, rep.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert {row["id"] for row in rows} == {"mine-file", "mine-mod", "tutorial-base"}
    assert {row["id"]: row["user_recipe"] for row in rows} == {"mine-file": "True", "mine-mod": "True", "tutorial-base": "False"}
    assert [row["user_recipe"] for row in rows if row["id"] == "mine-file"] == ["True", "True"]
    # two seeds a side: each such row has a verdict, about two runs (3+ seeds a side would test the recipes)
    pairs = [row for row in rows if row["n"] == "2"]
    assert sorted(row["id"] for row in pairs) == ["mine-file", "mine-mod", "tutorial-base"], rows
    assert all(row["verdict"] in ("best run (seeds untested)", "two runs differ; recipes untested", "two runs within noise; recipes untested")
               for row in pairs), [(row["id"], row["verdict"], row["n"]) for row in rows]
    html = (tmp_path / "r.html").read_text()
    assert html.count('class="tag user-tag"') >= 2 and "mine-file" in html and "mine-mod" in html
    print("\n" + "\n".join(f"{r['id']}: {r['test_acc_mean'][:6]}% over {r['n']} seeds, {r['verdict']}" for r in rows))
    # and it does not pool the two versions of mine-file as seeds: a row for each, named by its code
    mine_rows = sorted((r["n"], r["key"] if "key" in r else r["id"]) for r in rows if r["id"] == "mine-file")
    assert [n for n, _ in mine_rows] == ["1", "2"], rows
    assert "mine-file · code " in html  # the row of the edited code, labelled by what differs


@pytest.mark.slow
def test_harness_new_then_run_trains_at_once(work, data):
    r = harness("new", "my-net", "--like", "tutorial-base", cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / "my-net.toml").exists() and "class TutorialNet(nn.Module)" in (work / "my_net.py").read_text()
    assert "harness" not in (work / "my_net.py").read_text().replace("copied from harness", "")  # plain PyTorch
    spec = (work / "my-net.toml").read_text()
    assert 'id = "my-net"' in spec and "[source]" not in spec and 'file = "my_net.py"' in spec
    t = harness("run", "my-net.toml", "--data-dir", data, *CAP, cwd=work)
    assert t.returncode == 0 and re.search(r"^my-net\s+0\s+finished", t.stdout, re.M), t.stdout[-2000:] + t.stderr[-2000:]
    assert [x["tags.harness.user_recipe"] for x in runs(work)] == ["true"]
    one_line(harness("new", "my-net", "--like", "tutorial-base", cwd=work), 2, "my-net.toml exists")


def test_every_documented_recipe_can_start_a_users_own(tmp_path):
    """`harness new --like ID` writes a spec that loads and a network that builds, for every ID."""
    from harness.recipes.catalogue import load_catalogue, load_spec
    from harness.recipes.scaffold import write_new

    for exp in load_catalogue(REPO / "experiments").values():
        spec, code = write_new(f"n-{exp.id}", exp, tmp_path, force=False)
        mine = load_spec(spec, user=True)
        assert mine.user_spec and mine.code is not None and mine.code.file == str(code.resolve())
        assert (mine.train, mine.data, mine.eval, mine.model.args, mine.model.init) == (exp.train, exp.data, exp.eval, exp.model.args, exp.model.init)


def test_documented_recipes_keep_their_configuration():
    """A documented recipe's hashed configuration holds nothing new: stores of earlier runs still match."""
    from harness.recipes.catalogue import load_catalogue

    for exp in load_catalogue(REPO / "experiments").values():
        assert set(exp.training_dict()["model"]) == {"name", "args", "init"} and exp.code is None and not exp.user_spec


BAD_NETS = {
    "syntax": ("def MyNet(:\n", "MyNet", ["nets.py does not import", "SyntaxError"]),
    "import": ("import nosuchlib_xyz\n", "MyNet", ["nets.py does not import", "ModuleNotFoundError: No module named 'nosuchlib_xyz'"]),
    "raises": ("x = 1\nraise RuntimeError('boom at import')\n", "MyNet", ["nets.py does not import", "RuntimeError: boom at import (line 2)"]),
    "name": (NETS, "Nope", ["has no 'Nope'", "MyNet"]),
    "shape": ("import torch.nn as nn\ndef MyNet():\n    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 7))\n", "MyNet", ["shape (2, 7)", "expected (2, 10)"]),
    "nan": ("import torch, torch.nn as nn\nclass MyNet(nn.Module):\n    def forward(self, x):\n        return torch.full((x.shape[0], 10), float('nan'))\n",
            "MyNet", ["non-finite"]),
    "large": ("import torch.nn as nn\ndef MyNet():\n    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 100_000))\n", "MyNet",
              ["307,300,000 weights", "more than"]),
    "not-module": ("def MyNet():\n    return 3\n", "MyNet", ["returns int, not a torch.nn.Module"]),
    "fails": ("def MyNet():\n    raise ValueError('no such width')\n", "MyNet", ["MyNet() fails", "ValueError: no such width (line 2)"]),
    "train-tuple": ("import torch, torch.nn as nn\nclass MyNet(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                    "        self.l = nn.Linear(3072, 10)\n    def forward(self, x):\n        y = self.l(x.flatten(1))\n"
                    "        return (y, y) if self.training else y\n", "MyNet", ["in training mode", "returns tuple"]),
    "detached": ("import torch, torch.nn as nn\nclass MyNet(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                 "        self.l = nn.Linear(3072, 10)\n    def forward(self, x):\n        return self.l(x.flatten(1)).detach()\n",
                 "MyNet", ["no gradient"]),
    "exits": ("import sys\ndef MyNet():\n    sys.exit(3)\n", "MyNet", ["MyNet() fails", "SystemExit: 3"]),
    "crash-forward": ("import torch.nn as nn\nclass MyNet(nn.Module):\n    def forward(self, x):\n        return x.view(5, -1, 7)\n", "MyNet",
                      ["does not run on 32x32 images"]),
}


def bad_recipe(tmp_path: Path, nets_src: str, model_table: str) -> Path:
    """mine/nets.py holding `nets_src` beside mine/bad.toml whose [model] is `model_table`."""
    d = tmp_path / "mine"
    d.mkdir()
    (d / "nets.py").write_text(nets_src)
    (d / "bad.toml").write_text(recipe("bad", model_table))
    return d / "bad.toml"


@pytest.mark.parametrize("case", sorted(BAD_NETS))
def test_a_broken_network_is_one_line_naming_the_spec_and_nothing_is_recorded(case, tmp_path, work):
    src, name, words = BAD_NETS[case]
    spec = bad_recipe(tmp_path, src, f'file = "nets.py"\nname = "{name}"')
    one_line(harness("run", spec, cwd=work), 1, str(spec), *words)
    assert not (work / "mlflow.db").exists()


BAD_SPECS = {
    "module-missing": ('name = "nosuchpkg_q.nets:Net"', 1, ["model", "module 'nosuchpkg_q.nets' does not import", "ModuleNotFoundError"]),
    "file-missing": ('file = "gone.py"\nname = "Net"', 1, ["model.file", "gone.py not found"]),
    "unknown-arg": ('file = "nets.py"\nname = "MyNet"\nargs = { depth = 3 }', 1, ["model.args", "unexpected keyword argument 'depth'", "(width: int = 8)"]),
    "arg-type": ('file = "nets.py"\nname = "MyNet"\nargs = { width = "wide" }', 1, ["model.args.width", "expects int", "'wide'"]),
    "not-a-module-path": ('name = "mypkg/nets.py:Net"', 1, ["model.name", "package.module:Factory"]),
    "colon-and-file": ('file = "nets.py"\nname = "nets:MyNet"', 1, ["model.name", "only the factory's name"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_a_bad_model_table_is_one_line_naming_the_spec(case, tmp_path, work):
    model, code, words = BAD_SPECS[case]
    spec = bad_recipe(tmp_path, NETS, model)
    one_line(harness("run", spec, cwd=work), code, str(spec), *words)


def test_an_id_of_the_catalogue_is_refused_for_a_users_recipe(tmp_path, work, mine):
    (mine / "tutorial-base.toml").write_text(recipe("tutorial-base", 'file = "nets.py"\nname = "MyNet"'))
    one_line(harness("run", mine / "tutorial-base.toml", cwd=work), 2, "tutorial-base.toml", "'tutorial-base' is already taken", "id of its own")
    one_line(harness("run-all", "--experiments", mine, cwd=work), 2, "'tutorial-base' is already taken")
    one_line(harness("run", tmp_path / "nowhere.toml", cwd=work), 2, "nowhere.toml: no such spec file")


def test_published_and_source_are_optional_for_a_users_recipe_only(tmp_path, mine):
    from harness.errors import HarnessError
    from harness.recipes.catalogue import load_spec

    exp = load_spec(mine / "mine-file.toml", user=True)
    assert exp.source is None and exp.published.test_accuracy == [] and exp.assumed == []
    with pytest.raises(HarnessError, match=r"mine-file.toml: source: missing key"):
        load_spec(mine / "mine-file.toml")  # a documented recipe names its write-up
    # every other field is checked as the catalogue's
    (mine / "mine-file.toml").write_text(recipe("mine-file", 'file = "nets.py"\nname = "MyNet"').replace('name = "sgd"', 'name = "lion"'))
    with pytest.raises(HarnessError, match=r"train.optimizer.name: unknown value 'lion'"):
        load_spec(mine / "mine-file.toml", user=True)


def test_list_shows_a_users_recipes_beside_the_catalogue(mine, work):
    r = harness("list", "--experiments", mine, "--format", "json", cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {x["id"]: x for x in json.loads(r.stdout)}
    assert {"mine-file", "mine-mod", "tutorial-base"} <= set(rows)
    assert rows["mine-file"]["source"] == f"yours: {mine / 'mine-file.toml'}" and rows["mine-file"]["published_accuracy"] == []
    assert rows["tutorial-base"]["source"].endswith(".txt")


@pytest.fixture
def fresh_imports():
    """The modules and sys.path entries a test's in-process import of a user's code adds, removed after it."""
    mods, path = set(sys.modules), list(sys.path)
    yield
    for m in set(sys.modules) - mods:
        del sys.modules[m]
    sys.path[:] = path


def _mine_mod_hash(mine: Path) -> str:
    from harness.recipes.catalogue import load_spec
    from harness.recipes.spec import config_hash

    for m in [m for m in sys.modules if m.split(".")[0] == "mypkg"]:
        del sys.modules[m]  # as a new command would import it
    return config_hash(load_spec(mine / "mine-mod.toml", user=True), {}, 0, "data")


def test_an_edit_to_any_module_of_a_users_package_is_a_new_configuration(mine, fresh_imports):
    """`mypkg.layers:wide` builds its layers with `from .blocks import block`: an edited blocks.py
    is a different network, so a different configuration (not skipped as identical, not pooled)."""
    before = _mine_mod_hash(mine)
    assert _mine_mod_hash(mine) == before
    (mine / "mypkg" / "blocks.py").write_text(PKG_BLOCKS.replace("nn.ReLU()", "nn.GELU()"))
    assert _mine_mod_hash(mine) != before


def test_one_file_spelled_two_ways_is_one_configuration(mine, fresh_imports):
    """`file = "./nets.py"` and `file = "nets.py"` are the same network: the same hash, so a rerun
    with either spelling skips the run the other trained (a real edit still changes it, above)."""
    from harness.recipes.catalogue import load_spec
    from harness.recipes.spec import config_hash

    spec = mine / "mine-file.toml"
    (mine / "sub").mkdir()
    hashes = []
    for spelling in ("nets.py", "./nets.py", "sub/../nets.py"):
        spec.write_text(recipe("mine-file", f'file = "{spelling}"\nname = "MyNet"\nargs = {{ width = 6 }}'))
        sys.modules.pop("nets", None)  # as a new command would import it
        hashes.append(config_hash(load_spec(spec, user=True), {}, 0, "data"))
    assert len(set(hashes)) == 1


def test_a_users_package_without_init_py_is_read_as_a_namespace_package(mine, fresh_imports):
    from harness.recipes.catalogue import load_spec

    (mine / "mypkg" / "__init__.py").unlink()
    exp = load_spec(mine / "mine-mod.toml", user=True)
    assert exp.code.ship == str((mine / "mypkg").resolve()) and exp.code.search_path == str(mine.resolve())


def test_a_network_without_trainable_weights_is_one_line_and_nothing_is_recorded(tmp_path, work):
    """It passes the forward check (10 finite logits) but nothing in it can train."""
    d = tmp_path / "mine"
    d.mkdir()
    (d / "nets.py").write_text("import torch.nn as nn\ndef MyNet():\n    return nn.Sequential(nn.Flatten(), nn.AdaptiveAvgPool1d(10))\n")
    (d / "bad.toml").write_text(recipe("bad", 'file = "nets.py"\nname = "MyNet"'))
    one_line(harness("run", d / "bad.toml", cwd=work), 1, str(d / "bad.toml"), "nets.py:MyNet", "no trainable weights")
    assert not (work / "mlflow.db").exists()


@pytest.mark.parametrize("where", ["elsewhere", "its-folder"])
def test_a_network_file_that_imports_its_neighbour_is_one_line_pointing_to_the_package_form(where, tmp_path, work):
    """`file = "nets.py"` ships and hashes that one file: a neighbour it imports would be missing
    from the logged model and a Ray worker, and an edit to it would not be a new configuration.
    Refused whether the import fails (the folder not on the path) or succeeds (run from the folder)."""
    d = tmp_path / "mine"
    d.mkdir()
    (d / "blocks.py").write_text(PKG_BLOCKS)
    (d / "nets.py").write_text("import torch.nn as nn\nfrom blocks import block\n"
                               "def MyNet():\n    return nn.Sequential(block(3, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))\n")
    (d / "bad.toml").write_text(recipe("bad", 'file = "nets.py"\nname = "MyNet"'))
    cwd = work if where == "elsewhere" else d
    one_line(harness("run", d / "bad.toml", cwd=cwd), 1, str(d / "bad.toml"), "blocks", "package.module:Factory")
    assert not (cwd / "mlflow.db").exists()


def test_a_network_file_named_as_an_installed_module_is_refused_before_anything_is_written(tmp_path, work):
    """colorsys.py would stand in for the standard library's module in every process that loads
    the network (a worker, a logged model's loader); `harness new torch` wrote torch.py, which
    breaks every later command run from that folder."""
    d = tmp_path / "mine"
    d.mkdir()
    (d / "colorsys.py").write_text(NETS)
    (d / "bad.toml").write_text(recipe("bad", 'file = "colorsys.py"\nname = "MyNet"'))
    one_line(harness("run", d / "bad.toml", cwd=work), 1, str(d / "bad.toml"), "colorsys.py", "rename")
    one_line(harness("new", "torch", cwd=work), 2, "torch", "rename")
    assert list(work.iterdir()) == []


def test_a_users_file_of_the_same_name_in_the_working_folder_does_not_block_a_spec_elsewhere(mine, work):
    """Two project folders each with a nets.py (or my_net.py from `harness new my-net`): run from
    one, the other's spec imports its own file (python -m puts the working folder on the path)."""
    (work / "nets.py").write_text(NETS.replace("class MyNet", "class TheirNet"))
    r = harness("list", "--experiments", mine, "--format", "json", cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mine-file" in {x["id"] for x in json.loads(r.stdout)}


@pytest.mark.parametrize("module", ["mypkg.layers", "mypkg.sub.deep"])
def test_a_shipped_copy_of_a_users_package_is_taken_for_the_same_code(module, mine, tmp_path, fresh_imports):
    """As a Ray worker sees it: the package copied elsewhere (py_modules) and imported by name there,
    with the hash of every .py file of the copy equal to the one recorded."""
    import shutil

    from harness.models import user_code

    (mine / "mypkg" / "sub").mkdir()
    (mine / "mypkg" / "sub" / "__init__.py").write_text("")
    (mine / "mypkg" / "sub" / "deep.py").write_text(PKG_NETS.replace("from .blocks", "from ..blocks"))
    code = user_code.resolve(f"{module}:wide", "", mine)
    for m in [m for m in sys.modules if m.split(".")[0] == "mypkg"]:
        del sys.modules[m]
    sys.path[:] = [p for p in sys.path if p not in (str(mine), str(mine.resolve()))]
    shipped = tmp_path / "ray-copy"
    shutil.copytree(mine / "mypkg", shipped / "mypkg")
    sys.path.insert(0, str(shipped))
    factory = user_code.load_factory(code)
    assert sys.modules[module].__file__.startswith(str(shipped)) and factory(channels=3)(__import__("torch").zeros(2, 3, 32, 32)).shape == (2, 10)
    (shipped / "mypkg" / "blocks.py").write_text(PKG_BLOCKS.replace("nn.ReLU()", "nn.GELU()"))
    for m in [m for m in sys.modules if m.split(".")[0] == "mypkg"]:
        del sys.modules[m]
    with pytest.raises(Exception, match="differs from the code the spec was read with"):
        user_code.load_factory(code)
