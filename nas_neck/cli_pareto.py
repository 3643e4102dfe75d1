"""`nas-neck pareto` (front table, hypervolume, picks, plots) and `show --study --trial` (one
trial's architecture), registered on the app in `nas_neck.cli`."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import typer
from rich.markup import escape
from rich.table import Table

from nas_neck.console import console, friendly
from nas_neck.errors import NasNeckError
from nas_neck.pareto import REF_MARGIN, front_trials, log_to_mlflow, write_report
from nas_neck.search.study import (
    ACCURACY_METRICS,
    COST_METRICS,
    DEFAULT_STORAGE,
    load_existing_study,
)

_COST_COLUMNS = (
    ("latency_ms", "latency (ms)", ".2f"),
    ("gflops", "GFLOPs", ".3f"),
    ("mparams", "params (M)", ".3f"),
)


@friendly
def pareto(
    study: str = typer.Option(..., "--study", help="Study name."),
    storage: str = typer.Option(DEFAULT_STORAGE, help="Optuna storage URL, or journal:PATH."),
    x: str | None = typer.Option(
        None, "--x", help=f"Cost axis: {' | '.join(COST_METRICS)} (default: the study's cost)."
    ),
    y: str | None = typer.Option(
        None,
        "--y",
        help=f"Accuracy axis: {' | '.join(ACCURACY_METRICS)} (default: the study's accuracy).",
    ),
    compare: list[str] | None = typer.Option(
        None,
        "--compare",
        help="Another study in the same storage, drawn in its own colour (repeat, or comma-separate).",
    ),
    max_latency_ms: float | None = typer.Option(
        None, help="Pick the most accurate trial at most this slow, and draw the budget."
    ),
    out: Path | None = typer.Option(None, help="Output folder (default: runs/<study>)."),
    tracking_uri: str | None = typer.Option(
        None, help="Also log the files to the study's MLflow parent run at this URI."
    ),
) -> None:
    """Pareto front of a study: table, hypervolume, knee and best-under-budget picks, PNG and HTML plots."""
    main = load_existing_study(study, storage)
    others = [load_existing_study(name, storage) for name in _names(compare) if name != study]
    report = write_report(main, out or Path("runs") / study, x, y, others, max_latency_ms)
    x, y = report["x"], report["y"]
    picks: dict[int, list[str]] = {}
    if report["knee"] is not None:
        picks.setdefault(report["knee"], []).append("knee")
    if report["best_under"] is not None:
        picks.setdefault(report["best_under"], []).append(f"best ≤ {max_latency_ms:g} ms")
    console.print(_front_table(main, front_trials(main, x, y), x, y, picks, report))
    ref_x, ref_y = report["ref"]
    unit = {"latency": "ms", "flops": "GFLOPs", "params": "M params"}[x]
    console.print(
        f"hypervolume [bold]{report['hypervolume']:.4g}[/] ({unit} × {y}) against the reference point "
        f"({ref_x:.4g} {unit}, {y} {ref_y:g}): {1 + REF_MARGIN:g} × the largest {x} among the feasible "
        f"complete trials{' of all compared studies' if others else ''}, and zero accuracy"
    )
    console.print(_baseline_line(report))
    if report["knee"] is not None:
        console.print(
            f"knee: trial [bold]{report['knee']}[/] — farthest above the line joining the front's "
            "cheapest and most accurate trials, axes min-max normalised to the front"
        )
    if max_latency_ms is not None:
        best = report["best_under"]
        console.print(
            f"best under {max_latency_ms:g} ms: "
            + (
                f"trial [bold]{best}[/] (most accurate feasible trial with neck latency ≤ {max_latency_ms:g} ms)"
                if best is not None
                else f"[yellow]no feasible trial has a neck latency ≤ {max_latency_ms:g} ms[/]"
            )
        )
    if others:
        console.print(_compare_table(report))
    c = report["counts"]
    console.print(
        f"{c['complete']} complete trials ({c['feasible']} feasible, {c['infeasible']} over budget), "
        f"{c['failed']} failed"
    )
    console.print(
        f"wrote {report['png']}\n      {report['html']}\n      {report['table']}", highlight=False
    )
    if tracking_uri:
        run = log_to_mlflow(main, report, tracking_uri)
        console.print(f"logged to MLflow run {run} (artifacts under pareto/) at {tracking_uri}")


def show_trial(study: str, storage: str, trial: int, plot_path: Path | None = None) -> None:
    """Print a trial's architecture and metrics, and draw the architecture to `plot_path` (PNG)."""
    from nas_neck.archplot import plot_architecture
    from nas_neck.dsl import SearchSpace

    loaded = load_existing_study(study, storage)
    trials = loaded.get_trials(deepcopy=False)
    found = [t for t in trials if t.number == trial]
    if not found:
        raise NasNeckError(
            f"study {study!r} has no trial {trial}; its trials are 0..{len(trials) - 1}"
            if trials
            else f"study {study!r} has no trials"
        )
    t = found[0]
    if "arch" not in t.user_attrs:
        raise NasNeckError(
            f"trial {trial} of study {study!r} ({t.state.name.lower()}) records no architecture"
        )
    arch = SearchSpace.from_dict(t.user_attrs["arch"], source=f"{study}#{trial}").sample()
    a = t.user_attrs
    what = f"baseline {a['baseline']}" if a.get("baseline") else "searched"
    console.print(
        f"trial [bold]{trial}[/] of {study} ({t.state.name.lower()}, {what}"
        f"{', repeats trial ' + str(a['duplicate_of']) if 'duplicate_of' in a else ''})"
    )
    console.print(arch.summary(), markup=False, highlight=False)
    metrics = [f"{k} {a[k]:.4f}" for k in (*ACCURACY_METRICS, "count_mae") if _finite(a.get(k))]
    costs = [f"{label} {a[k]:{fmt}}" for k, label, fmt in _COST_COLUMNS if _finite(a.get(k))]
    for line in (
        " · ".join(metrics),
        " · ".join(costs),
        a.get("fail_reason") and f"failed: {a['fail_reason']}",
        a.get("checkpoint") and f"checkpoint: {a['checkpoint']}",
    ):
        if line:
            console.print(line, markup=False, highlight=False)
    if plot_path is not None:
        console.print(f"wrote {plot_architecture(arch, plot_path)}")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _names(compare: list[str] | None) -> list[str]:
    return [n.strip() for item in compare or [] for n in item.split(",") if n.strip()]


