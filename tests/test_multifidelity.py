"""Multi-fidelity search end to end on a tiny real proxy: promotions continue checkpoints, nothing
is trained twice, confirmation records mean and sd, a process killed mid-promotion resumes,
and two worker processes share the rungs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from optuna.trial import TrialState
from search_fixtures import tiny_config, tiny_proxy

from nas_neck.dsl import load_architecture
from nas_neck.fidelity import Fidelity
from nas_neck.pareto import knee_trial
from nas_neck.pareto.trials import report_fidelity
from nas_neck.search.confirm import confirmed
from nas_neck.search.runner import run_search
from nas_neck.search.session import prepare_study
from nas_neck.search.settings import SearchSettings
from nas_neck.search.study import load_existing_study

BEAT = {"NAS_NECK_HEARTBEAT_S": "1", "NAS_NECK_GRACE_S": "4"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("multifidelity")
    proxy = tiny_proxy(root)
    proxy.caches(load_architecture("fpn").inputs)  # processes reuse the feature cache
    return root


def _settings(root: Path, name: str, **over) -> SearchSettings:
    return SearchSettings(
        **{
            "space": "pafpn-family",
            "study": name,
            "storage": f"journal:{root}/{name}.journal",
            "tracking_uri": f"sqlite:///{root}/mlflow.db",
            "trials": 4,
            "sampler": "random",
            "baselines": [],
            "out_dir": root / "runs",
            "rungs": [1, 2],
            "eta": 2,
            **over,
        }
    )


def _trained(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [
        t
        for t in study.trials
        if t.state == TrialState.COMPLETE
        and "train_s" in t.user_attrs
        and "duplicate_of" not in t.user_attrs
    ]


def _nothing_trained_twice(study: optuna.Study) -> None:
    keys = [
        (t.user_attrs["arch_hash"], t.user_attrs["epochs"], t.user_attrs.get("seed"))
        for t in _trained(study)
    ]
    assert len(keys) == len(set(keys))


def _promotions(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if "promotes" in t.user_attrs]


@pytest.mark.precision
def test_a_promotion_continues_its_checkpoint_deterministically(root):
    proxy = tiny_proxy(root)
    arch = load_architecture("fpn")
    first = proxy.run(arch, epochs=1)
    ckpt = proxy.save(first, root / "resume" / "rung0.pt")
    runs = [proxy.run(arch, epochs=2, resume=ckpt, start_epoch=1) for _ in range(2)]
    assert runs[0].epochs == 3 and len(runs[0].losses) == 2  # 2 more epochs, not 3 from scratch
    for (k, a), b in zip(
        runs[0].model.state_dict().items(), runs[1].model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k  # deterministic given the seed
    scratch = proxy.run(arch, epochs=2)
    assert runs[0].losses[0] < scratch.losses[0]  # it starts from the trained weights


@pytest.mark.slow
def test_multifidelity_search_promotes_by_rank_and_confirms(root):
    settings = _settings(
        root, "mf", trials=5, baselines=["fpn"], confirm=1, confirm_epochs=2, confirm_seeds=2
    )
    study = run_search(settings, tiny_proxy(root))

    candidates = [t for t in study.trials if t.user_attrs.get("rung") == 0]
    assert len(candidates) == 5 and all(t.user_attrs["epochs"] == 1 for t in candidates)
    promoted = _promotions(study)
    assert len(promoted) >= 2  # 5 // 2 from rung 0 at the end, at least
    by_number = {t.number: t for t in study.trials}
    for p in promoted:
        source = by_number[p.user_attrs["resumes"]]
        assert p.state == TrialState.COMPLETE and p.user_attrs["rung"] == 1
        assert p.user_attrs["epochs"] == 2 and len(p.user_attrs["losses"]) == 1  # 1 more epoch
        assert source.user_attrs["arch_hash"] == p.user_attrs["arch_hash"]
        assert p.user_attrs["latency_ms"] == source.user_attrs["latency_ms"]  # measured once
        assert p.user_attrs["checkpoint"] != source.user_attrs["checkpoint"]
    assert len({(p.user_attrs["promotes"], p.user_attrs["rung"]) for p in promoted}) == len(
        promoted
    )
    _nothing_trained_twice(study)

    # Confirmation: the top candidate and the baseline, 2 seeds each, from scratch.
    runs = [t for t in study.trials if t.user_attrs.get("role") == "confirm"]
    assert len(runs) == 4 and all(t.state == TrialState.COMPLETE for t in runs)
    assert sorted(t.user_attrs["seed"] for t in runs) == [0, 0, 1, 1]
    rows = confirmed(study)
    assert len(rows) == 2 and {r.baseline for r in rows} == {"", "fpn"}
    for r in rows:
        values = [t.values[0] for t in runs if t.user_attrs["arch_hash"] == r.arch_hash]
        assert r.seeds == 2 and r.mean == pytest.approx(sum(values) / 2)
        assert r.sd == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert report_fidelity(study) == Fidelity(True, 2)
    assert knee_trial(study).user_attrs["role"] == "confirm"  # export picks from it
    mlflow.set_tracking_uri(settings.tracking_uri)
    parent = mlflow.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert any(k.endswith(".fpn.map_sd") for k in parent.data.metrics)

    # Rerunning resumes: nothing left to do, nothing trained again.
    before = len(study.trials)
    again = run_search(settings, tiny_proxy(root))
    assert len(again.trials) == before


def _worker(root: Path, study: str, storage: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nas_neck", "worker", "--study", study, "--storage", storage]
    log = open(root / f"{study}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        cmd, cwd=root, env={**os.environ, **BEAT}, stdout=log, stderr=subprocess.STDOUT
    )


@pytest.mark.slow
@pytest.mark.integration
def test_two_workers_share_rungs_without_double_promotion(root):
    settings = _settings(root, "mf-pair", trials=6)
    prepare_study(settings, tiny_config(root))
    workers = [_worker(root, "mf-pair", settings.storage) for _ in range(2)]
    assert [w.wait(timeout=400) for w in workers] == [0, 0]

    study = load_existing_study("mf-pair", settings.storage)
    promoted = _promotions(study)
    assert promoted and all(t.state == TrialState.COMPLETE for t in promoted)
    claims = [(t.user_attrs["promotes"], t.user_attrs["rung"]) for t in promoted]
    assert len(claims) == len(set(claims))  # no candidate promoted twice to one rung
    assert len({t.user_attrs["worker"] for t in study.trials if "worker" in t.user_attrs}) == 2
    _nothing_trained_twice(study)


@pytest.mark.slow
@pytest.mark.integration
def test_a_search_killed_mid_promotion_resumes_without_retraining(root):
    settings = _settings(root, "mf-killed", trials=2, rungs=[1, 30])
    prepare_study(settings, tiny_config(root))
    first = _worker(root, "mf-killed", settings.storage)
    deadline = time.time() + 240
    while time.time() < deadline:
        assert first.poll() is None, "the worker ended before the kill"
        running = [
            t
            for t in load_existing_study("mf-killed", settings.storage).trials
            if t.state == TrialState.RUNNING and "promotes" in t.user_attrs
        ]
        if running and "latency_ms" in running[0].user_attrs:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("no promotion started")
    time.sleep(1.0)  # training now
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    time.sleep(5)  # past the grace period: the rerun finds the promotion stale at once

    second = _worker(root, "mf-killed", settings.storage)
    assert second.wait(timeout=300) == 0
    study = load_existing_study("mf-killed", settings.storage)
    (killed,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert (
        killed.user_attrs["fail_reason"] == "stale: worker died" and "promotes" in killed.user_attrs
    )
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == killed.number]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumes"] == killed.user_attrs["resumes"]  # continues the same rung
    assert len(retry.user_attrs["losses"]) == 29  # from its checkpoint, not from scratch
    rung0 = [t for t in study.trials if t.user_attrs.get("rung") == 0]
    assert len(rung0) == 2 and all(t.state == TrialState.COMPLETE for t in rung0)
    _nothing_trained_twice(study)  # the candidates were not trained again
