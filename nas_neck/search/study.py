"""The Optuna side of a search: storage, sampler, objectives and the study itself.

Storage URLs: `sqlite:///nas.db` (the default; one writer process), `postgresql://...` (many
workers; the `cluster` extra installs its driver), or a journal file `journal:PATH` /
`PATH.journal` (many workers on a shared disk). Stale trials are handled the same way on every
storage: a `Heartbeat` thread stamps a `heartbeat` user attr on each running trial, and
`fail_stale_trials`, from any process, fails a trial whose process died (no beat for the grace
period) with its reason, and queues it once more with the same parameters (`retry_of`).
Optuna's own RDB heartbeat is not used: it fails trials without a reason and retries them
without saying what they retry.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import threading
import time
import warnings
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from nas_neck.errors import NasNeckError
from nas_neck.fidelity import (
    CONFIRM_OF,
    EPOCHS,
    PROMOTES,
    RESUMES,
    ROLE,
    RUNG,
    SEED,
    is_candidate,
)
from nas_neck.metrics import ACCURACY_METRICS, COST_METRICS, DIRECTIONS, cost_attr
from nas_neck.search.defaults import DEFAULT_STORAGE as DEFAULT_STORAGE  # re-exported
from nas_neck.search.defaults import SAMPLERS, is_journal

log = logging.getLogger(__name__)

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


# Drivers SQLAlchemy loads for each database, and how to install them.
_DRIVERS = {
    "postgresql": "the PostgreSQL driver psycopg: pip install 'nas-neck[cluster]'",
    "mysql": "a MySQL driver: pip install pymysql (and use mysql+pymysql://)",
}


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage behind `url`; a missing driver, an unreachable
    server or a locked database file is one `NasNeckError` naming `--storage`."""
    if is_journal(url):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise NasNeckError(
            f"--storage: expected a database URL (sqlite:///nas.db, postgresql://...) "
            f"or a journal file (journal:PATH), got {url!r}"
        )
    try:
        return RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except ImportError:
        dialect = url.split("://", 1)[0].split("+", 1)[0]
        need = _DRIVERS.get(dialect, f"the SQLAlchemy driver for {dialect!r}")
        raise NasNeckError(
            f"--storage {_redact(url)}: the database driver is missing; install {need}"
        ) from None
    except sqlalchemy.exc.OperationalError as e:
        raise storage_error(url, e) from None


def storage_error(url: str, error: Exception) -> NasNeckError:
    """`error` from the database behind `url` as one line naming `--storage`."""
    first = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    if "locked" in first:
        waited = _db_timeout_s()
        return NasNeckError(
            f"--storage {_redact(url)}: the database is locked by another process "
            f"(waited {waited:g} s); SQLite takes one writer at a time: use journal:PATH or "
            "PostgreSQL for many processes"
        )
    return NasNeckError(f"--storage {_redact(url)}: cannot use the database ({first})")


def _engine_kwargs(url: str) -> dict[str, object]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": _db_timeout_s()}}
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}}
    return {}


def _db_timeout_s() -> float:
    """How long SQLite waits for another writer's lock (env NAS_NECK_DB_TIMEOUT_S, default 60)."""
    return float(os.environ.get("NAS_NECK_DB_TIMEOUT_S", 60))


