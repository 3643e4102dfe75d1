"""Architecture diagram: a neck graph drawn for a paper figure (matplotlib, PNG).

Layout, as in the FPN and EfficientDet figures: one row per pyramid level, the coarsest at the top
and the finest (P2 or P3) at the bottom, so top-down edges point down. The first column holds the
cell's inputs (backbone levels, then extra levels made by downsampling the level below), nodes
follow in columns by dependency depth, and the last column marks the neck's outputs. Edges are
coloured by direction: top-down (to a finer level), bottom-up (to a coarser level), lateral (same
level); an edge that a straight line would draw through another box runs instead along the gaps
between rows and columns. Only nodes that feed an output are drawn. A repeated cell (BiFPN) is
drawn once, titled "cell xN".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nas_neck.dsl import Architecture

log = logging.getLogger(__name__)

EDGE_COLORS = {"top-down": "#1f77b4", "bottom-up": "#d62728", "lateral": "#555555"}
_MEANING = {
    "top-down": "to a finer level",
    "bottom-up": "to a coarser level",
    "lateral": "same level",
}
_OUTPUT_COLOR = "#2ca02c"
_W, _H = 0.7, 0.62  # box size; columns and rows are 1 apart
_STEP = 0.055  # spacing of parallel routed edges in one gap


def plot_architecture(arch: Architecture, path: str | Path) -> Path:
    """Draw `arch` (layout in the module docstring) and save it as a PNG at `path`."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path as MplPath

    live = arch.pruned()
    cols = _columns(live)
    out_col = max(cols.values(), default=0) + 1
    levels = sorted(set(arch.cell_levels) | {n.level for n in live.nodes})
    fig = Figure(
        figsize=(1.5 * (out_col + 1) + 1.2, 1.0 * len(levels) + 1.6), dpi=160, layout="constrained"
    )
    ax = fig.subplots()
    layout = _Layout()

    def box(
        key: str,
        col: int,
        level: int,
        text: str,
        face: str,
        edge: str = "black",
        lw: float = 0.8,
        ls: str = "-",
        width: float = _W,
    ) -> None:
        layout.boxes[key] = (col, level, width)
        ax.add_patch(
            FancyBboxPatch(
                (col - width / 2, level - _H / 2),
                width,
                _H,
                boxstyle="round,pad=0,rounding_size=0.07",
                facecolor=face,
                edgecolor=edge,
                linewidth=lw,
                linestyle=ls,
                zorder=2,
            )
        )
        ax.text(col, level, text, ha="center", va="center", fontsize=7, zorder=3, linespacing=1.3)

    def arrow(points: list[tuple[float, float]], color: str, ls: str = "-") -> None:
        ax.add_patch(
            FancyArrowPatch(
                path=MplPath(points),
                arrowstyle="-|>",
                mutation_scale=9,
                color=color,
                linewidth=1.1,
                linestyle=ls,
                joinstyle="round",
                zorder=1,
            )
        )

    for lvl in arch.cell_levels:
        extra = lvl in arch.extra_levels
        box(
            f"P{lvl}",
            0,
            lvl,
            f"P{lvl}\n{'extra: ' + arch.extra_downsample if extra else 'backbone'}",
            face="#f2f2f2",
            ls="--" if extra else "-",
        )
    for n in live.nodes:
        block = "no block" if n.block == "none" else f"{n.block}×{n.depth}"
        box(
            n.name,
            cols[n.name],
            n.level,
            f"{n.name}\n{n.fuse}\n{block} · w{n.width}",
            face="white",
            edge=_OUTPUT_COLOR if n.output else "black",
            lw=1.8 if n.output else 0.8,
        )
    for n in live.outputs:
        box(
            f"out{n.level}",
            out_col,
            n.level,
            f"P{n.level} out",
            face="#e8f5e9",
            edge=_OUTPUT_COLOR,
            width=0.55,
        )

    for (
        lvl
    ) in arch.extra_levels:  # an extra level downsamples the level below it, in the input column
        arrow([(0, lvl - 1 + _H / 2), (0, lvl - _H / 2)], EDGE_COLORS["bottom-up"], ls="--")
    for n in live.nodes:
        for ref in n.inputs:
            kind = _direction(live.level_of(ref), n.level)
            arrow(layout.route(ref, n.name), EDGE_COLORS[kind])
    for n in live.outputs:
        arrow(layout.route(n.name, f"out{n.level}"), _OUTPUT_COLOR)

    ax.set_xlim(-0.55, out_col + 0.45)
    ax.set_ylim(min(levels) - 0.6, max(levels) + 0.6)
    ax.set_yticks(levels, [f"P{lvl}  (stride {2**lvl})" for lvl in levels])
    ax.set_xticks([0, out_col], ["cell inputs", "outputs"])
    ax.tick_params(length=0, labelsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    cell = (
        f", cell ×{arch.repeat} drawn once (later cells read the previous cell's outputs)"
        if arch.repeat > 1
        else ""
    )
    ax.set_title(f"{arch.name} [{arch.hash}]{cell}\n{arch.short()}", fontsize=9)
    handles = [
        Line2D([], [], color=c, lw=1.6, label=f"{k} ({_MEANING[k]})")
        for k, c in EDGE_COLORS.items()
    ]
    handles.append(Line2D([], [], color=_OUTPUT_COLOR, lw=1.8, label="output node"))
    if dead := len(arch.nodes) - len(live.nodes):
        handles.append(
            Line2D([], [], ls="none", label=f"{dead} unused node{'s' * (dead > 1)} not drawn")
        )
    ax.legend(
        handles=handles,
        fontsize=7.5,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.06),
        ncols=len(handles),
        frameon=False,
    )
    path = Path(path)
    fig.savefig(path)
    log.debug("wrote %s", path)
    return path


