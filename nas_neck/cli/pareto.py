"""`nas-neck pareto`: a study's front table, hypervolume, picks and plots; the front table is
shared with `nas-neck search`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from nas_neck.cli import checks
from nas_neck.cli import options as opt
from nas_neck.cli.console import console, friendly
from nas_neck.fidelity import Fidelity
from nas_neck.metrics import (
    ACCURACY_METRICS,
    COST_COLUMNS,
    COST_METRICS,
    COST_UNITS,
    cost_of,
    finite,
)
from nas_neck.search.defaults import DEFAULT_STORAGE

if TYPE_CHECKING:  # optuna, the report and its plots load in the commands that use them
    import optuna

    from nas_neck.pareto import ParetoReport


def _fidelity(option: str, value: str | None) -> None:
    if value is not None:
        try:
            Fidelity.parse(value)
        except ValueError:
            raise checks.OptionError(
                option, "eN or confirmed-eN (e.g. e3, confirmed-e9)", value
            ) from None


@friendly
def pareto(
    study: str = typer.Option(..., "--study", help="Study name."),
    storage: opt.Storage = DEFAULT_STORAGE,
    x: Annotated[
        str | None, checks.OneOf(COST_METRICS, lambda v: cost_of(v.lower()) or v.lower())
    ] = typer.Option(
        None, "--x", help=f"Cost axis: {' | '.join(COST_METRICS)} (default: the study's cost)."
    ),
    y: Annotated[str | None, checks.OneOf(ACCURACY_METRICS, str.lower)] = typer.Option(
        None,
        "--y",
        help=f"Accuracy axis: {' | '.join(ACCURACY_METRICS)} (default: the study's accuracy).",
    ),
    compare: list[str] | None = typer.Option(
        None,
        "--compare",
        help="Another study in the same storage, drawn in its own colour (repeat, or comma-separate).",
    ),
    max_latency_ms: Annotated[float | None, checks.POSITIVE] = typer.Option(
        None, help="Pick the most accurate trial at most this slow, and draw the budget."
    ),
    fidelity: Annotated[str | None, checks.Rule(_fidelity)] = typer.Option(
        None,
        help="Results to draw: e3 (3 epochs), confirmed-e9, ... (default: the confirmed ones if "
        "any, else the most-trained fidelity with at least 3 trials).",
    ),
    out: Path | None = typer.Option(None, help="Output folder (default: runs/<study>)."),
    tracking_uri: str | None = typer.Option(
        None, help="Also log the files to the study's MLflow parent run at this URI."
    ),
) -> None:
    """Pareto front of a study: table, hypervolume, knee and best-under-budget picks, PNG and HTML plots."""
    from nas_neck.pareto import REF_MARGIN, log_to_mlflow, write_report
    from nas_neck.pareto.trials import fidelities
    from nas_neck.search.study import load_existing_study

    if tracking_uri:
        from nas_neck.search.tracking import check_reachable

        check_reachable(tracking_uri)  # before the report, not after minutes of retries
    main = load_existing_study(study, storage)
    others = [load_existing_study(name, storage) for name in _names(compare) if name != study]
    chosen = Fidelity.parse(fidelity) if fidelity else None
    report = write_report(
        main, out or Path("runs") / study, x, y, others, max_latency_ms, fidelity=chosen
    )
    x, y = report.x, report.y
    console.print(front_table(main, x, y, report.picks.labels(), chosen))
    if len(have := fidelities(main)) > 1:
        console.print(
            "fidelities in this study (trained trials): "
            + ", ".join(f"{f.key} ({n})" for f, n in sorted(have.items()))
            + "; a front never mixes them (--fidelity picks one)"
        )
    ref_x, ref_y = report.ref
    unit = COST_UNITS[x]
    console.print(
        f"hypervolume [bold]{report.hypervolume:.4g}[/] ({unit} × {y}) against the reference point "
        f"({ref_x:.4g} {unit}, {y} {ref_y:g}): {1 + REF_MARGIN:g} × the largest {x} among the feasible "
        f"complete trials{' of all compared studies' if others else ''}, and zero accuracy"
    )
    console.print(_baseline_line(report))
    knee = report.picks.knee
    if knee is not None:
        console.print(
            f"knee: trial [bold]{knee}[/] — farthest above the line joining the front's "
            "cheapest and most accurate trials, axes min-max normalised to the front"
        )
    if max_latency_ms is not None:
        best = report.picks.best_under
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
    c = report.counts
    console.print(
        f"{c.complete} complete trials ({c.feasible} feasible, {c.infeasible} over budget), "
        f"{c.failed} failed"
    )
    console.print(f"wrote {report.png}\n      {report.html}\n      {report.csv}", highlight=False)
    if tracking_uri:
        run = log_to_mlflow(main, report, tracking_uri)
        console.print(f"logged to MLflow run {run} (artifacts under pareto/) at {tracking_uri}")


def front_table(
    study: optuna.Study,
    x: str | None = None,
    y: str | None = None,
    picks: Mapping[int, Sequence[str]] | None = None,
    fidelity: Fidelity | None = None,
) -> Table:
    """The study's Pareto front over (x cost, y accuracy; default: its own objectives) at one
    fidelity (default: the report's), cheapest first: accuracy (mean ± sd when confirmed), every
    cost, what a trial was picked as (`picks`: trial number -> labels; no column without), and its
    architecture. Shared by `nas-neck search` and `nas-neck pareto`."""
    from nas_neck.pareto.trials import gather, resolve_axes

    x, y = resolve_axes(study, x, y)
    data = gather(study, x, y, fidelity)
    at = f" at {data.fidelity.label}" if data.fidelity else ""
    what = "architectures" if data.sd is not None else "complete trials"
    table = Table(
        title=f"Pareto front of {study.study_name}{at}: {y} vs {x}, "
        f"{len(data.front)} of {len(data.trials)} {what}"
    )
    for col in ("trial", y, *(label for _, label, _ in COST_COLUMNS)):
        table.add_column(col, justify="right", no_wrap=True)
    if picks is not None:
        table.add_column("pick", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("architecture", ratio=1)
    for i in data.front:
        t = data.trials[i]
        a = t.user_attrs
        kind = f"[bold]{escape(a['baseline'])}[/]" if a.get("baseline") else "searched"
        costs = [
            f"{v:{fmt}}" if (v := finite(a.get(k))) is not None else ""
            for k, _, fmt in COST_COLUMNS
        ]
        picked = [] if picks is None else [", ".join(picks.get(t.number, []))]
        value = f"{data.xy[i, 1]:.4f}"
        if data.sd is not None and data.seeds is not None:
            value += f" ± {data.sd[i]:.4f} ({data.seeds[i]} seeds)"
        table.add_row(
            str(t.number),
            value,
            *costs,
            *picked,
            kind,
            escape(a.get("summary", "")),
        )
    return table


def confirmed_table(study: optuna.Study) -> Table:
    """Every confirmed architecture, cheapest first: mean ± sd over seeds, and which trial of the
    search it confirms (`nas-neck confirm`, `search --confirm`)."""
    from nas_neck.pareto.trials import resolve_axes
    from nas_neck.search.confirm import confirmed

    rows = confirmed(study)
    x, y = resolve_axes(study, None, None)
    table = Table(title=f"confirmed: {len(rows)} architectures of {study.study_name}")
    for col in ("trial", "confirms", f"{y} mean", "sd", "seeds", COST_UNITS[x], "kind"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("architecture", ratio=1)
    for r in rows:
        table.add_row(
            str(r.trial),
            str(r.source),
            f"{r.mean:.4f}",
            f"{r.sd:.4f}",
            str(r.seeds),
            f"{r.cost:.4g}",
            f"[bold]{escape(r.baseline)}[/]" if r.baseline else "searched",
            escape(r.summary),
        )
    return table


def _names(compare: list[str] | None) -> list[str]:
    return [n.strip() for item in compare or [] for n in item.split(",") if n.strip()]


def _baseline_line(report: ParetoReport) -> str:
    b = report.baselines
    if not b.feasible:
        return "baselines: none feasible in this study" + (
            f" ({', '.join(b.infeasible)} over budget)" if b.infeasible else ""
        )
    line = (
        f"baselines dominated by the searched trials: [bold]{len(b.dominated)}/{len(b.feasible)}[/]"
        f" ({b.dominated_share:.0%}{': ' + ', '.join(b.dominated) if b.dominated else ''})"
    )
    if b.infeasible:
        line += f"; {', '.join(b.infeasible)} over the budget, not counted"
    return line


def _compare_table(report: ParetoReport) -> Table:
    table = Table(title=f"shared reference ({report.ref[0]:.4g}, {report.ref[1]:g})")
    for col in ("study", "hypervolume", "front size"):
        table.add_column(col, justify="left" if col == "study" else "right")
    for name, s in report.studies.items():
        table.add_row(name, f"{s.hypervolume:.4g}", str(len(s.front)))
    return table
