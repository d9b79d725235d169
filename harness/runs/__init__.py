"""A run's life in the tracking store, from claim to finish.

- job.py: the plain data of runs (options, one resolved job, progress, outcome).
- progress.py: tqdm bars on a terminal, one line per epoch elsewhere.
- lifecycle.py: a run's states and status writes (claimed, recorded, training, finished, resumable, failed), owner-checked.
- liveness.py: whether a run's owner is alive (its process here, its heartbeat as watched from elsewhere).
- claims.py: who trains what, among every process that shares the store (the run is the claim).
- config_lock.py: an flock per configuration, so processes of one machine skip each other's quickly.
- heartbeat.py: a claimed run's heartbeat tag, refreshed while it trains, and the check that it is still ours.
- checkpoints.py: a run's training state between epochs, so a killed run resumes.
- run_record.py: what a new run records about itself (tags, params, config, datasets).
- finish.py: test metrics, artifacts and the kept model, logged idempotently; then the run FINISHED and its checkpoint removed.
- one_run.py: one claimed run recorded, trained epoch by epoch, then finished (or ended as lifecycle.py decides).
- group_run.py: a recipe's seeds trained together, recorded as N ordinary runs.
"""
