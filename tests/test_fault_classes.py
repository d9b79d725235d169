"""Which faults end a run FAILED (lifecycle.permanent: a rerun would fail the same way, and its
checkpoint is removed) and which leave it resumable. A GPU, its driver or its libraries failing is
the device's fault: a rerun on a healthy device finishes, so the run must keep its checkpoint.
Before, every such RuntimeError but those saying "memory" ended FAILED and lost its checkpoint."""

from __future__ import annotations

import pytest

from harness.errors import DivergedError, HarnessError
from harness.runs.lifecycle import NoCheckpoint, RunDeleted, TakenOver, permanent
from harness.tracking.outage import StoreUnavailable

RESUMABLE = [
    RuntimeError("CUDA error: uncorrectable ECC error encountered"),
    RuntimeError("CUDA error: unspecified launch failure"),
    RuntimeError("CUDA error: unknown error\nCUDA kernel errors might be asynchronously reported"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm(...)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"),
    RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"),
    RuntimeError("NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:275, unhandled system error, NCCL version 2.18.1\nncclSystemError: System call failed"),
    RuntimeError("NCCL error: remote process exited or there was a network error, ncclRemoteError"),
    RuntimeError("CUDA driver error: device not ready"),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: not enough memory"),
    MemoryError(),
    StoreUnavailable("tracking store unreachable for 600 s"),
    ConnectionError("Connection refused"),
    OSError(28, "No space left on device"),
    TakenOver("taken over by elsewhere"),
    RunDeleted("deleted in the store"),
    NoCheckpoint("no checkpoint"),
    KeyboardInterrupt(),
]

PERMANENT = [
    DivergedError("loss became nan at epoch step 3"),
    HarnessError("unknown recipe"),
    RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x10 and 12x3)"),
    RuntimeError("CUDA error: device-side assert triggered"),
    RuntimeError("CUDA error: invalid configuration argument"),
    RuntimeError("CUDA error: no kernel image is available for execution on the device"),
    RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"),
    ValueError("a bug"),
]


@pytest.mark.parametrize("e", RESUMABLE, ids=lambda e: f"{type(e).__name__}:{str(e)[:40]}")
def test_resumable(e):
    assert not permanent(e)


@pytest.mark.parametrize("e", PERMANENT, ids=lambda e: f"{type(e).__name__}:{str(e)[:40]}")
def test_permanent(e):
    assert permanent(e)
