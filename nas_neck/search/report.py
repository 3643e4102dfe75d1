"""Tables of a finished search for the terminal."""

from __future__ import annotations

import optuna
from rich.table import Table

from nas_neck.pareto import front_trials
from nas_neck.search.study import Objectives


def front_table(study: optuna.Study, objectives: Objectives, title: str | None = None) -> Table:
    """The Pareto front: trial, accuracy, latency, FLOPs, params, architecture."""
    front = front_trials(study)
    table = Table(
        title=title
        or f"Pareto front of {study.study_name}: {len(front)} of {len(study.trials)} trials"
    )
    for col in (
        "trial",
        objectives.accuracy,
        "latency (ms)",
        "GFLOPs",
        "params (M)",
        "architecture",
    ):
        table.add_column(col, justify="left" if col == "architecture" else "right")
    for t in front:
        a = t.user_attrs
        name = a.get("baseline") or "searched"
        table.add_row(
            str(t.number),
            f"{a.get(objectives.accuracy, t.values[0]):.4f}",
            f"{a.get('latency_ms', float('nan')):.2f}",
            f"{a.get('gflops', float('nan')):.3f}",
            f"{a.get('mparams', float('nan')):.3f}",
            f"[bold]{name}[/] {a.get('arch_hash', '')} {a.get('summary', '')}",
        )
    return table
