"""Pareto analysis of a search: fronts, hypervolume, picks, and the plots and tables that show them.

Convention everywhere: x is a cost (minimized), y an accuracy (maximized). A point dominates
another when it is at least as good on both axes and strictly better on one, so identical points
never dominate each other.

Rules, stated once so every number can be reproduced:

* **front of a study**: COMPLETE trials that are feasible (no positive constraint, not flagged
  `infeasible`) and are not `duplicate_of` an earlier trial (the original stands for them).
* **reference point** for the hypervolume: `x_ref = 1.1 x` the largest cost among the feasible
  complete trials of every study in the report, `y_ref = 0` (an accuracy of zero). It depends only
  on the trials, so rerunning on an unchanged study gives the same number; with `compare`, all
  studies share one reference point so their hypervolumes are comparable.
* **knee**: min-max normalise the front to the unit square; the knee is the point farthest above
  the line joining the cheapest and the most accurate front points (largest `v - u`); ties and
  fronts of one or two points give the cheapest.
* **best under a budget**: the most accurate feasible trial whose neck latency is at most the
  budget (ties: cheaper, then earlier).
"""

from __future__ import annotations

import csv
import html
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_neck.errors import NasNeckError
from nas_neck.search.study import ACCURACY_METRICS, COST_METRICS

log = logging.getLogger(__name__)

REF_MARGIN = 0.1
_COST_ATTR = {"latency": "latency_ms", "flops": "gflops", "params": "mparams"}
_ACCURACY_LABEL = {
    "map": "mAP@[.5:.95]",
    "ap50": "AP@.5",
    "ap75": "AP@.75",
    "ap_small": "AP small (mAP@[.5:.95], area < 32² px)",
    "ap_medium": "AP medium (mAP@[.5:.95], 32²-96² px)",
    "ap_large": "AP large (mAP@[.5:.95], area > 96² px)",
}
_ACCURACY_SHORT = {
    "map": "mAP",
    "ap50": "AP50",
    "ap75": "AP75",
    "ap_small": "AP_S",
    "ap_medium": "AP_M",
    "ap_large": "AP_L",
}
_COST_UNIT = {"latency": "ms", "flops": "GFLOPs", "params": "M params"}
_TABLE_ATTRS = (
    "map",
    "ap50",
    "ap75",
    "ap_small",
    "ap_medium",
    "ap_large",
    "count_mae",
    "latency_ms",
    "latency_head_ms",
    "gflops",
    "mparams",
)
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_INFEASIBLE_COLOR = "#9a9a9a"
_BUDGET_COLOR = "#d62728"


# ---- points -------------------------------------------------------------------------------------
def front(points: np.ndarray, maximize_y: bool = True) -> np.ndarray:
    """Indices of the non-dominated rows of `points` (n, 2), x minimized, y maximized (or
    minimized with `maximize_y=False`), ordered by increasing x. Non-finite rows never count."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    x, y = p[:, 0], (p[:, 1] if maximize_y else -p[:, 1])
    idx = np.flatnonzero(np.isfinite(p).all(axis=1))
    order = idx[np.lexsort((-y[idx], x[idx]))]  # x ascending, then y descending
    keep: list[int] = []
    best = -np.inf  # best y among points with a strictly smaller x
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and x[order[j]] == x[order[i]]:
            j += 1
        top = y[order[i]]  # the group's best y (sorted first)
        if top > best:
            keep.extend(int(k) for k in order[i:j] if y[k] == top)
        best = max(best, top)
        i = j
    return np.asarray(keep, dtype=int)


def hypervolume(points: np.ndarray, ref: Sequence[float]) -> float:
    """Area dominated by `points` (x minimized, y maximized) and bounded by `ref = (x_ref, y_ref)`;
    points not strictly better than `ref` on both axes add nothing."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    p = p[np.isfinite(p).all(axis=1) & (p[:, 0] < ref[0]) & (p[:, 1] > ref[1])]
    if not len(p):
        return 0.0
    f = p[front(p)]  # x ascending, so y ascending too
    xs = np.append(f[:, 0], ref[0])
    return float(np.sum(np.diff(xs) * (f[:, 1] - ref[1])))


