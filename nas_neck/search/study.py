"""The Optuna side of a search: storage, sampler, objectives and the study itself.

Storage URLs: `sqlite:///nas.db` (the default; one writer process), `postgresql://...` (many
workers), or a journal file `journal:PATH` / `PATH.journal` (many workers on a shared disk).
RDB storages run Optuna's heartbeat, so a trial whose process was killed (SIGKILL) is failed after
the grace period and re-queued once with the same parameters.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from nas_neck.errors import NasNeckError

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///nas.db"
ACCURACY_METRICS = ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
COST_METRICS = ("latency", "flops", "params")
SAMPLERS = ("tpe", "nsga2", "random", "gp")

def _heartbeat() -> tuple[int, int]:
    """(interval, grace) in seconds; env NAS_NECK_HEARTBEAT_S / NAS_NECK_GRACE_S override."""
    interval = int(os.environ.get("NAS_NECK_HEARTBEAT_S", 10))
    return interval, int(os.environ.get("NAS_NECK_GRACE_S", 6 * interval))


@dataclass(frozen=True)
class Objectives:
    """What the study optimizes: one accuracy metric (maximized), one cost (minimized)."""

    accuracy: str = "map"
    cost: str = "latency"

    @classmethod
    def parse(cls, text: str) -> Objectives:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if len(parts) != 2 or parts[0] not in ACCURACY_METRICS or parts[1] not in COST_METRICS:
            raise NasNeckError(
                f"--objectives: expected 'ACCURACY,COST' with ACCURACY in {', '.join(ACCURACY_METRICS)} "
                f"and COST in {', '.join(COST_METRICS)}, got {text!r}"
            )
        return cls(*parts)

    @property
    def names(self) -> list[str]:
        """Metric names as stored on the study (cost with its unit)."""
        return [self.accuracy, {"latency": "latency_ms", "flops": "gflops", "params": "mparams"}[self.cost]]

    @property
    def directions(self) -> list[str]:
        return ["maximize", "minimize"]


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage behind `url`."""
    if url.startswith("journal:") or url.endswith((".journal", ".log")):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise NasNeckError(f"--storage: expected a database URL (sqlite:///nas.db, postgresql://...) "
                           f"or a journal file (journal:PATH), got {url!r}")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    interval, grace = _heartbeat()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=interval,
            grace_period=grace,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """A seeded sampler; constraints come from `trial.set_constraint` (Optuna 5)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=5)
    raise NasNeckError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {name!r}")


def open_study(name: str, storage: str, objectives: Objectives, sampler: str = "tpe", seed: int = 0) -> optuna.Study:
    """Create the study, or load it to resume; refuses to resume with other objectives."""
    study = optuna.create_study(
        study_name=name,
        storage=make_storage(storage),
        sampler=make_sampler(sampler, seed),
        directions=objectives.directions,
        load_if_exists=True,
    )
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(objectives.names)
    elif list(study.metric_names) != objectives.names:
        raise NasNeckError(
            f"study {name!r} in {storage} optimizes {study.metric_names}, not {objectives.names}; "
            "use another --study name or the same --objectives"
        )
    return study


def counted(trial: FrozenTrial) -> bool:
    """Whether a trial counts toward the requested number: complete, or failed for a recorded
    reason (a trial killed or interrupted without one is run again)."""
    if trial.state == TrialState.COMPLETE:
        return True
    return trial.state == TrialState.FAIL and "fail_reason" in trial.user_attrs


def finished_count(study: optuna.Study) -> int:
    return sum(counted(t) for t in study.get_trials(deepcopy=False))


def load_existing_study(name: str, storage: str) -> optuna.Study:
    """Load a study for reading (creating no database on a typo), or say which studies the storage holds."""
    if "://" in storage:
        file = storage.removeprefix("sqlite:///") if storage.startswith("sqlite:///") else None
    else:
        file = storage.removeprefix("journal:")
    if file and file != ":memory:" and not Path(file).exists():
        raise NasNeckError(f"--storage: no such file {file} (run `nas-neck search` first, or pass --storage)")
    # Reading needs none of the heartbeat and retry machinery `make_storage` sets up for workers.
    backend = optuna.storages.RDBStorage(storage) if "://" in storage else make_storage(storage)
    names = optuna.get_all_study_names(backend)
    if name not in names:
        raise NasNeckError(f"no study {name!r} in {storage}; studies there: {', '.join(sorted(names)) or 'none'}")
    return optuna.load_study(study_name=name, storage=backend)
