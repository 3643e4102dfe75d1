"""A search logging to a real `mlflow server` process on loopback."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import requests
from search_fixtures import tiny_proxy

from nas_neck.search.runner import run_search
from nas_neck.search.settings import SearchSettings

SPACES = Path(__file__).parents[1] / "search_spaces"
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if requests.get(f"{url}/health", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, "mlflow server exited"
            time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not come up")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_search_tracks_to_mlflow_server(tmp_path, mlflow_server):
    settings = SearchSettings(
        space=SPACES / "pafpn-family.yaml",
        study="served",
        storage=f"sqlite:///{tmp_path}/nas.db",
        tracking_uri=mlflow_server,
        trials=2,
        sampler="random",
        baselines=[],
        out_dir=tmp_path / "runs",
    )
    study = run_search(settings, tiny_proxy(tmp_path))
    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["served"], output_format="list")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    assert {r.info.run_id for r in children} == {
        t.user_attrs["mlflow_run_id"] for t in study.trials
    }
    for run in children:
        assert run.data.metrics["map"] >= 0 and run.data.metrics["latency_ms"] > 0
        files = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
        assert "architecture.yaml" in files  # artifacts go through the server
    assert any((tmp_path / "artifacts").rglob("architecture.yaml"))
