"""Who runs the runs, and where.

- schedule.py: the order a suite's runs start in (longest expected training first), and which fit side by side in the cores.
- local.py: one process, run by run (the default), and the pieces every executor shares.
- pool.py: `--jobs N`: N worker processes on this machine, supervised.
- pool_worker.py: one `--jobs` worker process: trains the runs it is handed, says which it claimed.
- fork_server.py: where `--jobs` workers are forked from: a server that imported their modules once.
- ray.py: `--executor ray`: each (experiment, seed) a task on a Ray cluster.
- capacity.py: whether a Ray cluster's nodes can take the runs, at the start and while they train.
- signals.py: SIGTERM handled as Ctrl-C, in the command and in its workers.
"""
