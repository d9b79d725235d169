"""fp16 training scales the loss: gradients too small for fp16 still update the weights, as
they do in fp32 (tested on the CPU, where autocast runs fp16 too)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.training.loop import grad_scaler, train_one_epoch


def tiny_loss(out, y):
    return 1e-6 * F.cross_entropy(out, y)  # its gradients w.r.t. the outputs are ~1e-9: below fp16's smallest number


def one_step(precision, scaler=None):
    torch.manual_seed(0)
    model = nn.Linear(16, 4)
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    x, y = torch.randn(256, 16), torch.randint(0, 4, (256,))
    before = model.weight.detach().clone()
    train_one_epoch(model, [(x, y)], 1, opt, tiny_loss, precision=precision, scaler=scaler)
    return before, model.weight.detach()


def test_fp16_updates_where_unscaled_fp16_gradients_underflow():
    before, fp32 = one_step("fp32")
    assert (fp32 - before).abs().max() > 1e-3
    _, unscaled = one_step("fp16", scaler=torch.amp.GradScaler("cpu", enabled=False))
    assert torch.equal(unscaled, before), "without a scaler these gradients flush to zero in fp16"
    _, fp16 = one_step("fp16")  # train_one_epoch's own scaler
    assert torch.allclose(fp16 - before, fp32 - before, rtol=0.05, atol=1e-4)


def test_only_fp16_gets_a_scaler():
    cpu = torch.device("cpu")
    assert grad_scaler(cpu, "fp32") is None and grad_scaler(cpu, "bf16") is None
    assert isinstance(grad_scaler(cpu, "fp16"), torch.amp.GradScaler)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """40 test images, not synthetic_root's 200: fp16 autocast is slow on a CPU, and every epoch
    and the run's end evaluate on the test set."""
    from .conftest import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("fp16"), n_train=100, n_test=40)


@pytest.mark.slow
def test_a_killed_fp16_run_resumes_with_its_loss_scale(small_root, store):
    """The scaler's state (scale, growth counter) is part of each epoch's checkpoint, so a resumed
    fp16 run goes on with the scale it had, not a fresh one."""
    import os
    import signal
    from pathlib import Path

    from tests.test_runner import cli, harness_proc, runs

    # 40 images, 2 epochs: what is checked is the scaler's state in the checkpoint and a resume
    # from it, the same on any number of images (fp16 autocast is slow on a CPU: 3 epochs of
    # 120 images and 200 test images took twice this test's CPU, the whole 600 ~30 CPU-s)
    args = ["run", "medium-three-conv", "--precision", "fp16", "--data-dir", small_root, "--tracking-uri", store, "--epochs", "2",
            "--max-train-images", "40", "--no-progress", "--no-system-metrics"]
    # SIGKILLed at the end of its second (last) epoch, the first's checkpoint written (tracking/faults.py):
    # killed mid-run however fast its epochs are, without the test watching for the checkpoint
    p = harness_proc(*args, env_extra={"HARNESS_FAULT": "epoch_end@2:kill"})
    out = p.communicate(timeout=300)[0]
    assert p.returncode == -signal.SIGKILL, out
    [ck_path] = Path(os.environ["HARNESS_STATE_DIR"]).glob("*/state.pt")
    ck = torch.load(ck_path, weights_only=True)
    assert ck["scaler"]["scale"] > 0 and "_growth_tracker" in ck["scaler"]
    r = cli(*args)
    assert r.exit_code == 0 and "resuming" in r.output, r.output
    [done] = runs(store)
    assert done.info.status == "FINISHED" and done.data.params["precision"] == "fp16"
