"""MLflow tracking: one parent run per study, one nested run per trial.

Everything goes through an explicit `MlflowClient` and run ids (no global "active run"), so the
same code logs from the search process, from worker processes and from Ray tasks, to a local
`sqlite:///mlflow.db` or to an `mlflow server`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from nas_neck.metrics import finite

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
STUDY_TAG = "nas_neck.study"
TRIAL_TAG = "nas_neck.trial"
PARENT_TAG = "mlflow.parentRunId"
_MAX_PARAM = 6000


class Tracker:
    """Logs a study and its trials to MLflow (experiment = study name)."""

    def __init__(self, uri: str, study: str) -> None:
        self.uri = uri
        self.study = study
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment()

    def _experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.study)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri:
            # Local stores keep artifacts beside the database, not in the refused ./mlruns.
            location = (Path.cwd() / "mlartifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(self.study, artifact_location=location)
        except Exception:  # another worker created it first
            exp = self.client.get_experiment_by_name(self.study)
            if exp is None:
                raise
            return exp.experiment_id

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
    def trial_run(self, parent_id: str, number: int, tags: Mapping[str, str] | None = None) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number:04d}",
            tags={
                PARENT_TAG: parent_id,
                STUDY_TAG: self.study,
                TRIAL_TAG: str(number),
                **(tags or {}),
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
