"""Worker processes on one journal study: stale-trial handling, N across workers, dedupe across
processes, and a worker killed mid-trial (real `nas-neck worker` subprocesses, tiny real proxy)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState
from search_fixtures import tiny_config, tiny_proxy

from nas_neck.dsl import load_architecture
from nas_neck.search.session import prepare_study
from nas_neck.search.settings import SearchSettings
from nas_neck.search.study import (
    Heartbeat,
    Objectives,
    counted,
    fail_stale_trials,
    load_existing_study,
    open_study,
)

SPACES = Path(__file__).parents[1] / "search_spaces"
BEAT = {"NAS_NECK_HEARTBEAT_S": "1", "NAS_NECK_GRACE_S": "5"}


# ---- stale trials (no training) ----------------------------------------------------------------
def test_stale_trial_is_failed_and_queued_again_once(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_NECK_GRACE_S", "5")
    study = open_study("s", f"journal:{tmp_path}/s.journal", Objectives())
    dead = study.ask()
    width = dead.suggest_int("width", 16, 128)
    dead.set_user_attr("heartbeat", time.time() - 60)
    alive = study.ask()
    alive.set_user_attr("heartbeat", time.time())

    assert fail_stale_trials(study) == [dead.number]
    assert fail_stale_trials(study) == []  # once only
    failed = study.trials[dead.number]
    assert (
        failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "stale: worker died"
    )
    assert not counted(failed)  # its retry counts instead
    assert study.trials[alive.number].state == TrialState.RUNNING

    retry = study.ask()  # pops the re-queued trial: same parameters
    assert (
        retry.user_attrs["retry_of"] == dead.number and retry.suggest_int("width", 16, 128) == width
    )
    retry.set_user_attr("heartbeat", time.time() - 60)
    assert fail_stale_trials(study) == [retry.number]
    again = study.trials[retry.number]
    assert again.user_attrs["fail_reason"] == "stale: worker died twice" and counted(again)
    assert not study.get_trials(states=(TrialState.WAITING,))  # not queued a third time


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_trial_without_heartbeat_is_judged_by_its_start_on_every_storage(
    tmp_path, monkeypatch, kind
):
    monkeypatch.setenv("NAS_NECK_GRACE_S", "0")
    url = f"journal:{tmp_path}/s.journal" if kind == "journal" else f"sqlite:///{tmp_path}/s.db"
    study = open_study("s", url, Objectives())
    trial = study.ask()
    time.sleep(0.01)
    ended = []
    assert fail_stale_trials(study, on_fail=ended.append) == [trial.number]
    failed = study.trials[trial.number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"] == "stale: worker died"  # on SQLite too
    assert [t.number for t in ended] == [trial.number]  # the caller ends its MLflow run
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.user_attrs["retry_of"] == trial.number


def test_heartbeat_stamps_until_the_trial_ends(tmp_path):
    study = open_study("s", f"journal:{tmp_path}/s.journal", Objectives())
    trial = study.ask()
    with Heartbeat(interval=0.05) as heartbeat:
        heartbeat.add(trial)
        first = study.trials[0].user_attrs["heartbeat"]
        time.sleep(0.3)
        assert study.trials[0].user_attrs["heartbeat"] > first
        study.tell(trial, [0.5, 1.0])
        time.sleep(0.2)  # the finished trial is dropped, not an error
    assert study.trials[0].state == TrialState.COMPLETE


# ---- worker processes --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    proxy = tiny_proxy(root)
    proxy.caches(load_architecture(SPACES / "light.yaml").inputs)  # workers reuse the feature cache
    return root


def _study(
    root: Path,
    name: str,
    trials: int,
    epochs: int,
    storage: str | None = None,
    tracking_uri: str | None = None,
) -> tuple[str, str]:
    """A study prepared as `nas-neck search` does (journal file and local MLflow by default)."""
    storage = storage or f"journal:{root}/{name}.journal"
    settings = SearchSettings(
        space=SPACES / "light.yaml",
        study=name,
        storage=storage,
        trials=trials,
        tracking_uri=tracking_uri or f"sqlite:///{root}/mlflow.db",
        sampler="random",
        baselines=[],
        out_dir=root / "runs",
    )
    prepare_study(settings, tiny_config(root, epochs=epochs))  # what `nas-neck search` stores
    return name, storage


def _worker(root: Path, study: str, storage: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nas_neck", "worker", "--study", study, "--storage", storage]
    log = open(root / f"{study}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        cmd, cwd=root, env={**os.environ, **BEAT}, stdout=log, stderr=subprocess.STDOUT
    )


def _trained(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [
        t
        for t in study.trials
        if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs
    ]


@pytest.mark.slow
@pytest.mark.integration
def test_two_workers_finish_n_trials_and_train_each_architecture_once(root):
    study_name, storage = _study(root, "pair", trials=3, epochs=30)  # light.yaml: one architecture
    workers = [_worker(root, study_name, storage) for _ in range(2)]
    assert [w.wait(timeout=240) for w in workers] == [0, 0]

    study = load_existing_study(study_name, storage)
    # Both may take the last slot in the same milliseconds: at most one trial over N (docs/cluster.md).
    assert 3 <= sum(counted(t) for t in study.trials) <= 4
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    (original,) = _trained(study)  # trained exactly once ...
    for t in study.trials:
        if t.number != original.number:  # ... the others reuse it
            assert t.user_attrs["duplicate_of"] == original.number and t.values == original.values
    assert len(list((root / "runs" / study_name).glob("*.pt"))) == 1

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=[study_name], output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get("nas_neck.trial") == "parent"]
    children = {
        r.info.run_id: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert sorted(children) == sorted(t.user_attrs["mlflow_run_id"] for t in study.trials)
    assert (
        parent.info.status == "FINISHED" and "pareto_trials" in parent.data.tags
    )  # the last worker's report


@pytest.mark.slow
@pytest.mark.integration
def test_worker_killed_mid_trial_does_not_lose_the_study(root):
    study_name, storage = _study(root, "killed", trials=2, epochs=100)
    kill_one_of_two_workers(root, study_name, storage)


def kill_one_of_two_workers(
    root: Path, study_name: str, storage: str
) -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    """Two workers on the study, one SIGKILLed mid-training, the other finishing; checks what
    every storage must give (the dead trial failed as stale with its reason and retried once,
    nothing lost, no architecture trained twice) and returns the study and the killed trial."""
    workers = {w.pid: w for w in (_worker(root, study_name, storage) for _ in range(2))}
    victim = _wait_for_training(study_name, storage, workers)
    os.kill(victim, signal.SIGKILL)
    (survivor,) = [w for pid, w in workers.items() if pid != victim]
    assert survivor.wait(timeout=300) == 0
    workers[victim].wait()

    study = load_existing_study(study_name, storage)
    killed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(killed) == 1 and killed[0].user_attrs["fail_reason"] == "stale: worker died"
    assert killed[0].user_attrs["worker"].endswith(f":{victim}")
    assert TrialState.RUNNING not in {t.state for t in study.trials}
    assert sum(counted(t) for t in study.trials) in (2, 3)  # nothing lost
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == killed[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE  # retried once
    assert len(_trained(study)) == 1  # the survivor trained it once; the retry reused that
    return study, killed[0]


def _wait_for_training(study: str, storage: str, workers: dict[int, subprocess.Popen]) -> int:
    """Pid of the worker training the study's first architecture (cost measured, training on)."""
    deadline = time.time() + 180
    while time.time() < deadline:
        for w in workers.values():
            assert w.poll() is None, "a worker ended before the kill"
        trials = load_existing_study(study, storage).trials
        running = [
            t
            for t in trials
            if t.state == TrialState.RUNNING
            and "latency_ms" in t.user_attrs
            and "duplicate_of" not in t.user_attrs
        ]
        if running:
            return int(running[0].user_attrs["worker"].rsplit(":", 1)[1])
        time.sleep(0.3)
    raise AssertionError("no trial started training")
