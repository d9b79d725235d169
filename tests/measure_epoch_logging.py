"""What logging an epoch costs the training loop against the basic-auth tracking server, before
(the epoch's checkpoint upload and metrics written on the training thread) and after (the same
writes through the Outbox), measured side by side in one process (not a test: pytest does not
collect it). Run it inside a loopback-only namespace, as .ci/run runs the tests:

    unshare -n -p -f --mount-proc bash -c 'ip link set lo up && python -m tests.measure_epoch_logging [RECIPE] [DATA_DIR]'

Epochs of the recipe's real training loop alternate between three ways of logging them: none,
on the training thread, through the Outbox; each epoch's logging is timed on the training
thread, and the epochs' training time is compared across the three (the Outbox's thread shares
the cores and the interpreter with training).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

from tests.servers import ADMIN, PASSWORD, tracking_server

EPOCHS_EACH = 6
MAX_TRAIN_IMAGES = 4000


def main(recipe: str, data_dir: str) -> None:
    from harness.data.cifar_files import load_cifar10, resolve_data_dir
    from harness.models import create_model
    from harness.recipes.catalogue import load_catalogue
    from harness.runs.checkpoints import run_state
    from harness.training.loop import build_optimizer, evaluate, loss_function, train_one_epoch
    from harness.training.recipe_data import prepare_data
    from harness.tracking import Tracker
    from harness.tracking.outbox import Outbox

    torch.set_num_threads(1)
    exp = load_catalogue()[recipe]
    if not (Path(data_dir) / "cifar-10-batches-py").exists():
        from tests.conftest import make_synthetic

        data_dir = str(make_synthetic(Path(f"/tmp/measure-synthetic-{os.getpid()}"), n_train=MAX_TRAIN_IMAGES + 500))
    data = load_cifar10(resolve_data_dir(data_dir, download=False))
    prep = prepare_data(exp, data, 0, MAX_TRAIN_IMAGES, torch.device("cpu"))
    model = create_model(exp.model.name, **exp.model.args)
    opt = build_optimizer(model, exp.train.optimizer, exp.train.phases[0].lr)
    loss_fn = loss_function(exp.train.loss)
    with tracking_server() as server:
        os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=PASSWORD)
        tracker = Tracker(server["url"], "measure-logging")
        with Outbox() as outbox:
            ways = {"none": None, "training thread": None, "outbox": outbox}
            runs = {w: tracker.start_run(f"logging-{w}", {}, {}) for w in ways}
            states = {w: run_state(tracker, runs[w], ways[w]) for w in ways}
            train_s: dict[str, list[float]] = {w: [] for w in ways}
            log_s: dict[str, list[float]] = {w: [] for w in ways}
            steps = len(prep.train)
            for e in range(EPOCHS_EACH * len(ways)):
                way = list(ways)[e % len(ways)]
                t0 = time.perf_counter()
                stats = train_one_epoch(model, prep.train.batches(e), steps, opt, loss_fn)
                val = evaluate(model, prep.val_x, prep.val_y, loss_fn, exp.eval.batch_size)
                t1 = time.perf_counter()
                metrics = {"train_loss": stats.loss, "train_acc": stats.acc, "val_loss": val.loss, "val_acc": val.acc, "lr": stats.lr,
                           "epoch_time_s": stats.time_s, "epoch_images_per_s": stats.images / stats.time_s}
                series = {"train_loss_step": [(e * steps + s, v) for s, v in stats.step_losses]}
                ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng_cpu": torch.get_rng_state(), "epoch": e,
                      "metrics": metrics, "series": series}
                if way == "training thread":
                    states[way].save(ck)
                    tracker.log_metrics(runs[way], metrics, e, series)
                elif way == "outbox":
                    states[way].save(ck)
                    outbox.submit(tracker.log_metrics, runs[way], metrics, e, series)
                t2 = time.perf_counter()
                train_s[way].append(t1 - t0)
                log_s[way].append(t2 - t1)
            outbox.flush()
        for w, rid in runs.items():
            states[w].clear()
            tracker.terminate(rid, "FINISHED")
    base = statistics.median(train_s["none"])
    print(f"{recipe}, {MAX_TRAIN_IMAGES} training images, 1 thread: an epoch trains in {base:.2f} s (median of {EPOCHS_EACH})")
    for w in ("training thread", "outbox"):
        cost, tr = statistics.median(log_s[w]), statistics.median(train_s[w])
        print(f"  logging {w:15s}: {cost * 1000:7.1f} ms per epoch on the training thread = {100 * cost / base:5.2f}% of the epoch; "
              f"epoch training {tr:.2f} s ({100 * (tr / base - 1):+.1f}% vs no logging)")
    before, after = statistics.median(log_s["training thread"]), statistics.median(log_s["outbox"])
    print(f"  before / after: {before / max(after, 1e-9):.0f}x less time taken from training per epoch")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fastai-simplenet",
         sys.argv[2] if len(sys.argv) > 2 else str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"))