def _redact(url: str) -> str:
    """`url` without its password."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def dashboard_command(url: str) -> str:
    """The `optuna-dashboard` command for the storage at `url`, from any folder: a SQLite file or
    journal made absolute, a password shown as ***."""
    if is_journal(url):
        target = str(Path(url.removeprefix("journal:")).expanduser().resolve())
    elif url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        target = f"sqlite:///{Path(url.removeprefix('sqlite:///')).expanduser().resolve()}"
    else:
        target = _redact(url)
    return f"optuna-dashboard {shlex.quote(target)}"


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """A seeded sampler that learns only from candidates (`CandidateSampler`); constraints come
    from `trial.set_constraint` (Optuna 5)."""
    if name == "tpe":
        base: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=5
        )
    elif name == "nsga2":
        base = optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    elif name == "random":
        base = optuna.samplers.RandomSampler(seed=seed)
    elif name == "gp":
        base = optuna.samplers.GPSampler(seed=seed, n_startup_trials=5)
    else:
        raise NasNeckError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {name!r}")
    return CandidateSampler(base)


class _CandidateView:
    """A study as a sampler should see it: only its candidate trials (`is_candidate`)."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> object:
        return getattr(self._study, name)

    def _get_trials(
        self,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        return [t for t in trials if is_candidate(t.user_attrs)]

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy, states, use_cache=False)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class CandidateSampler(optuna.samplers.BaseSampler):
    """A sampler that learns from one fidelity only: the wrapped sampler sees the study's
    candidates (fresh samples and baselines at the first rung's epochs), never the promotions or
    confirmation runs, whose values come from longer training and would read as better
    architectures rather than more epochs."""

    def __init__(self, base: optuna.samplers.BaseSampler) -> None:
        self.base = base

    def infer_relative_search_space(self, study, trial):  # type: ignore[no-untyped-def]
        return self.base.infer_relative_search_space(_CandidateView(study), trial)

    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        return self.base.sample_relative(_CandidateView(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        return self.base.sample_independent(
            _CandidateView(study), trial, param_name, param_distribution
        )

    def before_trial(self, study, trial):  # type: ignore[no-untyped-def]
        self.base.before_trial(_CandidateView(study), trial)

    def after_trial(self, study, trial, state, values):  # type: ignore[no-untyped-def]
        self.base.after_trial(_CandidateView(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()


def open_study(
    name: str, storage: str, objectives: Objectives, sampler: str = "tpe", seed: int = 0
) -> optuna.Study:
    """Create the study, or load it to resume; refuses to resume with other objectives."""
    try:
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
    except sqlalchemy.exc.OperationalError as e:
        raise storage_error(storage, e) from None
    if list(study.metric_names) != objectives.names:
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
    """Candidates (fresh samples and baselines, not promotions or confirmation runs) that count
    toward the requested number (see `counted`)."""
    return sum(counted(t) and is_candidate(t.user_attrs) for t in study.get_trials(deepcopy=False))


def claimed_count(study: optuna.Study) -> int:
    """Finished candidates plus those running now (in any process): what N is compared with when
    several processes share a study."""
    return sum(
        (counted(t) or t.state == TrialState.RUNNING) and is_candidate(t.user_attrs)
        for t in study.get_trials(deepcopy=False)
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


# What a re-queued promotion or confirmation run keeps of the one that died: what it is, not what
# it recorded. A re-queued candidate keeps only its baseline name: it trains as the search that
# runs it now says (its epochs may have changed since).
_REQUEUED = ("baseline", EPOCHS, RUNG, PROMOTES, RESUMES, ROLE, CONFIRM_OF, SEED)


def _is_stale(trial: FrozenTrial, now: float, grace: float) -> bool:
    """No heartbeat (or, before the first one, no start) for over `grace` seconds."""
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if beat is None:
        if trial.datetime_start is None:
            return False
        beat = trial.datetime_start.timestamp()
    return now - beat > grace


def fail_stale_trials(
    study: optuna.Study, on_fail: Callable[[FrozenTrial], None] | None = None
) -> list[int]:
    """Fail RUNNING trials whose process died (no heartbeat for the grace period) and queue each
    once more with the same parameters; returns the numbers failed here.

    A failed trial keeps `fail_reason` "stale: worker died" and, when re-queued, `retried` (so
    only its retry counts); the retry has `retry_of`. `on_fail` gets each trial failed here (the
    search ends its MLflow run as KILLED). Safe to call from many processes: only the one whose
    FAIL lands first re-queues.
    """
    grace, now, failed = _heartbeat()[1], time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_stale(t, now, grace):
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
            requeue(study, t)
        log.warning(
            "trial %d: no heartbeat for over %.0f s; failed%s",
            t.number,
            grace,
            " and queued again" if retry else "",
        )
        if on_fail is not None:
            on_fail(study.get_trials(deepcopy=False)[t.number])
        failed.append(t.number)
    return failed


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a failed `trial` once more with the same parameters (user attr `retry_of`): a
    candidate keeps only its baseline name, a promotion or confirmation run what it is."""
    keep = ("baseline",) if is_candidate(trial.user_attrs) else _REQUEUED
    attrs = {k: v for k, v in trial.user_attrs.items() if k in keep}
    study.enqueue_trial(trial.params, user_attrs={**attrs, "retry_of": trial.number})


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
    backend = make_storage(storage)
    names = optuna.get_all_study_names(backend)
    if name not in names:
        raise NasNeckError(
            f"no study {name!r} in {storage}; studies there: {', '.join(sorted(names)) or 'none'}"
        )
    return optuna.load_study(study_name=name, storage=backend)
