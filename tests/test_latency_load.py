"""A latency timed while other work keeps more CPUs busy than it times on warns once per process
and is recorded as such with the trial (`latency_load_avg`, `latency_busy`)."""

import logging
import os
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from search_fixtures import tiny_proxy

from nas_neck import measure
from nas_neck.measure import machine_load, measure_latency
from nas_neck.search.runner import run_search
from nas_neck.search.settings import SearchSettings

SPACES = Path(__file__).parents[1] / "search_spaces"


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a new process: no warning given yet, and none of this process's CPU use known."""
    monkeypatch.setattr(measure, "_busy_warned", False)
    monkeypatch.setattr(measure, "_own_share", lambda: 0.0)


def _load(monkeypatch: pytest.MonkeyPatch, one_minute: float) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (one_minute, one_minute, one_minute))


def _busy_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "busy machine" in r.getMessage()]


def test_a_busy_machine_is_recorded_and_warned_about_once(monkeypatch, caplog) -> None:
    _load(monkeypatch, 7.5)
    module, x = torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 16, 16)
    with caplog.at_level(logging.WARNING, logger="nas_neck.measure"):
        first = measure_latency(module, x, threads=1, runs=4, rounds=2, warmup=0, device="cpu")
        second = measure_latency(module, x, threads=2, runs=4, rounds=2, warmup=0, device="cpu")
    assert (first.load_avg, first.busy) == (7.5, True)
    assert (second.load_avg, second.busy) == (7.5, True)
    assert first.as_dict()["busy"] is True
    (warning,) = _busy_warnings(caplog)  # once per process
    assert "1-minute load average 7.5 (7.5 of it other work) over the 1 thread(s) timed" in warning


def test_a_quiet_machine_is_not_busy(monkeypatch, caplog) -> None:
    _load(monkeypatch, 0.6)
    with caplog.at_level(logging.WARNING, logger="nas_neck.measure"):
        lat = measure_latency(
            torch.nn.Identity(), torch.ones(1), threads=1, runs=2, rounds=1, device="cpu"
        )
    assert (lat.load_avg, lat.busy) == (0.6, False)
    assert _busy_warnings(caplog) == []


def test_the_load_is_compared_with_the_threads_timed(monkeypatch) -> None:
    _load(monkeypatch, 3.5)
    assert machine_load(4) == (3.5, False)
    assert machine_load(3) == (3.5, True)


def test_this_process_s_own_recent_work_is_not_other_work(monkeypatch) -> None:
    """A search trains, then times the next candidate: its training is in the load average."""
    _load(monkeypatch, 2.4)
    monkeypatch.setattr(measure, "_own_share", lambda: 2.0)  # it kept 2 CPUs busy
    assert machine_load(1) == (2.4, False)
    _load(monkeypatch, 8.4)  # other work besides
    assert machine_load(1) == (8.4, True)


def test_own_share_is_this_process_s_cpu_over_the_last_minute(monkeypatch) -> None:
    monkeypatch.undo()  # the real `_own_share`
    clock = {"wall": 1000.0, "cpu": 50.0}
    monkeypatch.setattr(measure.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(measure.time, "process_time", lambda: clock["cpu"])
    monkeypatch.setattr(measure, "_own_cpu", measure.deque([(900.0, 0.0)], maxlen=64))
    assert measure._own_share() == pytest.approx(0.5)  # 50 s of CPU in 100 s
    clock.update(wall=1030.0, cpu=110.0)  # 2 CPUs for 30 s: the sample 130 s ago is used
    assert measure._own_share() == pytest.approx(110 / 130)
    clock.update(wall=1100.0, cpu=250.0)  # the latest sample a minute old: 1030's
    assert measure._own_share() == pytest.approx(140 / 70)


def test_no_load_average_is_never_busy(monkeypatch) -> None:
    monkeypatch.delattr(os, "getloadavg")
    assert machine_load(1) == (None, False)


@pytest.mark.slow
def test_the_trial_records_a_busy_measurement(tmp_path: Path, monkeypatch) -> None:
    _load(monkeypatch, 64.0 + (os.cpu_count() or 1))
    settings = SearchSettings(
        space=SPACES / "light.yaml",
        study="busy",
        storage=f"sqlite:///{tmp_path}/nas.db",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        trials=1,
        baselines=[],
        out_dir=tmp_path / "runs",
        max_latency_ms=1e-6,  # measured, infeasible, not trained
    )
    (trial,) = run_search(settings, tiny_proxy(tmp_path)).trials
    assert trial.user_attrs["latency_busy"] is True
    assert trial.user_attrs["latency_load_avg"] == 64.0 + (os.cpu_count() or 1)
    run = MlflowClient(settings.tracking_uri).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.tags["latency_busy"] == "true"
    assert run.data.metrics["latency_busy"] == 1.0
    assert run.data.metrics["latency_load_avg"] == 64.0 + (os.cpu_count() or 1)