def reference_point(
    points: np.ndarray, margin: float = REF_MARGIN, y_ref: float = 0.0
) -> tuple[float, float]:
    """The hypervolume reference: `(1 + margin) x` the largest cost among `points` (the feasible
    points of every study compared), and accuracy `y_ref`."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    x = p[np.isfinite(p).all(axis=1), 0]
    if not len(x):
        raise NasNeckError("no feasible trial to place the hypervolume reference point")
    return float((1.0 + margin) * x.max()), float(y_ref)


def knee(points: np.ndarray) -> int:
    """Index of the knee of a front (x minimized, y maximized): the point farthest above the line
    between the cheapest and the most accurate point, in min-max normalised coordinates."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    if not len(p):
        raise ValueError("knee of an empty front")
    lo, span = p.min(axis=0), np.ptp(p, axis=0)
    u, v = ((p - lo) / np.where(span > 0, span, 1.0)).T
    score = v - u
    ties = np.flatnonzero(score >= score.max() - 1e-12)
    return int(ties[np.argmin(p[ties, 0])])


# ---- trials -------------------------------------------------------------------------------------
@dataclass
class _Trials:
    """The complete trials of one study placed on the chosen axes."""

    name: str
    trials: list[FrozenTrial]
    xy: np.ndarray  # (n, 2): cost, accuracy
    feasible: np.ndarray  # (n,) bool
    duplicate: np.ndarray  # (n,) bool
    baseline: list[str]  # baseline name, "" for searched trials
    front: np.ndarray  # indices into `trials`, x ascending
    failed: int

    @property
    def candidates(self) -> np.ndarray:
        """Trials that may sit on the front: feasible, not repeats."""
        return np.flatnonzero(self.feasible & ~self.duplicate)

    @property
    def is_baseline(self) -> np.ndarray:
        return np.array([bool(b) for b in self.baseline], dtype=bool)


def axes_of(study: optuna.Study) -> tuple[str, str]:
    """The study's own (cost, accuracy) objectives, e.g. `("latency", "map")`."""
    names = study.metric_names or ["map", "latency_ms"]
    cost = {v: k for k, v in _COST_ATTR.items()}.get(names[1], "latency")
    return cost, names[0] if names[0] in ACCURACY_METRICS else "map"


def front_trials(
    study: optuna.Study, x: str | None = None, y: str | None = None
) -> list[FrozenTrial]:
    """The study's Pareto front over (x cost, y accuracy), cheapest first; x and y default to the
    study's own objectives."""
    data = _gather(study, *_axes(study, x, y))
    return [data.trials[i] for i in data.front]


def knee_trial(study: optuna.Study, x: str | None = None, y: str | None = None) -> FrozenTrial:
    """The knee of the study's front (see the module docstring for the rule)."""
    data = _gather(study, *_axes(study, x, y))
    if not data.front.size:
        raise NasNeckError(f"study {data.name!r} has no feasible complete trial, so no front")
    return data.trials[data.front[knee(data.xy[data.front])]]


def best_under(
    study: optuna.Study, max_latency_ms: float, y: str | None = None
) -> FrozenTrial | None:
    """The most accurate feasible trial whose neck latency is at most `max_latency_ms`, or None."""
    x, y = _axes(study, "latency", y)
    data = _gather(study, x, y)
    i = _best_under(data, max_latency_ms)
    return None if i is None else data.trials[i]


