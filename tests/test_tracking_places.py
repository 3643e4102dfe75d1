"""Where a search's MLflow artifacts go (beside a local database, or `--artifacts`), the tag that
makes MLflow 3's UI open the classic runs view, and where `search` and `confirm` say to look."""

from pathlib import Path

import pytest
from mlflow import MlflowClient
from search_fixtures import SIZE, tiny_config, tiny_proxy
from typer.testing import CliRunner

from nas_neck.cli import app
from nas_neck.search.runner import run_search
from nas_neck.search.settings import SearchSettings, shared
from nas_neck.search.study import dashboard_command
from nas_neck.search.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    Tracker,
    artifact_root,
    runs_page,
    study_page,
    ui_command,
)

SPACES = Path(__file__).parents[1] / "search_spaces"
runner = CliRunner()


# ---- places, without a search -------------------------------------------------------------------
def test_artifact_root_is_beside_a_local_database(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "projects" / "a.db"
    assert artifact_root(f"sqlite:///{db}") == (db.parent / "a-artifacts").as_uri()
    assert artifact_root("sqlite:///b.db") == (tmp_path / "b-artifacts").as_uri()  # relative
    assert artifact_root("http://mlflow:5000") is None  # the server's own
    assert artifact_root("http://mlflow:5000", "s3://bucket/nas") == "s3://bucket/nas"
    assert artifact_root(f"sqlite:///{db}", "arts") == (tmp_path / "arts").as_uri()
    settings, _ = shared(SearchSettings(artifacts="arts"), tiny_config(tmp_path))
    assert settings.artifacts == str(tmp_path / "arts")  # workers elsewhere get the same folder


def test_two_databases_in_one_folder_do_not_share_artifacts(tmp_path: Path) -> None:
    a = Tracker(f"sqlite:///{tmp_path}/a.db", "s")
    b = Tracker(f"sqlite:///{tmp_path}/b.db", "s")
    where = {t.client.get_experiment(t.experiment_id).artifact_location for t in (a, b)}
    assert where == {
        (tmp_path / "a-artifacts" / "s").as_uri(),
        (tmp_path / "b-artifacts" / "s").as_uri(),
    }


def test_experiments_open_in_the_classic_runs_view(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    old = client.create_experiment("made-before")  # by an older nas-neck: no kind tag
    for name in ("new", "made-before"):
        tracker = Tracker(uri, name)
        exp = client.get_experiment(tracker.experiment_id)
        assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    assert Tracker(uri, "made-before").experiment_id == old


def test_where_to_look_for_each_kind_of_store(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert runs_page("http://mlflow:5000/", "7") == "http://mlflow:5000/#/experiments/7/runs"
    assert (
        runs_page(f"sqlite:///{tmp_path}/m.db", "7") == "http://127.0.0.1:5000/#/experiments/7/runs"
    )
    assert ui_command("http://mlflow:5000") is None  # the server is the UI
    assert (
        ui_command("sqlite:///m.db") == f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/m.db"
    )
    assert dashboard_command("sqlite:///nas.db") == f"optuna-dashboard sqlite:///{tmp_path}/nas.db"
    assert dashboard_command("journal:s.journal") == f"optuna-dashboard {tmp_path}/s.journal"
    assert (
        dashboard_command("postgresql://nas:secret@db/nas")
        == "optuna-dashboard 'postgresql://nas:***@db/nas'"  # quoted: the shell globs *
    )
    tracker = Tracker("sqlite:///m.db", "s")
    assert study_page("sqlite:///m.db", "s") == tracker.runs_page()
    assert tracker.runs_page().endswith(f"/#/experiments/{tracker.experiment_id}/runs")
    assert study_page("sqlite:///m.db", "none") is None


# ---- a search ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("places")


@pytest.mark.slow
def test_a_search_run_elsewhere_keeps_its_artifacts_beside_the_database(
    root: Path, tmp_path: Path, monkeypatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    db = root / "project" / "mlflow.db"
    db.parent.mkdir()
    settings = SearchSettings(
        space=SPACES / "light.yaml",
        study="beside",
        storage=f"sqlite:///{root}/project/nas.db",
        tracking_uri=f"sqlite:///{db}",
        trials=1,
        baselines=[],
        out_dir=root / "runs",
    )
    study = run_search(settings, tiny_proxy(root))
    client = MlflowClient(settings.tracking_uri)
    folder = db.parent / "mlflow-artifacts" / "beside"
    exp = client.get_experiment_by_name("beside")
    assert exp.artifact_location == folder.as_uri()
    run = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.info.artifact_uri.startswith(folder.as_uri())
    assert (folder / run.info.run_id / "artifacts" / "architecture.yaml").is_file()
    assert list((folder / run.info.run_id / "artifacts" / "checkpoint").glob("*.pt"))
    assert not (elsewhere / "mlartifacts").exists() and list(elsewhere.iterdir()) == []


def _search(root: Path, study: str, *extra: str) -> list[str]:
    cfg = tiny_config(root)
    return [
        "search",
        "--space", str(SPACES / "light.yaml"),
        "--study", study,
        "--storage", "sqlite:///nas.db",
        "--tracking-uri", "sqlite:///mlflow.db",
        "--trials", "1",
        "--baselines", "",
        "--data", str(cfg.data),
        "--input-size", str(SIZE),
        "--cache-dir", str(cfg.cache_root),
        "--batch-size", "4",
        "--epochs", "1",
        "--threads", "1",
        "--out", str(root / "runs"),
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_cli_artifacts_option_and_where_to_look(root: Path, monkeypatch) -> None:
    monkeypatch.chdir(root)
    result = runner.invoke(
        app, _search(root, "cli-places", "--artifacts", "arts"), terminal_width=300
    )
    assert result.exit_code == 0, result.output
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("cli-places")
    assert exp.artifact_location == (root / "arts" / "cli-places").as_uri()
    (run,) = [
        r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags
    ]
    assert (
        root / "arts" / "cli-places" / run.info.run_id / "artifacts" / "architecture.yaml"
    ).is_file()
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"

    look = [
        "study cli-places in sqlite:///nas.db",
        f"MLflow:  mlflow ui --backend-store-uri sqlite:///{root}/mlflow.db",
        f"         then open http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs",
        f"Optuna:  optuna-dashboard sqlite:///{root}/nas.db",
    ]
    assert result.output.rstrip().splitlines()[-4:] == look, result.output

    # `confirm` ends the same way (nothing to confirm here: no front candidates asked for)
    result = runner.invoke(
        app,
        ["confirm", "--study", "cli-places", "--storage", "sqlite:///nas.db", "--top", "0"],
        terminal_width=300,
    )
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().splitlines()[-4:] == look, result.output
