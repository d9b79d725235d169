"""The crash-point matrix's cells on the real shared store: PostgreSQL + basic-auth MLflow (the
session's server, tests/servers.py), where a run's checkpoint is an artifact of the run itself
(`harness-state/`), not a file beside a SQLite store. Each cell has an experiment of its own on
the server and is checked by the matrix's one checker (crash_cells.check), then the same command
runs again and is checked once more. The SQLite matrix (test_crash_matrix.py) has every step x
fault; these are the cells where the server's own parts act: the checkpoint uploaded and read
back from the server, a SIGKILL between the finish and the artifacts' removal, SIGTERM mid-run."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.crash_cells import Cell, check, runs, tiny, zygote  # noqa: F401  (fixtures)


@pytest.fixture
def cell(tmp_path, zygote, tiny, server, admin) -> Cell:  # noqa: F811
    return Cell(tmp_path, zygote, tiny, server=server)


def test_a_run_killed_after_an_epoch_resumes_from_its_checkpoint_on_the_server(cell):
    """SIGKILL after epoch 1 was checkpointed to the server (paused before epoch 2's checkpoint
    until the server holds epoch 1's, so the kill lands where a checkpoint exists): the rerun
    resumes the same run from the server's artifact, each epoch logged once, and the checkpoint
    artifacts are gone once it finished."""
    pid, out = cell.start("epoch_end@2:pause")
    cell.wait_paused(out)
    c, [run] = runs(cell)
    deadline = time.monotonic() + 60
    while not c.get_run(run.info.run_id).data.tags.get("harness.checkpoint"):  # the upload is the outbox's: off the training thread
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    rc = cell.z.wait(pid)
    assert rc == -9
    by = check(cell, rc, out.read_text(), done=False, unwritable=True)
    assert [r.info.run_id for r in by["RUNNING"]] == [run.info.run_id]
    assert c.list_artifacts(run.info.run_id, "harness-state")  # the checkpoint to resume from is the server's
    rc2, out2 = cell.run()
    assert "resuming run" in out2 and "after epoch 1/2" in out2, out2
    by = check(cell, rc2, out2, done=True)
    assert by["FINISHED"][0].info.run_id == run.info.run_id, out2


def test_a_run_killed_between_its_finish_and_its_checkpoints_removal_leaves_nothing(cell):
    """SIGKILL once the run is FINISHED and before its `harness-state/` artifacts are removed: the
    next command finds the run finished, trains nothing and removes them."""
    rc, out = cell.run("clear:kill")
    assert rc == -9 and (cell.root / "faults" / "fired-clear").exists(), out
    by = check(cell, rc, out, done=False, unwritable=True)
    [run] = by["FINISHED"]
    c, _ = runs(cell)
    assert c.list_artifacts(run.info.run_id, "harness-state"), out  # left behind by the kill
    rc2, out2 = cell.run()
    assert "skipped" in out2 and "test accuracy" not in out2, out2
    check(cell, rc2, out2, done=True)
    assert not c.list_artifacts(run.info.run_id, "harness-state"), out2


def test_sigterm_mid_run_leaves_it_resumable_on_the_server(cell):
    """SIGTERM at the second epoch's end: KILLED (resumable) with one line, and the rerun resumes it."""
    rc, out = cell.run("epoch_end@2:term")
    assert rc == 130 and (cell.root / "faults" / "fired-epoch_end").exists(), out
    by = check(cell, rc, out, done=False)
    [run] = by["KILLED"]
    rc2, out2 = cell.run()
    assert check(cell, rc2, out2, done=True)["FINISHED"][0].info.run_id == run.info.run_id, out2