# ---- report -------------------------------------------------------------------------------------
def write_report(
    study: optuna.Study,
    out_dir: str | Path,
    x: str | None = None,
    y: str | None = None,
    compare: Sequence[optuna.Study] = (),
    max_latency_ms: float | None = None,
) -> dict[str, Any]:
    """Write `pareto-<y>-<x>.png`, `.html` (self-contained) and `.csv` (the front) to `out_dir`.

    Returns the paths (`png`, `html`, `table`) and the numbers behind them: `ref`, `hypervolume`,
    `front` (trial numbers), `knee`, `best_under` (trial numbers or None), `baselines`
    (`dominated`, `feasible`, `infeasible` names), `baselines_dominated` (share, None without
    feasible baselines), `counts`, and `studies` (name -> `hypervolume`, `front`) for every study.
    """
    x, y = _axes(study, x, y)
    sets = [_gather(s, x, y) for s in (study, *compare)]
    feasible_xy = np.concatenate([d.xy[d.feasible] for d in sets])
    ref = reference_point(feasible_xy) if len(feasible_xy) else (float("nan"), 0.0)
    main = sets[0]
    knee_i = int(main.front[knee(main.xy[main.front])]) if main.front.size else None
    best_i = _best_under(main, max_latency_ms) if max_latency_ms is not None else None
    picks = {"knee": knee_i, "best": best_i}
    dominated, feasible_b, infeasible_b = _baselines(main)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"pareto-{y}-{x}"
    view, labels = _View(sets, x, y, ref, picks, max_latency_ms), _labels(sets, x, y)
    png = _plot_png(view, labels, stem.with_suffix(".png"))
    page = _plot_html(view, labels, stem.with_suffix(".html"))
    table = _write_table(main, picks, stem.with_suffix(".csv"))
    report = {
        "study": main.name,
        "x": x,
        "y": y,
        "png": png,
        "html": page,
        "table": table,
        "ref": ref,
        "hypervolume": _hv(main, ref),
        "front": [main.trials[i].number for i in main.front],
        "knee": _trial_number(main, knee_i),
        "best_under": _trial_number(main, best_i),
        "max_latency_ms": max_latency_ms,
        "baselines": {"dominated": dominated, "feasible": feasible_b, "infeasible": infeasible_b},
        "baselines_dominated": len(dominated) / len(feasible_b) if feasible_b else None,
        "counts": {
            "complete": len(main.trials),
            "feasible": int(main.feasible.sum()),
            "infeasible": int((~main.feasible).sum()),
            "failed": main.failed,
        },
        "studies": {
            d.name: {"hypervolume": _hv(d, ref), "front": [d.trials[i].number for i in d.front]}
            for d in sets
        },
    }
    log.debug(
        "Pareto report of %s: %d front trials, hypervolume %.4g; wrote %s, %s, %s",
        main.name,
        len(main.front),
        report["hypervolume"],
        png,
        page,
        table,
    )
    return report


def log_to_mlflow(study: optuna.Study, report: dict[str, Any], tracking_uri: str) -> str:
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
    for key in ("png", "html", "table"):
        client.log_artifact(run_id, str(report[key]), "pareto")
    tag, now = f"{report['y']}-{report['x']}", int(time.time() * 1000)
    metrics = [Metric(f"pareto.hypervolume.{tag}", report["hypervolume"], now, 0)]
    if report["baselines_dominated"] is not None:
        metrics.append(
            Metric(f"pareto.baselines_dominated.{tag}", report["baselines_dominated"], now, 0)
        )
    tags = {
        f"pareto.ref.{tag}": f"{report['ref'][0]:.6g},{report['ref'][1]:.6g}",
        f"pareto.front.{tag}": ",".join(map(str, report["front"])),
        f"pareto.knee.{tag}": str(report["knee"]),
    }
    if report["max_latency_ms"] is not None:
        tags[f"pareto.best_under_{report['max_latency_ms']:g}ms.{report['y']}"] = str(
            report["best_under"]
        )
    client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
    return run_id


