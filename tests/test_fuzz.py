"""Fuzzing the two readers of untrusted files: random or mutated input only ever gives a valid
result or one HarnessError line, within a time bound per example (hypothesis deadline) and a
memory bound for the whole run (peak RSS growth)."""

from __future__ import annotations

import resource
import string
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness.data.cifar_files import _read_batch, _unpickle
from harness.errors import HarnessError
from harness.recipes.catalogue import load_spec
from harness.recipes.spec import Experiment

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from .conftest import CLASSES, make_synthetic

REPO = Path(__file__).resolve().parents[1]
SETTINGS = dict(max_examples=250, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MAX_RSS_GROWTH_MB = 600


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def batch_bytes(tmp_path_factory) -> bytes:
    root = make_synthetic(tmp_path_factory.mktemp("fuzzdata"), n_train=50, n_test=10)
    return (root / "cifar-10-batches-py" / "data_batch_1").read_bytes()


@pytest.fixture(scope="module")
def rss_budget():
    start = peak_rss_mb()
    yield
    assert peak_rss_mb() - start < MAX_RSS_GROWTH_MB, f"peak RSS grew {peak_rss_mb() - start:.0f} MB while fuzzing"


def check_batch(path: Path, payload: bytes) -> None:
    path.write_bytes(payload)
    try:
        x, y = _read_batch(path, len(CLASSES))
    except HarnessError as e:
        assert "\n" not in str(e)
        return
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and len(x) == len(y)
    assert y.dtype == np.int64 and (len(y) == 0 or (y.min() >= 0 and y.max() < 10))


mutation = st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "delete"]), st.integers(0, 10**9), st.binary(min_size=1, max_size=9))


def mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for kind, pos, blob in ops:
        if not b:
            break
        i = pos % len(b)
        if kind == "flip":
            b[i] ^= 1 << (blob[0] % 8)
        elif kind == "set":
            b[i : i + len(blob)] = blob
        elif kind == "cut":
            del b[i:]
        elif kind == "insert":
            b[i:i] = blob
        else:
            del b[i : i + blob[0] % 16 + 1]
    return bytes(b)


@settings(**SETTINGS)
@given(ops=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_batches_give_a_batch_or_one_line(tmp_path, batch_bytes, rss_budget, ops):
    check_batch(tmp_path / "data_batch_1", mutate(batch_bytes, ops))


def test_a_memo_index_far_past_the_file_costs_no_memory(tmp_path, batch_bytes):
    """Six bytes inserted (LONG_BINPUT 0x0b000000: a memo slot 184 million entries away) made the
    C unpickler grow its memo array to 2.8 GB and take 2 s (found by the fuzzer in CI)."""
    import tracemalloc

    payload = mutate(batch_bytes, [("insert", 23272705, b"\x00r\x00\x00\x00\x0b")])
    tracemalloc.start()
    try:
        check_batch(tmp_path / "data_batch_1", payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MB to refuse a {len(payload)}-byte file"


@settings(**SETTINGS)
@example(payload=b"F\x01\n")  # FLOAT of "\x01\n": ValueError quoting a line break (found by CI)
@given(payload=st.one_of(st.binary(max_size=300), st.binary(max_size=40).map(lambda b: b"\x80\x02" + b), st.binary(max_size=40).map(lambda b: b"\x80\x05" + b)))
def test_random_bytes_give_one_line(tmp_path, rss_budget, payload):
    check_batch(tmp_path / "data_batch_1", payload)


def test_meta_file_mutations_are_one_line(tmp_path, batch_bytes):
    p = tmp_path / "batches.meta"
    p.write_bytes(batch_bytes[:-1])
    with pytest.raises(HarnessError):
        _unpickle(p)


# --------------------------------------------------------------------------- specs

SPEC = (REPO / "experiments" / "fastai-convbnnet.toml").read_text()
leaf = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                 st.text(max_size=20), st.lists(st.integers(-5, 5000), max_size=6), st.dictionaries(st.text(string.ascii_lowercase, max_size=5), st.integers(), max_size=3))


def paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from paths(v, prefix + (k,))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for i, item in enumerate(v):
                yield from paths(item, prefix + (k, i))


def check_spec(path: Path, text: str | bytes) -> None:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        exp = load_spec(path)
    except HarnessError as e:
        assert "\n" not in str(e).strip()
        return
    assert isinstance(exp, Experiment)


@settings(**SETTINGS)
@given(data=st.data())
def test_specs_with_a_value_replaced_give_a_spec_or_one_line(tmp_path, rss_budget, data):
    raw = tomllib.loads(SPEC)
    keys = list(paths(raw))
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(keys))
        node = raw
        try:
            for k in key[:-1]:
                node = node[k]
            node[key[-1]] = data.draw(leaf)
        except (KeyError, IndexError, TypeError):
            continue
    try:
        text = tomli_w.dumps(raw)
    except (TypeError, ValueError):
        return
    check_spec(tmp_path / "fastai-convbnnet.toml", text)


@settings(**SETTINGS)
@given(pos=st.integers(0, len(SPEC)), cut=st.integers(0, 40), insert=st.text(max_size=30))
def test_specs_with_text_spliced_give_a_spec_or_one_line(tmp_path, rss_budget, pos, cut, insert):
    check_spec(tmp_path / "fastai-convbnnet.toml", SPEC[:pos] + insert + SPEC[pos + cut :])


@settings(**SETTINGS)
@given(payload=st.binary(max_size=400))
def test_spec_bytes_give_one_line(tmp_path, rss_budget, payload):
    check_spec(tmp_path / "fastai-convbnnet.toml", payload)


def test_a_spec_key_with_a_line_break_is_still_one_line(tmp_path):
    p = tmp_path / "fastai-convbnnet.toml"
    p.write_text(SPEC.replace("[train.optimizer]", '[train.optimizer]\n"mo\\nmentum" = 0.9'))
    with pytest.raises(HarnessError) as e:
        load_spec(p)
    assert "\n" not in str(e.value) and "mo\\nmentum" in str(e.value)
