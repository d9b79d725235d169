"""A corpus of bad inputs, each run as a user would run it (a `harness` subprocess, forked from the
tests' fork server, tests/forkserver.py, or a fresh interpreter where a case needs one): every one
ends in a single `error:` line and the stated exit code, with no traceback and nothing written.
As root, the cases of file permissions run their command without the capabilities that override
them (the fork server's drop_dac: what `setpriv --bounding-set=-dac_override,...` gives)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from . import forkserver
from .conftest import make_synthetic

REPO = Path(__file__).resolve().parents[1]
def as_plain_user() -> bool:
    """Whether a command must give up root's capabilities that override file permissions for them to apply."""
    return os.geteuid() == 0


def harness(*args, cwd: Path, plain_user: bool = False, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    env.update(env_extra or {})
    env.pop("MLFLOW_TRACKING_URI", None)
    if env_extra:  # with a PYTHONPATH of its own (read at start-up): a fresh interpreter
        return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=180)
    return forkserver.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, drop_dac=plain_user)


def assert_one_line(r: subprocess.CompletedProcess, code: int, *words: str) -> str:
    err = r.stderr.strip()
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], err[-2000:])
    assert "Traceback" not in r.stderr + r.stdout, err[-3000:]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture
def work(tmp_path) -> Path:
    """A user's working folder with the catalogue in it (specs are read from ./experiments)."""
    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    return tmp_path


@pytest.fixture
def data(tmp_path) -> Path:
    return make_synthetic(tmp_path / "data", n_train=100, n_test=20) / "cifar-10-batches-py"


RUN = ["run", "fastai-simplenet", "--epochs", "1", "--no-progress"]


def assert_nothing_written(work: Path) -> None:
    assert not (work / "mlflow.db").exists() and not (work / "mlruns").exists()


# --------------------------------------------------------------------------- data files


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_batch_whose_pickle_calls_os_system_is_refused_and_runs_nothing(work, data, tmp_path):
    marker = tmp_path / "pwned"
    (data / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(marker), b"labels": [0]}, protocol=2))
    r = harness(*RUN, "--data-dir", data, cwd=work)
    assert_one_line(r, 1, "data_batch_1", "refused", "posix.system")
    assert not marker.exists()
    assert_nothing_written(work)


@pytest.mark.parametrize("payload", [b"\x80\x05\x96\xff\xff\xff\xff\xff\xff\xff\xff",  # BYTEARRAY8 of 2**64-1 bytes
                                     b"\x80\x02]q\x00(" + b"K\x01" * 50,  # truncated list
                                     b"\x80\x02cbuiltins\neval\nq\x00X\x04\x00\x00\x001+1q\x01\x85q\x02Rq\x03.",
                                     b"", b"not a pickle at all"])
def test_crafted_batch_is_one_line(work, data, payload):
    (data / "data_batch_2").write_bytes(payload)
    r = harness(*RUN, "--data-dir", data, cwd=work)
    assert_one_line(r, 1, "data_batch_2")
    assert_nothing_written(work)


def test_array_declaring_more_bytes_than_the_file_holds_is_refused(work, data):
    """The 19.9 GB case: a shape that promises far more data than is there."""
    raw = (data / "data_batch_3").read_bytes()
    assert len(pickle.loads(raw, encoding="bytes")[b"data"]) == 20
    shape = b"K\x14M\x00\x0c\x86"  # BININT1 20, BININT2 3072, TUPLE2: the array's (20, 3072)
    forged = raw.replace(shape, b"J\x00\xca\x9a\x3bM\x00\x0c\x86", 1)  # (1_000_000_000, 3072): 3 TB
    assert forged != raw
    (data / "data_batch_3").write_bytes(forged)
    r = harness(*RUN, "--data-dir", data, cwd=work)
    assert_one_line(r, 1, "data_batch_3")


@pytest.mark.parametrize("target", ["folder", "test_batch"])
def test_unreadable_data_is_one_line(work, data, target):
    plain = as_plain_user()
    path = data if target == "folder" else data / "test_batch"
    path.chmod(0)
    try:
        r = harness(*RUN, "--data-dir", data, cwd=work, plain_user=plain)
    finally:
        path.chmod(0o755)
    assert_one_line(r, 1, "permission denied")


# --------------------------------------------------------------------------- specs


def edit_spec(work: Path, old: str, new: str, name: str = "fastai-simplenet.toml") -> Path:
    p = work / "experiments" / name
    text = p.read_text()
    assert old in text
    p.write_text(text.replace(old, new))
    return p


def test_negative_model_width_is_one_line(work, data):
    edit_spec(work, "c1 = 6, c2 = 16", "c1 = -6, c2 = 16", "tutorial-base.toml")
    assert_one_line(harness("list", cwd=work), 1, "tutorial-base.toml", "c1", "-6")


def test_model_arguments_that_do_not_fit_together_are_one_line(work):
    edit_spec(work, "c1 = 6, c2 = 16", "c1 = 6, c2 = 32", "tutorial-base.toml")
    assert_one_line(harness("list", cwd=work), 1, "tutorial-base.toml")