# ---- gathering ----------------------------------------------------------------------------------
def _axes(study: optuna.Study, x: str | None, y: str | None) -> tuple[str, str]:
    own_x, own_y = axes_of(study)
    x = {v: k for k, v in _COST_ATTR.items()}.get(x.lower(), x.lower()) if x else own_x
    y = y.lower() if y else own_y
    if x not in COST_METRICS:
        raise NasNeckError(f"--x: expected one of {', '.join(COST_METRICS)}, got {x!r}")
    if y not in ACCURACY_METRICS:
        raise NasNeckError(f"--y: expected one of {', '.join(ACCURACY_METRICS)}, got {y!r}")
    return x, y


def _feasible(t: FrozenTrial) -> bool:
    return all(v <= 0 for v in (t.constraints or {}).values()) and not t.user_attrs.get(
        "infeasible"
    )


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
    return float(value) if ok else None


def _gather(study: optuna.Study, x: str, y: str) -> _Trials:
    """Complete trials with both values: from user attrs, else from the matching objective; an
    infeasible trial was never trained, so its accuracy is 0."""
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    if not complete:
        states = ", ".join(
            f"{sum(t.state == s for t in all_trials)} {s.name.lower()}"
            for s in TrialState
            if any(t.state == s for t in all_trials)
        )
        raise NasNeckError(
            f"study {study.study_name!r} has no complete trials yet ({states or 'no trials'})"
        )
    names = list(study.metric_names or [])
    x_attr = _COST_ATTR[x]
    missing = [m for m in (y, x_attr) if all(_value(t, m, names) is None for t in complete)]
    if missing:
        recorded = sorted(
            {k for t in complete for k, v in t.user_attrs.items() if _number(v) is not None}
        )
        raise NasNeckError(
            f"study {study.study_name!r} records no value of {' or '.join(missing)}; "
            f"its trials record {', '.join(recorded) or 'no metrics'}"
        )
    kept, xy = [], []
    for t in complete:
        xv, yv = _value(t, x_attr, names), _value(t, y, names)
        if yv is None and not _feasible(t):
            yv = 0.0
        if xv is None or yv is None:
            log.debug(
                "trial %d of %s lacks %s or %s; left out", t.number, study.study_name, x_attr, y
            )
            continue
        kept.append(t)
        xy.append((xv, yv))
    points = np.asarray(xy, dtype=float)
    feasible = np.array([_feasible(t) for t in kept], dtype=bool)
    duplicate = np.array(["duplicate_of" in t.user_attrs for t in kept], dtype=bool)
    cand = np.flatnonzero(feasible & ~duplicate)
    return _Trials(
        name=study.study_name,
        trials=kept,
        xy=points,
        feasible=feasible,
        duplicate=duplicate,
        baseline=[str(t.user_attrs.get("baseline") or "") for t in kept],
        front=cand[front(points[cand])] if cand.size else np.zeros(0, dtype=int),
        failed=sum(t.state == TrialState.FAIL for t in all_trials),
    )


def _value(t: FrozenTrial, key: str, metric_names: list[str]) -> float | None:
    v = _number(t.user_attrs.get(key))
    if v is None and key in metric_names and t.values is not None:
        v = _number(t.values[metric_names.index(key)])
    return v


def _best_under(data: _Trials, max_latency_ms: float) -> int | None:
    cand = [
        i
        for i in data.candidates
        if (lat := _number(data.trials[i].user_attrs.get("latency_ms"))) is not None
        and lat <= max_latency_ms
    ]
    if not cand:
        return None
    return int(
        min(
            cand,
            key=lambda i: (
                -data.xy[i, 1],
                data.trials[i].user_attrs["latency_ms"],
                data.trials[i].number,
            ),
        )
    )


