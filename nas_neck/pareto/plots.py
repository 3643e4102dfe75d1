"""The plots of a Pareto report: a PNG (matplotlib) and a self-contained, interactive HTML page
(plotly), both of the same `PlotView`. The plotting libraries load only when a plot is drawn."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from optuna.trial import FrozenTrial

from nas_neck.metrics import (
    ACCURACY_LABELS,
    ACCURACY_METRICS,
    ACCURACY_SHORT,
    COST_UNITS,
    finite,
)
from nas_neck.pareto.trials import TrialSet

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_INFEASIBLE_COLOR = "#9a9a9a"
_BUDGET_COLOR = "#d62728"


def _labels(sets: list[TrialSet], x: str, y: str) -> tuple[str, str]:
    """Axis titles with units; latency names its batch size and thread count (as measured)."""
    if x == "latency":
        threads = sorted(
            {
                int(v)
                for d in sets
                for t in d.trials
                if (v := finite(t.user_attrs.get("latency_threads"))) is not None
            }
        )
        how = ["batch 1"]
        if threads:
            n = f"{threads[0]}" if len(threads) == 1 else f"{threads[0]}-{threads[-1]}"
            how.append(f"{n} thread{'s' if threads[-1] > 1 else ''}")
        scopes = {t.user_attrs.get("latency_scope", "neck") for d in sets for t in d.trials}
        what = "detector" if scopes == {"detector"} else "neck"
        x_label = f"{what} latency (ms, {', '.join(how)}, p10 relative to fpn)"
    elif x == "flops":
        x_label = "neck GFLOPs (2 FLOPs per multiply-add)"
    else:
        x_label = "neck parameters (M)"
    return x_label, ACCURACY_LABELS[y]


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
    metrics = [f"{k} {v:.4f}" for k in ACCURACY_METRICS if (v := finite(a.get(k))) is not None]
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
        if (v := finite(a.get(k))) is not None
    ]
    lines.append(" · ".join(costs))
    if a.get("summary"):
        lines.append(html.escape(f"{a.get('arch_hash', '')} {a['summary']}".strip()))
    return "<br>".join(line for line in lines if line)


@dataclass(frozen=True)
class PlotView:
    """What both plots show: the studies (the first is the main one), the axes, the reference
    point, and the picks of the main study (indices into its trials, keys `knee` and `best`)."""

    sets: list[TrialSet]
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
        at = f" at {main.fidelity.label}" if main.fidelity else ""
        if main.sd is not None:
            at += " (mean ± sd over seeds)"
        return (
            f"{main.name}{at}: {len(main.trials)} {'architectures' if main.sd is not None else 'trials'}, "
            f"{len(main.front)} on the Pareto front"
        )

    def subtitle(self) -> str:
        hv = ", ".join(
            f"{d.name} {d.hypervolume(self.ref):.4g}"
            if self.several
            else f"{d.hypervolume(self.ref):.4g}"
            for d in self.sets
        )
        return (
            f"hypervolume {hv} ({COST_UNITS[self.x]} × {ACCURACY_SHORT[self.y]}; reference point "
            f"{self.ref[0]:.3g} {COST_UNITS[self.x]}, {ACCURACY_SHORT[self.y]} {self.ref[1]:g})"
        )

    def pick_names(self) -> dict[str, str]:
        of = f" ({self.sets[0].name})" if self.several else ""
        names = {"knee": f"knee{of}"}
        if self.max_latency_ms is not None:
            names["best"] = f"best ≤ {self.max_latency_ms:g} ms{of}"
        return names

    def labels(self) -> tuple[str, str]:
        return _labels(self.sets, self.x, self.y)

    def show_budget(self) -> bool:
        return self.max_latency_ms is not None and self.x == "latency"


def plot_png(view: PlotView, path: Path) -> Path:
    """The view as a static PNG (legend beside the axes)."""
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
        if d.sd is not None:
            ok = np.flatnonzero(d.feasible)
            ax.errorbar(
                *d.xy[ok].T,
                yerr=d.sd[ok],
                fmt="none",
                ecolor=color,
                elinewidth=1.0,
                capsize=3,
                alpha=0.8,
                zorder=2,
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
    x_label, y_label = view.labels()
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    ax.grid(True, alpha=0.3, lw=0.6)
    ax.set_title(f"{view.title()}\n{view.subtitle()}", fontsize=9.5)
    ax.legend(
        fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False
    )
    fig.savefig(path)
    return path


def plot_html(view: PlotView, path: Path) -> Path:
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
            error = (
                dict(type="data", array=d.sd[idx].tolist(), visible=True)
                if d.sd is not None
                else None
            )
            fig.add_trace(
                go.Scatter(
                    x=d.xy[idx, 0].tolist(),
                    y=d.xy[idx, 1].tolist(),
                    error_y=error,
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
        xaxis_title=view.labels()[0],
        yaxis_title=view.labels()[1],
        template="plotly_white",
        hovermode="closest",
    )
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
