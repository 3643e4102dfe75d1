"""A search logging to a real `mlflow server` process on loopback."""

from pathlib import Path

import mlflow
import pytest
import servers
from search_fixtures import tiny_proxy

from nas_neck.search.runner import run_search
from nas_neck.search.settings import SearchSettings

SPACES = Path(__file__).parents[1] / "search_spaces"
pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def mlflow_server(tmp_path):
    with servers.mlflow_server(
        f"sqlite:///{tmp_path}/server.db", tmp_path / "artifacts", tmp_path
    ) as url:
        yield url


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