@dataclass
class _Layout:
    """Box positions and the routing of edges through the gaps between them."""

    boxes: dict[str, tuple[int, int, float]] = field(
        default_factory=dict
    )  # key -> column, level, width
    used: dict[tuple[str, float], int] = field(default_factory=dict)  # gap -> edges already in it

    def route(self, src: str, dst: str) -> list[tuple[float, float]]:
        """A straight line from the right of `src` to the left of `dst` if it crosses no other
        box, else a path along the column gap after `src`, a row gap, and the gap before `dst`."""
        cs, ys, ws = self.boxes[src]
        cd, yd, wd = self.boxes[dst]
        start, end = (cs + ws / 2, float(ys)), (cd - wd / 2, float(yd))
        if self._clear(start, end, {src, dst}):
            return [start, end]
        lane = (
            ys + (0.5 if yd >= ys else -0.5) + self._offset("row", ys + (0.5 if yd >= ys else -0.5))
        )
        x1 = cs + 0.5 + self._offset("col", cs + 0.5)
        x2 = cd - 0.5 + self._offset("col", cd - 0.5)
        return [start, (x1, ys), (x1, lane), (x2, lane), (x2, yd), end]

    def _offset(self, kind: str, where: float) -> float:
        k = self.used.get((kind, where), 0)
        self.used[(kind, where)] = k + 1
        return _STEP * ((k + 1) // 2) * (1 if k % 2 else -1)

    def _clear(self, a: tuple[float, float], b: tuple[float, float], skip: set[str]) -> bool:
        t = np.linspace(0.0, 1.0, 64)[:, None]
        pts = (1 - t) * np.asarray(a) + t * np.asarray(b)
        for key, (c, lvl, w) in self.boxes.items():
            if key in skip:
                continue
            inside = (np.abs(pts[:, 0] - c) < w / 2 + 0.02) & (
                np.abs(pts[:, 1] - lvl) < _H / 2 + 0.02
            )
            if inside.any():
                return False
        return True


def _direction(src_level: int, dst_level: int) -> str:
    if dst_level < src_level:
        return "top-down"
    return "bottom-up" if dst_level > src_level else "lateral"


def _columns(arch: Architecture) -> dict[str, int]:
    """Column of each node: one right of its rightmost input (cell inputs sit in column 0), moved
    further right while another node holds the same (column, level) cell."""
    cols: dict[str, int] = {}
    taken: set[tuple[int, int]] = set()
    for n in arch.nodes:  # topological order
        col = 1 + max((cols.get(r, 0) for r in n.inputs), default=0)
        while (col, n.level) in taken:
            col += 1
        cols[n.name] = col
        taken.add((col, n.level))
    return cols
