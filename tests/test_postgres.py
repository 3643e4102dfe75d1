"""PostgreSQL as the cluster storage, for real: a throwaway server (tests/servers.py), two
`nas-neck worker` processes on one study with one SIGKILLed mid-trial, and an `mlflow server`
whose backend store is PostgreSQL too."""

import mlflow
import optuna
import pytest
import servers
from servers import postgres_db, postgres_server  # noqa: F401 (fixtures)
from test_worker import _study, kill_one_of_two_workers
from test_worker import root as root  # noqa: F401 (fixture: tiny data and a warm feature cache)
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.errors import NasNeckError
from nas_neck.search.study import load_existing_study, make_storage

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_a_study_lives_in_postgres(postgres_db):  # noqa: F811
    study = optuna.create_study(storage=make_storage(postgres_db), study_name="plain")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    assert len(load_existing_study("plain", postgres_db).trials) == 3


def test_a_missing_driver_is_one_line_naming_what_to_install(postgres_server):  # noqa: F811
    url = postgres_server.replace("postgresql://", "postgresql+pg8000://") + "/postgres"
    with pytest.raises(NasNeckError, match=r"--storage .*driver is missing; install"):
        make_storage(url)
    result = CliRunner().invoke(app, ["pareto", "--study", "s", "--storage", url])
    assert result.exit_code == 1 and "driver is missing" in result.output
    assert "Traceback" not in result.output and "sqlalche.me" not in result.output


def test_an_unreachable_server_is_one_line():
    with pytest.raises(NasNeckError, match=r"--storage postgresql://u:\*\*\*@127\.0\.0\.1:1/db"):
        make_storage("postgresql://u:secret@127.0.0.1:1/db")


def test_workers_on_postgres_with_a_postgres_mlflow_server(
    root,  # noqa: F811
    postgres_server,  # noqa: F811
    postgres_db,  # noqa: F811
    tmp_path,
):
    import psycopg

    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute('CREATE DATABASE "mlflow_store"')
    backend = f"{postgres_server}/mlflow_store"
    with servers.mlflow_server(backend, tmp_path / "artifacts", tmp_path) as tracking:
        study_name, storage = _study(
            root, "pg", trials=2, epochs=100, storage=postgres_db, tracking_uri=tracking
        )
        _, killed = kill_one_of_two_workers(root, study_name, storage)

        client = mlflow.MlflowClient(tracking_uri=tracking)
        assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "KILLED"
        experiment = client.get_experiment_by_name(study_name).experiment_id
        runs = client.search_runs([experiment])
        (parent,) = [r for r in runs if r.data.tags.get("nas_neck.trial") == "parent"]
        assert parent.info.status == "FINISHED" and "pareto_trials" in parent.data.tags
    with psycopg.connect(backend) as conn:  # MLflow's own tables are in PostgreSQL
        count = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    assert count == len(runs)
