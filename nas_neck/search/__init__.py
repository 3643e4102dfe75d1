"""The search: Optuna studies of neck architectures, tracked in MLflow, run by three launchers.

Layers, bottom up (no module imports one above it):

* `study` (storage, sampler, objectives, counting, heartbeats) and `tracking` (MLflow);
* `settings` (`SearchSettings`, and copies with absolute paths for other processes);
* `objective` (one trial) and `progress` (the terminal display of its hooks);
* `session` (prepare or join a study, the run-until-N loop, the report at the end);
* the launchers: `runner` (local), `worker` (`nas-neck worker`), `ray_backend` (Ray Tune).
"""
