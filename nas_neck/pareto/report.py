"""The Pareto report of a study: files (PNG, HTML, CSV of the front), the numbers behind them as a
typed `ParetoReport`, and logging it to the study's MLflow parent run.

The **reference point** of the hypervolume is `1.1 x` the largest cost among the feasible complete
trials of every study in the report, and accuracy 0 (`nas_neck.pareto.front.reference_point`);
with `compare`, all studies share it, so their hypervolumes are comparable.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from nas_neck.errors import NasNeckError
from nas_neck.fidelity import Fidelity
from nas_neck.metrics import ACCURACY_METRICS, finite
from nas_neck.pareto.front import reference_point
from nas_neck.pareto.plots import PlotView, plot_html, plot_png
from nas_neck.pareto.trials import TrialSet, gather, resolve_axes

log = logging.getLogger(__name__)

_CSV_ATTRS = (*ACCURACY_METRICS, "count_mae", "latency_ms", "latency_head_ms", "gflops", "mparams")


@dataclass(frozen=True)
class Picks:
    """Trial numbers picked on the main study's front (None: no such trial)."""

    knee: int | None
    best_under: int | None  # most accurate feasible trial within `max_latency_ms`
    max_latency_ms: float | None  # the budget of `best_under` (None: not asked)

    def labels(self) -> dict[int, list[str]]:
        """Trial number -> what it was picked as (`knee`, `best ≤ 2.5 ms`)."""
        out: dict[int, list[str]] = {}
        if self.knee is not None:
            out.setdefault(self.knee, []).append("knee")
        if self.best_under is not None and self.max_latency_ms is not None:
            out.setdefault(self.best_under, []).append(f"best ≤ {self.max_latency_ms:g} ms")
        return out


@dataclass(frozen=True)
class Baselines:
    """The main study's baselines by name: feasible ones dominated by a searched trial, all
    feasible ones, and those over the latency budget (never trained, not counted)."""

    dominated: list[str]
    feasible: list[str]
    infeasible: list[str]

    @property
    def dominated_share(self) -> float | None:
        """Share of the feasible baselines that are dominated; None without feasible ones."""
        return len(self.dominated) / len(self.feasible) if self.feasible else None


@dataclass(frozen=True)
class Counts:
    """Trials of the main study: complete (with both values), feasible, infeasible, failed."""

    complete: int
    feasible: int
    infeasible: int
    failed: int


@dataclass(frozen=True)
class StudyFront:
    """One study's result against the report's shared reference point."""

    hypervolume: float
    front: list[int]  # trial numbers, cheapest first


@dataclass(frozen=True)
class ParetoReport:
    """What `write_report` wrote and the numbers behind it (axes: x cost, y accuracy)."""

    study: str
    x: str
    y: str
    png: Path
    html: Path
    csv: Path
    ref: tuple[float, float]
    hypervolume: float
    front: list[int]  # trial numbers of the main study's front, cheapest first
    picks: Picks
    baselines: Baselines
    counts: Counts
    studies: dict[str, StudyFront]  # every study of the report, the main one first
    fidelity: Fidelity | None = None  # of the main study's front (None: it has one fidelity)

    @property
    def tag(self) -> str:
        """`<y>-<x>`, as in the file names and the MLflow keys."""
        return f"{self.y}-{self.x}"

    @property
    def files(self) -> tuple[Path, Path, Path]:
        return self.png, self.html, self.csv


