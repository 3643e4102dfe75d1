"""The Optuna side of a search: storage, sampler, objectives and the study itself.

Storage URLs: `sqlite:///nas.db` (the default; one writer process), `postgresql://...` (many
workers), or a journal file `journal:PATH` / `PATH.journal` (many workers on a shared disk).
RDB storages run Optuna's heartbeat, so a trial whose process was killed (SIGKILL) is failed after
the grace period and re-queued once with the same parameters. Journal storage has no heartbeat, and
Ray trials run outside `study.optimize`: for those a `Heartbeat` thread stamps a `heartbeat` user
attr and `fail_stale_trials` does the same job from any process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from nas_neck.errors import NasNeckError
from nas_neck.metrics import ACCURACY_METRICS, COST_METRICS, DIRECTIONS, cost_attr

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///nas.db"
SAMPLERS = ("tpe", "nsga2", "random", "gp")
HEARTBEAT_ATTR = "heartbeat"


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
        """From `ACCURACY,COST` (`map,latency`), as `--objectives` takes it."""
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
        return [self.accuracy, cost_attr(self.cost)]

    @property
    def directions(self) -> list[str]:
        return list(DIRECTIONS)


def is_journal(url: str) -> bool:
    """Whether `url` names a journal file (no heartbeat of Optuna's own, see `Heartbeat`)."""
    return url.startswith("journal:") or url.endswith((".journal", ".log"))


def make_storage(url: str, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage behind `url`; `heartbeat=False` for an RDB storage
    that asks trials outside `study.optimize` (the Ray driver, which beats with `Heartbeat`)."""
    if is_journal(url):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise NasNeckError(
            f"--storage: expected a database URL (sqlite:///nas.db, postgresql://...) "
            f"or a journal file (journal:PATH), got {url!r}"
        )
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    if not heartbeat:
        return RDBStorage(url, engine_kwargs=engine_kwargs)
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


def open_study(
    name: str, storage: str, objectives: Objectives, sampler: str = "tpe", seed: int = 0
) -> optuna.Study:
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
    reason (a trial killed or interrupted without one, or re-queued after its worker died, is run
    again)."""
    if trial.state == TrialState.COMPLETE:
        return True
    return (
        trial.state == TrialState.FAIL
        and "fail_reason" in trial.user_attrs
        and not trial.user_attrs.get("retried")
    )


def finished_count(study: optuna.Study) -> int:
    """Trials that count toward the requested number (see `counted`)."""
    return sum(counted(t) for t in study.get_trials(deepcopy=False))


def claimed_count(study: optuna.Study) -> int:
    """Finished trials plus those running now (in any process): what N is compared with when
    several processes share a study."""
    return sum(
        counted(t) or t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)
    )


class Heartbeat:
    """Stamps the `heartbeat` user attr (unix time) of the trials it holds, every interval, from a
    daemon thread, so other processes can tell a live trial from one whose process died.

    Use it where Optuna's own heartbeat does not run: on journal storage, and for Ray trials
    (the Ray driver beats for every trial it asked until Tune reports it).
    """

    def __init__(self, interval: float | None = None) -> None:
        self.interval = interval if interval is not None else _heartbeat()[0]
        self._trials: dict[int, optuna.Trial] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nas-neck-heartbeat", daemon=True)

    def add(self, trial: optuna.Trial) -> None:
        """Beat for `trial` from now on (stamps it at once)."""
        trial.set_user_attr(HEARTBEAT_ATTR, time.time())
        with self._lock:
            self._trials[trial.number] = trial

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                trials = list(self._trials.values())
            for trial in trials:
                try:
                    trial.set_user_attr(HEARTBEAT_ATTR, time.time())
                except UpdateFinishedTrialError:  # finished (or failed as stale elsewhere)
                    with self._lock:
                        self._trials.pop(trial.number, None)
                except Exception as e:  # a storage hiccup must not end the beating
                    log.warning("heartbeat of trial %d: %s", trial.number, e)


def _is_stale(trial: FrozenTrial, now: float, grace: float, native: bool) -> bool:
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if beat is None:
        if native or trial.datetime_start is None:  # Optuna's own heartbeat watches it
            return False
        beat = trial.datetime_start.timestamp()
    return now - beat > grace


def fail_stale_trials(study: optuna.Study, native: bool) -> list[int]:
    """Fail RUNNING trials whose process died (no heartbeat for the grace period) and queue each
    once more with the same parameters; returns the numbers failed here.

    `native`: the storage runs Optuna's heartbeat (RDB), which this also applies; trials without a
    `heartbeat` user attr are then left to it. A failed trial keeps `fail_reason` "stale: worker
    died" and, when re-queued, `retried` (so only its retry counts); the retry has `retry_of`.
    Safe to call from many processes: only the one whose FAIL lands first re-queues.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    grace, now, failed = _heartbeat()[1], time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_stale(t, now, grace, native):
            continue
        retry = "retry_of" not in t.user_attrs
        trial = optuna.trial.Trial(study, t._trial_id)
        try:
            trial.set_user_attr("fail_reason", "stale: worker died" + ("" if retry else " twice"))
            if retry:
                trial.set_user_attr("retried", True)
            study.tell(trial, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):  # it finished, or another process failed it
            continue
        if retry:
            attrs = {k: v for k, v in t.user_attrs.items() if k == "baseline"}
            study.enqueue_trial(t.params, user_attrs={**attrs, "retry_of": t.number})
        log.warning(
            "trial %d: no heartbeat for over %.0f s; failed%s",
            t.number,
            grace,
            " and queued again" if retry else "",
        )
        failed.append(t.number)
    return failed


def load_existing_study(name: str, storage: str) -> optuna.Study:
    """Load a study for reading (creating no database on a typo), or say which studies the storage holds."""
    if "://" in storage:
        file = storage.removeprefix("sqlite:///") if storage.startswith("sqlite:///") else None
    else:
        file = storage.removeprefix("journal:")
    if file and file != ":memory:" and not Path(file).exists():
        raise NasNeckError(
            f"--storage: no such file {file} (run `nas-neck search` first, or pass --storage)"
        )
    # Reading needs none of the heartbeat and retry machinery `make_storage` sets up for workers.
    backend = optuna.storages.RDBStorage(storage) if "://" in storage else make_storage(storage)
    names = optuna.get_all_study_names(backend)
    if name not in names:
        raise NasNeckError(
            f"no study {name!r} in {storage}; studies there: {', '.join(sorted(names)) or 'none'}"
        )
    return optuna.load_study(study_name=name, storage=backend)
