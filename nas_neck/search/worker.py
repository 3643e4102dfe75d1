"""Worker processes: join a study through its storage and run its trials until N are claimed.

`nas-neck search` stores in the study what a worker needs (settings, proxy config, the MLflow
parent run: see `prepare_study`), so a worker needs only the study name and a storage that many
processes can write: a journal file on a shared disk (`journal:PATH`) or PostgreSQL. Any number of
workers, on any machines that see the same paths, share one study: N counts trials across all of
them, the dedupe by architecture hash holds across them, and the trial of a worker that died is
failed as stale and run again once.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from nas_neck.dsl import SearchSpace
from nas_neck.errors import NasNeckError
from nas_neck.proxy import ProxyConfig, ProxyTask
from nas_neck.search.objective import Hooks, Objective
from nas_neck.search.runner import SearchSettings, finish
from nas_neck.search.study import (
    Heartbeat,
    claimed_count,
    fail_stale_trials,
    finished_count,
    is_journal,
    load_existing_study,
    open_study,
)
from nas_neck.search.tracking import Tracker

log = logging.getLogger(__name__)

TrialEnd = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def shared_config(study_name: str, storage: str) -> tuple[SearchSettings, ProxyConfig, str]:
    """(settings, proxy config, MLflow parent run id) as `nas-neck search` stored them."""
    attrs = load_existing_study(study_name, storage).user_attrs
    if "settings" not in attrs or "proxy" not in attrs:
        raise NasNeckError(
            f"study {study_name!r} in {storage} holds no search settings: create it with "
            f"`nas-neck search --study {study_name} --storage {storage} ...` first"
        )
    return (
        SearchSettings(**attrs["settings"]),
        ProxyConfig(**attrs["proxy"]),
        attrs["mlflow_parent_run_id"],
    )


def run_worker(
    study_name: str,
    storage: str,
    trials: int | None = None,
    tracking_uri: str | None = None,
    hooks: Hooks | None = None,
    on_trial_end: TrialEnd | None = None,
) -> optuna.Study:
    """Run trials of a stored study until finished + running trials (all workers) reach `trials`
    (default: the study's own N). The worker that sees the last one finish writes the report.

    Workers that take the last slots within the same few milliseconds can each start one, so N
    may be exceeded by at most one trial per extra worker.
    """
    settings, proxy_config, parent = shared_config(study_name, storage)
    target = trials if trials is not None else settings.trials
    # Workers sample on their own: one seed each, or they would all draw the same architectures.
    seed = random.SystemRandom().randrange(2**31)
    study = open_study(study_name, storage, settings.objectives, settings.sampler, seed)
    native = not is_journal(storage)
    tracker = Tracker(tracking_uri or settings.tracking_uri, study_name)
    objective = Objective.for_search(
        settings,
        SearchSpace.load(settings.space),
        ProxyTask(proxy_config),
        tracker,
        parent,
        hooks,
        native,
    )
    run = _signed(objective, beat=not native)
    log.info(
        "worker %s joins study %s (sampler seed %d), target %d trials",
        _name(),
        study_name,
        seed,
        target,
    )
    attempts = 0
    while attempts < 3 * target:
        fail_stale_trials(study, native)
        if claimed_count(study) >= target:
            break
        attempts += 1
        try:
            study.optimize(
                run,
                n_trials=1,
                catch=(Exception,),
                callbacks=[on_trial_end] if on_trial_end else None,
            )
        except (
            UpdateFinishedTrialError
        ) as e:  # our trial was failed as stale meanwhile (a long stall)
            log.warning("this worker's trial was failed by another process: %s", e)
    if finished_count(study) >= target and not study.get_trials(
        deepcopy=False, states=(TrialState.RUNNING,)
    ):
        finish(study, tracker, parent, settings.out_dir, settings.max_latency_ms)
        tracker.end(parent)
    return study


def _name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _signed(objective: Objective, beat: bool) -> Callable[[optuna.Trial], tuple[float, float]]:
    """The objective, recording this worker (`worker` user attr) and, where the storage has no
    heartbeat of its own, beating while the trial runs."""
    name = _name()

    def run(trial: optuna.Trial) -> tuple[float, float]:
        trial.set_user_attr("worker", name)
        if not beat:
            return objective(trial)
        with Heartbeat() as heartbeat:
            heartbeat.add(trial)
            return objective(trial)

    return run
