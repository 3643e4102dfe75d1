"""End-to-end searches on real storage (SQLite), a real MLflow store and a tiny real proxy task."""

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
from search_fixtures import SIZE, tiny_config, tiny_proxy

from nas_neck.proxy import ProxyTask
from nas_neck.search.runner import run_search
from nas_neck.search.settings import SearchSettings
from nas_neck.search.study import counted

SPACES = Path(__file__).parents[1] / "search_spaces"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("search")


@pytest.fixture(scope="module")
def proxy(root):
    return tiny_proxy(root)


def _settings(root, name, **kw):
    base = dict(
        space=SPACES / "pafpn-family.yaml",
        study=name,
        storage=f"sqlite:///{root}/nas.db",
        tracking_uri=f"sqlite:///{root}/mlflow.db",
        trials=3,
        sampler="random",
        baselines=[],
        out_dir=root / "runs",
    )
    return SearchSettings(**{**base, **kw})


def _runs(root, study):
    return mlflow.search_runs(experiment_names=[study], output_format="list")


def test_small_search_end_to_end(root, proxy, monkeypatch):
    monkeypatch.chdir(root)
    study = run_search(_settings(root, "e2e", trials=4, baselines=["light"]), proxy)
    trials = study.get_trials()
    assert sum(counted(t) for t in trials) == 4
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert study.metric_names == ["map", "latency_ms"]
    assert trials[0].user_attrs["baseline"] == "light"  # baselines go first
    for t in trials:
        assert 0.0 <= t.values[0] <= 1.0 and t.values[1] > 0
        assert t.values[0] == t.user_attrs["map"] and t.values[1] == t.user_attrs["latency_ms"]
        assert len(t.user_attrs["losses"]) == 2 and Path(t.user_attrs["checkpoint"]).exists()

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    runs = _runs(root, "e2e")
    parents = [r for r in runs if r.data.tags.get("nas_neck.trial") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].data.params["sampler"] == "random"
    by_id = {r.info.run_id: r for r in children}
    for t in trials:
        run = by_id[t.user_attrs["mlflow_run_id"]]  # the trial knows its run ...
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["optuna.trial_number"] == str(t.number)  # ... and vice versa
        assert run.data.metrics["map"] == pytest.approx(t.user_attrs["map"])
        assert "latency_ms" in run.data.metrics and "gflops" in run.data.metrics
        assert run.data.tags["pareto"] in ("true", "false")
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in history] == [0, 1]
        files = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
        assert "architecture.yaml" in files and "checkpoint" in files
    # filter by MLflow's own query language works too
    df = mlflow.search_runs(experiment_names=["e2e"], filter_string="tags.pareto = 'true'")
    assert len(df) >= 1


def test_resume_after_interruption(root, proxy):
    calls = {"n": 0}

    def interrupt_second(number, arch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    from nas_neck.search.objective import Hooks

    settings = _settings(root, "resume", trials=3, baselines=["light"])
    with pytest.raises(KeyboardInterrupt):
        run_search(settings, proxy, hooks=Hooks(trial_start=interrupt_second))
    study = optuna.load_study(study_name="resume", storage=settings.storage)
    assert sum(counted(t) for t in study.trials) == 1
    study = run_search(settings, proxy)  # the same command again
    assert sum(counted(t) for t in study.trials) == 3
    assert [t.user_attrs.get("baseline") for t in study.trials].count("light") == 1


def test_repeated_architecture_is_not_trained_again(root, proxy):
    study = run_search(_settings(root, "dedup", space=SPACES / "light.yaml", trials=3), proxy)
    first, *rest = study.trials
    assert "duplicate_of" not in first.user_attrs and "train_s" in first.user_attrs
    for t in rest:
        assert t.user_attrs["duplicate_of"] == first.number
        assert t.values == first.values
        assert (
            "checkpoint" in t.user_attrs
            and t.user_attrs["checkpoint"] == first.user_attrs["checkpoint"]
        )
    ckpts = list((root / "runs" / "dedup").glob("*.pt"))
    assert len(ckpts) == 1  # trained once


def test_failing_trials_are_recorded_and_the_search_goes_on(root):
    diverging = ProxyTask(tiny_config(root, lr=1e30, grad_clip=1e30))
    settings = _settings(root, "fails", trials=2)
    study = run_search(settings, diverging)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    for t in study.trials:
        assert t.user_attrs["fail_reason"].startswith("diverged: loss became")
    mlflow.set_tracking_uri(settings.tracking_uri)
    statuses = {r.info.status for r in _runs(root, "fails") if "mlflow.parentRunId" in r.data.tags}
    assert statuses == {"FAILED"}


def test_latency_budget_skips_training(root, proxy):
    study = run_search(_settings(root, "budget", trials=2, max_latency_ms=1e-6), proxy)
    for t in study.trials:
        assert t.state == TrialState.COMPLETE and t.user_attrs["infeasible"] is True
        assert t.constraints["latency"] > 0 and t.values[0] == 0.0
        assert "train_s" not in t.user_attrs and "checkpoint" not in t.user_attrs
    assert study.best_trials == []  # nothing feasible on the front


def test_sigkill_mid_trial_then_resume(root):
    cfg = tiny_config(root, epochs=200)  # long enough to be killed mid-training
    storage = f"sqlite:///{root}/killed.db"
    env = {**os.environ, "NAS_NECK_HEARTBEAT_S": "1", "NAS_NECK_GRACE_S": "3"}
    cmd = [
        sys.executable,
        "-m",
        "nas_neck",
        "search",
        "--space",
        str(SPACES / "light.yaml"),
        "--study",
        "killed",
        "--storage",
        storage,
        "--tracking-uri",
        f"sqlite:///{root}/mlflow.db",
        "--trials",
        "1",
        "--baselines",
        "",
        "--data",
        str(cfg.data),
        "--input-size",
        str(SIZE),
        "--cache-dir",
        str(cfg.cache_root),
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--out",
        str(root / "runs"),
    ]
    proc = subprocess.Popen([*cmd, "--epochs", "200"], cwd=root, env=env)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                trials = optuna.load_study(study_name="killed", storage=storage).trials
            except KeyError:
                trials = []
            if any(t.state == TrialState.RUNNING and "arch_hash" in t.user_attrs for t in trials):
                break
            assert proc.poll() is None, "search ended before it could be killed"
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    study = optuna.load_study(study_name="killed", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.RUNNING]
    time.sleep(4)  # past the grace period: the heartbeat is stale
    subprocess.run([*cmd, "--epochs", "1"], cwd=root, env=env, check=True, timeout=600)
    study = optuna.load_study(study_name="killed", storage=storage)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states
    assert states == [TrialState.FAIL, TrialState.COMPLETE]  # failed as stale, retried once
    killed, retry = study.trials
    assert killed.user_attrs["fail_reason"] == "stale: worker died"
    assert retry.user_attrs["retry_of"] == killed.number
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert client.get_run(retry.user_attrs["mlflow_run_id"]).info.status == "FINISHED"
