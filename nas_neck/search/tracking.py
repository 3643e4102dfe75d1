"""MLflow tracking: one parent run per study, one nested run per trial.

Everything goes through an explicit `MlflowClient` and run ids (no global "active run"), so the
same code logs from the search process, from worker processes and from Ray tasks, to a local
`sqlite:///mlflow.db` or to an `mlflow server`.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from optuna.trial import FrozenTrial

from nas_neck.errors import NasNeckError
from nas_neck.metrics import finite
from nas_neck.search.defaults import DEFAULT_TRACKING_URI as DEFAULT_TRACKING_URI  # re-exported

log = logging.getLogger(__name__)

STUDY_TAG = "nas_neck.study"
TRIAL_TAG = "nas_neck.trial"
PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces: "No data"); this
# value (its `ExperimentKind.CUSTOM_MODEL_DEVELOPMENT`) opens the classic runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
_MAX_PARAM = 6000


class Tracker:
    """Logs a study and its trials to MLflow (experiment = study name).

    A new experiment keeps its artifacts under `artifacts` (a folder or a URI) when given, else
    beside a local SQLite database (`artifact_root`); an existing one keeps its own."""

    def __init__(self, uri: str, study: str, artifacts: str | Path | None = None) -> None:
        self.uri = uri
        self.study = study
        self.artifacts = artifacts
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment()

    def _experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.study)
        if exp is None:
            root = artifact_root(self.uri, self.artifacts)
            location = f"{root.rstrip('/')}/{_folder_name(self.study)}" if root else None
            try:
                return self.client.create_experiment(
                    self.study,
                    artifact_location=location,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            except Exception:  # another worker created it first
                exp = self.client.get_experiment_by_name(self.study)
                if exp is None:
                    raise
        if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older nas-neck
            self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        root = artifact_root(self.uri, self.artifacts) if self.artifacts is not None else None
        if root and not exp.artifact_location.startswith(root.rstrip("/")):
            log.warning(
                "MLflow experiment %s keeps its artifacts in %s (set when it was created), not "
                "under --artifacts %s",
                self.study,
                exp.artifact_location,
                self.artifacts,
            )
        return exp.experiment_id

    def runs_page(self) -> str:
        """The MLflow UI's page of this study's runs (`runs_page`)."""
        return runs_page(self.uri, self.experiment_id)

    # ---- parent run ----------------------------------------------------------------------------
    def parent_run(self, params: Mapping[str, Any] | None = None) -> str:
        """The study's parent run id, created on first use and reused when resuming."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{self.study}' and tags.`{TRIAL_TAG}` = 'parent'",
            max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
            if runs[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.study,
            tags={STUDY_TAG: self.study, TRIAL_TAG: "parent"},
        )
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    # ---- trial runs ----------------------------------------------------------------------------
    def trial_run(self, parent_id: str, number: int, tags: Mapping[str, Any] | None = None) -> str:
        """A child run of `parent_id` for trial `number`; `tags` as strings (an MLflow server
        takes nothing else)."""
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number:04d}",
            tags={
                PARENT_TAG: parent_id,
                STUDY_TAG: self.study,
                TRIAL_TAG: str(number),
                **{k: str(v) for k, v in (tags or {}).items()},
            },
        )
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        batch = [Param(k, str(v)[:_MAX_PARAM]) for k, v in params.items()]
        for i in range(0, len(batch), 100):
            self.client.log_batch(run_id, params=batch[i : i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        values = ((k, finite(v)) for k, v in metrics.items())
        batch = [Metric(k, v, now, step) for k, v in values if v is not None]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i : i + 500])

    def log_series(self, run_id: str, key: str, values: list[float]) -> None:
        """A per-epoch curve as one stepped metric."""
        now = int(time.time() * 1000)
        steps = ((step, finite(v)) for step, v in enumerate(values))
        batch = [Metric(key, v, now, step) for step, v in steps if v is not None]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_artifact(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def end_stale(self, trial: FrozenTrial) -> None:
        """End the MLflow run of a trial failed as stale (its process died) as KILLED."""
        run = trial.user_attrs.get("mlflow_run_id")
        if run:
            self.set_tags(run, {"fail_reason": trial.user_attrs.get("fail_reason", "stale")})
            self.end(run, "KILLED")


def artifact_root(uri: str, artifacts: str | Path | None = None) -> str | None:
    """The URI under which new experiments of the tracking store `uri` keep their artifacts (one
    folder per experiment), or None where the store decides (an MLflow server; a file store,
    which keeps them in its own folder).

    `artifacts`, when given: a URI (``s3://...``, ``file:///...``) as is, a folder made absolute.
    Else for a local SQLite database ``<its folder>/<its stem>-artifacts`` (``mlflow.db`` ->
    ``mlflow-artifacts/``), so two databases in one folder never share artifacts, wherever the
    search runs from."""
    if artifacts is not None:
        text = str(artifacts)
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text) and not re.match(r"^[A-Za-z]:\\", text):
            return text
        return Path(text).expanduser().resolve().as_uri()
    if uri.startswith("sqlite:"):
        db = sqlite_file(uri)
        if db is None:  # an in-memory database: nothing to put them beside
            return (Path.cwd() / "mlartifacts").resolve().as_uri()
        return (db.parent / f"{db.stem}-artifacts").as_uri()
    return None


