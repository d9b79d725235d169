"""Progress of a training run: tqdm bars on a terminal, one line per epoch elsewhere."""

from __future__ import annotations

import time

from .job import Job, Progress


def progress_bar(job: Job, total: int):
    if not job.opts.progress or not job.opts.bars:
        return None
    from tqdm import tqdm

    # disable=None: silent when stderr is not a terminal
    return tqdm(total=total, desc=job.run_name, unit="step", dynamic_ncols=True, leave=False, mininterval=0.5, disable=None)


def epoch_line(job: Job, epoch: int, pr: Progress, metrics: dict, t_start: float) -> str:
    """The progress of one epoch as a log line, where no terminal shows a bar."""
    done = epoch + 1
    elapsed = time.perf_counter() - t_start
    per_epoch = elapsed / max(done - pr.start_epoch, 1)
    eta = per_epoch * (job.epochs - done)
    return (f"{job.run_name}: epoch {done}/{job.epochs} train_loss {metrics['train_loss']:.4f} val_acc {metrics['val_acc']:.2f}% "
            f"{metrics['epoch_images_per_s']:.0f} img/s elapsed {_hms(elapsed)} ETA {_hms(eta)}")


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"