def _baselines(data: _Trials) -> tuple[list[str], list[str], list[str]]:
    """(dominated, feasible, infeasible) baseline names; a feasible baseline is dominated when a
    searched feasible trial is at least as good on both axes and better on one."""
    searched = data.xy[data.feasible & ~data.is_baseline]
    seen: set[str] = set()
    dominated, feasible, infeasible = [], [], []
    for i, name in enumerate(data.baseline):
        if not name or name in seen:
            continue
        seen.add(name)
        if not data.feasible[i]:
            infeasible.append(name)
            continue
        feasible.append(name)
        bx, by = data.xy[i]
        sx, sy = searched.T if len(searched) else (np.zeros(0), np.zeros(0))
        if np.any((sx <= bx) & (sy >= by) & ((sx < bx) | (sy > by))):
            dominated.append(name)
    return dominated, feasible, infeasible


def _trial_number(data: _Trials, i: int | None) -> int | None:
    return None if i is None else data.trials[i].number


def _hv(data: _Trials, ref: tuple[float, float]) -> float:
    return hypervolume(data.xy[data.candidates], ref) if np.isfinite(ref[0]) else 0.0


# ---- presentation -------------------------------------------------------------------------------
def _labels(sets: list[_Trials], x: str, y: str) -> tuple[str, str]:
    """Axis titles with units; latency names its batch size and thread count."""
    if x == "latency":
        threads = sorted(
            {
                int(v)
                for d in sets
                for t in d.trials
                if (v := _number(t.user_attrs.get("latency_threads"))) is not None
            }
        )
        how = ["batch 1"]
        if threads:
            n = f"{threads[0]}" if len(threads) == 1 else f"{threads[0]}-{threads[-1]}"
            how.append(f"{n} thread{'s' if threads[-1] > 1 else ''}")
        x_label = f"neck latency, median (ms, {', '.join(how)})"
    elif x == "flops":
        x_label = "neck GFLOPs (2 FLOPs per multiply-add)"
    else:
        x_label = "neck parameters (M)"
    return x_label, _ACCURACY_LABEL[y]


def _hover(t: FrozenTrial, feasible: bool) -> str:
    a = t.user_attrs
    head = f"<b>trial {t.number}</b>" + (
        f" — baseline <b>{html.escape(str(a['baseline']))}</b>" if a.get("baseline") else ""
    )
    lines = [head]
    if not feasible:
        lines.append("<i>over the latency budget: not trained</i>")
    if "duplicate_of" in a:
        lines.append(f"repeats trial {a['duplicate_of']}")
    metrics = [
        f"{k} {v:.4f}"
        for k in ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
        if (v := _number(a.get(k))) is not None
    ]
    if metrics:
        lines.append(" · ".join(metrics[:3]))
        lines.append(" · ".join(metrics[3:]))
    costs = [
        f"{label} {v:{fmt}}"
        for k, label, fmt in (
            ("latency_ms", "latency ms", ".2f"),
            ("latency_head_ms", "+head ms", ".2f"),
            ("gflops", "GFLOPs", ".3f"),
            ("mparams", "M params", ".3f"),
        )
        if (v := _number(a.get(k))) is not None
    ]
    lines.append(" · ".join(costs))
    if a.get("summary"):
        lines.append(html.escape(f"{a.get('arch_hash', '')} {a['summary']}".strip()))
    return "<br>".join(line for line in lines if line)