def sqlite_file(uri: str) -> Path | None:
    """The absolute path of the database file of a ``sqlite:///...`` URI (relative ones from the
    current folder); None for an in-memory one or another scheme."""
    if not uri.startswith("sqlite:"):
        return None
    path = uri.removeprefix("sqlite:").removeprefix("///").split("?", 1)[0]
    if path in ("", ":memory:") or path.startswith("/:memory:"):
        return None
    return Path(path).expanduser().resolve()


def _folder_name(name: str) -> str:
    """An experiment name as one folder name."""
    return re.sub(r"[^\w.-]+", "_", name).lstrip(".") or "experiment"


def runs_page(uri: str, experiment_id: str, ui: str = LOCAL_UI) -> str:
    """The MLflow UI's page of an experiment's runs: on the tracking server for an http(s) `uri`,
    else on `mlflow ui` (`ui_command`) at `ui`, its default address."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui
    return f"{base}/#/experiments/{experiment_id}/runs"


def study_page(uri: str, study: str) -> str | None:
    """The MLflow UI's page of the runs of `study`'s experiment in the store at `uri` (None if
    it has none)."""
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(study)
    return None if exp is None else runs_page(uri, exp.experiment_id)


def ui_command(uri: str) -> str | None:
    """The command that serves the MLflow UI of a local store, from any folder (None for a
    server: it serves its own). The study's artifacts need nothing more: each experiment names
    its own artifact folder."""
    if uri.startswith(("http://", "https://")):
        return None
    db = sqlite_file(uri)
    if db is not None:
        uri = f"sqlite:///{db}"
    elif uri.startswith("file:") or "://" not in uri:
        folder = uri.removeprefix("file://").removeprefix("file:")
        uri = Path(folder).expanduser().resolve().as_uri()
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Refuse, within about `timeout` seconds, a tracking URI MLflow could not use (its client
    retries an unreachable server for minutes): an http(s) server that does not answer
    `GET <uri>/health`, or a SQLite database / file store whose folder is missing or read-only.
    Other schemes (databricks, SQL servers) are left to MLflow."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                return
        except urllib.error.HTTPError:  # it answered: a server is there (auth, a path prefix)
            return
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError):
                why = f"no answer within {timeout:g} s"
            else:
                why = str(getattr(reason, "strerror", None) or reason)
            raise NasNeckError(
                f"--tracking-uri: cannot reach the MLflow server at {uri} ({why}); "
                "is `mlflow server` running there?"
            ) from None
    if uri.startswith("sqlite:"):
        path = uri.removeprefix("sqlite:").removeprefix("///")
        if path in ("", ":memory:") or path.startswith("/:memory:"):
            return
        _writable_folder(uri, Path(path).parent, create=False)
    elif uri.startswith("file:") or "://" not in uri:
        path = uri.removeprefix("file://").removeprefix("file:")
        _writable_folder(uri, Path(path), create=True)


def _writable_folder(uri: str, folder: Path, create: bool) -> None:
    """The folder of a local store exists (with `create`: its nearest existing parent, where
    MLflow makes the rest) and is writable."""
    folder = folder.expanduser().absolute()
    while create and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        why = f"{folder} is not a folder" if folder.exists() else f"no folder {folder}"
    elif not os.access(folder, os.W_OK | os.X_OK):
        why = f"{folder} is not writable"
    else:
        return
    raise NasNeckError(
        f"--tracking-uri: expected a local store in an existing, writable folder, got {uri!r} "
        f"({why})"
    )
