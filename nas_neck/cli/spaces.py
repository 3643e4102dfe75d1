"""`nas-neck spaces`: the search spaces shipped with nas-neck, one line each."""

from __future__ import annotations

from nas_neck.cli.console import console, friendly
from nas_neck.dsl import load_space, shipped_names


@friendly
def spaces() -> None:
    """List the shipped search spaces and fixed architectures; pass a name wherever a space or
    architecture file is taken (`show fpn`, `search --space pafpn-family`, `train --arch pafpn`)."""
    rows = [("name", "kind", "levels", "description")]
    for name in shipped_names():
        space = load_space(name)
        kind = "architecture" if space.is_fixed else f"{len(space.parameters())} parameters"
        levels = f"P{min(space.cell_levels)}-P{max(space.cell_levels)}"
        rows.append((name, kind, levels, space.spec.description))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for k, row in enumerate(rows):
        line = "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[3]])
        console.print(
            line,
            style="bold" if k == 0 else None,
            markup=False,
            highlight=False,
            no_wrap=True,
            overflow="ellipsis",
        )