@dataclass
class _View:
    """What both plots show: the studies, the axes and the picks of the first study."""

    sets: list[_Trials]
    x: str
    y: str
    ref: tuple[float, float]
    picks: dict[str, int | None]
    max_latency_ms: float | None

    @property
    def several(self) -> bool:
        return len(self.sets) > 1

    def title(self) -> str:
        main = self.sets[0]
        if self.several:
            return "Pareto fronts: " + " vs ".join(d.name for d in self.sets)
        return f"{main.name}: {len(main.trials)} trials, {len(main.front)} on the Pareto front"

    def subtitle(self) -> str:
        hv = ", ".join(
            f"{d.name} {_hv(d, self.ref):.4g}" if self.several else f"{_hv(d, self.ref):.4g}"
            for d in self.sets
        )
        return (
            f"hypervolume {hv} ({_COST_UNIT[self.x]} × {_ACCURACY_SHORT[self.y]}; reference point "
            f"{self.ref[0]:.3g} {_COST_UNIT[self.x]}, {_ACCURACY_SHORT[self.y]} {self.ref[1]:g})"
        )

    def pick_names(self) -> dict[str, str]:
        of = f" ({self.sets[0].name})" if self.several else ""
        names = {"knee": f"knee{of}"}
        if self.max_latency_ms is not None:
            names["best"] = f"best ≤ {self.max_latency_ms:g} ms{of}"
        return names

    def show_budget(self) -> bool:
        return self.max_latency_ms is not None and self.x == "latency"


def _plot_png(view: _View, labels: tuple[str, str], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 4.9), dpi=160, layout="constrained")
    ax = fig.subplots()
    for k, d in enumerate(view.sets):
        color, suffix = _COLORS[k % len(_COLORS)], (f" ({d.name})" if view.several else "")
        searched = d.feasible & ~d.is_baseline
        ax.scatter(
            *d.xy[searched].T,
            s=22,
            color=color,
            alpha=0.55,
            linewidths=0,
            label=f"searched{suffix}",
            zorder=2,
        )
        base = np.flatnonzero(d.feasible & d.is_baseline)
        if base.size:
            ax.scatter(
                *d.xy[base].T,
                s=46,
                marker="s",
                color=color,
                edgecolors="black",
                linewidths=0.8,
                label=f"baseline{suffix}",
                zorder=4,
            )
        if d.front.size:
            ax.step(
                *d.xy[d.front].T,
                where="post",
                color=color,
                lw=1.6,
                label=f"Pareto front{suffix}",
                zorder=3,
            )
        for i in np.flatnonzero(d.is_baseline):
            ok = bool(d.feasible[i])
            ax.annotate(
                d.baseline[i],
                d.xy[i],
                xytext=(8, -13) if ok else (4, 6),
                textcoords="offset points",
                fontsize=8,
                color="black" if ok else _INFEASIBLE_COLOR,
            )
    infeasible = np.concatenate([d.xy[~d.feasible] for d in view.sets])
    if len(infeasible):
        ax.scatter(
            *infeasible.T,
            s=26,
            marker="x",
            color=_INFEASIBLE_COLOR,
            linewidths=1.0,
            label="over budget (not trained)",
            zorder=1,
        )
    if view.show_budget():
        ax.axvline(
            view.max_latency_ms,
            ls="--",
            lw=1.0,
            color=_BUDGET_COLOR,
            label=f"budget {view.max_latency_ms:g} ms",
        )
    main, names = view.sets[0], view.pick_names()
    styles = {
        "knee": dict(s=260, marker="*", color="gold", edgecolors="black", linewidths=0.8, zorder=5),
        "best": dict(
            s=190, marker="o", facecolors="none", edgecolors=_BUDGET_COLOR, linewidths=1.8, zorder=6
        ),
    }
    for key, i in view.picks.items():
        if i is not None:
            ax.scatter(
                *main.xy[i], label=f"{names[key]}: trial {main.trials[i].number}", **styles[key]
            )
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    ax.grid(True, alpha=0.3, lw=0.6)
    ax.set_title(f"{view.title()}\n{view.subtitle()}", fontsize=9.5)
    ax.legend(
        fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False
    )
    fig.savefig(path)
    return path


