"""The Ray backend on a two-node Ray cluster on loopback (head + one worker node, 1 CPU each):
same study, MLflow runs and front structure as a local search of the same settings."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from optuna.trial import TrialState
from search_fixtures import tiny_config, tiny_proxy, unfitted_choice

from nas_neck.errors import NasNeckError
from nas_neck.pareto import front_trials
from nas_neck.search.confirm import confirmed
from nas_neck.search.ray_backend import run_ray_search
from nas_neck.search.runner import run_search
from nas_neck.search.settings import SearchSettings
from nas_neck.search.study import counted, load_existing_study

SPACES = Path(__file__).parents[1] / "search_spaces"
LAUNCHER_ATTRS = {"heartbeat", "worker"}  # who ran a trial, and when it was last alive
pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def cluster(root):  # after `root`: the plates are drawn in forked processes, before Ray's threads
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    tiny_proxy(root).caches((3, 4, 5))  # both backends reuse the feature cache
    return root


def _settings(root: Path, name: str, **kw) -> SearchSettings:
    base = dict(
        space=SPACES / "pafpn-family.yaml",
        study=name,
        storage=f"sqlite:///{root}/nas.db",
        tracking_uri=f"sqlite:///{root}/mlflow.db",
        trials=3,
        sampler="random",
        seed=0,
        baselines=["light"],
        out_dir=root / "runs",
    )
    return SearchSettings(**{**base, **kw})


def _mlflow(root: Path, study: str) -> tuple:
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=[study], output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get("nas_neck.trial") == "parent"]
    children = {r.info.run_id: r for r in runs if r.info.run_id != parent.info.run_id}
    return parent, children


def test_ray_cluster_search_records_what_a_local_search_does(cluster, root, monkeypatch):
    monkeypatch.chdir(root)
    local = run_search(_settings(root, "local"), tiny_proxy(root))
    ray = run_ray_search(
        _settings(root, "ray"), tiny_config(root), ray_address=cluster.address, cpus_per_trial=1
    )

    for study in (local, ray):
        assert sum(counted(t) for t in study.trials) == 3
        assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert ray.metric_names == local.metric_names == ["map", "latency_ms"]
    assert set(ray.user_attrs) == set(local.user_attrs)
    # The seeded sampler draws the same architectures, baseline first, on either backend.
    assert [t.params for t in ray.trials] == [t.params for t in local.trials]
    assert [t.user_attrs["arch_hash"] for t in ray.trials] == [
        t.user_attrs["arch_hash"] for t in local.trials
    ]
    assert ray.trials[0].user_attrs["baseline"] == "light"
    for r, lo in zip(ray.trials, local.trials, strict=True):
        assert set(r.user_attrs) - LAUNCHER_ATTRS == set(lo.user_attrs) - LAUNCHER_ATTRS
        assert r.values == [r.user_attrs["map"], r.user_attrs["latency_ms"]]
        assert Path(r.user_attrs["checkpoint"]).exists()
    assert {t.user_attrs["worker"].split(":")[0] for t in ray.trials} == {"ray"}
    assert len({t.user_attrs["worker"] for t in ray.trials}) >= 2  # two 1-CPU nodes, one actor each
    assert all(
        lo.user_attrs["latency_threads"] == r.user_attrs["latency_threads"] == 1
        for r, lo in zip(ray.trials, local.trials, strict=True)
    )

    structure = {}
    for study in (local, ray):
        parent, children = _mlflow(root, study.study_name)
        assert parent.info.status == "FINISHED"
        assert sorted(children) == sorted(t.user_attrs["mlflow_run_id"] for t in study.trials)
        front = {t.number for t in front_trials(study)}
        assert parent.data.tags["pareto_trials"] == ",".join(map(str, sorted(front)))
        for t in study.trials:
            run = children[t.user_attrs["mlflow_run_id"]]
            assert run.info.status == "FINISHED"
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert run.data.tags["optuna.trial_number"] == str(t.number)
            assert run.data.tags["pareto"] == str(t.number in front).lower()
            for k, v in run.data.metrics.items():  # every metric logged is the study's
                if k != "train_loss":
                    assert v == pytest.approx(float(t.user_attrs[k])), k
            assert run.data.metrics["train_loss"] == pytest.approx(t.user_attrs["losses"][-1])
        structure[study.study_name] = (
            sorted(parent.data.params),
            sorted(parent.data.tags),
            [
                (sorted(c.data.params), sorted(c.data.metrics), sorted(c.data.tags))
                for c in (children[t.user_attrs["mlflow_run_id"]] for t in study.trials)
            ],
        )
    assert structure["ray"] == structure["local"]


def test_a_multifidelity_search_on_ray_promotes_like_a_local_one(cluster, root):
    settings = _settings(root, "ray-mf", trials=4, baselines=[], rungs=[1, 2], eta=2)
    study = run_ray_search(settings, tiny_config(root), ray_address=cluster.address)
    candidates = [t for t in study.trials if t.user_attrs.get("rung") == 0]
    promoted = [t for t in study.trials if "promotes" in t.user_attrs]
    assert len(candidates) == 4 and len(promoted) >= 2  # 4 // 2 at the end, at least
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    by_number = {t.number: t for t in study.trials}
    for p in promoted:  # continued on a Ray task from the rung below's checkpoint
        assert p.user_attrs["worker"].startswith("ray:") and len(p.user_attrs["losses"]) == 1
        assert (
            by_number[p.user_attrs["resumes"]].user_attrs["arch_hash"] == p.user_attrs["arch_hash"]
        )
    claims = [(t.user_attrs["promotes"], t.user_attrs["rung"]) for t in promoted]
    assert len(claims) == len(set(claims))
    parent, _ = _mlflow(root, "ray-mf")
    assert parent.info.status == "FINISHED"


def test_a_screened_search_on_ray_trains_the_chosen_proposals(cluster, root):
    settings = _settings(
        root, "ray-screen", trials=3, baselines=["light"], screen=4, screen_signal="flops"
    )
    study = run_ray_search(settings, tiny_config(root), ray_address=cluster.address)
    assert sum(counted(t) for t in study.trials) == 3
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    screened = [t for t in study.trials if "screened" in t.user_attrs]
    assert len(screened) == 2  # every candidate but the baseline
    for t in screened:
        record = t.user_attrs["screened"]
        assert record["signal"] == "flops" and record["proposed"] == 4
        assert record["chosen"] == t.user_attrs["arch_hash"]
        # too few trained for an accuracy fit: the screener's rule for that, as on the local path
        assert record["chosen"] == record["hashes"][unfitted_choice(record)]
        assert t.user_attrs["worker"].startswith("ray:")
    assert len({t.user_attrs["arch_hash"] for t in study.trials}) == 3


def test_a_ray_search_confirms_its_front_on_ray_tasks(cluster, root):
    settings = _settings(
        root,
        "ray-confirm",
        trials=2,
        baselines=["light"],
        confirm=1,
        confirm_epochs=1,
        confirm_seeds=2,
    )
    study = run_ray_search(settings, tiny_config(root), ray_address=cluster.address)
    runs = [t for t in study.trials if t.user_attrs.get("role") == "confirm"]
    # the top candidate and the baseline (unless the baseline is the top), 2 seeds each
    rows = confirmed(study)
    assert len(runs) == 2 * len(rows) and {r.baseline for r in rows} >= {"light"}
    assert all(t.state == TrialState.COMPLETE for t in runs)
    assert all(t.user_attrs["worker"].startswith("ray:") for t in runs)
    assert sorted(t.user_attrs["seed"] for t in runs) == sorted([0, 1] * len(rows))
    for r in rows:
        values = [t.values[0] for t in runs if t.user_attrs["arch_hash"] == r.arch_hash]
        assert r.seeds == 2 and r.mean == pytest.approx(sum(values) / 2)
    parent, _ = _mlflow(root, "ray-confirm")
    assert parent.info.status == "FINISHED"
    assert any(k.endswith(".light.map_sd") for k in parent.data.metrics)


def test_a_failing_ray_trial_ends_fail_with_its_reason(cluster, root):
    diverging = tiny_config(root, lr=1e30, grad_clip=1e30)
    study = run_ray_search(
        _settings(root, "ray-fails", trials=1, baselines=[]), diverging, ray_address=cluster.address
    )
    (trial,) = study.trials  # told FAIL, not left RUNNING; counted, so not retried
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"].startswith(
        "diverged:"
    )
    _, children = _mlflow(root, "ray-fails")
    assert [c.info.status for c in children.values()] == ["FAILED"]


def test_a_ray_trial_whose_task_dies_is_restarted_on_the_same_optuna_trial(cluster, root):
    settings = _settings(root, "ray-dies", space=SPACES / "light.yaml", trials=1, baselines=[])
    killed: list[int] = []

    def kill_the_training_task() -> None:
        while not killed:
            time.sleep(0.3)
            try:
                trials = load_existing_study("ray-dies", settings.storage).trials
            except NasNeckError:  # not created yet
                continue
            for t in trials:
                if t.state == TrialState.RUNNING and "latency_ms" in t.user_attrs:
                    killed.append(int(t.user_attrs["worker"].rsplit(":", 1)[1]))
                    os.kill(killed[0], signal.SIGKILL)

    threading.Thread(target=kill_the_training_task, daemon=True).start()
    study = run_ray_search(settings, tiny_config(root, epochs=60), ray_address=cluster.address)
    (trial,) = study.trials  # Tune ran the trial again, on the same Optuna trial
    assert killed and trial.state == TrialState.COMPLETE
    assert not trial.user_attrs["worker"].endswith(f":{killed[0]}")
    _, children = _mlflow(root, "ray-dies")
    statuses = {run_id: c.info.status for run_id, c in children.items()}
    assert statuses.pop(trial.user_attrs["mlflow_run_id"]) == "FINISHED"
    assert list(statuses.values()) == ["KILLED"]  # the first attempt's run


def test_without_an_address_a_local_ray_is_started_with_a_token_and_shut_down(root, tmp_path):
    """In a fresh process and $HOME: Ray >= 2.59 turns token authentication on for a new local
    instance and writes the token to ~/.ray/auth_token; the search shuts its Ray down."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import ray
from search_fixtures import tiny_config
from nas_neck.search.ray_backend import run_ray_search
from nas_neck.search.settings import SearchSettings
settings = SearchSettings(space={str(SPACES / "light.yaml")!r}, study="local-ray", trials=2, baselines=[],
                          storage="sqlite:///nas.db", tracking_uri="sqlite:///mlflow.db", out_dir="runs")
study = run_ray_search(settings, tiny_config(__import__("pathlib").Path({str(root)!r})))
assert not ray.is_initialized()
print("states", [t.state.name for t in study.trials])
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**env, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "states ['COMPLETE', 'COMPLETE']" in done.stdout
    assert "Token authentication is enabled" in done.stderr
    assert (tmp_path / ".ray" / "auth_token").stat().st_size > 0
    assert (
        tmp_path / "nas.db"
    ).exists()  # relative paths resolved on the driver, not in trial dirs
