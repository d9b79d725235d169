"""The longest server outage a run rides out, measured for real (not a test: pytest does not
collect it): a run trains against PostgreSQL + basic-auth `mlflow server` (tests/servers.py), the
server is killed after the run's first epoch and restarted DOWN_S seconds later; the run must end
FINISHED in its one MLflow run with every epoch logged once. Inside a loopback-only namespace:

    unshare -n -p -f --mount-proc bash -c 'ip link set lo up && python -m tests.measure_outage [DOWN_S]'
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import make_synthetic
from tests.servers import ADMIN, PASSWORD, tracking_server
from tests.test_outages import start_run, wait_for_epoch


def main(down_s: float) -> None:
    data = make_synthetic(Path(f"/tmp/measure-outage-{os.getpid()}"))
    with tracking_server() as server:
        os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=PASSWORD)
        admin = MlflowClient(server["url"])
        args = ["--epochs", "8", "--max-train-images", "160", "--no-progress", "--no-system-metrics"]
        p = start_run(server, "long-outage", data, args=args, window_s=600)  # the default window
        run = wait_for_epoch(admin, "long-outage", p)
        t0 = time.monotonic()
        server["kill_server"]()
        time.sleep(down_s)
        server["start_server"]()
        down = time.monotonic() - t0
        out, _ = p.communicate(timeout=1800)
        [done] = admin.search_runs([run.info.experiment_id])
        steps = sorted(m.step for m in admin.get_metric_history(done.info.run_id, "epoch_time_s"))
        back = re.search(r"reachable again after (\d+) s", out)
        print(f"server down {down:.0f} s (killed, restarted after {down_s:.0f} s): exit {p.returncode}, run {done.info.status}, "
              f"epochs logged {steps}, the run's writes waited {back.group(1) if back else '?'} s")
        assert p.returncode == 0 and done.info.status == "FINISHED" and steps == list(range(8)), out


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 300.0)
