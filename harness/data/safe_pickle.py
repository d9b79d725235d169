"""Reading CIFAR-10's official pickle files without trusting them.

`pickle.load` runs whatever a file says (`os.system` included), and a few flipped bytes can
make it allocate tens of GB. The official batches need very little: dicts, lists, byte and
text strings, ints, and NumPy's array reconstruction. This unpickler resolves only those
globals, refuses every other one (before anything runs), and checks each array's declared
shape and dtype against the bytes actually in the file, so memory stays proportional to the
file's own size.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle

import numpy as np

# plain numeric dtypes only: an object array would unpickle arbitrary content again
_DTYPES = {f"{k}{n}" for k in "iu" for n in (1, 2, 4, 8)} | {"f4", "f8", "b1"}
MAX_FILE_BYTES = 1 << 30  # an official batch is 30 MB; the whole archive 163 MB


class UnsafePickle(pickle.UnpicklingError):
    """The file asks for something an official CIFAR-10 batch never contains."""


class _GuardedArray(np.ndarray):
    """Stands in for numpy.ndarray while loading: its __setstate__ (called by pickle's BUILD)
    checks the declared shape and dtype against the raw bytes before NumPy sees them."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickle("malformed array state")
        version, shape, dtype, _fortran, raw = state if len(state) == 5 else (1, *state)
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and 0 <= s < 1 << 40 for s in shape) or len(shape) > 8:
            raise UnsafePickle(f"array shape {shape!r} is not a shape")
        if not isinstance(dtype, np.dtype) or dtype.str.lstrip("<>|=") not in _DTYPES:
            raise UnsafePickle(f"array dtype {dtype!r} is not a plain numeric type")
        if not isinstance(raw, (bytes, bytearray, str)):
            raise UnsafePickle("array data is not a byte string")
        if math.prod(shape) * dtype.itemsize != len(raw):
            raise UnsafePickle(f"array declares {math.prod(shape) * dtype.itemsize} bytes but holds {len(raw)}")
        super().__setstate__(state)


def _reconstruct(subtype, shape, typecode):
    if subtype is not _GuardedArray or shape != (0,):
        raise UnsafePickle("unexpected array reconstruction arguments")
    return np.ndarray.__new__(_GuardedArray, (0,), np.dtype("b"))


def _dtype(code, align=False, copy=True):
    if not isinstance(code, str) or code.lstrip("<>|=") not in _DTYPES:
        raise UnsafePickle(f"dtype {code!r} is not a plain numeric type")
    return np.dtype(code)


def _codecs_encode(text, encoding="utf-8"):
    # how protocol-2 pickles written by Python 3 spell bytes: _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickle("unexpected codecs.encode call")
    return codecs.encode(text, "latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _GuardedArray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _codecs_encode,
}


# Python's own unpickler, not the C one: the C unpickler keeps its memo as an array sized by the
# largest index a PUT names, so six bytes (LONG_BINPUT 0x0b000000) made it allocate 2.8 GB (found
# by test_fuzz in CI); this one keeps a dict. A batch loads as fast (a few thousand opcodes: its
# images are one string).
class _Unpickler(pickle._Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickle(f"refused global {module}.{name} (not part of a CIFAR-10 batch)") from None

    def persistent_load(self, pid):
        raise UnsafePickle("refused persistent id")


def _plain(obj):
    """Guarded arrays back to ordinary ndarrays, in a dict's values and one list level below
    (all an official batch has). Deliberately not recursive: shared references can make a
    small pickle a huge tree."""
    def one(v):
        return v.view(np.ndarray) if isinstance(v, _GuardedArray) else v

    if isinstance(obj, dict):
        return {k: [one(i) for i in v] if isinstance(v, list) else one(v) for k, v in obj.items()}
    return one(obj)


def loads(data: bytes):
    """Unpickle `data` (the whole file: reading past its end fails at once instead of
    allocating what a corrupt length field claims). Any defect raises an Exception."""
    if len(data) > MAX_FILE_BYTES:
        raise UnsafePickle(f"{len(data)} bytes is more than any CIFAR-10 batch")
    obj = _Unpickler(io.BytesIO(data), encoding="latin1").load()
    return _plain(obj)
