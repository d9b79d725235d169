"""The crash-point matrix's server case: PostgreSQL + basic-auth MLflow (the session's server,
tests/servers.py), where a run's checkpoint is an artifact of the run itself (`harness-state/`),
not a file beside a SQLite store. The case has an experiment of its own on the server and each
of its commands is checked by the matrix's one checker (crash_cells.check). The SQLite matrix (test_crash_matrix.py) has every step x
fault; this is its one server case (about 1.5 min on a loaded 2-core machine, the server's
start apart): where the server's own parts act, the checkpoint uploaded and read back from the
server, and a SIGKILL between the finish and the artifacts' removal. A claim here waits 0.5 s
to settle instead of 2 (one claimer: the race it guards is test_claims.py's).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.crash_cells import Cell, check, runs, tiny, zygote  # noqa: F401  (fixtures)


@pytest.fixture
def cell(tmp_path, zygote, tiny, server, admin) -> Cell:  # noqa: F811
    c = Cell(tmp_path, zygote, tiny, server=server)
    c.env["HARNESS_CLAIM_SETTLE_S"] = "0.5"
    return c


def test_a_run_killed_mid_training_then_after_its_finish_on_the_server(cell):
    """One server case, three commands, each checked by the matrix's checker:
    1. SIGKILL after epoch 1 was checkpointed to the server (paused before epoch 2's checkpoint
       until the run's checkpoint tag names the uploaded artifact): RUNNING under a dead owner,
       its checkpoint the server's;
    2. the same command resumes the same run from that artifact and is SIGKILLed once the run is
       FINISHED, before its `harness-state/` artifacts are removed (the `clear` step);
    3. the same command trains nothing and removes them."""
    pid, out = cell.start("epoch_end@2:pause")
    cell.wait_paused(out)
    c, [run] = runs(cell)
    deadline = time.monotonic() + 120
    while not c.get_run(run.info.run_id).data.tags.get("harness.checkpoint"):  # the upload is the outbox's: off the training thread
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    rc = cell.z.wait(pid)
    assert rc == -9
    by = check(cell, rc, out.read_text(), done=False, unwritable=True)
    assert [r.info.run_id for r in by["RUNNING"]] == [run.info.run_id]
    assert c.list_artifacts(run.info.run_id, "harness-state")  # the checkpoint to resume from is the server's

    rc, text = cell.run("clear:kill")
    assert rc == -9 and (cell.root / "faults" / "fired-clear").exists(), text
    assert f"resuming run {run.info.run_id} after epoch 1/2" in text, text
    by = check(cell, rc, text, done=False, unwritable=True)
    assert [r.info.run_id for r in by["FINISHED"]] == [run.info.run_id], text
    assert c.list_artifacts(run.info.run_id, "harness-state"), text  # left behind by the kill

    rc, text = cell.run()
    assert "skipped" in text and "test accuracy" not in text, text
    check(cell, rc, text, done=True)
    assert not c.list_artifacts(run.info.run_id, "harness-state"), text