def write_report(
    study: optuna.Study,
    out_dir: str | Path,
    x: str | None = None,
    y: str | None = None,
    compare: Sequence[optuna.Study] = (),
    max_latency_ms: float | None = None,
    fidelity: Fidelity | None = None,
) -> ParetoReport:
    """Write `pareto-<y>-<x>.png`, `.html` (self-contained) and `.csv` (the front) to `out_dir`;
    x and y default to the study's own objectives, `compare` studies are drawn beside it (each
    at its own report fidelity); the main study at `fidelity` (default: its report fidelity,
    `nas_neck.pareto.trials.report_fidelity`)."""
    x, y = resolve_axes(study, x, y)
    sets = [gather(study, x, y, fidelity), *(gather(s, x, y) for s in compare)]
    feasible_xy = np.concatenate([d.xy[d.feasible] for d in sets])
    ref = reference_point(feasible_xy) if len(feasible_xy) else (float("nan"), 0.0)
    main = sets[0]
    knee_i = main.knee_index()
    best_i = main.best_under_index(max_latency_ms) if max_latency_ms is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"pareto-{y}-{x}"
    view = PlotView(sets, x, y, ref, {"knee": knee_i, "best": best_i}, max_latency_ms)
    report = ParetoReport(
        study=main.name,
        x=x,
        y=y,
        png=plot_png(view, stem.with_suffix(".png")),
        html=plot_html(view, stem.with_suffix(".html")),
        csv=_write_csv(main, knee_i, best_i, stem.with_suffix(".csv")),
        ref=ref,
        hypervolume=main.hypervolume(ref),
        front=main.front_numbers,
        picks=Picks(main.number(knee_i), main.number(best_i), max_latency_ms),
        baselines=Baselines(*main.baselines()),
        counts=Counts(
            complete=len(main.trials),
            feasible=int(main.feasible.sum()),
            infeasible=int((~main.feasible).sum()),
            failed=main.failed,
        ),
        studies={d.name: StudyFront(d.hypervolume(ref), d.front_numbers) for d in sets},
        fidelity=main.fidelity,
    )
    log.debug(
        "Pareto report of %s: %d front trials, hypervolume %.4g; wrote %s, %s, %s",
        main.name,
        len(report.front),
        report.hypervolume,
        *report.files,
    )
    return report


def log_to_mlflow(study: optuna.Study, report: ParetoReport, tracking_uri: str) -> str:
    """Log the report's files (artifact folder `pareto/`), its hypervolume and picks to the study's
    MLflow parent run; returns that run's id."""
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if not run_id:
        raise NasNeckError(
            f"study {study.study_name!r} has no MLflow parent run "
            "(only studies made by `nas-neck search` have one)"
        )
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise NasNeckError(
            f"MLflow run {run_id} of study {study.study_name!r} is not in {tracking_uri}; "
            "pass the --tracking-uri the search used"
        ) from None
    for path in report.files:
        client.log_artifact(run_id, str(path), "pareto")
    tag, now = report.tag, int(time.time() * 1000)
    metrics = [Metric(f"pareto.hypervolume.{tag}", report.hypervolume, now, 0)]
    share = report.baselines.dominated_share
    if share is not None:
        metrics.append(Metric(f"pareto.baselines_dominated.{tag}", share, now, 0))
    tags = {
        f"pareto.ref.{tag}": f"{report.ref[0]:.6g},{report.ref[1]:.6g}",
        f"pareto.front.{tag}": ",".join(map(str, report.front)),
        f"pareto.knee.{tag}": str(report.picks.knee),
    }
    budget = report.picks.max_latency_ms
    if budget is not None:
        tags[f"pareto.best_under_{budget:g}ms.{report.y}"] = str(report.picks.best_under)
    client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
    return run_id


def _write_csv(data: TrialSet, knee_i: int | None, best_i: int | None, path: Path) -> Path:
    """The front as CSV, cheapest first, with every recorded metric and the picks marked."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        spread = ["y_mean", "y_sd", "seeds"] if data.sd is not None else []
        w.writerow(
            ["trial", "baseline", "arch_hash", *_CSV_ATTRS, "fidelity", *spread, "pick", "summary"]
        )
        for i in data.front:
            a = data.trials[i].user_attrs
            pick = "/".join(k for k, at in (("knee", knee_i), ("best", best_i)) if at == i)
            values = ("" if (v := finite(a.get(k))) is None else f"{v:.6g}" for k in _CSV_ATTRS)
            extra = (
                [f"{data.xy[i, 1]:.6g}", f"{data.sd[i]:.6g}", int(data.seeds[i])]
                if data.sd is not None and data.seeds is not None
                else []
            )
            w.writerow(
                [
                    data.trials[i].number,
                    data.baseline[i],
                    a.get("arch_hash", ""),
                    *values,
                    data.fidelity.key if data.fidelity else "",
                    *extra,
                    pick,
                    a.get("summary", ""),
                ]
            )
    return path