def test_spec_that_is_not_utf8_is_one_line(work, data):
    p = work / "experiments" / "fastai-simplenet.toml"
    p.write_bytes(p.read_bytes() + b"# caf\xe9 (Latin-1)\n")
    r = harness(*RUN, "--data-dir", data, cwd=work)
    assert_one_line(r, 1, "fastai-simplenet.toml", "UTF-8")
    assert_nothing_written(work)


def test_unknown_key_names_its_full_dotted_path(work):
    edit_spec(work, "[train.optimizer]", "[train.optimizer]\nmomentun = 0.9")
    assert_one_line(harness("list", cwd=work), 1, "train.optimizer.momentun", "unknown key")


def test_upper_case_toml_suffix_is_read_not_ignored(work):
    p = work / "experiments" / "fastai-simplenet.toml"
    p.rename(p.with_suffix(".TOML"))
    r = harness("list", "--format", "json", cwd=work)
    assert r.returncode == 0 and '"fastai-simplenet"' in r.stdout


# --------------------------------------------------------------------------- report --out


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory, empty_store) -> Path:
    """A store with one finished run, made once for the report cases (the store's schema copied
    from conftest's empty_store: the cases of creating a store make their own)."""
    work = tmp_path_factory.mktemp("store")
    shutil.copytree(REPO / "experiments", work / "experiments")
    shutil.copyfile(empty_store, work / "mlflow.db")
    data = make_synthetic(work / "data", n_train=100, n_test=20)
    r = harness("run", "fastai-simplenet", "--epochs", "1", "--no-progress", "--data-dir", data, cwd=work)
    assert r.returncode == 0, r.stderr
    return work


def test_report_out_under_a_file_is_one_line(finished_store):
    (finished_store / "afile").write_text("x")
    assert_one_line(harness("report", "--out", "afile/report.html", cwd=finished_store), 1, "--out", "afile")


def test_report_out_in_a_read_only_folder_is_one_line(finished_store):
    ro = finished_store / "ro"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    try:
        r = harness("report", "--out", ro / "r.html", cwd=finished_store, plain_user=as_plain_user())
    finally:
        ro.chmod(0o755)
    assert_one_line(r, 1, "--out", "permission denied")
    assert not list(ro.iterdir())


def test_report_out_under_proc_is_one_line(finished_store):
    assert_one_line(harness("report", "--out", "/proc/harness-report/r.html", cwd=finished_store), 1, "--out")


def test_report_out_that_is_a_folder_is_a_usage_error(finished_store):
    r = harness("report", "--out", finished_store, cwd=finished_store)
    assert r.returncode == 2 and "is a directory" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- stores


def test_read_only_store_says_so_in_one_line(finished_store, data):
    db = finished_store / "mlflow.db"
    db.chmod(0o444)
    try:
        r = harness("run", "tutorial-base", "--epochs", "1", "--no-progress", "--data-dir", data, cwd=finished_store, plain_user=as_plain_user())
    finally:
        db.chmod(0o644)
    assert_one_line(r, 1, "read-only")


def test_postgresql_without_its_driver_names_the_install_command(work, data, tmp_path):
    # psycopg may be installed here (the server tests use it): hide it as a machine without it would
    hide = tmp_path / "no-psycopg"
    (hide / "psycopg").mkdir(parents=True)
    (hide / "psycopg" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'psycopg'\", name='psycopg')\n")
    r = harness(*RUN, "--data-dir", data, "--tracking-uri", "postgresql://u:secret@127.0.0.1:9/db", cwd=work,
                env_extra={"PYTHONPATH": f"{hide}{os.pathsep}{REPO}"})
    line = assert_one_line(r, 1, 'pip install "psycopg[binary]"')
    assert "secret" not in line  # the password is never printed


def test_store_that_is_not_a_database_is_one_line(work, data):
    (work / "mlflow.db").write_bytes(b"this is not sqlite" * 100)
    assert_one_line(harness(*RUN, "--data-dir", data, cwd=work), 1, "not an SQLite database")


# --------------------------------------------------------------------------- usage errors: exit 2


@pytest.mark.parametrize("args,words", [
    (["run", "no-such-model"], ["unknown experiment", "tutorial-base"]),
    (["run-all", "--only", "nothing-*"], ["leave no experiment"]),
    (["run", "fastai-simplenet", "--seed", "2147483647", "--repeats", "2"], ["largest seed"]),
])
def test_usage_errors_exit_2(work, data, args, words):
    r = harness(*args, "--data-dir", data, cwd=work)
    assert_one_line(r, 2, *words)
    assert_nothing_written(work)


def test_seed_beyond_the_range_is_a_usage_error(work, data):
    r = harness(*RUN, "--data-dir", data, "--seed", str(2**40), cwd=work)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_device_cuda_without_cuda_exits_2(work, data):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line(harness(*RUN, "--data-dir", data, "--device", "cuda", cwd=work), 2, "no CUDA device")
    assert_nothing_written(work)