def _plot_html(view: _View, labels: tuple[str, str], path: Path) -> Path:
    """Interactive plot with plotly.js embedded (opens offline). Trial markers are the traces whose
    `meta.kind == "trials"`, one marker per complete trial, its number in `customdata`."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for k, d in enumerate(view.sets):
        color, suffix = _COLORS[k % len(_COLORS)], (f" ({d.name})" if view.several else "")
        groups = (
            ("searched", d.feasible & ~d.is_baseline, dict(size=7, color=color, opacity=0.6)),
            (
                "baseline",
                d.feasible & d.is_baseline,
                dict(size=10, color=color, symbol="square", line=dict(color="black", width=1)),
            ),
            (
                "over budget (not trained)",
                ~d.feasible,
                dict(
                    size=8,
                    color=_INFEASIBLE_COLOR,
                    symbol="x-thin",
                    line=dict(color=_INFEASIBLE_COLOR, width=2),
                ),
            ),
        )
        for name, mask, marker in groups:
            idx = np.flatnonzero(mask)
            if not idx.size:
                continue
            text = [d.baseline[i] for i in idx]
            fig.add_trace(
                go.Scatter(
                    x=d.xy[idx, 0].tolist(),
                    y=d.xy[idx, 1].tolist(),
                    name=name + suffix,
                    marker=marker,
                    mode="markers+text" if any(text) else "markers",
                    text=text,
                    textposition="bottom right",
                    hovertext=[_hover(d.trials[i], bool(d.feasible[i])) for i in idx],
                    hoverinfo="text",
                    customdata=[d.trials[i].number for i in idx],
                    meta={"kind": "trials", "study": d.name},
                    legendgroup=d.name,
                )
            )
        if d.front.size:
            fig.add_trace(
                go.Scatter(
                    x=d.xy[d.front, 0].tolist(),
                    y=d.xy[d.front, 1].tolist(),
                    mode="lines",
                    name="Pareto front" + suffix,
                    line=dict(color=color, width=2, shape="hv"),
                    hoverinfo="skip",
                    meta={"kind": "front", "study": d.name},
                    legendgroup=d.name,
                )
            )
    main, names = view.sets[0], view.pick_names()
    styles = {
        "knee": dict(size=18, symbol="star", color="gold", line=dict(color="black", width=1)),
        "best": dict(size=18, symbol="circle-open", color=_BUDGET_COLOR, line=dict(width=3)),
    }
    for key, i in view.picks.items():
        if i is not None:
            t = main.trials[i]
            fig.add_trace(
                go.Scatter(
                    x=[float(main.xy[i, 0])],
                    y=[float(main.xy[i, 1])],
                    mode="markers",
                    marker=styles[key],
                    name=f"{names[key]}: trial {t.number}",
                    hovertext=[_hover(t, True)],
                    hoverinfo="text",
                    customdata=[t.number],
                    meta={"kind": "pick", "pick": key},
                )
            )
    if view.show_budget():
        fig.add_vline(
            x=view.max_latency_ms,
            line=dict(color=_BUDGET_COLOR, dash="dash", width=1),
            annotation_text=f"budget {view.max_latency_ms:g} ms",
            annotation_position="top right",
        )
    fig.update_layout(
        title=dict(
            text=f"{html.escape(view.title())}<br><sup>{html.escape(view.subtitle())}</sup>"
        ),
        xaxis_title=labels[0],
        yaxis_title=labels[1],
        template="plotly_white",
        hovermode="closest",
    )
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path


def _write_table(data: _Trials, picks: dict[str, int | None], path: Path) -> Path:
    """The front as CSV, cheapest first, with every recorded metric and the picks marked."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "baseline", "arch_hash", *_TABLE_ATTRS, "pick", "summary"])
        for i in data.front:
            t = data.trials[i]
            a = t.user_attrs
            pick = "/".join(k for k in ("knee", "best") if picks[k] == i)
            w.writerow(
                [
                    t.number,
                    data.baseline[i],
                    a.get("arch_hash", ""),
                    *(
                        ("" if (v := _number(a.get(k))) is None else f"{v:.6g}")
                        for k in _TABLE_ATTRS
                    ),
                    pick,
                    a.get("summary", ""),
                ]
            )
    return path