def _front_table(
    study: optuna.Study,
    front: list[optuna.trial.FrozenTrial],
    x: str,
    y: str,
    picks: dict[int, list[str]],
    report: dict,
) -> Table:
    table = Table(
        title=f"Pareto front of {study.study_name}: {y} vs {x}, "
        f"{len(front)} of {report['counts']['complete']} complete trials"
    )
    for col in ("trial", y, *(label for _, label, _ in _COST_COLUMNS)):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("pick", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("architecture", ratio=1)
    for t in front:
        a = t.user_attrs
        kind = f"[bold]{escape(a['baseline'])}[/]" if a.get("baseline") else "searched"
        costs = [f"{a[k]:{fmt}}" if _finite(a.get(k)) else "" for k, _, fmt in _COST_COLUMNS]
        table.add_row(
            str(t.number),
            f"{a.get(y, 0.0):.4f}",
            *costs,
            ", ".join(picks.get(t.number, [])),
            kind,
            escape(a.get("summary", "")),
        )
    return table


def _baseline_line(report: dict) -> str:
    b = report["baselines"]
    if not b["feasible"]:
        return "baselines: none feasible in this study" + (
            f" ({', '.join(b['infeasible'])} over budget)" if b["infeasible"] else ""
        )
    line = (
        f"baselines dominated by the searched trials: [bold]{len(b['dominated'])}/{len(b['feasible'])}[/]"
        f" ({report['baselines_dominated']:.0%}{': ' + ', '.join(b['dominated']) if b['dominated'] else ''})"
    )
    if b["infeasible"]:
        line += f"; {', '.join(b['infeasible'])} over the budget, not counted"
    return line


def _compare_table(report: dict) -> Table:
    table = Table(title=f"shared reference ({report['ref'][0]:.4g}, {report['ref'][1]:g})")
    for col in ("study", "hypervolume", "front size"):
        table.add_column(col, justify="left" if col == "study" else "right")
    for name, s in report["studies"].items():
        table.add_row(name, f"{s['hypervolume']:.4g}", str(len(s["front"])))
    return table
